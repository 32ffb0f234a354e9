"""The runtime's own state directory is out of every brokered file call's reach
(providers/base.StateGuard, docs/threat-model.md): an agent whose capabilities cover a
directory holding ``$AGENTLIBOS_HOME`` can neither read nor rewrite the database, the
operator's config, images or logs, while its own default ``work/<pid>`` stays usable.
Real supervisors, real agents, real files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths
from agentlibos.errors import PermissionDenied
from agentlibos.providers.base import StateGuard
from agentlibos.providers.fs import LocalFs
from agentlibos.supervisor import Supervisor
from tests.conftest import default_sandbox
from tests.helpers import MakeImage

PROBE = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = {}
    for name, (op, path) in args["probes"].items():
        try:
            if op == "read":
                ctx.fs.read_text(path)
            elif op == "write":
                ctx.fs.write_text(path, "[sandbox]\\ndisable = [\\"seccomp\\"]\\n")
            elif op == "list":
                out[name + ":names"] = sorted(e["name"] for e in ctx.fs.list(path))
            elif op == "delete":
                ctx.fs.delete(path, recursive=True)
            elif op == "spawn":
                ctx.proc.wait(ctx.proc.spawn("probe", args={"probes": {}}, cwd=path))
            out[name] = "ok"
        except LibOSError as e:
            out[name] = f"{type(e).__name__}: {e.message}"
    return out
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project that holds the runtime's home (`--cwd ~` with the default home)."""
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "proj" / "src" / "a.txt").write_text("mine")
    return tmp_path / "proj"


@pytest.fixture
def inner_sup(project: Path) -> Iterator[Supervisor]:
    s = Supervisor(Paths(project / ".state"), sandbox=default_sandbox())
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _run(sup: Supervisor, image: Path, probes: dict[str, Any], cwd: str | None) -> Any:
    pid = sup.submit_run(str(image), {"probes": probes}, cwd=cwd)
    assert sup.run_until(lambda: not sup.tree_live(pid), 60)
    rec = sup.store.get_process(pid)
    assert rec.exit_reason == "returned", rec.error
    return pid, rec.result


def test_an_agent_covering_the_home_cannot_touch_the_runtimes_state(
    inner_sup: Supervisor, make_image: MakeImage, project: Path
) -> None:
    sup, home = inner_sup, project / ".state"
    image = make_image("probe", PROBE, caps=["fs:rw:./**", "fs:delete:./**", "proc:spawn:*",
                                             "proc:wait:*"])
    (project / "link").symlink_to(home)  # a symlink into the home is the home
    config_before = (home / "config.toml").read_bytes() if (home / "config.toml").exists() \
        else None
    (home / "notes").mkdir()  # the user's own, kept in the home: not the runtime's
    pid, out = _run(sup, image, {
        "config": ["write", ".state/config.toml"],
        "db": ["read", ".state/state.db"],
        "wal": ["write", ".state/state.db-journal"],
        "logs": ["list", ".state/logs"],
        "images": ["write", ".state/images/x/agent.py"],
        "via_link": ["read", "link/state.db"],
        "delete_all": ["delete", "."],
        "delete_home": ["delete", ".state"],
        "spawn_in_home": ["spawn", ".state/work"],
        "own_file": ["write", "src/b.txt"],
        "list_project": ["list", "."],
        "list_home": ["list", ".state"],
        "notes": ["write", ".state/notes/n.txt"],
    }, cwd=str(project))
    refused = "lies in the runtime's state directory"
    for name in ("config", "db", "wal", "logs", "images", "via_link", "spawn_in_home"):
        assert out[name].startswith("PermissionDenied") and refused in out[name], (name, out)
    for name in ("delete_all", "delete_home"):
        assert out[name].startswith("PermissionDenied"), (name, out)
        assert "is or holds the runtime's state directory" in out[name]
    # Names only, and what is not the runtime's stays the capabilities' to decide.
    assert {"logs", "state.db"} <= set(out["list_home:names"])
    assert out["notes"] == "ok" and (home / "notes" / "n.txt").exists()
    # The project itself is the agent's: it writes, and sees the home's name only.
    assert out["own_file"] == "ok" and (project / "src" / "b.txt").exists()
    assert ".state" in out["list_project:names"]
    assert (project / "src" / "a.txt").read_text() == "mine"  # the delete did nothing
    after = (home / "config.toml").read_bytes() if (home / "config.toml").exists() else None
    assert after == config_before
    denied = [(r.call, r.verdict) for r in sup.store.audit_records(pid=pid)
              if r.verdict == "deny"]
    assert ("fs.write", "deny") in denied and ("fs.read", "deny") in denied
    assert ("fs.delete", "deny") in denied
    assert sup.store.verify_audit().ok


def test_an_agent_in_its_default_cwd_keeps_its_own_work_and_nothing_else_of_the_home(
    sup: Supervisor, make_image: MakeImage
) -> None:
    image = make_image("probe", PROBE, caps=["fs:rw:/**", "fs:delete:/**"])
    first, _ = _run(sup, image, {"mine": ["write", "x.txt"]}, cwd=None)
    pid, out = _run(sup, image, {
        "mine": ["write", "notes/../y.txt"],
        "read_mine": ["read", "y.txt"],
        "sibling": ["read", f"../{first}/x.txt"],
        "db": ["read", "../../state.db"],
        "logs": ["list", "../../logs"],
    }, cwd=None)
    assert (out["mine"], out["read_mine"]) == ("ok", "ok"), out
    for name in ("sibling", "db", "logs"):
        assert out[name].startswith("PermissionDenied"), (name, out)
    assert (sup.paths.work / str(pid) / "y.txt").read_text().startswith("[sandbox]")


def test_the_guard_checks_the_real_path_and_its_own_work_prefix_exactly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "work" / "12").mkdir(parents=True)
    (home / "work" / "123").mkdir()
    guard = StateGuard(LocalFs(), home)
    own = str(home / "work" / "12")
    assert guard.resolve(own, "a.txt").real == f"{own}/a.txt"
    with pytest.raises(PermissionDenied, match="state directory"):
        guard.resolve(own, "../123/a.txt")  # a sibling sharing its digits' prefix
    for entry in ("home/config.toml", "home/state.db-wal", "home/run/x", "home/jit"):
        with pytest.raises(PermissionDenied):
            guard.resolve(str(tmp_path), entry)
    assert guard.resolve(str(tmp_path), "home").real == str(home)  # its names: yes
    assert guard.resolve(str(tmp_path), "home/mine").real == str(home / "mine")
    assert guard.resolve(str(tmp_path), "homework").real == str(tmp_path / "homework")
    for top in (tmp_path, home):
        with pytest.raises(PermissionDenied, match="is or holds the runtime's state"):
            guard.delete(str(top), recursive=True)
    assert home.exists()
