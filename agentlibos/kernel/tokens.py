"""Token budgets for model calls: reserve the worst case, settle the real usage. Pure.

A process tree (one ``run`` and everything it spawns, keyed by ``root_pid``) may have a
token budget: ``[limits] tokens`` in its root image, or ``run --tokens N``. A model call
*reserves* its worst case before it is sent -- the completion's ``max_tokens`` plus an
upper bound on the prompt's size -- and *settles* the real usage when the answer comes.
A call that cannot reserve is refused with ``LimitExceeded`` and never reaches the
provider. Since usage settles at most at the reservation, no interleaving of concurrent
calls can spend more than the budget.

The prompt bound is deliberately pessimistic: one token per UTF-8 byte of the messages
and tool schemas as JSON, plus a per-message overhead. Every tokenizer in use emits at
most one token per byte of text, so the bound holds for every provider without knowing
its tokenizer; the price is that a small budget admits fewer calls than it could.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from agentlibos.errors import LimitExceeded

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PER_MESSAGE_TOKENS",
    "Reservation",
    "TokenUsage",
    "estimate_prompt_tokens",
    "plan",
    "settle_amount",
]

# The completion size asked for when the caller names none and the tree's budget leaves
# room: enough for a long answer, small enough that one call cannot take a large budget.
DEFAULT_MAX_TOKENS: Final = 4096
# Chat formats wrap each message in a few special tokens (role, separators).
PER_MESSAGE_TOKENS: Final = 8
_FIXED_TOKENS: Final = 16


@dataclass(frozen=True)
class TokenUsage:
    """What a tree has spent on models, and its budget (None: unbounded)."""

    limit: int | None = None
    used: int = 0
    prompt: int = 0
    completion: int = 0
    calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "used": self.used, "prompt_tokens": self.prompt,
                "completion_tokens": self.completion, "calls": self.calls}


@dataclass(frozen=True)
class Reservation:
    """What one call holds while it is in flight."""

    root_pid: int
    prompt_estimate: int
    max_tokens: int | None  # what the call sends as max_tokens (None: send none)
    bounded: bool = True  # the tree has a budget (else the call holds nothing)

    @property
    def tokens(self) -> int:
        """The worst case this call holds against the budget (0 without one)."""
        return self.prompt_estimate + (self.max_tokens or 0) if self.bounded else 0


def estimate_prompt_tokens(messages: list[Any], tools: list[Any] | None) -> int:
    """An upper bound on the prompt's tokens: its JSON bytes plus per-message overhead."""
    body = json.dumps([messages, tools or []], ensure_ascii=False, separators=(",", ":"))
    return len(body.encode("utf-8")) + PER_MESSAGE_TOKENS * len(messages) + _FIXED_TOKENS


def plan(root_pid: int, limit: int | None, used: int, reserved: int,
         prompt_estimate: int, max_tokens: int | None, *, call: str = "model.chat"
         ) -> Reservation:
    """The reservation for one call, or ``LimitExceeded`` if the tree cannot afford it.

    ``used`` is what the tree has settled, ``reserved`` what its calls in flight hold.
    Without a budget the call holds nothing and sends the caller's ``max_tokens`` as
    given. With one, an unnamed ``max_tokens`` becomes what is left after the prompt (at
    most :data:`DEFAULT_MAX_TOKENS`), so a call never sends more than it reserved.
    """
    if max_tokens is not None and max_tokens < 1:
        raise LimitExceeded(f"{call}: max_tokens must be at least 1, not {max_tokens}")
    if limit is None:
        return Reservation(root_pid, prompt_estimate, max_tokens, bounded=False)
    left = limit - used - reserved
    room = left - prompt_estimate
    want = max_tokens if max_tokens is not None else min(DEFAULT_MAX_TOKENS, room)
    if want < 1 or prompt_estimate + want > left:
        asked = prompt_estimate + max(want, 1)
        raise LimitExceeded(
            f"{call}: process tree {root_pid} has spent {used} of its {limit} tokens and "
            f"holds {reserved} for calls in flight; this call needs up to {asked} "
            f"(a prompt of up to {prompt_estimate} plus max_tokens {max(want, 1)}) "
            "([limits] tokens in image.toml, or run --tokens)",
            quota="tokens", usage=used, reserved=reserved, asked=asked, limit=limit,
            root_pid=root_pid)
    return Reservation(root_pid, prompt_estimate, want)


def settle_amount(reservation: Reservation, prompt_tokens: int | None,
                  completion_tokens: int | None, *, sent: bool) -> tuple[int, int]:
    """The (prompt, completion) tokens a finished call is charged.

    What the provider reports, each part at most what was reserved for it when the tree
    has a budget (a provider that reports more than ``max_tokens`` allows, or a prompt
    beyond the byte bound, is charged the reservation: the budget is never overspent).
    A call that was never answered is charged nothing when it was not sent, and its whole
    reservation when it may have been (a timeout: the provider may have generated it).
    """
    if prompt_tokens is None or completion_tokens is None:
        if not sent or not reservation.bounded:
            return 0, 0
        return reservation.prompt_estimate, reservation.max_tokens or 0
    p, c = max(0, int(prompt_tokens)), max(0, int(completion_tokens))
    if reservation.bounded:  # a budget: never more than was held
        p = min(p, reservation.prompt_estimate)
        c = min(c, reservation.max_tokens or 0)
    return p, c
