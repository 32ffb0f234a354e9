"""The model syscalls' service: resolve the provider, reserve tokens, call off the loop.

Implements ``broker.syscalls.model.ModelService``. One ``model.chat``:

1. on the loop: find the provider (``[models.NAME]``, or one the embedder injected
   through ``Providers(models=...)``, which wins over a configured one), refuse at
   once what cannot be sent (an unknown provider, a key variable that is not set),
   *reserve* the call's worst case against its tree's budget (kernel/tokens.py) -- a
   call that cannot reserve is ``LimitExceeded`` and never reaches the provider;
2. off the loop (supervisor/offloop.py): the blocking HTTP request, retries included;
3. on the loop again: *settle* the real usage on the tree's row, audit the call (the
   model, the usage, a digest of the prompt -- never the prompt, never the key) and
   answer the agent.

Reservations are in memory: every reserve and settle runs on the loop thread, one at a
time, so two calls can never both see the same room in the budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from agentlibos.broker.syscalls import Caller, Pending, Result
from agentlibos.errors import (
    InternalError,
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    NotFound,
    Timeout,
)
from agentlibos.kernel import tokens
from agentlibos.kernel.image import AgentImage
from agentlibos.providers.models import (
    ModelAnswer,
    ModelConfig,
    ModelProvider,
    ModelRequest,
    make_provider,
)
from agentlibos.store import Store
from agentlibos.supervisor.offloop import OffLoop
from agentlibos.supervisor.waits import Waits

log = logging.getLogger(__name__)


def prompt_digest(messages: list[Any], tools: list[Any] | None) -> str:
    """What the audit records of a prompt: a hash, so it proves without revealing."""
    body = json.dumps([messages, tools or []], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


class Models:
    def __init__(self, configs: dict[str, ModelConfig], store: Store, offloop: OffLoop,
                 waits: Waits, root_image: Callable[[int], AgentImage | None], *,
                 default_limit: int | None = None,
                 injected: Mapping[str, ModelProvider] | None = None) -> None:
        self._default_limit = default_limit  # the operator's [limits] tokens
        injected = dict(injected or {})  # names checked by Providers
        self._providers: dict[str, ModelProvider] = {
            name: make_provider(cfg) for name, cfg in configs.items() if name not in injected}
        self._providers.update(injected)
        self._store = store
        self._offloop = offloop
        self._waits = waits
        self._root_image = root_image  # a live tree's root image ([limits] tokens)
        self._reserved: defaultdict[int, int] = defaultdict(int)

    # ---------------------------------------------------------------- the syscall

    def resolve(self, caller: Caller, model: str | None) -> tuple[str, str]:
        """``provider/model`` split; None means the image's ``[agent] model``."""
        if model is None:
            if caller.image.agent is None:
                raise InvalidArgument("model.chat: name a model as 'provider/model' (this "
                                      "image has no [agent] model to default to)")
            model = caller.image.agent.model
        provider, sep, name = model.partition("/")
        if not sep or not provider or not name:
            raise InvalidArgument(f"model.chat: model {model!r} must be 'provider/model' "
                                  "(e.g. 'openai/gpt-4.1-mini')")
        return provider, name

    def chat(self, caller: Caller, provider: str, model: str,
             messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
             max_tokens: int | None) -> Result:
        prov = self._providers.get(provider)
        if prov is None:
            known = ", ".join(sorted(self._providers)) or "none"
            raise NotFound(f"model.chat: no model provider {provider!r} is configured "
                           f"(configured: {known}; [models.NAME] in the operator's "
                           "config.toml)")
        prov.check()  # no key variable, a malformed script: refused before reserving
        root = caller.root_pid
        try:
            res = tokens.plan(root, self._limit(root), self._store.tokens_usage(root).used,
                              self._reserved.get(root, 0),
                              tokens.estimate_prompt_tokens(messages, tools), max_tokens)
        except LimitExceeded as e:  # audited (a typed refusal keeps its records)
            self._store.append_audit(caller.pid, "model.chat",
                                     f"model:call:{provider}/{model}", "deny",
                                     {"reason": e.message, "budget": e.details})
            raise
        self._reserved[root] += res.tokens
        req = ModelRequest(model, messages, tools, res.max_tokens)
        digest = prompt_digest(messages, tools)
        pending = Pending(caller.pid)
        started = time.monotonic()

        def done(outcome: ModelAnswer | BaseException) -> None:
            self._reserved[root] -= res.tokens
            if not self._reserved[root]:
                del self._reserved[root]
            self._finish(caller, provider, model, res, digest, started, outcome, pending)

        self._offloop.submit(lambda: prov.chat(req), done)
        # `ps` shows the wait once it lasted SHOW_AFTER_S; it holds the process (a call
        # in flight is no durable wait: a stop cuts it off, and `redo` asks again).
        return self._waits.suspend(caller.pid, pending, f"model:{provider}/{model}")

    def _finish(self, caller: Caller, provider: str, model: str,
                res: tokens.Reservation, digest: str, started: float,
                outcome: ModelAnswer | BaseException, pending: Pending) -> None:
        answered = isinstance(outcome, ModelAnswer)
        if isinstance(outcome, ModelAnswer):
            p, c = tokens.settle_amount(res, outcome.prompt_tokens, outcome.completion_tokens,
                                        sent=True)
        else:  # only a timeout may have been generated and billed
            p, c = tokens.settle_amount(res, None, None, sent=isinstance(outcome, Timeout))
        detail: dict[str, Any] = {
            "model": f"{provider}/{model}", "prompt_digest": digest,
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            "reserved": res.tokens, "max_tokens": res.max_tokens,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        error: LibOSError | None = None
        if isinstance(outcome, ModelAnswer):
            detail["attempts"] = outcome.attempts
            detail["tool_calls"] = len(outcome.message.get("tool_calls", []))
        elif isinstance(outcome, LibOSError):
            error = outcome
            detail["error"] = f"{type(outcome).__name__}: {outcome.message}"[:1000]
        else:
            log.error("model.chat to %s/%s failed: %r", provider, model, outcome)
            error = InternalError(f"model.chat: internal error ({type(outcome).__name__}); "
                                  "the supervisor log has the details")
            detail["error"] = type(outcome).__name__
        with self._store.transaction():
            if answered or p or c:
                usage = self._store.tokens_settle(res.root_pid, p, c)
                detail["tree_used"] = usage.used
            self._store.append_audit(caller.pid, "model.chat", f"model:call:{provider}/{model}",
                                     "info" if error is None else "error", detail)
        if isinstance(outcome, ModelAnswer):
            pending.resolve({"message": outcome.message, "usage": detail["usage"],
                             "model": f"{provider}/{model}",
                             "finish_reason": outcome.extra.get("finish_reason")
                             or _finish_reason(outcome.message)})
        else:
            assert error is not None
            pending.reject(error)

    # ---------------------------------------------------------------- budgets

    def _limit(self, root_pid: int) -> int | None:
        """The tree's budget: `run --tokens` if given, else its root image's [limits]
        tokens (recorded on the tree's row at its first call, so `ps` shows it)."""
        usage = self._store.tokens_usage(root_pid)
        if usage.limit is not None:
            return usage.limit
        image = self._root_image(root_pid)
        limit = image.limits.tokens if image is not None else None
        if limit is None:
            limit = self._default_limit
        if limit is not None:
            self._store.tokens_set_limit(root_pid, limit)
        return limit

    def limit_tree(self, root_pid: int, limit: int) -> None:
        """``run --tokens N``: the tree's budget, over its image's."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(f"--tokens must be a whole number >= 1, not {limit!r}")
        with self._store.transaction():
            self._store.tokens_set_limit(root_pid, limit)

    def reserved(self, root_pid: int) -> int:
        return self._reserved.get(root_pid, 0)

    def close(self) -> None:
        for prov in self._providers.values():
            prov.close()


def _finish_reason(message: dict[str, Any]) -> str:
    """Chat Completions' reason, for a provider that gives none (the scripted one)."""
    return "tool_calls" if message.get("tool_calls") else "stop"
