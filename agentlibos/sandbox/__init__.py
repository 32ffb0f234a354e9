"""OS isolation for AgentProcesses. ``contain.apply`` runs the layers in order."""
