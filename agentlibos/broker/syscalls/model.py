"""``model.chat``: one Chat Completions call to an operator-configured model provider.

The provider, its endpoint and its key are the operator's (``[models.NAME]`` in
config.toml); the agent names only ``provider/model`` and needs
``model:call:<provider>/<model>``. The call is performed by the supervisor off its loop
(supervisor/models.py), against the tree's token budget (kernel/tokens.py).
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from agentlibos.broker.syscalls.base import Authorizer, Caller, Param, Result, syscall
from agentlibos.errors import InvalidArgument
from agentlibos.kernel.policy import Request

MAX_MESSAGES: Final = 10_000
MAX_TOOLS: Final = 256
ROLES: Final = frozenset({"system", "user", "assistant", "tool", "developer"})


class ModelService(Protocol):
    def resolve(self, caller: Caller, model: str | None) -> tuple[str, str]: ...
    def chat(self, caller: Caller, provider: str, model: str,
             messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
             max_tokens: int | None) -> Result: ...


class ModelServices(Protocol):
    @property
    def authz(self) -> Authorizer: ...
    @property
    def models(self) -> ModelService: ...


# What a message may carry to a provider. Anything else a model's own message holds
# (`refusal`, `annotations`, `audio`...) is dropped, so an agent loop may append the
# message it got back as it came.
MESSAGE_KEYS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


def check_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Chat Completions messages: objects with a known ``role``; content text, a list of
    text parts, or absent. Only text goes to a provider: an image, audio or file part
    names a URL the provider fetches (a way out that needs no ``net`` capability) and
    costs tokens no byte count bounds (the budget's reservation would not hold)."""
    if not messages:
        raise InvalidArgument("model.chat: messages must not be empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InvalidArgument(f"model.chat: messages[{i}] must be an object with a role "
                                  f"({', '.join(sorted(ROLES))})")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidArgument(f"model.chat: messages[{i}].content must be text")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text"
                        and isinstance(part.get("text"), str) and set(part) <= {"type", "text"}):
                    raise InvalidArgument(
                        f"model.chat: messages[{i}].content[{j}] must be a text part "
                        '({"type": "text", "text": ...}); images, audio and files are not '
                        "sent to providers")
        out.append({k: v for k, v in m.items() if k in MESSAGE_KEYS})
    return out


def check_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """Function tools: ``{"type": "function", "function": {"name", "parameters"?}}``."""
    if not tools:
        return None
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if (not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str)
                or not isinstance(fn.get("parameters", {}), dict)):
            raise InvalidArgument(f"model.chat: tools[{i}] must be "
                                  '{"type": "function", "function": {"name": ..., '
                                  '"description": ..., "parameters": {...}}}')
    return tools


@syscall("model.chat", tool_ok=False,
         messages=Param(list, max_len=MAX_MESSAGES),
         tools=Param(list, required=False, max_len=MAX_TOOLS),
         model=Param(str, required=False, max_len=256),
         max_tokens=Param(int, required=False))
def model_chat(
    svc: ModelServices, caller: Caller, args: dict[str, Any], blobs: list[bytes]
) -> Result:
    """Ask a model (``provider/model``; default: the image's [agent] model) for the next
    message. Needs model:call:<provider>/<model>. Returns {message, usage, model}."""
    messages = check_messages(args["messages"])
    tools = check_tools(args["tools"])
    max_tokens = args["max_tokens"]
    if max_tokens is not None and max_tokens < 1:
        raise InvalidArgument("model.chat: max_tokens must be at least 1")
    provider, model = svc.models.resolve(caller, args["model"])
    svc.authz.authorize(caller, "model.chat", Request("model", "call", f"{provider}/{model}"))
    return svc.models.chat(caller, provider, model, messages, tools, max_tokens)
