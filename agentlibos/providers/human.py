"""The human channel: who is told of approvals and questions, and may answer them.

The durable queue (``supervisor/approvals.py``) is where every ``ask`` and
``human.ask`` waits; the CLI (``approve``/``deny``/``answer``), the web console and
``run --ask prompt`` answer it through the control channel. A :class:`HumanChannel`
is the in-process way to the same queue, for an embedding application (a chat-bot
bridge, a GUI) or a test (an auto-approver): it is told when an item enters the queue
and when it is closed, and answers through :class:`HumanAnswers`, which calls the very
methods the control operations call -- same checks, same one-shot grants, same audit
records. Whichever answer comes first wins; the others get ``Conflict``.

The channel is called on the supervisor's loop thread and must not block it: a bridge
hands the item to its own thread and answers from there (``HumanAnswers`` is safe from
any thread). A channel that raises is logged and ignored: the item stays in the queue
for the other ways to answer it.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from agentlibos.kernel.approvals import AskRecord


class HumanAnswers(Protocol):
    """Answer an item of the queue. Each returns at once; the future holds the decided
    record, or the typed error (``Conflict`` if it was already decided, ``NotFound``,
    ``InvalidArgument``). Never wait on it from the loop thread (inside a channel's
    callback): the answer is applied by that thread."""

    def approve(self, ask_id: int, *, always: bool = False) -> Future[AskRecord]: ...
    def deny(self, ask_id: int, reason: str | None = None) -> Future[AskRecord]: ...
    def answer(self, ask_id: int, text: str) -> Future[AskRecord]: ...


class HumanChannel(Protocol):
    """Told of the queue's changes (``Providers(human=...)``)."""

    def opened(self, item: AskRecord, answers: HumanAnswers) -> None:
        """An approval (``item.kind == "approval"``: ``request``, ``digest``,
        ``summary``) or a question (``question``, ``choices``) now waits."""
        ...

    def closed(self, item: AskRecord) -> None:
        """The item was decided (``state``: approved, denied, answered, expired), by
        anyone, or its process ended."""
        ...


__all__ = ["HumanAnswers", "HumanChannel"]
