"""`agentlibos doctor`: which isolation layers this host can enforce, and why not where not.

Two kinds of evidence: what each layer's module detects about the host, and a probe --
a real AgentProcess started through a throw-away supervisor with the operator's config
-- that reports from inside what actually took. The verdict is the probe's.

Each layer is probed on its own: the probe runs with every layer the operator did not
disable made *optional*, so one that cannot be applied (cgroups on a host without a
usable cgroup, say) is recorded as missing with its reason while the others are still
applied and verified from inside. The verdict then asks whether every layer the
operator *requires* took. It also says where the supervisor put its cgroups (its own
cgroup, one it created under the root, a delegated one, or cgroup v1).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlibos.config import Paths
from agentlibos.errors import LibOSError
from agentlibos.jit import deno
from agentlibos.providers.fs import discard_tree
from agentlibos.sandbox import cgroups, landlock, namespaces
from agentlibos.sandbox.profile import LAYERS, SandboxConfig
from agentlibos.supervisor import Supervisor

PROBE_IMAGE = Path(__file__).resolve().parent.parent / "images" / "doctor-probe"


@dataclass
class LayerReport:
    layer: str
    mode: str  # required | optional | disabled
    host: str  # what the layer's module says about this host
    applied: bool = False
    why_missing: str | None = None


@dataclass
class DoctorReport:
    kernel: str
    privileges: str
    deno: str = ""  # what JIT tools run on
    layers: list[LayerReport] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    probe_error: str | None = None
    # Where the supervisor made its cgroups (cgroups.Placement.describe()), or why none.
    cgroup_placement: str | None = None

    @property
    def ok(self) -> bool:
        """The default profile (every required layer) was enforced on the probe."""
        if self.probe is None:
            return False
        return all(lr.applied for lr in self.layers if lr.mode == "required")


def _describe(layer: str) -> str:
    try:
        if layer == "cgroups":
            return cgroups.describe()
        if layer == "namespaces":
            return namespaces.describe()
        if layer == "landlock":
            return landlock.describe()
        if layer == "seccomp":
            # Imported here: it loads libseccomp, which a host may lack.
            from agentlibos.sandbox import seccomp  # noqa: PLC0415

            return str(seccomp.describe())
        return "setrlimit: always available"
    except (LibOSError, OSError, ImportError) as e:
        return f"cannot tell: {e}"


def run(config: SandboxConfig) -> DoctorReport:
    report = DoctorReport(
        kernel=f"Linux {platform.release()} ({platform.machine()})",
        privileges=("root" if os.geteuid() == 0 else f"uid {os.geteuid()}")
        + f", Python {platform.python_version()}",
        deno=deno.describe(),
    )
    for layer in LAYERS:
        report.layers.append(LayerReport(layer, config.layer_mode(layer), _describe(layer)))
    # Every layer the operator did not disable is tried, each on its own: a layer that
    # fails is recorded with its reason instead of stopping the probe before the others.
    probe_config = dataclasses.replace(
        config, optional=frozenset(LAYERS) - config.disabled)
    home = Path(tempfile.mkdtemp(prefix="alos-doctor-", dir="/tmp"))
    try:
        with Supervisor(Paths(home), sandbox=probe_config) as sup:
            report.cgroup_placement = sup.sandbox.cgroup_placement
            pid = sup.submit_run(str(PROBE_IMAGE), {})
            sup.run_until(lambda: not sup.tree_live(pid), 60)
            rec = sup.store.get_process(pid)
            if rec.exit_reason == "returned":
                report.probe = dict(rec.result or {})
            else:
                report.probe_error = f"{rec.exit_reason}: {rec.error}"
            missing = {m.split(":", 1)[0]: m.split(":", 1)[1].strip()
                       for m in rec.missing_layers if ":" in m}
            for lr in report.layers:
                lr.applied = lr.layer in rec.layers
                if not lr.applied:
                    lr.why_missing = missing.get(lr.layer) or report.probe_error
    except LibOSError as e:
        report.probe_error = e.message
    finally:
        discard_tree(home)
    return report


def format_report(r: DoctorReport) -> str:
    lines = [f"kernel: {r.kernel}; running as {r.privileges}",
             f"JIT tools: {r.deno}",
             f"cgroups placement: {r.cgroup_placement or 'not attempted'}", ""]
    for lr in r.layers:
        mark = "ok " if lr.applied else ("-- " if lr.mode != "required" else "NO ")
        lines.append(f"{mark} {lr.layer:<11} [{lr.mode}] {lr.host}")
        if not lr.applied and lr.why_missing:
            lines.append(f"    {'':<11} not applied: {lr.why_missing}")
    lines.append("")
    if r.probe is not None:
        p = r.probe
        st = p.get("status", {})
        lines.append(
            f"probe (an AgentProcess looking from inside): pid {p.get('pid')}, sees pids "
            f"{p.get('visible_pids')}, NoNewPrivs {st.get('NoNewPrivs')}, Seccomp "
            f"{st.get('Seccomp')}, CapEff {st.get('CapEff')}, uid {st.get('Uid', '?').split()[0]}, "
            f"AF_INET socket {p.get('inet_socket')}, host file {p.get('host_file')}, "
            f"cgroups {', '.join(p.get('cgroup') or ['?'])}")
    else:
        lines.append(f"probe failed: {r.probe_error}")
    lines.append("")
    lines.append("verdict: the default profile " + ("IS enforced on this host" if r.ok else
                 "CANNOT be enforced on this host (see above)"))
    return "\n".join(lines)
