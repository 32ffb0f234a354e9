"""Operator policy: parsing and the authorisation decision (kernel/policy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentlibos.errors import PolicyError
from agentlibos.kernel.caps import CapPattern, parse_cap
from agentlibos.kernel.policy import (
    BUILTIN_POLICY,
    Decision,
    DecisionMemo,
    Policy,
    Request,
    authorize,
    granted,
    load_policy,
    parse_policy,
)

CWD = "/home/u/proj"


def caps(*texts: str) -> list[CapPattern]:
    return [parse_cap(t).resolved(CWD) for t in texts]


def policy(text: str) -> Policy:
    return parse_policy(text, "test.toml")


def decide(held: list[CapPattern], pol: Policy, req: str, *aliases: str,
           cwd: str = CWD) -> Decision:
    kind, right, resource = req.split(":", 2)
    return authorize(held, pol, Request(kind, right, resource, aliases), cwd)


# ============================================================================ parsing


def test_a_policy_file_is_parsed_into_its_four_parts(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(
        'deny = ["fs:*:/etc/**", "*:*:**/.env"]\n'
        'ask = ["shell:exec:*"]\n'
        'allow = ["fs:*:./**", "obj:*:*"]\n'
        'default = "deny"\n'
    )
    p = load_policy(f)
    assert [str(x) for x in p.deny] == ["fs:*:/etc/**", f"*:{_all_rights()}:**/.env"]
    assert [str(x) for x in p.ask] == ["shell:exec:*"]
    assert [str(x) for x in p.allow] == ["fs:*:./**", "obj:*:*"]
    assert p.default == "deny"
    assert p.source == str(f)
    assert p.text == f.read_text()


def _all_rights() -> str:
    return str(parse_cap("*:*:x", allow_wildcard_kind=True)).split(":")[1]


def test_an_empty_policy_has_no_patterns_and_asks_by_default() -> None:
    p = policy("")
    assert (p.deny, p.ask, p.allow, p.default) == ((), (), (), "ask")


def test_a_missing_policy_file_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match="does not exist") as e:
        load_policy(missing)
    assert str(missing) in e.value.message


def test_an_unreadable_policy_file_is_named_in_the_error(tmp_path: Path) -> None:
    f = tmp_path / "binary.toml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError, match="cannot read policy file") as e:
        load_policy(f)
    assert str(f) in e.value.message


def test_a_policy_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path)


def test_invalid_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text('deny = ["fs:*:/etc/**"\n')
    with pytest.raises(PolicyError, match="not valid TOML") as e:
        load_policy(f)
    assert e.value.message.startswith(f"{f}: ")


@pytest.mark.parametrize("key", ["allw", "Deny", "rules", "limits"])
def test_an_unknown_key_is_refused_and_named(key: str) -> None:
    with pytest.raises(PolicyError) as e:
        policy(f"{key} = []\n")
    assert e.value.message.startswith("test.toml: unknown key(s) ")
    assert key in e.value.message


@pytest.mark.parametrize("default", ['"maybe"', '"Allow"', "true", "1", '["deny"]'])
def test_the_default_must_be_allow_ask_or_deny(default: str) -> None:
    with pytest.raises(PolicyError, match="default must be one of allow, ask, deny"):
        policy(f"default = {default}\n")


@pytest.mark.parametrize("default", ["allow", "ask", "deny"])
def test_each_verdict_is_a_valid_default(default: str) -> None:
    assert policy(f'default = "{default}"\n').default == default


@pytest.mark.parametrize("key", ["deny", "ask", "allow"])
def test_a_pattern_list_that_is_not_a_list_is_refused(key: str) -> None:
    with pytest.raises(PolicyError, match=f"'{key}' must be a list"):
        policy(f'{key} = "fs:*:/etc/**"\n')


def test_a_bad_pattern_is_refused_naming_the_file_the_list_and_the_pattern() -> None:
    with pytest.raises(PolicyError) as e:
        policy('allow = ["fs:*:./**", "disk:read:/a"]\n')
    msg = e.value.message
    assert msg.startswith("test.toml: in 'allow': ")
    assert "'disk:read:/a'" in msg
    assert "unknown kind 'disk'" in msg


def test_a_pattern_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(PolicyError, match="in 'deny': capability must be a string"):
        policy("deny = [3]\n")


def test_policy_patterns_may_use_the_wildcard_kind() -> None:
    assert policy('deny = ["*:*:**/.env"]\n').deny[0].kind == "*"


# ====================================================================== decision order


ALLOW_ALL = policy('allow = ["*:*:**"]\ndefault = "deny"\n')


def test_a_held_capability_and_an_allow_rule_allow_the_request() -> None:
    d = decide(caps("fs:read:./**"), ALLOW_ALL, f"fs:read:{CWD}/a.txt")
    assert d.verdict == "allow"
    assert d.allowed
    assert d.rule == f"fs:read:{CWD}/**"  # the capability that made it possible
    assert f"fs:read:{CWD}/a.txt" in d.reason


def test_deny_beats_a_held_capability_and_an_allow_rule() -> None:
    pol = policy('deny = ["fs:*:/etc/**"]\nallow = ["*:*:**"]\n')
    d = decide(caps("fs:*:/**"), pol, "fs:read:/etc/passwd")
    assert d.verdict == "deny"
    assert not d.allowed
    assert d.rule == "fs:*:/etc/**"
    assert "denied by policy rule 'fs:*:/etc/**'" in d.reason


@pytest.mark.parametrize("rule", ["*:*:**/.env", "*:read:**/.env", "*:rw:**/.env",
                                  "fs:*:**/.env"])
def test_a_rule_is_quoted_as_the_operator_wrote_it(rule: str) -> None:
    # "*:*:..." was quoted with every kind's rights spelled out
    # ('*:ask,call,delete,...:**/.env'), which matches no line of the policy file.
    d = decide(caps("fs:*:/**"), policy(f'deny = ["{rule}"]\n'), "fs:read:/p/.env")
    assert d.rule == rule
    assert f"denied by policy rule '{rule}'" in d.reason


@pytest.mark.parametrize("rule", ["*:*:*", "fs:*:*", "fs:write:*"])
def test_a_bare_star_is_anywhere_for_a_path_in_a_deny_rule(rule: str) -> None:
    # As a path glob "*" would match one name without a "/" -- no absolute path -- so
    # "deny everything" let every file write through (docs/capabilities.md: anywhere).
    pol = policy(f'deny = ["{rule}"]\ndefault = "allow"\n')
    for path in (f"{CWD}/a.txt", "/srv/outside/x.txt", "/"):
        d = decide(caps("fs:*:/**"), pol, f"fs:write:{path}")
        assert (d.verdict, d.rule) == ("deny", rule), path


@pytest.mark.parametrize("rule", ["*:*:*", "fs:*:*"])
def test_a_bare_star_is_anywhere_for_a_path_in_an_allow_rule(rule: str) -> None:
    pol = policy(f'allow = ["{rule}"]\ndefault = "deny"\n')
    d = decide(caps("fs:*:/**"), pol, "fs:write:/srv/outside/x.txt")
    assert d.verdict == "allow"


def test_a_held_fs_capability_on_a_bare_star_covers_every_path() -> None:
    held = caps("fs:rw:*")
    assert str(held[0]) == "fs:rw:*"  # left as written, as "**" is
    assert decide(held, ALLOW_ALL, "fs:write:/srv/outside/x.txt").verdict == "allow"
    assert parse_cap("fs:rw:*").covers(parse_cap("fs:read:/a/b/c"))
    assert not parse_cap("fs:read:/a/*").covers(parse_cap("fs:read:/a/b/c"))  # still one name


def test_deny_beats_ask() -> None:
    pol = policy('deny = ["shell:exec:rm"]\nask = ["shell:exec:*"]\n')
    d = decide(caps("shell:exec:*"), pol, "shell:exec:rm")
    assert (d.verdict, d.rule) == ("deny", "shell:exec:rm")


def test_deny_matches_any_alias_of_the_resource() -> None:
    # The agent asked for ./config, a symlink to ./.env: the real path is harmless-looking,
    # the name it was reached by is not.
    pol = policy('deny = ["*:*:**/.env"]\nallow = ["*:*:**"]\n')
    d = decide(caps("fs:read:./**"), pol, f"fs:read:{CWD}/config", f"{CWD}/.env")
    assert d.verdict == "deny"
    assert d.rule is not None and d.rule.endswith(":**/.env")


def test_an_alias_that_no_deny_rule_matches_changes_nothing() -> None:
    pol = policy('deny = ["*:*:**/.env"]\nallow = ["*:*:**"]\n')
    d = decide(caps("fs:read:./**"), pol, f"fs:read:{CWD}/config", f"{CWD}/cfg")
    assert d.verdict == "allow"


def test_deny_is_reported_even_when_no_capability_is_held() -> None:
    pol = policy('deny = ["fs:*:/etc/**"]\n')
    d = decide([], pol, "fs:read:/etc/shadow")
    assert d.rule == "fs:*:/etc/**"
    assert "denied by policy rule" in d.reason


def test_a_missing_capability_is_a_deny_that_names_the_request() -> None:
    d = decide(caps("fs:read:./src/**"), ALLOW_ALL, f"fs:write:{CWD}/src/a.py")
    assert d.verdict == "deny"
    assert d.rule is None
    assert f"fs:write:{CWD}/src/a.py" in d.reason
    assert "'fs:write:...'" in d.reason
    assert "does not hold" in d.reason


def test_a_missing_capability_beats_an_allow_rule_and_the_default() -> None:
    allow_default = policy('default = "allow"\nallow = ["*:*:**"]\n')
    assert decide([], allow_default, "shell:exec:git").verdict == "deny"
    assert decide(caps("shell:exec:git"), allow_default, "shell:exec:curl").verdict == "deny"


def test_a_capability_is_checked_against_the_real_resource_not_its_aliases() -> None:
    d = decide(caps("fs:read:./**"), ALLOW_ALL, "fs:read:/etc/passwd", f"{CWD}/link")
    assert d.verdict == "deny"
    assert "does not hold" in d.reason


def test_ask_beats_allow_when_a_capability_is_held() -> None:
    pol = policy('ask = ["shell:exec:*"]\nallow = ["*:*:**"]\ndefault = "deny"\n')
    d = decide(caps("shell:exec:git"), pol, "shell:exec:git")
    assert d.verdict == "ask"
    assert d.rule == "shell:exec:*"
    assert "asks a human" in d.reason


def test_an_ask_rule_for_another_right_does_not_apply() -> None:
    pol = policy('ask = ["fs:write:/**"]\nallow = ["fs:*:/**"]\n')
    assert decide(caps("fs:rw:/**"), pol, "fs:read:/x").verdict == "allow"
    assert decide(caps("fs:rw:/**"), pol, "fs:write:/x").verdict == "ask"


@pytest.mark.parametrize("default", ["allow", "ask", "deny"])
def test_the_default_decides_when_no_rule_matches(default: str) -> None:
    pol = policy(f'allow = ["obj:*:*"]\ndefault = "{default}"\n')
    d = decide(caps("shell:exec:git"), pol, "shell:exec:git")
    assert d.verdict == default
    assert d.rule is None
    assert f"default is '{default}'" in d.reason


def test_the_first_matching_allow_rule_does_not_need_to_be_the_first_rule() -> None:
    pol = policy('allow = ["obj:*:*", "fs:read:/data/**"]\ndefault = "deny"\n')
    assert decide(caps("fs:read:/data/**"), pol, "fs:read:/data/x").verdict == "allow"


# ============================================================== relative policy patterns


def test_relative_fs_patterns_in_the_policy_resolve_against_the_cwd_of_the_request() -> None:
    pol = policy('allow = ["fs:*:./**"]\ndefault = "ask"\n')
    held = caps("fs:*:/**")
    assert decide(held, pol, "fs:write:/home/u/proj/out/a").verdict == "allow"
    assert decide(held, pol, "fs:write:/home/u/proj").verdict == "allow"
    assert decide(held, pol, "fs:write:/home/u/other/a").verdict == "ask"
    assert decide(held, pol, "fs:write:/home/u/other/a", cwd="/home/u/other").verdict == "allow"


def test_a_relative_deny_pattern_protects_only_the_cwd_it_resolves_against() -> None:
    pol = policy('deny = ["fs:*:./secret/**"]\nallow = ["fs:*:/**"]\n')
    held = caps("fs:*:/**")
    assert decide(held, pol, f"fs:read:{CWD}/secret").verdict == "deny"
    assert decide(held, pol, f"fs:read:{CWD}/secret/k").verdict == "deny"
    assert decide(held, pol, "fs:read:/elsewhere/secret/k").verdict == "allow"


def test_resolving_a_policy_does_not_change_the_original() -> None:
    pol = policy('allow = ["fs:*:./**"]\n')
    resolved = pol.resolved_for("/w")
    assert [str(p) for p in resolved.allow] == ["fs:*:/w/**"]
    assert [str(p) for p in pol.allow] == ["fs:*:./**"]
    assert resolved.source == pol.source
    assert resolved.default == pol.default


def test_a_wildcard_kind_deny_on_a_directory_tree_covers_the_directory_itself() -> None:
    pol = policy('deny = ["*:*:/srv/secret/**"]\nallow = ["*:*:**"]\n')
    d = decide(caps("fs:*:/**"), pol, "fs:delete:/srv/secret")
    assert d.verdict == "deny"


# ===================================================================== built-in policy


@pytest.mark.parametrize(
    "req",
    [
        f"fs:read:{CWD}/notes.txt",
        f"fs:write:{CWD}/out/a/b.txt",
        f"fs:delete:{CWD}/scratch",
        f"fs:read:{CWD}",
        "obj:read:shared/plans",
        "obj:write:proc/7",
        "proc:spawn:worker",
        "proc:signal:children",
        "jit:register:word_count",
        "jit:invoke:word_count",
        "event:wait:done",
        "event:post:done",
        "clock:sleep:*",
        "model:call:openai/gpt-4o",  # configured providers only: the service checks that
    ],
)
def test_the_builtin_policy_allows_fs_inside_the_cwd_and_the_runtime_kinds(req: str) -> None:
    held = caps("fs:*:/**", "obj:*:*", "proc:*:*", "jit:*:*", "event:*:*", "clock:*:*",
                "model:*:*")
    assert decide(held, BUILTIN_POLICY, req).verdict == "allow"


@pytest.mark.parametrize(
    "req",
    [
        "fs:read:/etc/passwd",
        "fs:write:/home/u/other/a",
        "fs:read:/home/u/proj-evil/a",  # a sibling whose name starts like the cwd
        "shell:exec:git",
        "net:fetch:https://example.com/",
        "image:register:x",
        "human:ask:*",
    ],
)
def test_the_builtin_policy_asks_for_everything_else(req: str) -> None:
    held = caps("fs:*:/**", "shell:*:*", "net:*:*", "model:*:*", "image:*:*", "human:*:*")
    d = decide(held, BUILTIN_POLICY, req)
    assert d.verdict == "ask"
    assert d.rule is None


def test_the_builtin_policy_still_needs_a_capability() -> None:
    assert decide([], BUILTIN_POLICY, f"fs:read:{CWD}/a").verdict == "deny"
    assert decide([], BUILTIN_POLICY, "obj:read:shared").verdict == "deny"


def test_the_builtin_policy_has_its_source_and_text() -> None:
    assert BUILTIN_POLICY.source == "<built-in>"
    assert parse_policy(BUILTIN_POLICY.text, "<built-in>") == BUILTIN_POLICY


# ============================================================================ the memo


def _req(text: str) -> Request:
    kind, right, resource = text.split(":", 2)
    return Request(kind, right, resource)


def test_the_memo_decides_as_authorize_does_and_keeps_what_it_decided() -> None:
    pol = policy('deny = ["fs:*:/home/u/proj/secret/**"]\nask = ["fs:write:**"]\n'
                 'allow = ["fs:*:**"]\n')
    held = caps("fs:rw:./**")
    memo = DecisionMemo()
    reqs = [_req(f"fs:read:{CWD}/a.txt"), _req(f"fs:write:{CWD}/a.txt"),
            _req(f"fs:read:{CWD}/secret/k"), _req("fs:read:/etc/passwd")]
    first = [memo.decide(held, pol, r, CWD) for r in reqs]
    assert first == [authorize(held, pol, r, CWD) for r in reqs]
    assert [d.verdict for d in first] == ["allow", "ask", "deny", "deny"]
    # Asked again with the same objects: the very decisions made before.
    assert all(memo.decide(held, pol, r, CWD) is d for r, d in zip(reqs, first, strict=True))


def test_new_capabilities_a_new_policy_or_cwd_are_decided_afresh() -> None:
    memo = DecisionMemo()
    held = caps("fs:rw:./**")
    write = _req(f"fs:write:{CWD}/a.txt")
    assert memo.decide(held, ALLOW_ALL, write, CWD).verdict == "allow"
    # A dropped capability is a new sequence: the memo must not answer from before.
    dropped = caps("fs:read:./**")
    assert memo.decide(dropped, ALLOW_ALL, write, CWD).verdict == "deny"
    strict = policy('deny = ["fs:*:**"]\n')
    assert memo.decide(held, strict, write, CWD).verdict == "deny"
    # A relative policy rule means another place under another cwd.
    rel = policy('deny = ["fs:*:./**"]\nallow = ["fs:*:**"]\n')
    assert memo.decide(held, rel, write, CWD).verdict == "deny"
    assert memo.decide(held, rel, write, "/elsewhere").verdict == "allow"


def test_the_memo_is_bounded() -> None:
    memo = DecisionMemo()
    held = caps("fs:rw:./**")
    for i in range(DecisionMemo.LIMIT * 3):
        memo.decide(held, ALLOW_ALL, _req(f"fs:read:{CWD}/f{i}"), CWD)
        assert len(memo._seen) <= DecisionMemo.LIMIT


# ====================================================== held = request ∩ policy (run)

def held_under(pol_text: str, *request: str) -> list[str]:
    return [str(c) for c in granted(policy(pol_text), [parse_cap(r) for r in request], CWD)]


def test_what_the_policy_refuses_in_all_of_a_capability_is_not_held() -> None:
    pol = ('deny = ["fs:*:/etc/**", "net:*:*"]\nallow = ["fs:read:./**"]\n'
           'default = "deny"\n')
    assert held_under(pol, "fs:read:/etc/**", "net:fetch:*", "shell:exec:*", "fs:rw:./**",
                      "obj:rw:self") == [f"fs:read:{CWD}/**", "obj:rw:self"]


def test_a_capability_the_policy_may_allow_or_ask_for_somewhere_is_kept_whole() -> None:
    # Default ask (the built-in policy's): nothing is refused everywhere.
    assert held_under('deny = ["fs:*:/etc/**"]\n', "fs:rw:./**", "shell:exec:git",
                      "fs:read:/**") == [f"fs:rw:{CWD}/**", "shell:exec:git", "fs:read:/**"]
    # Default deny: a rule that may match part of it keeps it (the call decides).
    pol = 'ask = ["shell:exec:git*"]\nallow = ["fs:*:./out/**"]\ndefault = "deny"\n'
    assert held_under(pol, "shell:exec:*", "fs:rw:./**", "fs:read:/srv/**") == [
        "shell:exec:*", f"fs:rw:{CWD}/**"]
    # A wildcard-kind rule, and globs whose beginnings do not part, may overlap.
    pol = 'allow = ["*:read:*.txt"]\ndefault = "deny"\n'
    assert held_under(pol, "obj:read:notes*", "net:fetch:*") == ["obj:read:notes*"]


def test_a_deny_rule_covering_only_part_of_a_capability_leaves_it_held() -> None:
    pol = 'deny = ["fs:*:**/.env", "fs:write:/etc/**"]\n'
    assert held_under(pol, "fs:rw:./**", "fs:rw:/etc/**") == [
        f"fs:rw:{CWD}/**", "fs:read:/etc/**"]


def test_dropping_what_is_refused_everywhere_changes_no_decision() -> None:
    # The same calls get the same verdicts with the full request and the granted part.
    pol = policy('deny = ["fs:*:/etc/**"]\nask = ["net:fetch:https://*"]\n'
                 'allow = ["fs:read:./**"]\ndefault = "deny"\n')
    request = caps("fs:rw:./**", "fs:read:/etc/**", "net:fetch:*", "shell:exec:*")
    held = granted(pol, request, CWD)
    for req in (f"fs:read:{CWD}/a", f"fs:write:{CWD}/a", "fs:read:/etc/passwd",
                "net:fetch:https://x.org/", "net:fetch:http://x.org/", "shell:exec:ls"):
        assert decide(request, pol, req).verdict == decide(held, pol, req).verdict, req
