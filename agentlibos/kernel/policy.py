"""Operator policy and the authorisation decision. Pure code: no I/O beyond reading TOML.

A request is authorised in this order (docs/policy.md):

1. a policy ``deny`` pattern matches any name of the resource   -> deny
2. no capability the process holds allows it                   -> deny (names what is missing)
3. a policy ``ask`` pattern matches                             -> ask (a human decides)
4. a policy ``allow`` pattern matches                           -> allow
5. otherwise the policy's ``default``.

So capabilities say what a process *may ever* do, the policy what the operator lets
happen *now*; both must agree, and deny always wins.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from agentlibos.errors import PolicyError
from agentlibos.kernel.caps import CapPattern, Verdict, parse_cap

VERDICTS: Final[tuple[Verdict, ...]] = ("allow", "ask", "deny")

BUILTIN_POLICY_TOML: Final[str] = """\
# The built-in policy: used when `agentlibos run` is given no --policy.
# fs inside the process's own cwd, object memory, processes, JIT tools, events,
# sleeps and model calls are allowed; everything else (shell, network, images, humans)
# needs a human's approval. model:call:* means any *configured* provider: the operator
# chose each one in config.toml, and a call naming another fails (NotFound) after this
# check; the image must still request model:call, and its tree's token budget applies.
deny = []
ask = []
allow = ["fs:*:./**", "obj:*:*", "proc:*:*", "jit:*:*", "event:*:*", "clock:*:*",
         "model:call:*"]
default = "ask"
"""


@dataclass(frozen=True)
class Request:
    """One concrete thing a syscall wants to do, e.g. ``fs:write:/home/u/proj/out/a.txt``.

    ``aliases`` are other names of the same resource (the path as the agent spelled it,
    before symlinks were resolved; a program's path and its name on PATH); deny and ask
    rules are checked against every name, capabilities and allow rules against
    ``resource`` only, so another name can only make a request harder to grant.
    """

    kind: str
    right: str
    resource: str
    aliases: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}:{self.right}:{self.resource}"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    rule: str | None = None  # the capability or policy pattern that decided

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"


@dataclass(frozen=True)
class Policy:
    deny: tuple[CapPattern, ...] = ()
    ask: tuple[CapPattern, ...] = ()
    allow: tuple[CapPattern, ...] = ()
    default: Verdict = "ask"
    source: str = "<built-in>"
    text: str = field(default="", compare=False, repr=False)

    def resolved_for(self, cwd: str) -> Policy:
        """The policy with relative ``fs`` patterns made absolute against ``cwd``."""
        return _resolve(self, cwd)


@lru_cache(maxsize=256)
def _resolve(policy: Policy, cwd: str) -> Policy:
    return Policy(
        deny=tuple(p.resolved(cwd) for p in policy.deny),
        ask=tuple(p.resolved(cwd) for p in policy.ask),
        allow=tuple(p.resolved(cwd) for p in policy.allow),
        default=policy.default,
        source=policy.source,
        text=policy.text,
    )


def _patterns(data: dict[str, Any], key: str, source: str) -> tuple[CapPattern, ...]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise PolicyError(f"{source}: '{key}' must be a list of capability patterns")
    out = []
    for item in raw:
        try:
            out.append(parse_cap(item, allow_wildcard_kind=True))
        except PolicyError as e:
            raise PolicyError(f"{source}: in '{key}': {e.message}") from None
    return tuple(out)


def parse_policy(text: str, source: str) -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: not valid TOML: {e}") from None
    return policy_from_table(data, source, text)


def policy_from_table(data: dict[str, Any], source: str, text: str | None = None) -> Policy:
    """A policy from its keys (a policy file's, or config.toml's ``[policy]`` table);
    ``text``: its TOML, kept with each process it governs (made from ``data`` if None)."""
    if text is None:
        # Arrays of strings and a string: JSON's escapes are TOML's, but for the surrogate
        # pairs ensure_ascii would write for characters past U+FFFF.
        text = "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in data.items())
    unknown = set(data) - {"deny", "ask", "allow", "default"}
    if unknown:
        raise PolicyError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
            "a policy has deny, ask, allow and default"
        )
    default = data.get("default", "ask")
    if default not in VERDICTS:
        raise PolicyError(f"{source}: default must be one of allow, ask, deny; got {default!r}")
    return Policy(
        deny=_patterns(data, "deny", source),
        ask=_patterns(data, "ask", source),
        allow=_patterns(data, "allow", source),
        default=default,
        source=source,
        text=text,
    )


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"cannot read policy file {str(p)!r}: {e}") from None
    return parse_policy(text, str(p))


BUILTIN_POLICY: Final[Policy] = parse_policy(BUILTIN_POLICY_TOML, "<built-in>")


def granted(policy: Policy, requested: Sequence[CapPattern], cwd: str) -> list[CapPattern]:
    """What a root process holds: its image's request ∩ what the policy grants (DESIGN).

    A policy grants by pattern and per call (allow, ask, deny), so the intersection kept
    here is the part of it that can be computed exactly and safely: each requested
    capability, resolved against ``cwd``, less every right the policy refuses in *all*
    of it -- a deny rule covers it, or the default is deny and no ask or allow rule can
    match any of it. Whatever is dropped would have been refused at every call anyway;
    ``caps`` now shows it as not held. ``obj:...:self`` is always kept (every process
    has its own namespace)."""
    pol = policy.resolved_for(cwd)
    held: list[CapPattern] = []
    for cap in (c.resolved(cwd) for c in requested):
        if cap.kind == "obj" and cap.resource == "self":
            held.append(cap)
            continue
        kept = frozenset(r for r in cap.rights
                         if not _refused_in_all(pol, cap.narrowed(frozenset({r}))))
        if kept:
            held.append(cap if kept == cap.rights else cap.narrowed(kept))
    return held


def _refused_in_all(pol: Policy, cap: CapPattern) -> bool:
    if any(rule.covers(cap) for rule in pol.deny):
        return True
    return pol.default == "deny" and not any(rule.may_overlap(cap)
                                             for rule in (*pol.ask, *pol.allow))


def authorize(
    held: Sequence[CapPattern], policy: Policy, request: Request, cwd: str
) -> Decision:
    """Decide one request. ``policy`` may be unresolved; relative patterns use ``cwd``."""
    pol = policy.resolved_for(cwd)
    names = (request.resource, *request.aliases)
    for pat in pol.deny:
        if any(pat.allows(request.kind, request.right, n) for n in names):
            return Decision("deny", f"{request} is denied by policy rule '{pat}'", str(pat))
    holder = next(
        (c for c in held if c.allows(request.kind, request.right, request.resource)), None
    )
    if holder is None:
        return Decision(
            "deny",
            f"{request} needs a capability '{request.kind}:{request.right}:...' covering "
            f"{request.resource!r}, which this process does not hold",
            None,
        )
    for pat in pol.ask:
        if any(pat.allows(request.kind, request.right, n) for n in names):
            return Decision("ask", f"policy rule '{pat}' asks a human for {request}", str(pat))
    for pat in pol.allow:
        if pat.allows(request.kind, request.right, request.resource):
            return Decision("allow", f"{request} allowed by '{holder}' and '{pat}'", str(holder))
    return Decision(
        pol.default,
        f"no policy rule matches {request}; the policy's default is '{pol.default}'",
        None,
    )


class DecisionMemo:
    """One process's recent decisions, so a call it repeats is not decided again.

    :func:`authorize` is pure: its verdict depends on the held capabilities, the policy,
    the cwd and the request only. The memo keeps verdicts while the first three are the
    *same objects* as when they were decided; a process whose capabilities change gets a
    new sequence (``Caller.caps`` is a ``Sequence``, replaced and never edited in place),
    and that alone empties the memo. Bounded: when full it starts over, so an agent that
    asks about ever new paths costs a dict, not memory without end.
    """

    __slots__ = ("_cwd", "_held", "_policy", "_seen")
    LIMIT: Final[int] = 512

    def __init__(self) -> None:
        self._held: Sequence[CapPattern] | None = None
        self._policy: Policy | None = None
        self._cwd = ""
        self._seen: dict[Request, Decision] = {}

    def decide(self, held: Sequence[CapPattern], policy: Policy, request: Request,
               cwd: str) -> Decision:
        if held is not self._held or policy is not self._policy or cwd != self._cwd:
            self._held, self._policy, self._cwd = held, policy, cwd
            self._seen = {}
        d = self._seen.get(request)
        if d is None:
            d = authorize(held, policy, request, cwd)
            if len(self._seen) >= self.LIMIT:
                self._seen = {}
            self._seen[request] = d
        return d
