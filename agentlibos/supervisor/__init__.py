"""The supervisor: the loop, the process table and the services behind the syscalls."""

from agentlibos.supervisor.processes import LiveProcess
from agentlibos.supervisor.supervisor import Supervisor

__all__ = ["LiveProcess", "Supervisor"]
