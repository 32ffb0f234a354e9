"""The wire protocol in isolation: round trips, and decoding that never raises the unexpected.

The broker decodes every frame any local process sends it, on the one thread that
serves everybody: an exception other than :class:`WireError` escaping
``decode_request`` would take the whole supervisor down, so the fuzz tests here hold
the decoder to its contract on arbitrary, mutated and oversized input.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlibos.errors import (
    InvalidArgument,
    LibOSError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    ProtocolError,
    from_wire,
)
from agentlibos.protocol.wire import (
    DEFAULT_LIMITS,
    MAGIC,
    MAX_SEQ,
    TOKEN_BYTES,
    WireError,
    WireLimits,
    WireRequest,
    check_args,
    decode_reply,
    decode_request,
    encode_error,
    encode_ok,
    encode_request,
)

TOKEN = bytes(range(TOKEN_BYTES))
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# JSON values that survive a round trip unchanged (NaN != NaN; ints within the
# interpreter's int<->str digit limit).
json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def _header(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _decode_or_wire_error(frames: list[bytes], limits: WireLimits) -> WireRequest | WireError:
    """The contract: a WireRequest, or a WireError that the broker can encode as a reply."""
    try:
        req = decode_request(frames, limits)
        if req.args_error is not None:
            raise WireError(req.args_error, req.id)
    except WireError as e:
        assert isinstance(e.error, ProtocolError | LimitExceeded | InvalidArgument)
        assert e.req_id is None or isinstance(e.req_id, int)
        reply = decode_reply(encode_error(e.req_id, e.error))
        assert reply.ok is False
        assert reply.id == e.req_id
        assert reply.error["code"] in ("EPROTO", "ELIMIT", "EINVAL")
        if isinstance(e.error, InvalidArgument):
            assert e.req_id is not None  # an argument is judged only once the id is known
        return e
    assert isinstance(req, WireRequest)
    assert isinstance(req.id, int) and not isinstance(req.id, bool)
    assert isinstance(req.pid, int) and not isinstance(req.pid, bool)
    assert isinstance(req.call, str) and 0 < len(req.call) <= 64
    assert isinstance(req.args, dict)
    assert len(req.token) == TOKEN_BYTES
    assert len(req.blobs) <= limits.max_blobs
    assert all(len(b) <= limits.max_blob_bytes for b in req.blobs)
    assert sum(len(f) for f in frames) <= limits.max_total_bytes
    return req


def _error_of(frames: list[bytes], limits: WireLimits = DEFAULT_LIMITS) -> WireError:
    """The refusal of a frame: a WireError, or the argument error a decoded request
    carries (judged by the broker once the sender is authenticated)."""
    try:
        req = decode_request(frames, limits)
    except WireError as e:
        return e
    assert req.args_error is not None, "the frame was accepted"
    return WireError(req.args_error, req.id)


# ------------------------------------------------------------------- round trips


@FUZZ
@given(
    req_id=st.integers(min_value=-(2**63), max_value=2**63),
    pid=st.integers(min_value=-(2**63), max_value=2**63),
    call=st.text(min_size=1, max_size=64),
    args=json_objects,
    token=st.binary(min_size=TOKEN_BYTES, max_size=TOKEN_BYTES),
    blobs=st.lists(st.binary(max_size=64), max_size=DEFAULT_LIMITS.max_blobs),
)
def test_a_request_survives_encode_then_decode(
    req_id: int, pid: int, call: str, args: dict[str, Any], token: bytes, blobs: list[bytes]
) -> None:
    frames = encode_request(req_id, pid, call, args, token, blobs)
    assert frames[0] == MAGIC
    req = decode_request(frames)
    assert (req.id, req.pid, req.call, req.args, req.token, req.blobs) == (
        req_id, pid, call, args, token, blobs)


@FUZZ
@given(req_id=st.integers(min_value=0, max_value=2**63), result=json_values,
       blobs=st.lists(st.binary(max_size=64), max_size=4))
def test_an_ok_reply_survives_encode_then_decode(
    req_id: int, result: Any, blobs: list[bytes]
) -> None:
    reply = decode_reply(encode_ok(req_id, result, blobs))
    assert (reply.id, reply.ok, reply.result, reply.error, reply.blobs) == (
        req_id, True, result, None, blobs)


@pytest.mark.parametrize("error", [
    NotFound("no such file 'x'", path="x"),
    PermissionDenied("fs.read: needs fs:read", request="fs:read:/etc/passwd"),
    ProtocolError("bad frame"),
    LimitExceeded("too big", size=10, limit=5),
])
@pytest.mark.parametrize("req_id", [None, 0, 7, 2**70])
def test_an_error_reply_carries_the_typed_error_back(
    error: LibOSError, req_id: int | None
) -> None:
    reply = decode_reply(encode_error(req_id, error))
    assert reply.ok is False
    assert reply.id == req_id
    back = from_wire(reply.error)
    assert type(back) is type(error)
    assert (back.code, back.message, back.details) == (error.code, error.message, error.details)


def test_an_error_detail_that_is_not_json_is_sent_as_text() -> None:
    reply = decode_reply(encode_error(1, LibOSError("odd", thing=object())))
    assert reply.ok is False
    assert isinstance(reply.error["details"]["thing"], str)


# ------------------------------------------------------------ specific refusals


def test_an_empty_message_is_a_protocol_error() -> None:
    e = _error_of([])
    assert isinstance(e.error, ProtocolError) and e.req_id is None


def test_a_wrong_magic_is_refused_and_named() -> None:
    frames = encode_request(1, 2, "proc.getpid", {}, TOKEN)
    e = _error_of([b"ALOS/2", *frames[1:]])
    assert isinstance(e.error, ProtocolError)
    assert "ALOS/2" in e.error.message and e.req_id is None


@pytest.mark.parametrize("n", [1, 2])
def test_a_truncated_message_is_a_protocol_error(n: int) -> None:
    frames = encode_request(1, 2, "proc.getpid", {}, TOKEN)
    assert isinstance(_error_of(frames[:n]).error, ProtocolError)


@pytest.mark.parametrize("token", [b"", b"x" * (TOKEN_BYTES - 1), b"x" * (TOKEN_BYTES + 1)])
def test_a_credential_of_the_wrong_length_is_refused_with_the_id(token: bytes) -> None:
    e = _error_of(encode_request(5, 2, "proc.getpid", {}, token))
    assert isinstance(e.error, ProtocolError) and e.req_id == 5


@pytest.mark.parametrize(("header", "rid"), [
    (b"", None),
    (b"\xff\xfe\x00garbage", None),
    (b"[1, 2]", None),
    (b'"text"', None),
    (b"{", None),
    (b"[" * 100_000, None),  # nesting deep enough to exhaust the recursion limit
    (_header(pid=1, call="x", args={}), None),
    (_header(id="1", pid=1, call="x", args={}), None),
    (_header(id=True, pid=1, call="x", args={}), None),
    (_header(id=1.0, pid=1, call="x", args={}), None),
    (_header(id=3, call="x", args={}), 3),
    (_header(id=3, pid="1", call="x", args={}), 3),
    (_header(id=3, pid=False, call="x", args={}), 3),
    (_header(id=3, pid=1, call="", args={}), 3),
    (_header(id=3, pid=1, call="x" * 65, args={}), 3),
    (_header(id=3, pid=1, call=7, args={}), 3),
    (_header(id=3, pid=1, call="x", args=[]), 3),
    (_header(id=3, pid=1, call="x", args=None), 3),
    (_header(id=3, pid=1, call="x", args={}, caps=["*"]), 3),
])
def test_a_malformed_header_is_a_protocol_error(header: bytes, rid: int | None) -> None:
    e = _error_of([MAGIC, header, TOKEN])
    assert isinstance(e.error, ProtocolError), e.error
    assert e.req_id == rid


@pytest.mark.parametrize("where", ["id", "pid", "args"])
def test_an_integer_too_long_to_parse_is_a_protocol_error_not_a_crash(where: str) -> None:
    # Python refuses int <-> str conversions past 4300 digits with a plain ValueError,
    # which is not a JSONDecodeError: a decoder catching only that would let it escape.
    huge = b"9" * 5000
    fields = {"id": b"1", "pid": b"1", "call": b'"x"', "args": b"{}"}
    fields[where] = huge if where != "args" else b'{"n": ' + huge + b"}"
    header = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    e = _error_of([MAGIC, header, TOKEN])
    assert isinstance(e.error, ProtocolError)


def test_a_huge_but_parseable_id_is_echoed_back() -> None:
    rid = 10**4000
    e = _error_of(encode_request(rid, 1, "x", {}, b"short"))
    assert e.req_id == rid
    assert decode_reply(encode_error(e.req_id, e.error)).id == rid


def test_an_oversized_header_is_a_limit_error() -> None:
    limits = WireLimits(max_header_bytes=64)
    e = _error_of(encode_request(1, 1, "x", {"pad": "y" * 64}, TOKEN), limits)
    assert isinstance(e.error, LimitExceeded)


def test_an_oversized_blob_is_a_limit_error_with_the_id() -> None:
    limits = WireLimits(max_blob_bytes=10)
    e = _error_of(encode_request(9, 1, "fs.write", {}, TOKEN, [b"z" * 11]), limits)
    assert isinstance(e.error, LimitExceeded) and e.req_id == 9


def test_an_oversized_message_is_a_limit_error_with_the_id() -> None:
    limits = WireLimits(max_blob_bytes=100, max_total_bytes=150)
    e = _error_of(encode_request(9, 1, "fs.write", {}, TOKEN, [b"z" * 80, b"z" * 80]), limits)
    assert isinstance(e.error, LimitExceeded) and e.req_id == 9


def test_too_many_blobs_is_a_protocol_error() -> None:
    limits = WireLimits(max_blobs=2)
    e = _error_of(encode_request(9, 1, "fs.write", {}, TOKEN, [b"a", b"b", b"c"]), limits)
    assert isinstance(e.error, ProtocolError) and e.req_id == 9


def test_a_request_exactly_at_every_limit_is_accepted() -> None:
    frames = encode_request(1, 1, "x", {}, TOKEN, [b"a" * 10, b"b" * 10])
    limits = WireLimits(max_header_bytes=len(frames[1]), max_blob_bytes=10, max_blobs=2,
                        max_total_bytes=sum(len(f) for f in frames))
    assert decode_request(frames, limits).blobs == [b"a" * 10, b"b" * 10]


@pytest.mark.parametrize("frames", [
    [b"x"],
    [MAGIC, b"{}"],
    [b"\x00" * 4],
])
def test_a_malformed_reply_is_a_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(frames)


# ------------------------------------------------------------------------- fuzz

small_limits = st.builds(
    WireLimits,
    max_header_bytes=st.integers(min_value=0, max_value=200),
    max_blob_bytes=st.integers(min_value=0, max_value=40),
    max_total_bytes=st.integers(min_value=0, max_value=400),
    max_blobs=st.integers(min_value=0, max_value=4),
)
limits_st = st.just(DEFAULT_LIMITS) | small_limits

# Values of every JSON type (and some that only look like the right one), to put where
# the header expects an int, a string or an object.
wrong_typed = (
    json_values | st.integers(min_value=-(10**300), max_value=10**300)
    | st.sampled_from([True, False, None, 1.5, -0.0, "1", "", [], {}, [1], {"id": 1}])
)


# Stands for a number literal too long to build with json.dumps (see _header_text).
_HUGE = "\x00huge\x00"


def _header_text(fields: dict[str, Any], digits: int) -> str:
    return json.dumps(fields).replace(json.dumps(_HUGE), "9" * digits)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A header that is right, or wrong in one or more fields, or with extra fields."""
    fields: dict[str, Any] = {}
    for key, good in (("id", st.integers(min_value=0, max_value=2**40)),
                      ("pid", st.integers(min_value=-5, max_value=2**40)),
                      ("call", st.text(min_size=1, max_size=70)),
                      ("args", json_objects)):
        choice = draw(st.sampled_from(["good", "good", "wrong", "missing"]))
        if choice == "good":
            fields[key] = draw(good)
        elif choice == "wrong":
            fields[key] = draw(wrong_typed | st.just(_HUGE))
    if draw(st.booleans()):
        fields.update(draw(st.dictionaries(st.text(max_size=6), json_values | st.just(_HUGE),
                                           max_size=2)))
    text = _header_text(fields, draw(st.sampled_from([1, 4300, 4301, 6000])))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-16", "utf-32"])))


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (position, delete-count, insertion) edits: byte-level corruption."""
    b = bytearray(data)
    for pos, delete, insert in edits:
        at = pos % (len(b) + 1)
        b[at:at + delete] = insert
    return bytes(b)


edits = st.lists(
    st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=4),
              st.binary(max_size=4) | st.sampled_from([b'"', b"{", b"}", b"[", b",", b":",
                                                       b"\\", b"\\u", b"9" * 4400, b"\xff"])),
    max_size=4,
)


@st.composite
def requests(draw: st.DrawFn) -> list[bytes]:
    """Frames that look like a request, each part possibly wrong."""
    magic = draw(st.sampled_from([MAGIC, MAGIC, MAGIC, b"ALOS/2", b"alos/1", b"", b"ALOS/1\x00"])
                 | st.binary(max_size=8))
    header = draw(headers())
    if draw(st.booleans()):
        header = _mutate(header, draw(edits))
    token = draw(st.sampled_from([TOKEN]) | st.binary(max_size=40))
    blobs = draw(st.lists(st.binary(max_size=50), max_size=6))
    frames = [magic, header, token, *blobs]
    cut = draw(st.sampled_from([None, None, None, 0, 1, 2]))
    return frames if cut is None else frames[:cut]


@FUZZ
@given(frames=st.lists(st.binary(max_size=300), max_size=8), limits=limits_st)
def test_decoding_arbitrary_frames_returns_a_request_or_raises_wire_error(
    frames: list[bytes], limits: WireLimits
) -> None:
    _decode_or_wire_error(frames, limits)


@FUZZ
@given(frames=requests(), limits=limits_st)
def test_decoding_near_valid_requests_returns_a_request_or_raises_wire_error(
    frames: list[bytes], limits: WireLimits
) -> None:
    _decode_or_wire_error(frames, limits)


@FUZZ
@given(args=json_objects, blobs=st.lists(st.binary(max_size=60), max_size=6),
       limits=small_limits)
def test_small_limits_are_enforced_with_a_typed_error(
    args: dict[str, Any], blobs: list[bytes], limits: WireLimits
) -> None:
    frames = encode_request(1, 1, "fs.write", args, TOKEN, blobs)
    out = _decode_or_wire_error(frames, limits)
    over = (len(frames[1]) > limits.max_header_bytes
            or sum(len(f) for f in frames) > limits.max_total_bytes
            or len(blobs) > limits.max_blobs
            or any(len(b) > limits.max_blob_bytes for b in blobs))
    assert isinstance(out, WireError) == over


@FUZZ
@given(frames=st.lists(st.binary(max_size=200), max_size=4)
       | st.lists(st.just(MAGIC) | st.builds(_mutate, st.sampled_from([
           b'{"id":1,"ok":false,"error":{}}', b'{"id":1,"ok":true,"result":' + b"9" * 5000 + b"}",
           b'{"id":1,"ok":true,"result":' + b"[" * 100_000 + b"}"]), edits),
                  min_size=2, max_size=3))
def test_decoding_an_arbitrary_reply_returns_a_reply_or_raises_protocol_error(
    frames: list[bytes],
) -> None:
    try:
        reply = decode_reply(frames)
    except ProtocolError:
        return
    assert isinstance(reply.ok, bool)
    assert reply.id is None or isinstance(reply.id, int)


# ------------------------------------------- arguments every handler may assume sane

# Every syscall the SDK makes, so the refusal is shown to hold whatever the call.
CALLS = ["proc.wait", "proc.spawn", "fs.read", "fs.write", "obj.put", "tool.call",
         "clock.sleep", "made.up"]


def _raw(args_json: str, rid: int = 41, call: str = "proc.wait") -> list[bytes]:
    header = f'{{"id": {rid}, "pid": 1, "call": "{call}", "args": {args_json}}}'
    return [MAGIC, header.encode(), TOKEN]


def _invalid(frames: list[bytes]) -> InvalidArgument:
    e = _error_of(frames)
    assert isinstance(e.error, InvalidArgument), e.error
    assert e.req_id == 41
    reply = decode_reply(encode_error(e.req_id, e.error))
    assert reply.id == 41 and reply.error["code"] == "EINVAL"
    return e.error


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1E400",
                                     "1" + "0" * 400 + ".5"])
def test_a_non_finite_number_is_refused_for_every_call(call: str, literal: str) -> None:
    err = _invalid(_raw('{"pid": 2, "timeout": ' + literal + "}", call=call))
    assert err.message.startswith(f"{call}: argument \"timeout\"")
    assert "non-finite number" in err.message


@pytest.mark.parametrize("where", [
    '{"a": [1, {"b": [NaN]}]}', '{"a": {"b": {"c": {"d": Infinity}}}}',
    '{"a": [[[[[-Infinity]]]]]}',
])
def test_a_non_finite_number_is_refused_at_any_depth(where: str) -> None:
    err = _invalid(_raw(where))
    assert 'argument "a"' in err.message
    assert "at args[\"a\"]" in err.message


def test_the_refusal_says_exactly_where_the_bad_value_is() -> None:
    err = _invalid(_raw('{"ok": 1.5, "opts": {"list": [0, 1, NaN]}}', call="fs.read"))
    assert err.message == ('fs.read: argument "opts" is invalid: a non-finite number (nan) '
                           'at args["opts"]["list"][2]')
    assert err.details == {"call": "fs.read", "where": 'args["opts"]["list"][2]'}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("args", [
    '{"path": "bad \\udc80"}', '{"path": ["ok", {"x": "\\ud800"}]}',
    '{"\\udfff": 1}', '{"path": {"in\\udc80key": "v"}}',
])
def test_a_string_or_key_that_is_not_text_is_refused_for_every_call(
    call: str, args: str
) -> None:
    err = _invalid(_raw(args, call=call))
    assert "not valid text" in err.message
    assert err.message.startswith(f"{call}: argument ")
    err.message.encode("utf-8")  # the refusal itself can be stored and logged


def test_a_raw_encoded_surrogate_is_refused_like_an_escaped_one() -> None:
    frames = _raw('{"path": "x"}')
    frames[1] = frames[1].replace(b'"x"', b'"\xed\xb2\x80"')
    assert "not valid text" in _invalid(frames).message


def test_a_well_formed_surrogate_pair_is_a_character_and_accepted() -> None:
    req = decode_request(_raw('{"path": "\\ud83d\\ude00"}'))
    assert req.args == {"path": "\U0001f600"}


def test_a_call_name_that_is_not_text_is_a_protocol_error() -> None:
    e = _error_of(_raw("{}", call="x\\udc80"))
    assert isinstance(e.error, ProtocolError) and e.req_id == 41


def test_ordinary_numbers_and_text_pass_untouched() -> None:
    args = '{"n": 1e300, "m": -2.5E-3, "big": %s, "s": "Infinity NaN \\u00e9"}' % ("9" * 400)
    req = decode_request(_raw(args))
    assert req.args["n"] == 1e300 and req.args["s"] == "Infinity NaN \u00e9"
    assert req.args["big"] == int("9" * 400)


def _in_a(value_json: str) -> str:
    return '{"a": ' + value_json + "}"


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def test_args_nested_to_the_bound_are_accepted() -> None:
    # The header is depth 1 and args depth 2, so 62 more lists reach 64.
    req = decode_request(_raw(_in_a(_nested(62))))
    assert req.id == 41


@pytest.mark.parametrize("depth", [63, 200, 900])
def test_args_nested_deeper_than_the_bound_are_refused_with_the_id(depth: int) -> None:
    err = _invalid(_raw(_in_a(_nested(depth))))
    assert "nesting deeper than 64" in err.message


@pytest.mark.parametrize("depth", [5_000, 400_000])
def test_nesting_past_the_recursion_limit_is_a_protocol_error_with_the_id(depth: int) -> None:
    e = _error_of(_raw(_in_a(_nested(depth))))
    assert isinstance(e.error, ProtocolError)
    assert "nested deeper than 64" in e.error.message
    assert e.req_id == 41


def test_deep_nesting_before_the_id_is_refused_without_one() -> None:
    header = ('{"args": ' + _nested(5000) + ', "id": 3, "pid": 1, "call": "x"}').encode()
    e = _error_of([MAGIC, header, TOKEN])
    assert isinstance(e.error, ProtocolError) and e.req_id is None


def test_a_lower_depth_limit_is_honoured() -> None:
    limits = WireLimits(max_depth=4)
    decode_request(_raw('{"a": [[1]]}'), limits)
    e = _error_of(_raw('{"a": [[[1]]]}'), limits)
    assert isinstance(e.error, InvalidArgument)


def test_the_check_walks_a_wide_deep_value_without_recursion_quickly() -> None:
    wide = "[" + ",".join([_nested(60, "NaN" if i == 999 else "0") for i in range(1000)]) + "]"
    assert "non-finite" in _invalid(_raw(_in_a(wide))).message


# -------------------------------------------------------------------------- seq


def test_a_request_without_seq_decodes_with_seq_none() -> None:
    frames = encode_request(1, 2, "proc.getpid", {}, TOKEN)
    assert b"seq" not in frames[1]
    assert decode_request(frames).seq is None


@pytest.mark.parametrize("seq", [1, 2, 1000, MAX_SEQ])
def test_a_seq_travels_in_the_header(seq: int) -> None:
    frames = encode_request(1, 2, "proc.getpid", {}, TOKEN, seq=seq)
    assert json.loads(frames[1])["seq"] == seq
    assert decode_request(frames).seq == seq


@pytest.mark.parametrize("seq", ["0", "-1", str(MAX_SEQ + 1), "1.0", '"1"', "true", "null",
                                 "[1]", "NaN", "9" * 4000])
def test_a_seq_that_is_not_a_positive_integer_is_a_protocol_error(seq: str) -> None:
    header = '{"id": 8, "pid": 1, "call": "x", "args": {}, "seq": ' + seq + "}"
    e = _error_of([MAGIC, header.encode(), TOKEN])
    assert isinstance(e.error, ProtocolError), e.error
    assert e.req_id == 8
    assert "'seq'" in e.error.message


@FUZZ
@given(seq=st.integers(min_value=1, max_value=MAX_SEQ), args=json_objects)
def test_any_valid_seq_survives_a_round_trip(seq: int, args: dict[str, Any]) -> None:
    req = decode_request(encode_request(3, 4, "obj.put", args, TOKEN, seq=seq))
    assert (req.seq, req.args) == (seq, args)


def test_check_args_holds_other_channels_to_the_same_rules() -> None:
    # A JIT tool's syscalls arrive over its pipe, not this wire: the same check applies.
    check_args("fs.read", {"path": "a", "n": [1, 2.5, {"k": None}]})
    for bad in [{"t": float("nan")}, {"t": [float("-inf")]}, {"p": "x\udc80"},
                {"\ud800": 1}]:
        with pytest.raises(InvalidArgument, match=r"^fs\.read: argument "):
            check_args("fs.read", bad)
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidArgument, match="nesting deeper than 64"):
        check_args("fs.read", {"d": deep})
    with pytest.raises(InvalidArgument, match="non-finite"):
        check_args("tool.call", float("nan"))


def test_an_integer_argument_past_64_bits_is_refused_for_every_call() -> None:
    from agentlibos.broker.syscalls import lookup  # noqa: PLC0415 - registers the table

    for call, arg in (("obj.put", "expect_version"), ("proc.wait", "pid"),
                      ("fs.read", "max_bytes")):
        sc = lookup(call)
        base = {k: None for k in sc.params}
        for value in (1 << 63, -(1 << 63) - 1, 10**30):
            with pytest.raises(InvalidArgument, match="out of range"):
                sc.params[arg].check(call, arg, value)
        assert sc.params[arg].check(call, arg, (1 << 63) - 1) == (1 << 63) - 1
        assert base  # the call takes arguments at all
