"""Where state lives, and the ONE loader of the operator's config.toml.

``$AGENTLIBOS_HOME/config.toml`` (or ``--config FILE``) holds every operator setting, each
table parsed into a frozen dataclass with documented defaults: ``[supervisor]`` and
``[jit] pool_size`` here, ``[sandbox]``/``[limits]``/the rest of ``[jit]`` by
``sandbox.profile.sandbox_config_from``,
``[models]``, ``[secrets]`` and ``[providers]`` by ``providers/``. Nothing else reads
the file. Unknown tables and keys are errors naming the file once.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from agentlibos.errors import InvalidArgument, PolicyError
from agentlibos.kernel.policy import Policy, load_policy, policy_from_table
from agentlibos.kernel.units import parse_duration, parse_size
from agentlibos.providers.models import ModelConfig, parse_models
from agentlibos.providers.net import SecretRule, parse_secrets
from agentlibos.providers.registry import ProviderChoices, parse_providers
from agentlibos.sandbox.profile import SandboxConfig, sandbox_config_from
from agentlibos.store import ObjectQuota

# sun_path in struct sockaddr_un holds 108 bytes including the NUL.
MAX_IPC_PATH: Final = 107
# [jit] pool_size: Deno workers kept started ahead for first tool calls (docs/jit.md).
DEFAULT_JIT_POOL_SIZE: Final = 2


def default_home() -> Path:
    env = os.environ.get("AGENTLIBOS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base).resolve() / "agentlibos"


@dataclass(frozen=True)
class Paths:
    """The layout of ``$AGENTLIBOS_HOME`` (docs/operations.md)."""

    home: Path
    # The operator's config file, when one was named (`--config FILE`); None: the
    # home's config.toml if it exists (operator_config).
    config: Path | None = None

    @staticmethod
    def from_env(home: str | Path | None = None, config: str | Path | None = None) -> Paths:
        return Paths(Path(home).expanduser().resolve() if home else default_home(),
                     Path(config).expanduser().resolve() if config else None)

    @property
    def db(self) -> Path:
        return self.home / "state.db"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def work(self) -> Path:
        return self.home / "work"

    @property
    def scratch(self) -> Path:
        return self.home / "scratch"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def lock(self) -> Path:
        return self.run / "supervisor.lock"

    def _ipc(self, name: str) -> str:
        path = str(self.run / name)
        if len(path.encode()) > MAX_IPC_PATH:
            raise InvalidArgument(
                f"socket path {path!r} is longer than {MAX_IPC_PATH} bytes, the kernel's "
                "limit for unix sockets; set AGENTLIBOS_HOME to a shorter directory"
            )
        return f"ipc://{path}"

    @property
    def broker_endpoint(self) -> str:
        return self._ipc("broker.sock")

    @property
    def broker_socket(self) -> str:
        """The broker's socket file (``broker_endpoint`` without ``ipc://``)."""
        return self.broker_endpoint[len("ipc://"):]

    @property
    def control_endpoint(self) -> str:
        return self._ipc("control.sock")

    def check(self) -> None:
        """Refuse a home whose socket paths the kernel cannot bind, before anything exists."""
        _ = self.broker_endpoint, self.control_endpoint

    def ensure(self) -> None:
        # Check first: a refused home must leave no directories behind.
        self.check()
        for d in (self.home, self.run, self.work, self.scratch, self.logs, self.images):
            d.mkdir(parents=True, exist_ok=True)
        # run/ holds the control socket: only the operator may reach it.
        os.chmod(self.run, 0o700)
        # scratch/ is traversable (not listable) so a process can reach its own dir.
        os.chmod(self.scratch, 0o711)  # noqa: S103


@dataclass(frozen=True)
class SupervisorConfig:
    """Limits the supervisor enforces on every process tree."""

    # SIGTERM first, SIGKILL this long after, when a process is stopped.
    kill_grace_s: float = 2.0
    # A process tree (one `run` and all it spawns) may hold at most this many live
    # processes, and no process more than max_children live children.
    max_live_per_tree: int = 256
    max_children: int = 64
    max_depth: int = 16
    # JSON-encoded size limits on what crosses into the store.
    max_args_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    object_quota: ObjectQuota = field(default_factory=ObjectQuota)
    # A process that has not made its first syscall this long after fork is killed.
    start_timeout_s: float = 30.0
    # After serving a request the loop polls without sleeping this long, since the next
    # request usually follows at once (0 disables; see Supervisor._busy_poll).
    busy_poll_us: int = 150
    # An agent's stdout and stderr kept in logs/<pid>.log, at most this much; the rest
    # is discarded and the log says so.
    log_max_bytes: int = 8 << 20
    # Live helper processes (JIT tools' Deno) a process tree may hold at once.
    max_helpers_per_tree: int = 8
    # Processes kept forked and pre-confined for the next spawns (docs/sandbox.md, "The
    # warm pool"); each serves one agent. 0: none, every spawn forks cold, and no spare
    # cgroups are made for nested spawns either (docs/sandbox.md).
    pool_size: int = 8


# [supervisor] keys: config.toml name -> (field, parser). Durations and sizes take units
# ("2s", "1MiB"), like every limit elsewhere in the file.
_SUPERVISOR_KEYS: Final[dict[str, tuple[str, str]]] = {
    "kill_grace": ("kill_grace_s", "duration"),
    "max_live_per_tree": ("max_live_per_tree", "int"),
    "max_children": ("max_children", "int"),
    "max_depth": ("max_depth", "int"),
    "max_args": ("max_args_bytes", "size"),
    "max_result": ("max_result_bytes", "size"),
    "start_timeout": ("start_timeout_s", "duration"),
    "busy_poll_us": ("busy_poll_us", "int"),
    "log_max": ("log_max_bytes", "size"),
    "max_helpers_per_tree": ("max_helpers_per_tree", "int"),
    "pool_size": ("pool_size", "int"),
}
# Sizes bounded by what one message header carries (protocol/wire.py max_header_bytes):
# a larger setting could never be used, so it is refused, not silently capped.
_ONE_HEADER: Final = {"max_args": 1 << 20, "max_result": 1 << 20}
# Tables the operator's file may hold. Later roadmap items add theirs here.
SECTIONS: Final = frozenset({"supervisor", "durable", "sandbox", "limits", "jit", "approvals",
                             "secrets", "models", "providers", "policy"})


@dataclass(frozen=True)
class OperatorConfig:
    """Everything in config.toml, parsed once."""

    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    # [approvals] timeout: how long an approval or question waits for an answer before
    # the call fails with PermissionDenied ("approval timed out"); None: for ever.
    approvals_timeout_s: float | None = None
    # [limits] tokens: the model-token budget of a process tree whose image sets none
    # (None: unlimited); `run --tokens` and an image's own [limits] tokens come first.
    default_tokens: int | None = None
    # [durable] evict_after: how long a process may wait before it is evicted (stopped,
    # to be resumed by replay when its wait ends; docs/durability.md).
    evict_after_s: float = 30.0
    # [jit] pool_size: Deno workers started ahead of need, each serving one (process,
    # tool) then ending (docs/jit.md, "The pool"); 0: every first call starts one cold.
    # (The rest of [jit] is the sandbox's: sandbox.profile.sandbox_config_from.)
    jit_pool_size: int = DEFAULT_JIT_POOL_SIZE
    # [secrets.NAME]: headers the supervisor adds to matching net.fetch requests.
    secrets: tuple[SecretRule, ...] = ()
    # [models.NAME]: the model providers (providers/models.py parses them).
    models: dict[str, ModelConfig] = field(default_factory=dict)
    # [providers]: which provider each effect goes through (providers/registry.py).
    providers: ProviderChoices = field(default_factory=ProviderChoices)
    # [policy]: the operator's policy for runs given no --policy (None: the built-in one).
    policy: Policy | None = None
    source: str | None = None  # the file it came from (None: built-in defaults)


def _supervisor_config(table: object, source: str) -> SupervisorConfig:
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: [supervisor] must be a table")
    unknown = set(table) - set(_SUPERVISOR_KEYS)
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) in [supervisor]: "
                          f"{', '.join(sorted(unknown))} (known: "
                          f"{', '.join(sorted(_SUPERVISOR_KEYS))})")
    values: dict[str, Any] = {}
    for key, raw in table.items():
        name, kind = _SUPERVISOR_KEYS[key]
        what = f"{source}: [supervisor] {key}"
        try:
            if kind == "duration":
                values[name] = parse_duration(raw, what=what)
            elif kind == "size":
                values[name] = parse_size(raw, what=what)
                if key in _ONE_HEADER and values[name] > _ONE_HEADER[key]:
                    raise InvalidArgument(
                        f"{what} is at most 1MiB: spawn args and a result travel in one "
                        f"message header, which is at most that large")
            elif isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
                values[name] = raw
            else:
                raise InvalidArgument(f"{what} must be a whole number >= 0, not {raw!r}")
        except InvalidArgument as e:
            raise PolicyError(e.message) from None
    known = {f.name for f in fields(SupervisorConfig)}
    assert set(values) <= known
    return SupervisorConfig(**values)


def _take_whole(data: dict[str, Any], section: str, key: str, minimum: int,
                default: int | None, source: str) -> tuple[dict[str, Any], int | None]:
    """``[section] key``, a whole number >= ``minimum`` (``default`` when absent), and
    the data without it (the rest of the section is parsed by its own reader)."""
    table = data.get(section)
    if not isinstance(table, dict) or key not in table:
        return data, default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PolicyError(f"{source}: [{section}] {key} must be a whole number >= {minimum}")
    return {**data, section: {k: v for k, v in table.items() if k != key}}, value


def parse_operator_config(text: str, source: str) -> OperatorConfig:
    """Parse a whole config.toml; unknown tables and keys are errors naming ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: not valid TOML: {e}") from None
    unknown = set(data) - SECTIONS
    if unknown:
        raise PolicyError(f"{source}: unknown section(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(SECTIONS))})")
    data, tokens = _take_whole(data, "limits", "tokens", 1, None, source)
    data, pool_size = _take_whole(data, "jit", "pool_size", 0, DEFAULT_JIT_POOL_SIZE, source)
    return OperatorConfig(
        supervisor=_supervisor_config(data.get("supervisor", {}), source),
        sandbox=sandbox_config_from(data, source),
        approvals_timeout_s=_approvals_timeout(data.get("approvals", {}), source),
        default_tokens=tokens,
        evict_after_s=_evict_after(data.get("durable", {}), source),
        jit_pool_size=DEFAULT_JIT_POOL_SIZE if pool_size is None else pool_size,
        secrets=parse_secrets(data.get("secrets", {}), source),
        models=parse_models(data.get("models", {}), source),
        providers=parse_providers(data.get("providers", {}), source),
        policy=_policy(data.get("policy"), source),
        source=source,
    )


def _policy(table: object, source: str) -> Policy | None:
    """``[policy]``: a policy's own keys (deny, ask, allow, default), or ``file`` naming a
    policy file (relative to the config file's directory)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: [policy] must be a table")
    if "file" not in table:
        return policy_from_table(table, f"{source} [policy]")
    if set(table) != {"file"}:
        raise PolicyError(f"{source}: [policy] takes either file or the policy's own keys "
                          "(deny, ask, allow, default), not both")
    name = table["file"]
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{source}: [policy] file must be a path")
    try:
        return load_policy(Path(source).parent / name)
    except PolicyError as e:
        raise PolicyError(f"{source}: [policy] file: {e.message}") from None


def _evict_after(table: object, source: str) -> float:
    if not isinstance(table, dict) or set(table) - {"evict_after"}:
        raise PolicyError(f"{source}: [durable] takes one key, evict_after (a duration)")
    try:
        return parse_duration(table.get("evict_after", "30s"),
                              what=f"{source}: [durable] evict_after")
    except InvalidArgument as e:
        raise PolicyError(e.message) from None


def _approvals_timeout(table: object, source: str) -> float | None:
    if not isinstance(table, dict) or set(table) - {"timeout"}:
        raise PolicyError(f"{source}: [approvals] takes one key, timeout (a duration)")
    if "timeout" not in table:
        return None
    try:
        return parse_duration(table["timeout"], what=f"{source}: [approvals] timeout")
    except InvalidArgument as e:
        raise PolicyError(e.message) from None


def load_operator_config(path: str | Path | None) -> OperatorConfig:
    """The config at ``path``; with None, the built-in defaults."""
    if path is None:
        return OperatorConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"config file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"cannot read config file {str(p)!r}: {e}") from None
    return parse_operator_config(text, str(p))


def operator_config(paths: Paths) -> OperatorConfig:
    """The named config file (``--config``), else ``$AGENTLIBOS_HOME/config.toml`` if it
    exists, else the defaults."""
    if paths.config is not None:
        return load_operator_config(paths.config)
    cfg = paths.home / "config.toml"
    return load_operator_config(cfg if cfg.exists() else None)
