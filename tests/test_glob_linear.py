"""Capability globs cost linear time, and a cwd's glob characters never widen a capability.

The matcher in kernel/caps.py is a bit-set NFA simulation and containment a bit-set
dynamic programme. Both replaced a regex (which backtracks) and a recursive search
(which overflows the stack on long patterns). The old code is kept here verbatim as the
oracle: on small inputs the new code must answer exactly as it did.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlibos.errors import PolicyError
from agentlibos.kernel import caps as capsmod
from agentlibos.kernel.caps import MAX_GLOB_LEN, Glob, escape, parse_cap, within
from agentlibos.kernel.policy import BUILTIN_POLICY, Request, authorize
from agentlibos.providers.fs import LocalFs

_ANY, _SEG, _ONE = capsmod._ANY, capsmod._SEG, capsmod._ONE

# ------------------------------------------------------------- the old engine (oracle)


def old_regex(alts: Iterable[tuple[str, ...]], *, paths: bool) -> re.Pattern[str]:
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


def old_covers_plain(p: Sequence[str], c: Sequence[str], paths: bool) -> bool:
    @cache
    def go(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(c)
        t = p[i]
        if t == _ANY:
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
            ok = u == _ONE or (not u.startswith("\x00") and not (paths and u == "/"))
            return ok and go(i + 1, j + 1)
        return t == u and go(i + 1, j + 1)

    return go(0, 0)


def old_match(g: Glob, s: str) -> bool:
    return old_regex(g._alts, paths=g.paths).match(s) is not None


def old_covers(p: Glob, c: Glob) -> bool:
    if p.paths and not c.paths:
        return False
    if p.pattern == c.pattern and p.paths == c.paths:
        return True
    return all(any(old_covers_plain(a, b, p.paths) for a in p._alts) for b in c._alts)


# ----------------------------------------------------------------- agreement on small

PIECES = ("a", "b", "/", "*", "**", "?", "/**", "**/")
patterns = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
texts = st.text(alphabet="ab/", max_size=10)


@settings(max_examples=400, deadline=None)
@given(patterns, texts, st.booleans())
def test_the_linear_matcher_agrees_with_the_old_regex_engine(
    pattern: str, s: str, paths: bool
) -> None:
    g = Glob.compile(pattern, paths=paths)
    assert g.match(s) == old_match(g, s)


@settings(max_examples=400, deadline=None)
@given(patterns, patterns, st.booleans(), st.booleans())
def test_linear_containment_agrees_with_the_old_recursive_search(
    outer: str, inner: str, outer_paths: bool, inner_paths: bool
) -> None:
    p = Glob.compile(outer, paths=outer_paths)
    c = Glob.compile(inner, paths=inner_paths)
    assert p.covers(c) == old_covers(p, c)


# ------------------------------------------------------------------------ pathological

GENEROUS_S = 1.0


def test_a_star_heavy_capability_against_200_as_finishes_at_once() -> None:
    c = parse_cap("fs:read:./a*a*a*a*a*a*a*a*a*a*b").resolved("/w")
    t0 = time.perf_counter()
    assert not c.allows("fs", "read", "/w/" + "a" * 200)
    assert c.allows("fs", "read", "/w/" + "a" * 200 + "b")
    assert time.perf_counter() - t0 < GENEROUS_S


def test_double_star_heavy_patterns_finish_at_once_on_long_paths() -> None:
    g = Glob.compile("/**a**a**a**a**a**a**a**a**a**a**a**a**b", paths=False)
    path = "/" + "a/" * 2000
    t0 = time.perf_counter()
    assert not g.match(path)
    g2 = Glob.compile("/**/a/**/a/**/a/**/a/*a*a*a*a*a*a*a*a*b", paths=True)
    assert not g2.match(path + "a" * 2000)
    assert time.perf_counter() - t0 < GENEROUS_S


def test_containment_of_very_long_patterns_neither_recurses_nor_crawls() -> None:
    # The old recursive search took one Python frame per token: 3,000 literal
    # characters raised RecursionError, which reached the supervisor's loop.
    long = "/" + "a" * 3000
    held = [parse_cap(f"fs:read:{long}/**")]
    t0 = time.perf_counter()
    assert within(parse_cap(f"fs:read:{long}/x"), held)
    assert not within(parse_cap(f"fs:read:{long[:-1]}b/x"), held)
    stars = "/" + "a*" * 1500
    assert not within(parse_cap(f"fs:read:{stars}"), [parse_cap("fs:read:/" + "a" * 3000)])
    assert within(parse_cap("fs:read:/" + "a" * 3000), [parse_cap(f"fs:read:{stars}")])
    assert time.perf_counter() - t0 < GENEROUS_S * 5


def test_a_glob_longer_than_the_bound_is_refused() -> None:
    with pytest.raises(PolicyError, match=f"longer than {MAX_GLOB_LEN}"):
        Glob.compile("/" + "a" * MAX_GLOB_LEN, paths=True)


def test_a_relative_capability_against_a_very_long_cwd_still_resolves() -> None:
    base = "/" + "/".join(["d" * 200] * 20)  # about 4,000 characters, like PATH_MAX
    c = parse_cap("fs:read:./**").resolved(base)
    assert c.allows("fs", "read", base + "/x")


# ---------------------------------------------------------------------------- escapes


@pytest.mark.parametrize("text", ["proj?", "proj*", "proj**", "proj[x]", "a\\b", "x\\*"])
def test_an_escaped_name_matches_itself_and_nothing_else(text: str) -> None:
    g = Glob.compile("/" + escape(text), paths=True)
    assert g.match("/" + text)
    assert not g.match("/projX")
    assert not g.match("/proj")


def test_a_backslash_makes_the_next_character_literal() -> None:
    g = Glob.compile("/a\\*b/*", paths=True)
    assert g.match("/a*b/c")
    assert not g.match("/axb/c")
    assert Glob.compile("/a\\?", paths=True).match("/a?")
    assert not Glob.compile("/a\\?", paths=True).match("/ab")
    assert Glob.compile("/a\\\\", paths=True).match("/a\\")
    assert Glob.compile("/a\\", paths=True).match("/a\\")  # a trailing one is itself


def test_an_escaped_star_is_covered_by_a_star_but_does_not_cover_one() -> None:
    star = Glob.compile("/a/*", paths=True)
    lit = Glob.compile("/a/\\*", paths=True)
    assert star.covers(lit)
    assert not lit.covers(star)


def test_a_resolved_capability_round_trips_through_its_text() -> None:
    c = parse_cap("fs:read:./**").resolved("/home/u/proj?*")
    again = parse_cap(str(c))
    assert again.resource == c.resource
    assert again.allows("fs", "read", "/home/u/proj?*/a")
    assert not again.allows("fs", "read", "/home/u/projXY/a")
    assert c.covers(again)
    assert again.covers(c)


@pytest.mark.parametrize("name", ["proj?", "proj*", "proj[x]", "proj**", "pr\\oj"])
def test_glob_characters_in_a_real_cwd_do_not_widen_relative_capabilities(
    tmp_path: Path, name: str
) -> None:
    cwd = tmp_path / name
    cwd.mkdir()
    (cwd / "mine.txt").write_text("mine")
    sibling = tmp_path / "projX"
    sibling.mkdir()
    (sibling / "secret.txt").write_text("secret")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "secret.txt").write_text("secret")
    held = [parse_cap("fs:read:./**").resolved(str(cwd))]
    for rel, allowed in [("mine.txt", True), ("../projX/secret.txt", False),
                         ("../proj/secret.txt", False)]:
        r = LocalFs.resolve(str(cwd), rel)
        d = authorize(held, BUILTIN_POLICY, Request("fs", "read", r.real, r.aliases), str(cwd))
        assert d.allowed is allowed, (rel, d.reason)
        assert Path(r.real).exists()


def test_a_policy_resolved_for_a_glob_named_cwd_does_not_allow_its_siblings(
    tmp_path: Path,
) -> None:
    cwd = tmp_path / "p*"
    cwd.mkdir()
    (tmp_path / "pX").mkdir()
    pol = BUILTIN_POLICY.resolved_for(str(cwd))
    assert any(p.allows("fs", "read", str(cwd / "a")) for p in pol.allow)
    assert not any(p.allows("fs", "read", str(tmp_path / "pX" / "a")) for p in pol.allow)
