"""`agentlibos doctor` reports per layer, and its verdict comes from a real probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentlibos.sandbox import doctor
from agentlibos.sandbox.profile import LAYERS, SandboxConfig
from tests.test_cli import cli

pytestmark = pytest.mark.privileged


def test_doctor_enforces_every_layer_of_the_default_profile_here() -> None:
    report = doctor.run(SandboxConfig())
    assert report.probe is not None, report.probe_error
    assert [lr.layer for lr in report.layers] == list(LAYERS)
    assert all(lr.applied for lr in report.layers), doctor.format_report(report)
    assert report.ok
    st = report.probe["status"]
    assert (st["NoNewPrivs"], st["Seccomp"]) == ("1", "2")
    assert report.probe["visible_pids"] == [1]
    assert report.probe["inet_socket"].startswith("refused")
    text = doctor.format_report(report)
    assert "IS enforced" in text and "ok  landlock" in text


def test_doctor_says_what_is_missing_and_fails_when_a_required_layer_is(
    home: Path, tmp_path: Path
) -> None:
    report = doctor.run(SandboxConfig(disabled=frozenset({"landlock"})))
    ll = next(lr for lr in report.layers if lr.layer == "landlock")
    assert (ll.mode, ll.applied) == ("disabled", False)
    assert ll.why_missing is not None and "disabled" in ll.why_missing
    assert report.ok  # disabled by the operator: not required, so still "enforced"

    cfg = tmp_path / "config.toml"
    cfg.write_text('[sandbox]\noptional = ["seccomp"]\ndisable = ["landlock"]\n')
    p = cli(home, "--config", str(cfg), "doctor", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    modes = {lr["layer"]: lr["mode"] for lr in out["layers"]}
    assert modes["seccomp"] == "optional" and modes["landlock"] == "disabled"
    assert out["ok"] is True


def test_doctor_says_where_the_supervisor_put_its_cgroups() -> None:
    report = doctor.run(SandboxConfig())
    assert report.cgroup_placement is not None
    assert report.cgroup_placement.split(" ", 1)[0] in ("own", "created", "delegated", "v1:")
    assert "cgroups placement: " in doctor.format_report(report)


def test_with_cgroups_forced_to_fail_the_other_layers_still_report_yes(
    home: Path, tmp_path: Path
) -> None:
    report = doctor.run(SandboxConfig(cgroup_root="/agentlibos-doctor-test-nowhere"))
    by = {lr.layer: lr for lr in report.layers}
    assert not by["cgroups"].applied and by["cgroups"].mode == "required"
    assert by["cgroups"].why_missing is not None
    assert "does not exist" in by["cgroups"].why_missing
    assert [lr.layer for lr in report.layers if lr.applied] == [
        "namespaces", "rlimits", "landlock", "seccomp"], doctor.format_report(report)
    assert report.probe is not None and report.probe["status"]["Seccomp"] == "2"
    assert not report.ok  # cgroups is required by this config
    assert report.cgroup_placement is not None and report.cgroup_placement.startswith("none:")

    cfg = tmp_path / "config.toml"
    cfg.write_text('[sandbox]\ncgroup_root = "/agentlibos-doctor-test-nowhere"\n')
    p = cli(home, "--config", str(cfg), "doctor", "--json")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert {lr["layer"]: lr["applied"] for lr in out["layers"]} == {
        "cgroups": False, "namespaces": True, "rlimits": True, "landlock": True,
        "seccomp": True}


def test_doctor_exits_nonzero_when_the_probe_cannot_run(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    # A memory ceiling far too small for Python: the probe dies, the verdict is no.
    cfg.write_text('[limits.ceiling]\nmemory = "2MiB"\n')
    p = cli(home, "--config", str(cfg), "doctor")
    assert p.returncode == 1
    assert "CANNOT be enforced" in p.stdout


def test_a_bad_config_is_one_line_naming_the_file(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[sandbox]\noptional = ["selinux"]\n')
    p = cli(home, "--config", str(cfg), "doctor")
    assert p.returncode == 2
    assert "config.toml" in p.stderr and "selinux" in p.stderr
    assert "Traceback" not in p.stderr
