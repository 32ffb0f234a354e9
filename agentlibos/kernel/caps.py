"""Capabilities: parsing, glob matching, containment and attenuation. Pure code, no I/O.

A capability is ``KIND:RIGHTS:RESOURCE`` (see docs/capabilities.md). The same syntax,
with ``*`` allowed for the kind, is used for policy patterns.

Glob semantics
--------------
* ``fs`` resources are path globs: ``*`` and ``?`` never cross ``/``; ``**`` crosses
  anything; ``dir/**`` also matches ``dir`` itself and ``a/**/b`` matches ``a/b``.
  A resource not starting with ``/`` is relative to a base directory (the holder's or
  granter's cwd) and is made absolute by :meth:`CapPattern.resolved` at grant time;
  ``*``, ``**`` and patterns starting with ``**/`` mean "anywhere" and stay as they are.
* every other kind: ``*`` and ``**`` match any string, ``?`` one character.
* a policy pattern of kind ``*`` takes the semantics of the request's kind.

Containment (:func:`covers`) is decided token by token and is *sound but conservative*:
when it says a pattern lies within another, every string the first matches is matched
by the second; it may say no to some exotic pairs that are in fact contained, which
only ever withholds authority.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Final, Literal

from agentlibos.errors import PolicyError

# The rights each kind knows. ``*`` in a pattern means all of them.
KIND_RIGHTS: Final[dict[str, frozenset[str]]] = {
    "fs": frozenset({"read", "write", "delete"}),
    "obj": frozenset({"read", "write"}),
    "proc": frozenset({"spawn", "signal", "wait"}),
    "human": frozenset({"ask"}),
    "shell": frozenset({"exec"}),
    "jit": frozenset({"register", "invoke"}),
    "image": frozenset({"register"}),
    "model": frozenset({"call"}),
    "net": frozenset({"fetch"}),
    "event": frozenset({"wait", "post"}),
    "clock": frozenset({"sleep"}),
}
KINDS: Final[frozenset[str]] = frozenset(KIND_RIGHTS)
_ALIASES: Final[dict[str, frozenset[str]]] = {"rw": frozenset({"read", "write"})}
MAX_CAP_LEN: Final[int] = 4096
_MAX_DOUBLE_STARS: Final[int] = 4
# Kinds whose resource may be left out (``human:ask``); it then means ``*``.
_RESOURCE_OPTIONAL: Final[frozenset[str]] = frozenset({"human", "clock"})


# --------------------------------------------------------------------------- globs

# Token kinds for the glob engine. Literal characters are 1-char strings.
_ANY: Final = "\x00ANY"  # any string
_SEG: Final = "\x00SEG"  # any string without '/'
_ONE: Final = "\x00ONE"  # one char (not '/' for paths)

Token = str


def _tokenize(pattern: str, *, paths: bool) -> list[Token]:
    toks: list[Token] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                toks.append(_ANY)
                i += 2
                while i < len(pattern) and pattern[i] == "*":
                    i += 1
                continue
            toks.append(_SEG if paths else _ANY)
        elif c == "?":
            toks.append(_ONE)
        else:
            toks.append(c)
        i += 1
    return toks


def _expand(toks: Sequence[Token]) -> list[tuple[Token, ...]]:
    """Rewrite the path forms ``X/**`` and ``X/**/Y`` into plain alternatives.

    ``X/**`` is ``X`` or ``X/<any>``; ``X/**/Y`` is ``X/Y`` or ``X/<any>/Y``. Only the
    first few occurrences are expanded (each doubles the alternatives); beyond that the
    remaining ones keep the stricter plain meaning, which can only withhold authority.
    """
    alts: list[tuple[Token, ...]] = [tuple(toks)]
    for _ in range(4):
        changed = False
        nxt: list[tuple[Token, ...]] = []
        for alt in alts:
            done = False
            for i in range(len(alt) - 1):
                if alt[i] == "/" and alt[i + 1] == _ANY:
                    after = alt[i + 2 :]
                    if not after:  # X/**  ->  X
                        nxt.append(alt[:i])
                        nxt.append((*alt[:i], "/", "\x00ANY!"))
                        done = True
                        break
                    if after[0] == "/":  # X/**/Y  ->  X/Y
                        nxt.append(alt[:i] + after)
                        nxt.append((*alt[:i], "/", "\x00ANY!", *after))
                        done = True
                        break
            if done:
                changed = True
            else:
                nxt.append(alt)
        alts = nxt
        if not changed:
            break
    # "\x00ANY!" marks an ANY already expanded, so it is not expanded again.
    return [tuple(_ANY if t == "\x00ANY!" else t for t in alt) for alt in alts]


def _regex(alts: Iterable[tuple[Token, ...]], *, paths: bool) -> re.Pattern[str]:
    parts = []
    for alt in alts:
        out = []
        for t in alt:
            if t == _ANY:
                out.append(".*")
            elif t == _SEG:
                out.append("[^/]*")
            elif t == _ONE:
                out.append("[^/]" if paths else ".")
            else:
                out.append(re.escape(t))
        parts.append("".join(out))
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def _covers_plain(p: Sequence[Token], c: Sequence[Token], paths: bool) -> bool:
    """Does plain pattern ``p`` match every string plain pattern ``c`` matches?"""

    @cache
    def go(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(c)
        t = p[i]
        if t == _ANY:
            # ANY absorbs any run of c's tokens, including c's own wildcards.
            return any(go(i + 1, k) for k in range(j, len(c) + 1))
        if t == _SEG:
            k = j
            while True:
                if go(i + 1, k):
                    return True
                if k == len(c) or c[k] == "/" or c[k] == _ANY:
                    return False
                k += 1
        if j == len(c):
            return False
        u = c[j]
        if t == _ONE:
            # '?' stands for exactly one character: c's '?' or one literal (not '/' in paths).
            ok = u == _ONE or (not u.startswith("\x00") and not (paths and u == "/"))
            return ok and go(i + 1, j + 1)
        return t == u and go(i + 1, j + 1)

    return go(0, 0)


@dataclass(frozen=True)
class Glob:
    """A compiled resource glob."""

    pattern: str
    paths: bool
    _alts: tuple[tuple[Token, ...], ...] = field(repr=False, compare=False)
    _re: re.Pattern[str] = field(repr=False, compare=False)

    @staticmethod
    def compile(pattern: str, *, paths: bool) -> Glob:
        toks = _tokenize(pattern, paths=paths)
        alts = _expand(toks) if paths else [tuple(toks)]
        return Glob(pattern, paths, tuple(alts), _regex(alts, paths=paths))

    def match(self, s: str) -> bool:
        return self._re.match(s) is not None

    def covers(self, other: Glob) -> bool:
        """True when every string ``other`` matches, ``self`` matches too (conservative)."""
        if self.paths and not other.paths:
            # A flat '?' or '*' may match '/', which no path token absorbs: say no.
            return False
        if self.pattern == other.pattern and self.paths == other.paths:
            # Only with equal semantics: flat "/**/a" does not match "/a"; path "/**/a" does.
            return True
        return all(
            any(_covers_plain(p, c, self.paths) for p in self._alts) for c in other._alts
        )


# ---------------------------------------------------------------------- capability

Verdict = Literal["allow", "ask", "deny"]


def _is_anywhere(resource: str) -> bool:
    return resource in ("*", "**") or resource.startswith("**/")


@dataclass(frozen=True)
class CapPattern:
    """A capability, or a policy pattern when ``kind`` is ``*``."""

    kind: str  # a key of KIND_RIGHTS, or "*" in policy patterns
    rights: frozenset[str]
    resource: str
    glob: Glob = field(repr=False, compare=False)

    @property
    def is_path(self) -> bool:
        return self.kind == "fs"

    @property
    def relative(self) -> bool:
        if self.kind == "*":
            # A "*"-kind policy pattern is relative only when it says so explicitly:
            # "shared/x" may be an object namespace, "./x" can only be a path.
            return self.resource.startswith(("./", "../")) or self.resource in (".", "..")
        return self.kind == "fs" and not self.resource.startswith("/") and not _is_anywhere(
            self.resource
        )

    def resolved(self, base: str) -> CapPattern:
        """Make a relative ``fs`` resource absolute against ``base`` (a directory)."""
        if not self.relative:
            return self
        joined = os.path.join(base, self.resource)
        # normpath collapses "./" and "a/../" lexically; glob tokens are plain characters.
        absolute = os.path.normpath(joined)
        return _make(self.kind, self.rights, absolute)

    def allows(self, kind: str, right: str, resource: str) -> bool:
        """Does this pattern allow one concrete request?"""
        return (
            self.kind in ("*", kind)
            and right in self.rights
            and self._glob_for(kind).match(resource)
        )

    def _glob_for(self, kind: str) -> Glob:
        """The glob with the semantics of ``kind``: a ``*``-kind policy pattern applied to
        an ``fs`` request is a path glob (so ``*:*:/secret/**`` denies ``/secret`` too)."""
        if self.kind == "*":
            return _compile_glob(self.resource, kind == "fs")
        return self.glob

    def covers(self, other: CapPattern) -> bool:
        """Is ``other`` within ``self`` (same kind, fewer rights, narrower resource)?"""
        if self.kind not in ("*", other.kind):
            return False
        if not other.rights <= self.rights:
            return False
        return self._glob_for(other.kind).covers(other.glob)

    def narrowed(self, rights: frozenset[str]) -> CapPattern:
        return _make(self.kind, rights, self.resource)

    def __str__(self) -> str:
        return f"{self.kind}:{format_rights(self.kind, self.rights)}:{self.resource}"


def format_rights(kind: str, rights: frozenset[str]) -> str:
    known = KIND_RIGHTS.get(kind)
    if known is not None and rights == known and len(known) > 1:
        return "*"
    if rights == _ALIASES["rw"]:
        return "rw"
    return ",".join(sorted(rights))


def _make(kind: str, rights: frozenset[str], resource: str) -> CapPattern:
    return CapPattern(kind, rights, resource, _compile_glob(resource, kind == "fs"))


@lru_cache(maxsize=4096)
def _compile_glob(resource: str, paths: bool) -> Glob:
    return Glob.compile(resource, paths=paths)


def parse_cap(text: object, *, allow_wildcard_kind: bool = False) -> CapPattern:
    """Parse ``KIND:RIGHTS:RESOURCE``; raise :class:`PolicyError` naming the problem."""
    if not isinstance(text, str):
        raise PolicyError(f"capability must be a string like 'fs:read:./**', got {text!r:.80}")
    if len(text) > MAX_CAP_LEN:
        raise PolicyError(f"capability longer than {MAX_CAP_LEN} characters")
    parts = text.split(":", 2)
    if len(parts) == 2 and parts[0] in _RESOURCE_OPTIONAL and parts[1]:
        # DESIGN.md's example image requests "human:ask": for these kinds, any topic.
        parts.append("*")
    if len(parts) != 3 or not all(parts):
        raise PolicyError(f"capability {text!r} is not of the form KIND:RIGHTS:RESOURCE")
    kind, rights_text, resource = parts
    if kind == "*":
        if not allow_wildcard_kind:
            raise PolicyError(f"capability {text!r}: kind '*' is only allowed in policy patterns")
        all_rights: frozenset[str] = frozenset().union(*KIND_RIGHTS.values())
    elif kind in KIND_RIGHTS:
        all_rights = KIND_RIGHTS[kind]
    else:
        raise PolicyError(
            f"capability {text!r}: unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})"
        )
    rights: set[str] = set()
    for part in rights_text.split(","):
        r = part.strip()
        if r == "*":
            rights |= all_rights
        elif r in _ALIASES and _ALIASES[r] <= all_rights:
            rights |= _ALIASES[r]
        elif r in all_rights:
            rights.add(r)
        else:
            raise PolicyError(
                f"capability {text!r}: unknown right {r!r} for kind {kind!r} "
                f"(known: {', '.join(sorted(all_rights))})"
            )
    if "\x00" in resource:
        raise PolicyError(f"capability {text!r}: NUL byte in resource")
    if kind == "obj" and resource.startswith("self/"):
        raise PolicyError(f"capability {text!r}: 'self' is a whole namespace; it has no parts")
    if kind in ("fs", "*") and resource.count("/**") > _MAX_DOUBLE_STARS:
        # Each "/**" doubles the alternatives a path glob expands to; past this many the
        # matcher would have to give up exactness, which for a deny rule means denying
        # less than written.
        raise PolicyError(
            f"capability {text!r}: more than {_MAX_DOUBLE_STARS} '/**' segments"
        )
    return _make(kind, frozenset(rights), resource)


def parse_caps(texts: Iterable[object], *, allow_wildcard_kind: bool = False) -> list[CapPattern]:
    return [parse_cap(t, allow_wildcard_kind=allow_wildcard_kind) for t in texts]


def attenuate(requested: Sequence[CapPattern], granted: Sequence[CapPattern]) -> list[CapPattern]:
    """What a process holds: the intersection of what its image requests and what it is given.

    A granted capability that lies within a requested one is held as granted; a requested
    one that lies within a granted one is held as requested. Pairs that merely overlap
    are dropped: computing their exact intersection is not always possible in glob syntax,
    and dropping can only withhold authority, never add it. Rights are intersected first,
    so ``fs:rw:/a/**`` requested and ``fs:read:/a/**`` granted hold ``fs:read:/a/**``.
    """
    held: list[CapPattern] = []
    seen: set[str] = set()

    def add(cap: CapPattern) -> None:
        key = str(cap)
        if key not in seen:
            seen.add(key)
            held.append(cap)

    for r in requested:
        for g in granted:
            if r.kind != g.kind:
                continue
            common = r.rights & g.rights
            if not common:
                continue
            rn, gn = r.narrowed(common), g.narrowed(common)
            if rn.glob.covers(gn.glob):
                add(gn)
            elif gn.glob.covers(rn.glob):
                add(rn)
    return held


def within(child: CapPattern, held: Sequence[CapPattern]) -> bool:
    """May a holder of ``held`` hand on ``child``? (It must lie within one of them.)"""
    return any(h.covers(child) for h in held)
