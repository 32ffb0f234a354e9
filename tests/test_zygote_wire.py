"""A spawn request's wire form (zygote/channel.py, encode_spawn): a JSON head the zygote
routes by, then the spec's JSON, which it passes on without decoding it."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from agentlibos.zygote.channel import SPEC_SEP, decode_head, encode_spawn
from agentlibos.zygote.child import START_FAILED_STATUS, decode_spec, parse_report


def _spec(**extra: Any) -> dict[str, Any]:
    return {"pid": 7, "title": "agentlibos: 7 a\u00e9\x00b",  # a NUL inside a string
            "pool": "k1", "pool_cgroup": "p9-3", "command": ["ls"],
            "profile": {"namespaces": ["mnt", "pid"],
                        "cgroup_procs": ["/sys/fs/cgroup/g/agents/7/self/cgroup.procs"]},
            **extra}


def test_the_head_carries_what_the_zygote_routes_by_and_the_spec_passes_intact() -> None:
    spec = _spec()
    head, raw = decode_head(encode_spawn("exec", 7, spec))
    assert head == {"op": "exec", "pid": 7, "route": {
        "pool": "k1", "pool_cgroup": "p9-3",
        "cgroup_procs": ["/sys/fs/cgroup/g/agents/7/self/cgroup.procs"],
        "namespaces": ["mnt", "pid"], "command": True}}
    # The NUL in the title is escaped by json.dumps: the separator is the first NUL.
    assert SPEC_SEP not in raw
    assert json.loads(raw) == spec


def test_a_spec_without_a_profile_or_pool_routes_cold() -> None:
    head, raw = decode_head(encode_spawn("spawn", 3, {"pid": 3}))
    assert head["route"] == {"pool": None, "pool_cgroup": None, "cgroup_procs": [],
                             "namespaces": [], "command": False}
    assert json.loads(raw) == {"pid": 3}


def test_other_requests_are_plain_json() -> None:
    assert decode_head(json.dumps({"op": "exit"}).encode()) == ({"op": "exit"}, b"")
    with pytest.raises(ValueError, match="not a JSON object"):
        decode_head(b"[1, 2]")


def test_the_child_decodes_its_spec_and_learns_its_pid_namespace() -> None:
    r, w = os.pipe()
    try:
        spec = decode_spec(json.dumps(_spec()).encode(), w, pid_ns_ready=True)
        assert spec["pid_ns_ready"] is True and spec["pool_cgroup"] == "p9-3"
        assert "pid_ns_ready" not in decode_spec(b'{"pid": 1}', w, pid_ns_ready=False)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("garbled", [b"{not json", b"[1]", b""])
def test_a_child_with_a_garbled_spec_reports_and_exits_without_returning(
        garbled: bytes) -> None:
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            decode_spec(garbled, w, pid_ns_ready=False)
        finally:
            os._exit(99)  # it returned (or raised): the test sees 99
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == START_FAILED_STATUS
    got = parse_report(report)
    assert got["ok"] is False and "garbled spawn request" in got["error"]
