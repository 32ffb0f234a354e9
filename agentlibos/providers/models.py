"""Model providers: how the broker reaches a model for ``model.chat``.

Two kinds, configured by the operator in ``$AGENTLIBOS_HOME/config.toml``
(``[models.NAME]``, parsed here by :func:`parse_models`):

``openai``
    Any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, llama.cpp, Ollama,
    LiteLLM), through ``httpx``. The key is read from the supervisor's environment
    (``api_key_env``) at each call; it is sent only in the ``Authorization`` header and
    scrubbed from every message that could reach an agent, a log or the audit. 429 and
    5xx answers and connection failures are retried a bounded number of times with
    exponential backoff (``Retry-After`` honoured up to a cap); each attempt has a time
    limit.
``scripted``
    Deterministic answers for demos and tests: ``{"responses": [R, ...]}``; each call
    takes the next ``R`` (``{"content": ...}``, ``{"tool_calls": [{"name", "arguments"}]}``
    or both); when the list is exhausted a call returns ``{"content": ""}``.

:meth:`ModelProvider.chat` blocks: the supervisor calls it on its off-loop pool
(supervisor/offloop.py), never on the loop. It touches no runtime state.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from agentlibos.errors import (
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    PolicyError,
    Timeout,
    Unavailable,
)
from agentlibos.kernel.units import parse_duration

if TYPE_CHECKING:
    import httpx

__all__ = [
    "KINDS",
    "ModelAnswer",
    "ModelConfig",
    "ModelProvider",
    "ModelRequest",
    "OpenAIProvider",
    "ScriptedProvider",
    "load_script",
    "make_provider",
    "parse_models",
]

KINDS: Final = ("openai", "scripted")
OPENAI_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S: Final = 120.0
DEFAULT_MAX_RETRIES: Final = 2
# Backoff: 0.5 s, 1 s, 2 s... and a Retry-After is believed up to this long.
BACKOFF_BASE_S: Final = 0.5
MAX_RETRY_AFTER_S: Final = 10.0
# An answer larger than this is refused rather than parsed (a broken or hostile server).
MAX_RESPONSE_BYTES: Final = 8 << 20
MAX_SCRIPT_BYTES: Final = 8 << 20
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_KEYS: Final = {"kind", "base_url", "api_key_env", "script", "timeout", "max_retries"}


@dataclass(frozen=True)
class ModelConfig:
    """One ``[models.NAME]`` table."""

    name: str
    kind: str
    base_url: str = ""
    api_key_env: str | None = None
    script: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES


@dataclass(frozen=True)
class ModelRequest:
    model: str  # without the provider prefix: what the endpoint is sent
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class ModelAnswer:
    """A Chat Completions answer: the assistant message and the token usage."""

    message: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str = ""
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class ModelProvider(Protocol):
    """One provider's client: the two built-in kinds, or an embedder's own
    (``Providers(models={"name": client})``)."""

    def check(self) -> None:
        """Refuse at once what could not be sent (no key, a malformed script). Cheap:
        runs on the loop, before anything is reserved."""
        ...

    def chat(self, req: ModelRequest) -> ModelAnswer:
        """Blocking; raises typed errors. ``Timeout`` means it may have been generated."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------ config


def parse_models(table: object, source: str) -> dict[str, ModelConfig]:
    """``[models.NAME]`` tables of config.toml; errors name the file and the key."""
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: [models] must hold tables such as [models.openai]")
    out: dict[str, ModelConfig] = {}
    for name, t in table.items():
        where = f"{source}: [models.{name}]"
        if not name or not set(name) <= _NAME_CHARS:
            raise PolicyError(f"{where}: a provider name is a-z, 0-9, '_' and '-'")
        if not isinstance(t, dict):
            raise PolicyError(f"{where} must be a table")
        unknown = set(t) - _KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(_KEYS))})")
        kind = t.get("kind")
        if kind not in KINDS:
            raise PolicyError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
        values: dict[str, Any] = {"name": name, "kind": kind}
        for key in ("base_url", "api_key_env", "script"):
            if key in t:
                if not isinstance(t[key], str) or not t[key]:
                    raise PolicyError(f"{where}: {key} must be a non-empty string")
                values[key] = t[key]
        if kind == "openai":
            if "base_url" not in values:  # OpenAI itself, and then its usual key variable
                values["base_url"] = OPENAI_BASE_URL
                values.setdefault("api_key_env", "OPENAI_API_KEY")
            url = values["base_url"]
            if not url.startswith(("http://", "https://")):
                raise PolicyError(f"{where}: base_url must be an http(s) URL such as "
                                  "https://api.openai.com/v1")
            if "script" in values:
                raise PolicyError(f"{where}: script is for kind = \"scripted\"")
        else:
            if "script" not in values:
                raise PolicyError(f"{where}: a scripted provider needs script = \"PATH\"")
            if {"base_url", "api_key_env"} & set(values):
                raise PolicyError(f"{where}: base_url and api_key_env are for kind = "
                                  "\"openai\"")
            script = Path(values["script"]).expanduser()
            if not script.is_absolute():
                script = Path(source).parent / script
            values["script"] = str(script)
        if "timeout" in t:
            try:
                values["timeout_s"] = parse_duration(t["timeout"], what=f"{where} timeout")
            except InvalidArgument as e:
                raise PolicyError(e.message) from None
            if values["timeout_s"] <= 0:
                raise PolicyError(f"{where}: timeout must be greater than zero")
        if "max_retries" in t:
            n = t["max_retries"]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 10:
                raise PolicyError(f"{where}: max_retries must be a whole number 0-10")
            values["max_retries"] = n
        out[name] = ModelConfig(**values)
    return out


def make_provider(config: ModelConfig) -> ModelProvider:
    if config.kind == "openai":
        return OpenAIProvider(config)
    return ScriptedProvider(config)


# ---------------------------------------------------------------------- scripted


def load_script(path: str) -> list[dict[str, Any]]:
    """The responses of a script file, validated; InvalidArgument says what is wrong."""
    where = f"model script {path!r}"
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{where} cannot be read: {e.strerror}") from None
    if len(raw) > MAX_SCRIPT_BYTES:
        raise InvalidArgument(f"{where} is larger than {MAX_SCRIPT_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{where} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or set(data) != {"responses"} \
            or not isinstance(data["responses"], list):
        raise InvalidArgument(f'{where} must be {{"responses": [...]}}')
    out = []
    for i, r in enumerate(data["responses"]):
        at = f"{where}: responses[{i}]"
        if not isinstance(r, dict) or not r or set(r) - {"content", "tool_calls"}:
            raise InvalidArgument(f'{at} must be {{"content": TEXT}} and/or '
                                  '{"tool_calls": [{"name": ..., "arguments": {...}}]}')
        if "content" in r and not isinstance(r["content"], str):
            raise InvalidArgument(f"{at}: content must be a string")
        calls = r.get("tool_calls", [])
        if not isinstance(calls, list):
            raise InvalidArgument(f"{at}: tool_calls must be a list")
        for j, c in enumerate(calls):
            if (not isinstance(c, dict) or set(c) - {"name", "arguments"}
                    or not isinstance(c.get("name"), str)
                    or not isinstance(c.get("arguments", {}), dict | str)):
                raise InvalidArgument(f"{at}: tool_calls[{j}] must be "
                                      '{"name": TEXT, "arguments": {...}}')
        out.append(r)
    return out


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 4)


class ScriptedProvider:
    """Each call takes the next response of the script; the usage is a fixed function of
    the text (a quarter of its bytes), so runs are reproducible to the token."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._responses: list[dict[str, Any]] | None = None
        self._next = 0

    def check(self) -> None:
        # Loaded once, at the first call (a small file; later calls read memory).
        with self._lock:
            if self._responses is None:
                self._responses = load_script(self.config.script)

    def chat(self, req: ModelRequest) -> ModelAnswer:
        self.check()
        with self._lock:
            assert self._responses is not None
            i = self._next
            self._next += 1
            r = self._responses[i] if i < len(self._responses) else {"content": ""}
        message: dict[str, Any] = {"role": "assistant", "content": r.get("content")}
        calls = []
        for j, c in enumerate(r.get("tool_calls", [])):
            args = c.get("arguments", {})
            calls.append({"id": f"call_{i}_{j}", "type": "function",
                          "function": {"name": c["name"], "arguments": args
                                       if isinstance(args, str) else json.dumps(args)}})
        if calls:
            message["tool_calls"] = calls
        completion = _approx_tokens(json.dumps(message))
        if req.max_tokens is not None:
            completion = min(completion, req.max_tokens)
        prompt = _approx_tokens(json.dumps([req.messages, req.tools or []]))
        return ModelAnswer(message, prompt, completion, model=req.model)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------ openai


class OpenAIProvider:
    """An OpenAI-compatible ``/chat/completions`` endpoint, through httpx."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        import httpx  # noqa: PLC0415 - 130 ms to import; only model calls need it

        with self._lock:
            if self._client is None:
                # trust_env=False: the supervisor's HTTP(S)_PROXY and netrc are not the
                # operator's choice for model traffic unless the base_url says so.
                self._client = httpx.Client(timeout=self.config.timeout_s, trust_env=False)
            return self._client

    def check(self) -> None:
        self._key()

    def _key(self) -> str | None:
        env = self.config.api_key_env
        if env is None:
            return None
        key = os.environ.get(env)
        if not key:
            # Names the variable, never a value.
            raise Unavailable(f"model provider {self.config.name!r}: its key variable "
                              f"${env} is not set in the supervisor's environment")
        return key

    def chat(self, req: ModelRequest) -> ModelAnswer:
        key = self._key()
        try:
            return self._chat(req, key)
        except LibOSError as e:
            secret = _scrubbed(key)
            if secret:  # whatever a server echoes back never carries the key onward
                e.message = e.message.replace(secret, "[redacted]")
                e.args = (e.message,)
            raise

    def _chat(self, req: ModelRequest, key: str | None) -> ModelAnswer:
        body: dict[str, Any] = {"model": req.model, "messages": req.messages}
        if req.tools:
            body["tools"] = req.tools
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        import httpx  # noqa: PLC0415 - see _http

        url = self.config.base_url.rstrip("/") + "/chat/completions"
        shown = _shown(url)  # what messages name: no user:password, no query
        name = self.config.name
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                resp = self._http().post(url, content=json.dumps(body).encode(),
                                         headers=headers)
            except httpx.TimeoutException:
                raise Timeout(f"model provider {name!r}: no answer from {shown} within "
                              f"{self.config.timeout_s:g} s") from None
            except httpx.HTTPError as e:
                failure: LibOSError = Unavailable(
                    f"model provider {name!r}: cannot reach {shown}: {type(e).__name__}")
            else:
                status = resp.status_code
                if status == 200:
                    return _parse_answer(name, resp, attempt, key)
                failure = _http_error(name, shown, req.model, resp)
                if status != 429 and status < 500:
                    raise failure
                retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt > self.config.max_retries:
                raise failure
            delay = BACKOFF_BASE_S * (2 ** (attempt - 1))
            if retry_after is not None:
                delay = max(delay, retry_after)
            time.sleep(min(delay, MAX_RETRY_AFTER_S))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _shown(url: str) -> str:
    """``url`` as errors may show it: an operator may put credentials in a base_url."""
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path.partition('?')[0]}"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        s = float(value)
    except ValueError:
        return None
    return s if 0 <= s < math.inf else None


def _snippet(resp: httpx.Response) -> str:
    """The error the server gave, short: its JSON ``error.message`` or the text."""
    try:
        data = resp.json()
        msg = data.get("error", {}).get("message") if isinstance(data, dict) else None
        if isinstance(msg, str):
            return msg[:300]
    except (ValueError, AttributeError):
        pass
    return resp.text[:300]


def _http_error(name: str, url: str, model: str, resp: httpx.Response) -> LibOSError:
    status = resp.status_code
    said = _snippet(resp)
    tail = f" (the server said: {said})" if said else ""
    if status in (401, 403):
        return PermissionDenied(f"model provider {name!r} refused the key configured by the "
                                f"operator (HTTP {status}){tail}")
    if status == 404:
        return NotFound(f"model provider {name!r}: model {model!r} or the endpoint {url} "
                        f"does not exist (HTTP 404){tail}")
    if status == 429:
        return LimitExceeded(f"model provider {name!r} is rate limiting (HTTP 429) and "
                             f"still was after retries{tail}")
    if status >= 500:
        return Unavailable(f"model provider {name!r} failed (HTTP {status}) and still did "
                           f"after retries{tail}")
    return InvalidArgument(f"model provider {name!r} refused the request "
                           f"(HTTP {status}){tail}")


def _without_key(value: Any, key: str) -> Any:
    """``value`` (decoded JSON) with every occurrence of ``key`` in its strings spelt
    ``[redacted]``: a server that echoes the Authorization header in a successful answer
    (a proxy's debug output, a model told to repeat its input) must not hand the key to
    the agent or the journal, any more than an error may. Member names are left as they
    are: they are the protocol's ("choices", "usage"), none of them reaches the agent
    (a tool call's arguments are a JSON *string*, scrubbed as one), and a key that is a
    substring of one would otherwise unmake the answer."""
    if isinstance(value, str):
        return value.replace(key, "[redacted]")
    if isinstance(value, list):
        return [_without_key(v, key) for v in value]
    if isinstance(value, dict):
        return {k: _without_key(v, key) for k, v in value.items()}
    return value


# A key shorter than this is a local server's placeholder ("x", "none", "ollama"), not a
# secret: scrubbing it from answers would garble the model's text ("[redacted] of these").
MIN_REDACTED_KEY: Final = 8


def _scrubbed(key: str | None) -> str | None:
    return key if key is not None and len(key) >= MIN_REDACTED_KEY else None


def _content_text(content: Any) -> Any:
    """Content given as a list of parts (some compatible servers answer so):
    ``[{"type": "text", "text": ...}, ...]`` is its text parts joined; a list with any
    other part (an image, audio) is left as it is, and refused as not text."""
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    return content


def _parse_answer(name: str, resp: httpx.Response, attempts: int, key: str | None
                  ) -> ModelAnswer:
    bad = f"model provider {name!r} answered with something that is not a Chat Completion"
    if len(resp.content) > MAX_RESPONSE_BYTES:
        raise Unavailable(f"{bad}: larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        data = json.loads(resp.content)
    except (ValueError, UnicodeDecodeError):
        raise Unavailable(f"{bad}: not valid JSON") from None
    secret = _scrubbed(key)
    if secret:
        data = _without_key(data, secret)
    try:
        msg = data["choices"][0]["message"]
        if not isinstance(msg, dict):
            raise TypeError
    except (KeyError, IndexError, TypeError):
        raise Unavailable(f"{bad}: no choices[0].message") from None
    content = _content_text(msg.get("content"))
    if content is not None and not isinstance(content, str):
        raise Unavailable(f"{bad}: message.content is not text")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise Unavailable(f"{bad}: message.tool_calls is not a list")
    out: list[dict[str, Any]] = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Unavailable(f"{bad}: a tool call without a function name")
        args = fn.get("arguments", "")
        out.append({"id": str(c.get("id") or f"call_{len(out)}"), "type": "function",
                    "function": {"name": fn["name"], "arguments": args if isinstance(args, str)
                                 else json.dumps(args)}})
    if out:
        message["tool_calls"] = out
    usage = data.get("usage") if isinstance(data, dict) else None
    p = c_ = None
    if isinstance(usage, dict):
        p, c_ = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (isinstance(p, int) and isinstance(c_, int)):
            p = c_ = None
    extra = {"finish_reason": data["choices"][0].get("finish_reason")}
    return ModelAnswer(message, p, c_, model=str(data.get("model") or ""), attempts=attempts,
                       extra=extra)
