"""Agent-written schema patterns run in a linear-time engine or are refused (kernel/schema.py).

Validation runs on the supervisor's only thread: a catastrophic pattern there would
stop every process, so these tests hold the engine to linear time on the classic cases.
"""

from __future__ import annotations

import time

import pytest

from agentlibos.errors import InvalidArgument
from agentlibos.kernel.schema import MAX_PATTERN_LEN, check_schema, validate

GENEROUS_S = 1.0


@pytest.mark.parametrize("pattern", ["^(a+)+$", "^(a|a)*$", "^(a*)*b$", "(x+x+)+y"])
def test_a_catastrophic_pattern_is_accepted_and_finishes_at_once(pattern: str) -> None:
    schema = {"type": "string", "pattern": pattern}
    check_schema(schema)
    value = "a" * 50_000 + "!" if "x" not in pattern else "x" * 50_000
    t0 = time.perf_counter()
    with pytest.raises(InvalidArgument, match="does not match"):
        validate(value, schema)
    assert time.perf_counter() - t0 < GENEROUS_S


def test_a_pattern_still_matches_what_it_should() -> None:
    ident = {"type": "string", "pattern": "^[a-z]+[0-9]*$"}
    schema = {"type": "object", "properties": {"id": ident}}
    check_schema(schema)
    validate({"id": "abc12"}, schema)
    with pytest.raises(InvalidArgument, match=r"args\.id: does not match"):
        validate({"id": "12abc"}, schema)


def test_a_pattern_searches_anywhere_in_the_string_as_json_schema_says() -> None:
    validate("xxabcxx", {"type": "string", "pattern": "abc"})


@pytest.mark.parametrize("pattern", ["(?=a)b", "(?!a)b", "(a)\\1", "(?<=a)b"])
def test_look_around_and_back_references_are_refused_at_registration(pattern: str) -> None:
    with pytest.raises(InvalidArgument, match="linear-time engine"):
        check_schema({"type": "string", "pattern": pattern}, "tool 't' schema")


def test_a_pattern_that_is_not_a_string_or_not_valid_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="must be a string"):
        check_schema({"pattern": 3})
    with pytest.raises(InvalidArgument, match="cannot be used"):
        check_schema({"pattern": "(unclosed"})


def test_an_overlong_pattern_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=f"longer than {MAX_PATTERN_LEN}"):
        check_schema({"pattern": "a" * (MAX_PATTERN_LEN + 1)})


def test_a_pattern_whose_automaton_is_too_big_is_refused_not_built() -> None:
    with pytest.raises(InvalidArgument, match="cannot be used"):
        check_schema({"pattern": "((a{100}){100}){100}"})


def test_validation_refuses_an_unchecked_bad_pattern_with_a_typed_error() -> None:
    with pytest.raises(InvalidArgument, match="linear-time engine"):
        validate("a", {"type": "string", "pattern": "(?=a)"})


def test_a_value_that_is_not_valid_text_is_refused_not_crashed_on() -> None:
    with pytest.raises(InvalidArgument, match="not valid text"):
        validate("bad \udc80", {"type": "string", "pattern": "bad"})
