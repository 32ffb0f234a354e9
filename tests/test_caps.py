"""Capabilities: parsing, glob matching, containment and attenuation (kernel/caps.py).

The property tests compare the glob engine with a small, independent backtracking
matcher written from the documented semantics, and check that containment is sound:
``P.covers(C)`` must never claim more than ``P`` actually matches.
"""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agentlibos.errors import InvalidArgument, PolicyError
from agentlibos.kernel.caps import (
    KIND_RIGHTS,
    MAX_CAP_LEN,
    CapPattern,
    Glob,
    attenuate,
    format_rights,
    parse_cap,
    parse_caps,
    within,
)


def cap(text: str) -> CapPattern:
    return parse_cap(text)


def pat(text: str) -> CapPattern:
    return parse_cap(text, allow_wildcard_kind=True)


def fs_glob(pattern: str) -> Glob:
    return Glob.compile(pattern, paths=True)


def flat_glob(pattern: str) -> Glob:
    return Glob.compile(pattern, paths=False)


# ========================================================================== parse_cap


def test_a_capability_has_a_kind_a_set_of_rights_and_a_resource() -> None:
    c = cap("fs:read:./src/**")
    assert (c.kind, c.rights, c.resource) == ("fs", frozenset({"read"}), "./src/**")


def test_the_resource_may_itself_contain_colons() -> None:
    c = cap("net:fetch:https://example.com:8443/*")
    assert c.kind == "net"
    assert c.resource == "https://example.com:8443/*"


def test_human_and_clock_capabilities_may_leave_out_the_resource_meaning_any() -> None:
    # DESIGN.md's example image requests "human:ask".
    assert str(cap("human:ask")) == "human:ask:*"
    assert cap("clock:sleep").allows("clock", "sleep", "*")
    with pytest.raises(PolicyError, match="is not of the form"):
        cap("fs:read")
    with pytest.raises(PolicyError, match="is not of the form"):
        cap("human:")


def test_rights_may_be_listed_with_commas_and_spaces() -> None:
    assert cap("fs:read, delete:/a").rights == frozenset({"read", "delete"})


def test_rw_is_an_alias_for_read_and_write() -> None:
    assert cap("fs:rw:/a").rights == frozenset({"read", "write"})
    assert cap("obj:rw:shared").rights == frozenset({"read", "write"})


def test_star_rights_mean_every_right_of_the_kind() -> None:
    for kind, rights in KIND_RIGHTS.items():
        assert cap(f"{kind}:*:{'*' if kind == 'clock' else 'x'}").rights == rights


def test_star_rights_on_fs_include_delete_but_rw_does_not() -> None:
    assert "delete" in cap("fs:*:/a").rights
    assert "delete" not in cap("fs:rw:/a").rights


def test_rw_is_refused_for_a_kind_without_read_and_write() -> None:
    with pytest.raises(PolicyError, match="unknown right 'rw' for kind 'proc'"):
        cap("proc:rw:*")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("disk:read:/a", "unknown kind 'disk'"),
        ("FS:read:/a", "unknown kind 'FS'"),
        ("fs:exec:/a", "unknown right 'exec' for kind 'fs' (known: delete, read, rw, write, *)"),
        ("fs:read,exec:/a", "unknown right 'exec'"),
        ("shell:run:git", "unknown right 'run' for kind 'shell'"),
        ("fs:read,:/a", "unknown right ''"),
        # A resource no request can name: held, these matched nothing (every obj call
        # refuses an upper-case namespace, clock.sleep asks for '*', and no request
        # names a resource ending in a space).
        ("obj:rw:Shared/X", "an object namespace is lower-case"),
        ("obj:read:shared/my plans", "an object namespace is lower-case, without spaces"),
        ("clock:sleep:foo", "a clock capability's resource is '*'"),
        ("fs:read:./** ", "white space around its resource"),
        ("net:fetch: https://x/**", "white space around its resource"),
        # human.ask and events.wait refuse a topic or name with a space: held, these
        # would match nothing.
        ("human:ask:my topic", "a topic has no spaces or control characters"),
        ("event:wait:build done", "an event name has no spaces"),
        ("event:post:a\tb", "an event name has no spaces"),
    ],
)
def test_an_unknown_kind_or_right_is_refused_and_named(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as e:
        cap(text)
    assert fragment in e.value.message
    assert repr(text) in e.value.message


def test_the_unknown_kind_error_lists_the_known_kinds() -> None:
    with pytest.raises(PolicyError, match="known: clock, event, fs, human, image, jit"):
        cap("disk:read:/a")


@pytest.mark.parametrize(
    "text", ["fs", "fs:read", "fs:read:", "fs::/a", ":read:/a", "::", "", "fsread/a"]
)
def test_a_malformed_capability_is_refused(text: str) -> None:
    with pytest.raises(PolicyError, match="is not of the form KIND:RIGHTS:RESOURCE"):
        cap(text)


@pytest.mark.parametrize("text", ["clock:sleep:*", "clock:sleep:**", "obj:rw:shared/**",
                                  "obj:read:proc/12", "human:ask:my-topic",
                                  "event:wait:build.done/*"])
def test_resources_a_request_can_name_are_accepted(text: str) -> None:
    assert str(cap(text)).endswith(text.rsplit(":", 1)[1])


@pytest.mark.parametrize("value", [None, 3, b"fs:read:/a", ["fs:read:/a"]])
def test_a_capability_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(PolicyError, match="must be a string"):
        parse_cap(value)


def test_an_overlong_capability_is_refused() -> None:
    with pytest.raises(PolicyError, match=f"longer than {MAX_CAP_LEN}"):
        cap("fs:read:/" + "a" * MAX_CAP_LEN)


def test_a_nul_byte_in_the_resource_is_refused() -> None:
    with pytest.raises(PolicyError, match="NUL"):
        cap("fs:read:/a\x00b")


def test_the_wildcard_kind_is_only_accepted_in_policy_patterns() -> None:
    with pytest.raises(PolicyError, match="only allowed in policy patterns"):
        cap("*:*:/etc/**")
    p = pat("*:*:/etc/**")
    assert p.kind == "*"
    assert {"read", "write", "delete", "exec", "fetch", "call"} <= p.rights


def test_self_must_stand_alone_in_an_obj_resource() -> None:
    assert cap("obj:rw:self").resource == "self"
    with pytest.raises(PolicyError, match="'self' is a whole namespace"):
        cap("obj:rw:self/plans")
    # Only the word itself is special: a namespace that merely starts with it is fine.
    assert cap("obj:rw:selfish/plans").resource == "selfish/plans"


def test_too_many_double_star_segments_are_refused() -> None:
    assert cap("fs:read:/a/**/b/**/c/**/d/**").resource.count("/**") == 4
    with pytest.raises(PolicyError, match="more than 4"):
        cap("fs:read:/a/**/b/**/c/**/d/**/e/**")


def test_a_star_kind_pattern_is_relative_only_when_it_says_so() -> None:
    p = parse_cap("*:*:./secret/**", allow_wildcard_kind=True).resolved("/home/u/proj")
    assert p.resource == "/home/u/proj/secret/**"
    assert p.allows("fs", "read", "/home/u/proj/secret")
    ns = parse_cap("*:*:shared/x", allow_wildcard_kind=True).resolved("/home/u/proj")
    assert ns.resource == "shared/x"


def test_a_policy_error_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        cap("nope")


def test_parse_caps_parses_each_and_stops_at_the_first_bad_one() -> None:
    assert [str(c) for c in parse_caps(["fs:read:/a", "obj:read:x"])] == [
        "fs:read:/a",
        "obj:read:x",
    ]
    with pytest.raises(PolicyError, match="disk"):
        parse_caps(["fs:read:/a", "disk:read:/b"])


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("fs:rw:/a", "fs:rw:/a"),
        ("fs:read,write:/a", "fs:rw:/a"),
        ("fs:*:/a", "fs:*:/a"),
        ("fs:delete,read,write:/a", "fs:*:/a"),
        ("fs:write,delete:/a", "fs:delete,write:/a"),
        # read and write are all the rights obj has: "rw" and "*" are the same rights,
        # each shown as written (an image's "obj:rw:self" is what `caps` shows).
        ("obj:rw:x", "obj:rw:x"),
        ("obj:*:x", "obj:*:x"),
        ("obj:read,write:x", "obj:*:x"),
        ("clock:*:*", "clock:sleep:*"),  # a single right prints as itself
    ],
)
def test_a_capability_prints_in_a_canonical_form(text: str, printed: str) -> None:
    assert str(cap(text)) == printed


def test_format_rights_of_an_unknown_kind_lists_the_rights() -> None:
    assert format_rights("*", frozenset({"exec", "read"})) == "exec,read"


# ====================================================================== fs path globs


def test_star_does_not_cross_a_slash() -> None:
    g = fs_glob("/a/*")
    assert g.match("/a/b")
    assert not g.match("/a/b/c")


def test_star_matches_an_empty_segment_part() -> None:
    assert fs_glob("/a/*").match("/a/")
    assert fs_glob("/a/x*").match("/a/x")


def test_star_in_the_middle_of_a_path_matches_only_one_segment() -> None:
    g = fs_glob("/src/*/main.py")
    assert g.match("/src/pkg/main.py")
    assert not g.match("/src/pkg/sub/main.py")
    assert not g.match("/src/main.py")


def test_double_star_crosses_slashes() -> None:
    g = fs_glob("/a/**")
    assert g.match("/a/b")
    assert g.match("/a/b/c/d")


def test_dir_double_star_matches_the_directory_itself() -> None:
    g = fs_glob("/p/out/**")
    assert g.match("/p/out")
    assert g.match("/p/out/")
    assert not g.match("/p/outside")
    assert not g.match("/p/ou")
    assert not g.match("/p")


def test_double_star_between_slashes_matches_zero_directories() -> None:
    g = fs_glob("/a/**/b")
    assert g.match("/a/b")
    assert g.match("/a/x/b")
    assert g.match("/a/x/y/b")
    assert not g.match("/a/xb")
    assert not g.match("/ab")


def test_double_star_glued_to_a_name_is_not_optional() -> None:
    g = fs_glob("/a/**x")
    assert g.match("/a/yy/zx")
    assert not g.match("/a")


def test_a_leading_double_star_slash_matches_the_name_at_any_depth() -> None:
    g = fs_glob("**/.env")
    assert g.match("/home/u/proj/.env")
    assert g.match("/.env")
    assert not g.match("/home/u/proj/.envrc")
    assert not g.match("/home/u/proj/x.env")


def test_question_mark_is_one_character_but_never_a_slash_in_paths() -> None:
    g = fs_glob("/a?c")
    assert g.match("/abc")
    assert not g.match("/a/c")
    assert not g.match("/ac")
    assert not g.match("/abbc")


def test_bracket_and_regex_characters_are_literal() -> None:
    g = fs_glob("/a/[ab].+(x)$")
    assert g.match("/a/[ab].+(x)$")
    assert not g.match("/a/a.+(x)$")
    assert not g.match("/a/[ab]x+(x)")


def test_a_path_glob_matches_the_whole_string_only() -> None:
    g = fs_glob("/a/b")
    assert g.match("/a/b")
    assert not g.match("/a/b/c")
    assert not g.match("/a/bc")
    assert not g.match("/x/a/b")
    assert not g.match("/a/b\n")


def test_three_stars_are_one_double_star() -> None:
    assert fs_glob("/a/***").match("/a/b/c")


# ================================================================== non-fs resources


@pytest.mark.parametrize("pattern", ["*", "**"])
def test_star_matches_anything_for_non_fs_kinds(pattern: str) -> None:
    g = flat_glob(pattern)
    for s in ["", "git", "a/b/c", "https://example.com/x/y?q=1"]:
        assert g.match(s)


def test_a_non_fs_star_crosses_slashes() -> None:
    assert cap("net:fetch:https://example.com/*").allows(
        "net", "fetch", "https://example.com/a/b/c"
    )
    assert cap("model:call:openai/*").allows("model", "call", "openai/gpt/4")
    assert not cap("model:call:openai/*").allows("model", "call", "anthropic/x")


def test_a_non_fs_question_mark_matches_any_one_character_even_a_slash() -> None:
    g = flat_glob("a?b")
    assert g.match("a/b")
    assert not g.match("ab")


def test_a_shell_capability_matches_the_exact_program_only() -> None:
    c = cap("shell:exec:git")
    assert c.allows("shell", "exec", "git")
    assert not c.allows("shell", "exec", "gitx")
    assert not c.allows("shell", "exec", "/usr/bin/git")


def test_allows_needs_the_same_kind_and_a_held_right() -> None:
    c = cap("fs:read:/a/**")
    assert c.allows("fs", "read", "/a/b")
    assert not c.allows("fs", "write", "/a/b")
    assert not c.allows("obj", "read", "/a/b")
    assert not c.allows("fs", "read", "/b")


def test_a_wildcard_kind_pattern_has_path_semantics_for_fs_requests() -> None:
    p = pat("*:*:/secret/**")
    # As for "fs:*:/secret/**": the directory itself is inside.
    assert p.allows("fs", "delete", "/secret")
    assert p.allows("fs", "read", "/secret/a/b")
    assert not pat("*:*:/home/*").allows("fs", "read", "/home/u/.ssh/id_rsa")
    assert pat("*:*:/a/**/b").allows("fs", "read", "/a/b")


def test_a_wildcard_kind_pattern_has_flat_semantics_for_other_kinds() -> None:
    p = pat("*:*:https://example.com/*")
    assert p.allows("net", "fetch", "https://example.com/a/b")
    assert not p.allows("fs", "read", "https://example.com/a/b")


def test_a_flat_and_a_path_glob_with_the_same_text_do_not_cover_each_other_blindly() -> None:
    # Path "/**/a" matches "/a"; flat "/**/a" does not.
    assert not flat_glob("/**/a").covers(fs_glob("/**/a"))
    # Flat "a?" matches "a/"; path "a*" does not.
    assert not fs_glob("a*").covers(flat_glob("a?"))


def test_a_wildcard_kind_pattern_allows_every_kind() -> None:
    p = pat("*:*:**")
    assert p.allows("fs", "delete", "/x")
    assert p.allows("shell", "exec", "rm")


# ========================================================================== resolved


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("./out/**", "/home/u/proj/out/**"),
        ("./**", "/home/u/proj/**"),
        ("src/*.py", "/home/u/proj/src/*.py"),
        ("notes.txt", "/home/u/proj/notes.txt"),
        (".", "/home/u/proj"),
        ("./out/", "/home/u/proj/out"),
        ("../shared/**", "/home/u/shared/**"),
        ("a/./b//c", "/home/u/proj/a/b/c"),
    ],
)
def test_a_relative_fs_resource_resolves_against_the_base(resource: str, expected: str) -> None:
    c = cap(f"fs:rw:{resource}")
    assert c.relative
    r = c.resolved("/home/u/proj")
    assert r.resource == expected
    assert r.rights == c.rights
    assert r.kind == "fs"
    assert not r.relative


def test_a_resolved_capability_matches_paths_under_the_base() -> None:
    r = cap("fs:read:./src/**").resolved("/home/u/proj")
    assert r.allows("fs", "read", "/home/u/proj/src/a/b.py")
    assert r.allows("fs", "read", "/home/u/proj/src")
    assert not r.allows("fs", "read", "/home/u/other/src/a.py")
    assert not r.allows("fs", "read", "./src/a.py")


def test_an_unresolved_relative_capability_matches_no_absolute_path() -> None:
    assert not cap("fs:read:./**").allows("fs", "read", "/home/u/proj/a")


@pytest.mark.parametrize("resource", ["*", "**", "**/.env", "**/secrets/**", "/etc/**"])
def test_anywhere_and_absolute_fs_resources_stay_as_they_are(resource: str) -> None:
    c = cap(f"fs:read:{resource}")
    assert not c.relative
    assert c.resolved("/home/u/proj") is c


def test_non_fs_resources_are_never_resolved() -> None:
    for text in ["obj:read:shared/plans", "shell:exec:./run.sh", "proc:spawn:worker"]:
        c = cap(text)
        assert not c.relative
        assert c.resolved("/home/u") is c


def test_the_star_resource_still_means_anywhere_after_resolution() -> None:
    c = cap("fs:read:**").resolved("/home/u/proj")
    assert c.allows("fs", "read", "/etc/passwd")


# ============================================================ covers: expected answers


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ("/a/**", "/a/b"),
        ("/a/**", "/a/*"),
        ("/a/**", "/a/*/b/**"),
        ("/a/**", "/a"),
        ("/a/**", "/a/**/x"),
        ("/a/*", "/a/b"),
        ("/a/*", "/a/b*"),
        ("/a/*", "/a/?"),
        ("/a/?", "/a/b"),
        ("/a/**/b", "/a/b"),
        ("/a/**/b", "/a/x/y/b"),
        ("/a/**/b", "/a/*/b"),
        ("**", "/anything/**"),
        ("**/.env", "/home/u/.env"),
        ("**/.env", "/home/**/.env"),
        ("/**", "/etc/**"),
        ("/a/b", "/a/b"),
    ],
)
def test_a_wider_path_glob_covers_a_narrower_one(outer: str, inner: str) -> None:
    assert fs_glob(outer).covers(fs_glob(inner))


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ("/a/*", "/a/**"),  # ** reaches deeper than one segment
        ("/a/*", "/a/b/c"),
        ("/a/*", "/a"),  # "/a/*" needs the slash; "/a/**" would not
        ("/a/b", "/a/**"),
        ("/a/?", "/a/*"),
        ("/a/?", "/a/bc"),
        ("/a/**", "/ab"),
        ("/a/**", "/**"),
        ("/a/**/b", "/a/**"),
        ("/a/*/b", "/a/**/b"),
        ("/a/x*", "/a/*"),
        ("**/.env", "/home/u/**"),
        ("/home/u/**", "**/.env"),
    ],
)
def test_a_path_glob_does_not_cover_a_wider_or_different_one(outer: str, inner: str) -> None:
    assert not fs_glob(outer).covers(fs_glob(inner))


def test_a_non_fs_star_covers_strings_with_slashes_but_an_fs_star_does_not() -> None:
    assert flat_glob("openai/*").covers(flat_glob("openai/a/b"))
    assert not fs_glob("openai/*").covers(fs_glob("openai/a/b"))


def test_cap_covers_needs_the_same_kind_and_a_subset_of_rights() -> None:
    assert cap("fs:rw:/a/**").covers(cap("fs:read:/a/b/**"))
    assert not cap("fs:read:/a/**").covers(cap("fs:rw:/a/b"))
    assert not cap("fs:*:/a/**").covers(cap("obj:read:/a/b"))
    assert cap("fs:*:/a/**").covers(cap("fs:delete:/a"))


def test_a_wildcard_kind_pattern_covers_capabilities_of_any_kind() -> None:
    assert pat("*:*:**").covers(cap("shell:exec:git"))
    assert pat("*:read:/etc/**").covers(cap("fs:read:/etc/passwd"))
    assert not pat("*:read:/etc/**").covers(cap("fs:write:/etc/passwd"))


# ==================================================== property: a reference matcher

ALPHABET = ("a", "b", "/", "*", "**", "?")
STRING_ALPHABET = "ab/"
DSTAR, STAR, QMARK = object(), object(), object()
Tok = object


def _ref_tokens(pattern: str, paths: bool) -> tuple[Tok, ...]:
    out: list[Tok] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "*":
            j = i
            while j < len(pattern) and pattern[j] == "*":
                j += 1
            out.append(DSTAR if (j - i >= 2 or not paths) else STAR)
            i = j
            continue
        out.append(QMARK if pattern[i] == "?" else pattern[i])
        i += 1
    return tuple(out)


def reference_match(pattern: str, s: str, paths: bool) -> bool:
    """The documented glob semantics, by plain backtracking over the string."""
    toks = _ref_tokens(pattern, paths)

    @cache
    def m(i: int, j: int) -> bool:
        if i == len(toks):
            return j == len(s)
        t = toks[i]
        # "X/**" also matches "X", and "X/**/Y" also matches "X/Y": "/**" may vanish.
        if (
            paths
            and t == "/"
            and i + 1 < len(toks)
            and toks[i + 1] is DSTAR
            and (i + 2 == len(toks) or toks[i + 2] == "/")
            and m(i + 2, j)
        ):
            return True
        if t is DSTAR:
            return any(m(i + 1, k) for k in range(j, len(s) + 1))
        if t is STAR:
            k = j
            while True:
                if m(i + 1, k):
                    return True
                if k == len(s) or s[k] == "/":
                    return False
                k += 1
        if j == len(s):
            return False
        if t is QMARK:
            return not (paths and s[j] == "/") and m(i + 1, j + 1)
        return s[j] == t and m(i + 1, j + 1)

    return m(0, 0)


def _vanishing_double_stars(pattern: str) -> int:
    toks = _ref_tokens(pattern, True)
    return sum(1 for a, b in itertools.pairwise(toks) if a == "/" and b is DSTAR)


globs = st.lists(st.sampled_from(ALPHABET), max_size=7).map("".join)
strings = st.text(alphabet=STRING_ALPHABET, max_size=10)
# Every string over a, b and '/' up to length 5: small enough to check exhaustively.
UNIVERSE: tuple[str, ...] = tuple(
    "".join(p) for n in range(6) for p in itertools.product(STRING_ALPHABET, repeat=n)
)


@settings(max_examples=300, deadline=None)
@given(globs, strings, st.booleans())
def test_glob_matching_agrees_with_the_reference_semantics(
    pattern: str, s: str, paths: bool
) -> None:
    # The engine expands at most four vanishing "/**" (documented); stay within that.
    assume(_vanishing_double_stars(pattern) <= 4)
    g = Glob.compile(pattern, paths=paths)
    assert g.match(s) == reference_match(pattern, s, paths)


@settings(max_examples=100, deadline=None)
@given(globs, st.booleans())
def test_glob_matching_agrees_with_the_reference_on_every_short_string(
    pattern: str, paths: bool
) -> None:
    assume(_vanishing_double_stars(pattern) <= 4)
    g = Glob.compile(pattern, paths=paths)
    for s in UNIVERSE:
        assert g.match(s) == reference_match(pattern, s, paths), s


# ========================================================= property: covers soundness


@st.composite
def instance_of(draw: st.DrawFn, pattern: str) -> str:
    """A string built by filling the pattern's wildcards (it may or may not match)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            while i < len(pattern) and pattern[i] == "*":
                i += 1
            out.append(draw(st.text(alphabet=STRING_ALPHABET, max_size=4)))
            continue
        out.append(draw(st.sampled_from(STRING_ALPHABET)) if c == "?" else c)
        i += 1
    return "".join(out)


def _assert_sound(p: Glob, c: Glob, extra: list[str]) -> None:
    for s in (*UNIVERSE, *extra):
        if c.match(s):
            assert p.match(s), f"{p.pattern!r} covers {c.pattern!r} but misses {s!r}"


@settings(max_examples=500, deadline=None)
@given(globs, globs, st.booleans(), st.data())
def test_covers_is_sound_every_string_the_inner_glob_matches_the_outer_matches(
    outer: str, inner: str, paths: bool, data: st.DataObject
) -> None:
    p = Glob.compile(outer, paths=paths)
    c = Glob.compile(inner, paths=paths)
    if not p.covers(c):
        return
    extra = [data.draw(instance_of(inner)) for _ in range(20)]
    extra += [data.draw(strings) for _ in range(5)]
    _assert_sound(p, c, extra)


@settings(max_examples=300, deadline=None)
@given(globs, globs, st.booleans(), st.data())
def test_covers_is_sound_between_a_path_glob_and_a_flat_glob(
    outer: str, inner: str, outer_is_path: bool, data: st.DataObject
) -> None:
    p = Glob.compile(outer, paths=outer_is_path)
    c = Glob.compile(inner, paths=not outer_is_path)
    if not p.covers(c):
        return
    extra = [data.draw(instance_of(inner)) for _ in range(20)]
    extra += [data.draw(strings) for _ in range(5)]
    _assert_sound(p, c, extra)


@settings(max_examples=300, deadline=None)
@given(globs, globs, st.data())
def test_a_wildcard_kind_policy_pattern_covers_fs_capabilities_soundly(
    outer: str, inner: str, data: st.DataObject
) -> None:
    # A policy pattern of kind '*' has flat glob semantics; an fs capability has path
    # semantics. Containment across the two must still be sound.
    assume(outer and inner)
    p = pat(f"*:read:{outer}")
    c = cap(f"fs:read:{inner}")
    if not p.covers(c):
        return
    extra = [data.draw(instance_of(inner)) for _ in range(20)]
    for s in (*UNIVERSE, *extra):
        if c.allows("fs", "read", s):
            assert p.allows("fs", "read", s), s


@given(globs, st.booleans())
def test_every_glob_covers_itself_and_double_star_covers_every_glob(
    pattern: str, paths: bool
) -> None:
    g = Glob.compile(pattern, paths=paths)
    assert g.covers(g)
    assert Glob.compile("**", paths=paths).covers(g)


@given(globs, globs)
def test_covers_is_not_a_trivial_yes_a_literal_is_only_covered_by_globs_matching_it(
    outer: str, literal_src: str
) -> None:
    literal = literal_src.replace("*", "").replace("?", "")
    p = fs_glob(outer)
    assert p.covers(fs_glob(literal)) == p.match(literal)


# ======================================================================== attenuate


def strs(caps: list[CapPattern]) -> list[str]:
    return [str(c) for c in caps]


def test_attenuate_intersects_rights() -> None:
    held = attenuate([cap("fs:rw:/a/**")], [cap("fs:read:/a/**")])
    assert strs(held) == ["fs:read:/a/**"]


def test_attenuate_keeps_a_grant_narrower_than_the_request() -> None:
    held = attenuate([cap("fs:read:/p/**")], [cap("fs:read:/p/src/**")])
    assert strs(held) == ["fs:read:/p/src/**"]


def test_attenuate_keeps_a_request_narrower_than_the_grant() -> None:
    held = attenuate([cap("fs:read:/p/src/**")], [cap("fs:*:/p/**")])
    assert strs(held) == ["fs:read:/p/src/**"]


def test_attenuate_narrows_resource_and_rights_together() -> None:
    held = attenuate([cap("fs:rw:/p/**")], [cap("fs:*:/p/out/**")])
    assert strs(held) == ["fs:rw:/p/out/**"]


def test_attenuate_drops_pairs_that_overlap_without_one_containing_the_other() -> None:
    r, g = cap("fs:read:/p/*.txt"), cap("fs:read:/p/a*")
    # They overlap ("/p/a.txt" is in both) but neither lies within the other.
    assert r.allows("fs", "read", "/p/a.txt")
    assert g.allows("fs", "read", "/p/a.txt")
    assert attenuate([r], [g]) == []


def test_attenuate_drops_disjoint_rights_and_different_kinds() -> None:
    assert attenuate([cap("fs:read:/a/**")], [cap("fs:write:/a/**")]) == []
    assert attenuate([cap("fs:read:**")], [cap("obj:read:*")]) == []
    assert attenuate([cap("shell:exec:git")], [cap("shell:exec:python3")]) == []


def test_attenuate_with_nothing_granted_or_requested_holds_nothing() -> None:
    assert attenuate([cap("fs:read:/a")], []) == []
    assert attenuate([], [cap("fs:read:/a")]) == []


def test_attenuate_holds_each_capability_once() -> None:
    held = attenuate(
        [cap("fs:read:/a/**"), cap("fs:read:/a/**")],
        [cap("fs:rw:/a/**"), cap("fs:read:/a/**")],
    )
    assert strs(held) == ["fs:read:/a/**"]


def test_attenuate_pairs_every_request_with_every_grant() -> None:
    held = attenuate(
        [cap("fs:read:/p/**"), cap("obj:rw:self"), cap("shell:exec:git")],
        [cap("fs:read:/p/src/**"), cap("fs:read:/p/docs/**"), cap("obj:*:self")],
    )
    assert sorted(strs(held)) == ["fs:read:/p/docs/**", "fs:read:/p/src/**", "obj:*:self"]


def test_an_image_request_resolved_against_the_cwd_attenuates_a_policy_grant() -> None:
    requested = [cap("fs:read:./**").resolved("/home/u/proj"),
                 cap("fs:write:./out/**").resolved("/home/u/proj")]
    granted = [cap("fs:*:./**").resolved("/home/u/proj")]
    assert sorted(strs(attenuate(requested, granted))) == [
        "fs:read:/home/u/proj/**",
        "fs:write:/home/u/proj/out/**",
    ]


fs_caps = st.builds(
    lambda rights, g: cap(f"fs:{rights}:{g}"),
    st.sampled_from(["read", "write", "rw", "*", "delete"]),
    globs.filter(bool),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(fs_caps, max_size=3), st.lists(fs_caps, max_size=3))
def test_every_attenuated_capability_lies_within_both_a_request_and_a_grant(
    requested: list[CapPattern], granted: list[CapPattern]
) -> None:
    for h in attenuate(requested, granted):
        assert within(h, requested), str(h)
        assert within(h, granted), str(h)


# =========================================================================== within


def test_a_child_capability_within_a_held_one_may_be_handed_on() -> None:
    held = [cap("fs:rw:/p/**"), cap("shell:exec:git")]
    assert within(cap("fs:read:/p/src/**"), held)
    assert within(cap("fs:rw:/p"), held)
    assert within(cap("shell:exec:git"), held)


def test_obj_self_may_always_be_handed_on_it_is_the_receivers_own() -> None:
    assert within(cap("obj:rw:self"), [])
    assert within(cap("obj:*:self"), [cap("fs:read:/p/**")])
    assert not within(cap("obj:read:shared"), [cap("obj:rw:self")])  # self is no other


def test_a_child_capability_wider_than_every_held_one_may_not_be_handed_on() -> None:
    held = [cap("fs:read:/p/**"), cap("shell:exec:git")]
    assert not within(cap("fs:write:/p/x"), held)  # more rights
    assert not within(cap("fs:read:/**"), held)  # wider resource
    assert not within(cap("fs:read:/q/**"), held)  # elsewhere
    assert not within(cap("shell:exec:*"), held)
    assert not within(cap("obj:read:shared"), held)  # another kind
    assert not within(cap("fs:read:/p/x"), [])


def test_within_may_use_different_held_capabilities_for_different_children() -> None:
    held = [cap("fs:read:/p/**"), cap("fs:write:/p/out/**")]
    assert within(cap("fs:write:/p/out/a"), held)
    # rw would need both rights on one capability; no single one covers it.
    assert not within(cap("fs:rw:/p/out/a"), held)


# ================================================================ round trip of str()


@settings(max_examples=200)
@given(
    st.sampled_from(sorted(KIND_RIGHTS)),
    st.data(),
    globs.filter(bool),
)
def test_a_printed_capability_parses_back_to_an_equal_one(
    kind: str, data: st.DataObject, resource: str
) -> None:
    rights = data.draw(st.sets(st.sampled_from(sorted(KIND_RIGHTS[kind])), min_size=1))
    assume(not (kind == "obj" and resource.startswith("self") and resource != "self"))
    assume(kind != "clock" or resource == "*")  # its one resource (test above)
    assume(kind != "obj" or not any(c.isupper() or c.isspace() for c in resource))
    assume(resource == resource.strip())
    c = cap(f"{kind}:{','.join(sorted(rights))}:{resource}")
    assert parse_cap(str(c)) == c


def test_an_alias_as_written_survives_resolving_and_an_unchanged_narrowing() -> None:
    held = cap("obj:rw:self")
    assert str(held.narrowed(held.rights)) == "obj:rw:self"
    assert str(held.narrowed(frozenset({"read"}))) == "obj:read:self"
    assert held == cap("obj:*:self")  # the same capability, whatever its spelling
    assert str(cap("fs:rw:./out/**").resolved("/p")) == "fs:rw:/p/out/**"


def test_a_host_written_in_a_url_glob_matches_the_host_alone() -> None:
    # In a URL glob `*` crosses `/`: `https://*.github.com/**` matched
    # `https://evil.com/.github.com/x`, and a parent could hand on that URL's capability.
    gh = cap("net:fetch:https://*.github.com/**")
    assert gh.allows("net", "fetch", "https://api.github.com/repos/x")
    assert not gh.allows("net", "fetch", "https://evil.com/.github.com/x")
    assert not gh.allows("net", "fetch", "https://evil.com/a.github.com/")
    assert not within(cap("net:fetch:https://evil.com/.github.com/**"), [gh])
    assert not within(cap("net:fetch:https://evil*"), [gh])
    assert within(cap("net:fetch:https://api.github.com/**"), [gh])
    # A host with a port, a glob with no host part of its own, a policy pattern.
    assert cap("net:fetch:http://127.0.0.1:8080/**").allows(
        "net", "fetch", "http://127.0.0.1:8080/a/b")
    assert not cap("net:fetch:http://127.0.0.1:8080/**").allows(
        "net", "fetch", "http://127.0.0.2/127.0.0.1:8080/")
    for wide in ("net:fetch:*", "net:fetch:https://*", "net:fetch:https://**"):
        assert cap(wide).allows("net", "fetch", "https://evil.com/.github.com/x"), wide
    assert pat("*:*:**").allows("net", "fetch", "https://a.b/c")
