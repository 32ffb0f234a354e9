"""The syscall broker: wire protocol, ROUTER endpoint and syscall table."""
