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
* every other kind: ``*`` and ``**`` match any string, ``?`` one character -- but a
  host written in a ``net`` URL glob (between ``://`` and the next ``/``) is matched
  against the request's host alone (:func:`url_host_within`).
* a policy pattern of kind ``*`` takes the semantics of the request's kind.
* in every kind a backslash makes the next character literal (``\\*`` is a star, ``\\\\``
  a backslash). :meth:`CapPattern.resolved` escapes the base directory this way, so a
  cwd named ``proj*`` or ``proj?`` never widens a relative capability to its siblings.

Matching is linear: :meth:`Glob.match` simulates the pattern as an NFA whose set of live
positions is one integer used as a bit set, so no pattern/path pair can backtrack
(``./a*a*a*a*a*a*a*a*a*a*b`` against 200 ``a``s costs what any 200-character path
does). Glob patterns are bounded by :data:`MAX_GLOB_LEN`.

Containment (:func:`covers`) is decided token by token and is *sound but conservative*:
when it says a pattern lies within another, every string the first matches is matched
by the second; it may say no to some exotic pairs that are in fact contained, which
only ever withholds authority.

Long because the syntax, its matching and its containment are one piece: a change to
one (the URL host rule) must be read beside the other two to stay sound.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
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
# A resolved pattern is the (escaped) base directory plus the resource: room for both.
MAX_GLOB_LEN: Final[int] = 4 * MAX_CAP_LEN
_MAX_DOUBLE_STARS: Final[int] = 4
# Kinds whose resource may be left out (``human:ask``); it then means ``*``.
_RESOURCE_OPTIONAL: Final[frozenset[str]] = frozenset({"human", "clock"})


# --------------------------------------------------------------------------- globs

# Token kinds for the glob engine. Literal characters are 1-char strings.
_ANY: Final = "\x00ANY"  # any string
_SEG: Final = "\x00SEG"  # any string without '/'
_ONE: Final = "\x00ONE"  # one char (not '/' for paths)

Token = str


def escape(text: str) -> str:
    """``text`` as a glob that matches exactly ``text`` (its ``*``, ``?`` and ``\\`` made
    literal). Used for a base directory a relative capability is resolved against."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _tokenize(pattern: str, *, paths: bool) -> list[Token]:
    toks: list[Token] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            toks.append(pattern[i + 1])  # an escaped character is a literal
            i += 2
            continue
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


def _literal_run(toks: Sequence[Token]) -> str:
    """The literal characters a token sequence starts with (specials are longer tokens)."""
    out = []
    for t in toks:
        if len(t) != 1:
            break
        out.append(t)
    return "".join(out)


def _common_prefix(texts: Sequence[str]) -> str:
    """The characters all ``texts`` start with (character by character, not by path)."""
    if not texts:
        return ""
    lo, hi = min(texts), max(texts)  # the extremes share what all of them share
    n = 0
    while n < len(lo) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


@dataclass(frozen=True)
class _Nfa:
    """All alternatives of a glob as one NFA over token positions, run with bit sets.

    Alternative ``k`` occupies positions ``off_k .. off_k + len_k``; the last of them (one
    past its tokens) is its accepting position. A live set is an ``int``: stepping over one
    character is a handful of shifts and masks, so matching is O(len(path) * len(pattern)
    / word size) and never backtracks. The literal prefix and suffix every alternative
    shares are compared as strings first, and a live trailing ``**`` accepts at once, so
    the usual ``/abs/dir/**`` and ``**/.env`` cost little more than a string compare.
    """

    start: int
    accept: int
    star: int  # positions holding '*' or '**' (they may match the empty string)
    any_: int  # '**' (and flat '*'): stays on any character
    seg: int  # path '*': stays on any character but '/'
    one: int  # '?'
    sink: int  # a '**' right before an accepting position: whatever follows matches
    lits: dict[str, int]  # a literal character -> the positions that hold it
    prefix: str  # literal characters every alternative starts with (start is past them)
    suffix: str  # literal characters every alternative ends with

    @staticmethod
    def build(alts: Sequence[tuple[Token, ...]]) -> _Nfa:
        prefix = _common_prefix([_literal_run(a) for a in alts])
        suffix = _common_prefix([_literal_run(a[::-1]) for a in alts])[::-1]
        start = accept = any_ = seg = one = sink = 0
        lits: dict[str, int] = {}
        off = 0
        for alt in alts:
            start |= 1 << (off + len(prefix))
            for k, t in enumerate(alt):
                bit = 1 << (off + k)
                if t == _ANY:
                    any_ |= bit
                    if k == len(alt) - 1:
                        sink |= bit
                elif t == _SEG:
                    seg |= bit
                elif t == _ONE:
                    one |= bit
                else:
                    lits[t] = lits.get(t, 0) | bit
            accept |= 1 << (off + len(alt))
            off += len(alt) + 1
        return _Nfa(start, accept, any_ | seg, any_, seg, one, sink, lits, prefix, suffix)

    def _close(self, live: int) -> int:
        # A star may match nothing: from it, the next position is live too.
        while True:
            more = live | ((live & self.star) << 1)
            if more == live:
                return live
            live = more

    def match(self, s: str, *, paths: bool) -> bool:
        if not s.startswith(self.prefix) or not s.endswith(self.suffix):
            return False
        live = self._close(self.start)
        for i in range(len(self.prefix), len(s)):
            if live & self.sink:
                return True
            c = s[i]
            slash = paths and c == "/"
            advance = self.lits.get(c, 0) | (0 if slash else self.one)
            stay = self.any_ | (0 if slash else self.seg)
            live = self._close(((live & advance) << 1) | (live & stay))
            if not live:
                return False
        return bool(live & self.accept)


def _fill_down(seeds: int, through: int, width: int) -> int:
    """Bits ``j`` from which a run of ``through`` bits ``j, j+1, ...`` reaches a seed.

    ``r[j] = seeds[j] or (through[j] and r[j+1])``, computed in log(width) steps
    (a parallel prefix), not one bit at a time.
    """
    r, span, s = seeds, through, 1
    while s <= width and span:
        r |= (r >> s) & span
        span &= span >> s
        s <<= 1
    return r


def _covers_plain(p: Sequence[Token], c: Sequence[Token], paths: bool) -> bool:
    """Does plain pattern ``p`` match every string plain pattern ``c`` matches?

    ``go(i, j)``: do ``p[i:]`` and ``c[j:]`` stand in that relation. It is computed row by
    row from the end of ``p``, each row a bit set over ``j``: no recursion (patterns may be
    thousands of tokens long) and no search that could blow up.
    """
    n = len(c)
    # row[j] == go(i, j); past the end of p only the end of c is covered.
    row = 1 << n
    masks: dict[Token, int] = {}

    def mask(t: Token) -> int:
        m = masks.get(t)
        if m is None:
            m = 0
            for j, u in enumerate(c):
                if t == _ONE:
                    # '?' stands for exactly one character: c's '?' or one literal
                    # (not '/' in paths).
                    ok = u == _ONE or (not u.startswith("\x00") and not (paths and u == "/"))
                elif t == _SEG:
                    # A path '*' absorbs c's tokens up to a '/' or a '**'.
                    ok = u not in ("/", _ANY)
                else:
                    ok = t == u
                if ok:
                    m |= 1 << j
            masks[t] = m
        return m

    for t in reversed(p):
        if t == _ANY:
            # ANY absorbs any run of c's tokens, including c's own wildcards.
            row = (1 << row.bit_length()) - 1 if row else 0
        elif t == _SEG:
            row = _fill_down(row, mask(_SEG), n)
        else:
            row = (row >> 1) & mask(t)
        if not row:
            return False
    return bool(row & 1)


@dataclass(frozen=True)
class Glob:
    """A compiled resource glob."""

    pattern: str
    paths: bool
    _alts: tuple[tuple[Token, ...], ...] = field(repr=False, compare=False)
    _nfa: _Nfa = field(repr=False, compare=False)

    @staticmethod
    def compile(pattern: str, *, paths: bool) -> Glob:
        if len(pattern) > MAX_GLOB_LEN:
            raise PolicyError(
                f"glob {pattern[:80]!r}... is longer than {MAX_GLOB_LEN} characters"
            )
        toks = _tokenize(pattern, paths=paths)
        alts = _expand(toks) if paths else [tuple(toks)]
        return Glob(pattern, paths, tuple(alts), _Nfa.build(alts))

    def match(self, s: str) -> bool:
        """Does the whole of ``s`` match? Linear in ``len(s)``; never backtracks."""
        return self._nfa.match(s, paths=self.paths)

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

    def may_overlap(self, other: Glob) -> bool:
        """Could some string match both? False only when it certainly cannot: neither
        covers the other and their literal beginnings part ("/etc/..." and "/home/...")."""
        if self.covers(other) or other.covers(self):
            return True
        mine, theirs = self.literal_prefix(), other.literal_prefix()
        return mine.startswith(theirs) or theirs.startswith(mine)

    def literal_prefix(self) -> str:
        """The characters every string this glob matches begins with."""
        return _common_prefix([_literal_run(alt) for alt in self._alts])


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
    # The rights as written when that was an alias ("rw", "*") that ``format_rights``
    # alone cannot tell apart: ``obj:rw:self`` and ``obj:*:self`` hold the same rights,
    # and ``caps`` shows each as its image or grant wrote it.
    spelled: str | None = field(default=None, repr=False, compare=False)

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
        # The base is a directory name, not a glob: escape it, or a cwd named "proj?" or
        # "proj*" would make "./**" match its siblings ("../projX/secret.txt").
        joined = os.path.join(escape(base), self.resource)
        # normpath collapses "./" and "a/../" lexically; glob tokens are plain characters.
        absolute = os.path.normpath(joined)
        return _make(self.kind, self.rights, absolute, self.spelled)

    def allows(self, kind: str, right: str, resource: str) -> bool:
        """Does this pattern allow one concrete request?"""
        return (
            self.kind in ("*", kind)
            and right in self.rights
            and self._glob_for(kind).match(resource)
            and (kind != "net" or url_host_within(self.resource, resource))
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
        if other.kind == "net" and not url_host_within(self.resource, other.resource,
                                                        covers=True):
            return False
        return self._glob_for(other.kind).covers(other.glob)

    def may_overlap(self, other: CapPattern) -> bool:
        """Could one request be allowed by both (conservative: True unless certainly not)?"""
        if self.kind not in ("*", other.kind) or not self.rights & other.rights:
            return False
        return self._glob_for(other.kind).may_overlap(other.glob)

    def narrowed(self, rights: frozenset[str]) -> CapPattern:
        return _make(self.kind, rights, self.resource,
                     self.spelled if rights == self.rights else None)

    def __str__(self) -> str:
        rights = self.spelled or format_rights(self.kind, self.rights)
        return f"{self.kind}:{rights}:{self.resource}"


_EVERY_RIGHT: Final = frozenset[str]().union(*KIND_RIGHTS.values())


def format_rights(kind: str, rights: frozenset[str]) -> str:
    # A "*"-kind policy pattern's "*" holds every kind's rights: shown as written.
    known = _EVERY_RIGHT if kind == "*" else KIND_RIGHTS.get(kind)
    if known is not None and rights == known and len(known) > 1:
        return "*"
    if rights == _ALIASES["rw"]:
        return "rw"
    return ",".join(sorted(rights))


def _make(kind: str, rights: frozenset[str], resource: str, spelled: str | None = None
          ) -> CapPattern:
    return CapPattern(kind, rights, resource, _compile_glob(resource, kind == "fs"), spelled)


def _host_part(url_glob: str) -> str | None:
    """The host[:port] of a URL or URL glob, or None when it has none of its own (no
    ``scheme://``, or no ``/`` after the host: ``https://*`` runs to the end)."""
    _, sep, rest = url_glob.partition("://")
    if not sep or "/" not in rest:
        return None
    return rest.split("/", 1)[0]


def url_host_within(pattern: str, other: str, *, covers: bool = False) -> bool:
    """Does ``pattern``'s host part match ``other``'s host on its own? In a URL glob
    ``*`` matches ``/`` too, so ``https://*.github.com/**`` matched
    ``https://evil.com/.github.com/x``: a host written in a pattern is matched against
    the host alone. ``covers``: ``other`` is a glob, which must lie within it (a glob
    whose host runs to its end, ``https://evil*``, lies within no host part)."""
    mine = _host_part(pattern)
    if mine is None:
        return True
    theirs = _host_part(other)
    if theirs is None:
        if not covers:
            return True  # not a URL with a host (refused elsewhere): the full glob decides
        theirs = other.partition("://")[2] or other
    glob = _compile_glob(mine, False)
    return glob.covers(_compile_glob(theirs, False)) if covers else glob.match(theirs)


@lru_cache(maxsize=4096)
def _compile_glob(resource: str, paths: bool) -> Glob:
    if paths and resource == "*":
        # A bare "*" is "anywhere" for a path too (docs/capabilities.md): as a path glob
        # it would match one name without a "/", i.e. no absolute path at all, so
        # deny = ["*:*:*"] would let every file write through and fs:rw:* grant nothing.
        resource = "**"
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
        all_rights: frozenset[str] = _EVERY_RIGHT
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
            known = all_rights | {a for a, v in _ALIASES.items() if v <= all_rights}
            raise PolicyError(
                f"capability {text!r}: unknown right {r!r} for kind {kind!r} "
                f"(known: {', '.join(sorted(known))}, *)"
            )
    if "\x00" in resource:
        raise PolicyError(f"capability {text!r}: NUL byte in resource")
    _check_resource(text, kind, resource)
    if kind == "obj" and resource.startswith("self/"):
        raise PolicyError(f"capability {text!r}: 'self' is a whole namespace; it has no parts")
    if kind in ("fs", "*") and resource.count("/**") > _MAX_DOUBLE_STARS:
        # Each "/**" doubles the alternatives a path glob expands to; past this many the
        # matcher would have to give up exactness, which for a deny rule means denying
        # less than written.
        raise PolicyError(
            f"capability {text!r}: more than {_MAX_DOUBLE_STARS} '/**' segments"
        )
    written, canonical = rights_text.strip(), format_rights(kind, frozenset(rights))
    spelled = written if {written, canonical} == {"*", "rw"} else None
    return _make(kind, frozenset(rights), resource, spelled)


def _check_resource(text: str, kind: str, resource: str) -> None:
    """A resource no request of its kind can ever name is a typo, refused where it is
    written (the image, the policy, the spawn) rather than held and matching nothing."""
    if resource != resource.strip():
        raise PolicyError(f"capability {text!r}: white space around its resource (it would "
                          "match nothing)")
    if kind == "obj" and any(c.isupper() or c.isspace() for c in resource):
        raise PolicyError(f"capability {text!r}: an object namespace is lower-case, without "
                          "spaces (like 'shared/plans')")
    if kind in ("human", "event") and any(c.isspace() or not c.isprintable()
                                          for c in resource):
        # Topics and event names are 1-128 of [A-Za-z0-9_.:/-] (the calls refuse others).
        what = "a topic" if kind == "human" else "an event name"
        raise PolicyError(f"capability {text!r}: {what} has no spaces or control characters")
    if kind in ("fs", "*") and resource.startswith("/") and any(
            part in (".", "..") for part in resource.split("/")):
        # A path glob matches real paths, which never hold these, so such a capability
        # would match nothing as written -- but whatever normalises it (a shell command's
        # bind root) would read "/p/src/.." as "/p": a child handed it would get more than
        # its parent's "/p/src/**". Refused: write the path it means.
        raise PolicyError(f"capability {text!r}: '.' or '..' in an absolute path (write the "
                          "path it means)")
    if kind == "clock" and not _compile_glob(resource, False).match("*"):
        raise PolicyError(f"capability {text!r}: a clock capability's resource is '*'")


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
    """May a holder of ``held`` hand on ``child``? It must lie within one of them -- or
    be ``obj:*:self``, which names the receiver's own namespace: every process has its
    own, so handing it on gives nothing of the holder's (DESIGN: accepted in a grant)."""
    if child.kind == "obj" and child.resource == "self":
        return True
    return any(h.covers(child) for h in held)
