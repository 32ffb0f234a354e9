"""SDK arguments of the wrong type are refused as InvalidArgument naming the call, before
anything is sent: each case here was a bare TypeError, a confusing message, or a request
other than the one asked for, found by a contract audit. Real agents, the real broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, log_of, run_proc

# The loopback server's fixture, and a policy that lets a fetch through without a human.
from tests.test_net import ALLOW_NET, _Server, server  # noqa: F401

# Runs each of args["calls"] (Python expressions over ctx) and reports what each raised.
TRY_EACH = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    loop = []
    loop.append(loop)
    out = []
    for expr in args["calls"]:
        try:
            eval(expr, {"ctx": ctx, "loop": loop, "url": args.get("url")})
            out.append("returned")
        except LibOSError as e:
            out.append([type(e).__name__, e.code, e.message])
        except Exception as e:
            out.append([type(e).__name__, None, str(e)])
    # The connection and the journal's numbering are still in step after the refusals.
    out.append(ctx.obj.put("after", 1)["version"])
    out.append(sorted(o["name"] for o in ctx.obj.list()))
    return out
"""


def _try_each(sup: Supervisor, make_image: MakeImage, calls: list[str], *,
              caps: list[str] | None = None, url: str | None = None,
              cwd: Path | None = None) -> tuple[list[Any], list[str]]:
    """What each call raised, and the calls the broker received (its journal of the
    process holds every call sent, refused ones too), less the two made after them."""
    img = make_image("arg-types", TRY_EACH, caps=caps or [])
    rec = run_proc(sup, img, {"calls": calls, "url": url}, policy=ALLOW_NET, cwd=cwd)
    assert rec.exit_reason == "returned", log_of(sup, rec.pid)
    assert isinstance(rec.result, list) and len(rec.result) == len(calls) + 2
    *got, version, names = rec.result
    assert version == 1 and names == ["after"]  # nothing the refused calls asked was stored
    sent = [e.call for e in sup.store.journal_entries(rec.pid)]
    assert sent[-2:] == ["obj.put", "obj.list"], sent
    return got, sent[:-2]


def test_arguments_that_are_not_json_are_invalid_arguments_and_nothing_is_sent(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Were "TypeError: Object of type bytes is not JSON serializable" (and a ValueError
    # for a cycle): the contract promises a typed error from agentlibos.errors.
    calls = {
        'ctx.obj.put("b", b"x")': "obj.put",
        'ctx.obj.put("s", {1, 2})': "obj.put",
        'ctx.obj.put("c", loop)': "obj.put",
        'ctx.events.post("e", b"x")': "event.post",
        'ctx.shell.run(["echo"], stdin=b"x")': "shell.exec",
        'ctx.shell.run(["echo"], env={"A": b"x"})': "shell.exec",
        'ctx.tools.call("x", {"a": b"x"})': "tool.call",
        'ctx.proc.spawn("img", args={"a": b"x"})': "proc.spawn",
        'ctx.model.chat([{"role": "user", "content": b"x"}], model="p/m")': "model.chat",
        'ctx.syscall("obj.put", {"name": "r", "value": 1}, ["not bytes"])': "obj.put",
    }
    got, sent = _try_each(sup, make_image, list(calls))
    assert sent == []
    for (expr, call), (kind, code, message) in zip(calls.items(), got, strict=True):
        assert (kind, code) == ("InvalidArgument", "EINVAL"), (expr, message)
        assert message.startswith(f"{call}: "), (expr, message)
    assert got[0][2] == ("obj.put: arguments are not JSON: Object of type bytes is not "
                         "JSON serializable")
    assert got[1][2].endswith("Object of type set is not JSON serializable")
    assert got[2][2] == "obj.put: arguments are not JSON: Circular reference detected"
    assert got[-1][2] == "obj.put: payloads must be bytes, not str"


def test_a_fetch_body_that_is_not_bytes_or_str_is_refused_and_nothing_reaches_the_server(
    sup: Supervisor, make_image: MakeImage, server: _Server  # noqa: F811
) -> None:
    # body=5 sent five NUL bytes and body=[1, 2] the bytes 1 and 2 (it was bytes(body)).
    good = ['b"one"', 'bytearray(b"two")', 'memoryview(b"three")', '"four"']
    got, sent = _try_each(sup, make_image, [
        'ctx.net.fetch(url, method="POST", body=5)',
        'ctx.net.fetch(url, method="POST", body=[1, 2])',
        'ctx.net.fetch(url, method="POST", body={"a": 1})',
        'ctx.net.fetch(url, headers={"A": b"x"})',
        'ctx.net.fetch(url, headers="A: x")',
        *(f'ctx.net.fetch(url, method="POST", body={body})' for body in good),
    ], caps=[f"net:fetch:{server.base}/**"], url=f"{server.base}/echo")
    assert got == [
        ["InvalidArgument", "EINVAL", "net.fetch: body must be bytes or str, not int"],
        ["InvalidArgument", "EINVAL", "net.fetch: body must be bytes or str, not list"],
        ["InvalidArgument", "EINVAL", "net.fetch: body must be bytes or str, not dict"],
        ["InvalidArgument", "EINVAL",
         "net.fetch: arguments are not JSON: Object of type bytes is not JSON serializable"],
        ["InvalidArgument", "EINVAL", "net.fetch: headers must be a dict of strings, not str"],
        *["returned"] * len(good),
    ]
    # Only the bodies that are bytes (of any kind) or text reached the broker and the server.
    assert sent == ["net.fetch"] * len(good)
    assert [body for _, _, _, body in server.seen] == [b"one", b"two", b"three", b"four"]


def test_a_string_where_a_list_is_expected_is_refused_naming_the_argument(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Were list(x): caps "fs:read:./**" became the capabilities "f", "s", ... ("capability
    # 'f' is not of the form..."), messages "hi" became "messages[0] must be an object",
    # and None was "TypeError: 'NoneType' object is not iterable".
    got, sent = _try_each(sup, make_image, [
        'ctx.proc.spawn("x", caps="fs:read:./**")',
        'ctx.jit.register("t", "export default 1", caps="fs:read:./**")',
        'ctx.model.chat("hi", model="p/m")',
        'ctx.model.chat(None, model="p/m")',
        'ctx.model.chat([{"role": "user", "content": "hi"}], tools="x", model="p/m")',
        'ctx.human.ask("which?", choices="ab")',
        # A tuple is a list: it passes the SDK and reaches the broker (no capability).
        'ctx.human.ask("which?", choices=("a", "b"))',
    ])
    assert got[:6] == [
        ["InvalidArgument", "EINVAL",
         "proc.spawn: caps must be a list of capability strings, not str"],
        ["InvalidArgument", "EINVAL",
         "jit.register: caps must be a list of capability strings, not str"],
        ["InvalidArgument", "EINVAL", "model.chat: messages must be a list of message "
                                      "objects, not str"],
        ["InvalidArgument", "EINVAL", "model.chat: messages must be a list of message "
                                      "objects, not NoneType"],
        ["InvalidArgument", "EINVAL", "model.chat: tools must be a list of function "
                                      "schemas, not str"],
        ["InvalidArgument", "EINVAL", "human.ask: choices must be a list of strings, not str"],
    ]
    assert got[6][0] == "PermissionDenied" and got[6][2].startswith("human.ask"), got[6]
    assert sent == ["human.ask"]


def test_text_that_cannot_be_decoded_or_encoded_and_negative_counts_are_invalid_arguments(
    sup: Supervisor, make_image: MakeImage, tmp_path: Path
) -> None:
    # Were UnicodeDecodeError, LookupError and UnicodeEncodeError raised in the SDK, and
    # LimitExceeded ("the read limit is -1") / Conflict ("not the expected -1") from the
    # broker (audit 4-a, L3).
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "notes.txt").write_text("hello")
    got, sent = _try_each(sup, make_image, [
        'ctx.fs.read_text("bin.dat")',
        'ctx.fs.read_text("notes.txt", encoding="bogus")',
        'ctx.fs.write_text("s.txt", "a" + chr(0xdcff) + "b")',
        'ctx.fs.write_text("s.txt", "x", encoding=5)',
        'ctx.fs.read_text("notes.txt", max_bytes=-1)',
        'ctx.obj.put("x", 1, expect_version=-1)',
        'ctx.obj.delete("x", expect_version=-1)',
        'ctx.fs.read_text("bin.dat", encoding="latin-1")',
    ], caps=["fs:rw:./**"], cwd=tmp_path)
    assert got == [
        ["InvalidArgument", "EINVAL", "read_text: bin.dat is not utf-8 text (invalid start "
                                      "byte at byte 0); read_bytes reads it as it is"],
        ["InvalidArgument", "EINVAL", "read_text: unknown encoding 'bogus'"],
        ["InvalidArgument", "EINVAL", "write_text: the text cannot be written as utf-8 "
                                      "(surrogates not allowed at character 1)"],
        ["InvalidArgument", "EINVAL", "write_text: unknown encoding 5"],
        ["InvalidArgument", "EINVAL", "fs.read: argument 'max_bytes' must be at least 0, "
                                      "not -1"],
        ["InvalidArgument", "EINVAL", "obj.put: argument 'expect_version' must be at least "
                                      "0, not -1"],
        ["InvalidArgument", "EINVAL", "obj.delete: argument 'expect_version' must be at "
                                      "least 0, not -1"],
        "returned",
    ]
    assert not (tmp_path / "s.txt").exists()
    # Only what passed the SDK's own checks reached the broker.
    assert sent == ["fs.read", "fs.read", "obj.put", "obj.delete", "fs.read"], sent


def test_a_topic_that_no_capability_could_name_cleanly_is_an_invalid_argument(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Were accepted as topics and refused later for want of a matching capability, with
    # a message that printed the newline (audit 4-b, F7).
    bad = ["a b", "", "deploy\nx", "dep*", "-lead"]
    calls = [f"ctx.human.ask('q', topic={t!r})" for t in bad]
    calls.append("ctx.human.ask('q', None, 'a b')")  # by position, as DESIGN writes it
    got, sent = _try_each(sup, make_image, calls)
    for topic, (kind, code, message) in zip([*bad, "a b"], got, strict=True):
        assert (kind, code) == ("InvalidArgument", "EINVAL"), (topic, message)
        assert message.startswith(f"human.ask: topic {topic!r} must be '*' or"), message
    assert sent == ["human.ask"] * (len(bad) + 1)


def test_a_required_argument_given_as_null_is_named_so_not_called_missing(
    sup: Supervisor, make_image: MakeImage
) -> None:
    got, sent = _try_each(sup, make_image, [
        "ctx.fs.read_text(None)",
        "ctx.syscall('fs.read', {})",
    ])
    assert got == [
        ["InvalidArgument", "EINVAL", "fs.read: argument 'path' must be str, got None"],
        ["InvalidArgument", "EINVAL", "fs.read: missing required argument 'path'"],
    ], got
    assert sent == ["fs.read", "fs.read"], sent
