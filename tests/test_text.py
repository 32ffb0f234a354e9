"""Any agent-controlled string can be stored: kernel/text.py.

Checked against the real consumers that failed: SQLite and UTF-8 encoding.
"""

from __future__ import annotations

import json
import sqlite3

from hypothesis import given
from hypothesis import strategies as st

from agentlibos.kernel.text import MAX_TEXT_CHARS, is_text, storable, storable_json


def stores(s: str) -> str:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (s,))
    (v,) = db.execute("SELECT v FROM t").fetchone()
    db.close()
    assert isinstance(v, str)
    return v


def test_an_exception_message_with_a_lone_surrogate_becomes_storable() -> None:
    message = str(RuntimeError("bad \udc80"))
    assert not is_text(message)
    safe = storable(message)
    assert safe == "bad \ufffd"
    assert stores(safe) == safe
    safe.encode("utf-8")


def test_plain_text_is_left_exactly_as_it_is() -> None:
    for s in ["", "hello", "ünïcødé ✓ 😀", "tab\there\nnew\x00nul"]:
        assert is_text(s)
        assert storable(s) == s


def test_a_well_formed_surrogate_pair_becomes_its_character() -> None:
    assert storable("\ud83d\ude00") == "😀"
    assert storable("\ude00\ud83d") == "\ufffd\ufffd"  # the wrong order is two lone ones


def test_a_long_string_is_cut_with_a_marker_and_stays_within_the_bound() -> None:
    s = "x" * 1000
    out = storable(s, 100)
    assert len(out) <= 100
    assert out.startswith("x" * 50)
    assert out.endswith("more characters]")
    cut = int(out.rsplit("[", 1)[1].split()[0])
    assert len(out) - len(out.rsplit("...", 1)[1]) - 3 + cut == 1000
    assert len(storable("y" * (MAX_TEXT_CHARS * 2))) <= MAX_TEXT_CHARS


def test_a_tiny_bound_still_bounds() -> None:
    assert storable("abcdef", 3) == "abc"
    assert storable("ab", 3) == "ab"


def test_storable_json_fixes_every_string_and_key_at_any_depth() -> None:
    value = {"ok\udc80": ["a\ud800", {"k": ("t\udfff", 1, 2.5, None, True)}], "n": 3}
    out = storable_json(value)
    assert out == {"ok\ufffd": ["a\ufffd", {"k": ["t\ufffd", 1, 2.5, None, True]}], "n": 3}
    stores(json.dumps(out, ensure_ascii=False))


def test_storable_json_walks_a_very_deep_value_without_recursion() -> None:
    deep: object = "leaf\udc80"
    for _ in range(5000):
        deep = [deep]
    out = storable_json(deep, max_depth=10)
    depth = 0
    while isinstance(out, list):
        out = out[0]
        depth += 1
    assert depth == 10
    assert out == "[nested too deeply]"
    unbounded = storable_json(deep, max_depth=10_000)
    for _ in range(5000):
        unbounded = unbounded[0]
    assert unbounded == "leaf\ufffd"


def test_non_json_values_are_stored_as_their_text() -> None:
    assert storable_json({1: b"x", "s": {3}}) == {"1": "b'x'", "s": "{3}"}
    assert storable_json("bad \udc80") == "bad \ufffd"
    assert storable_json(7) == 7


SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)


@given(st.lists(st.one_of(st.characters(), SURROGATES), max_size=40).map("".join))
def test_whatever_the_text_the_result_encodes_as_utf8(s: str) -> None:
    out = storable(s)
    out.encode("utf-8")
    assert is_text(out)
    assert is_text(s) == (storable(s) == s)
