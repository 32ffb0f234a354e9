"""Spawning, lifecycle and the services behind the syscalls."""

from agentlibos.supervisor.supervisor import LiveProcess, Supervisor

__all__ = ["LiveProcess", "Supervisor"]
