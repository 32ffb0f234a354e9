"""``human.ask``: put a question in the human queue and wait for the answer."""

from __future__ import annotations

from typing import Any, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.errors import InvalidArgument
from agentlibos.kernel.approvals import EVENT_NAME_RE, MAX_QUESTION
from agentlibos.kernel.policy import Request


class HumanChannel(Protocol):
    def question(self, caller: Caller, question: str, choices: list[Any] | None,
                 topic: str) -> Result: ...


class HumanServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def humans(self) -> HumanChannel: ...


@syscall("human.ask", question=Param(str, max_len=MAX_QUESTION),
         choices=Param(list, required=False, max_len=32),
         topic=Param(str, required=False, default="*", max_len=128))
def human_ask(
    svc: HumanServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Result:
    """Ask the operator a question (needs human:ask:<topic>); returns {"answer", "id"}."""
    topic = args["topic"]
    if topic != "*" and not EVENT_NAME_RE.fullmatch(topic):
        # A topic is what a capability names: a glob, a space or a newline in it would
        # only make a confusing refusal (or an audit line) later.
        raise InvalidArgument(f"human.ask: topic {topic!r} must be '*' or 1-128 characters "
                              "of letters, digits and _ . : / -, starting with a letter or "
                              "digit")
    svc.authz.authorize(caller, "human.ask", Request("human", "ask", topic))
    return svc.humans.question(caller, args["question"], args["choices"], topic)
