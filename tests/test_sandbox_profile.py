"""The sandbox as data: config parsing, effective limits and profile decisions (pure)."""

from __future__ import annotations

import pytest

from agentlibos.errors import LimitExceeded, PolicyError
from agentlibos.kernel.image import Limits
from agentlibos.sandbox.profile import (
    LAYERS,
    HostView,
    LimitAboveCeiling,
    ParentBudget,
    SandboxConfig,
    SandboxProfile,
    build_profile,
    build_tool_profile,
    default_ceiling,
    effective_limits,
    parse_config,
)

GiB = 1 << 30
MiB = 1 << 20

VIEW = HostView(ro_paths=("/usr", "/opt/py"), symlinks=(("/lib", "usr/lib"),),
                dev_nodes=("/dev/null", "/dev/urandom"))


def profile(config: SandboxConfig, uid: int = 0) -> SandboxProfile:
    return build_profile(config=config, view=VIEW, image_dir="/img", scratch="/s/1",
                         broker_socket="/run/b.sock", new_root="/run/root",
                         cgroup_procs=("/cg/1/cgroup.procs",), seccomp_bpf=b"\0" * 8,
                         supervisor_uid=uid, supervisor_gid=uid)


def test_the_default_config_requires_every_layer() -> None:
    p = profile(SandboxConfig())
    assert p.modes == {layer: "required" for layer in LAYERS}
    assert p.namespaces == ("mnt", "pid", "net", "ipc", "uts")
    assert p.agent_ids == (65534, 65534)
    assert p.mount is not None and p.mount.ro_binds == ("/usr", "/opt/py", "/img")
    # Scratch and the broker socket are bound read-write at fixed places inside, so the
    # agent sees nothing of the host's layout ($AGENTLIBOS_HOME).
    assert p.mount.rw_binds == ()
    assert p.mount.moved == (("/s/1", "/scratch"), ("/run/b.sock", "/run/agentlibos/broker.sock"))
    assert p.mount.tmp_dir == "/scratch"
    assert p.mount.inside("/s/1") == "/scratch" and p.mount.inside("/usr") == "/usr"
    assert p.rlimits == {"core": 0, "nofile": 1024, "fsize": 1 << 30}
    assert "/run/b.sock" in p.landlock_ro and p.landlock_rw == ("/s/1", "/dev/null")


def test_an_unprivileged_supervisor_gets_a_user_namespace_and_keeps_its_uid() -> None:
    p = profile(SandboxConfig(), uid=1000)
    assert p.namespaces[0] == "user"
    assert p.id_map == (1000, 1000)
    assert p.agent_ids is None  # only the supervisor's own id is mapped


def test_disabled_layers_are_not_prepared_and_optional_ones_are() -> None:
    cfg = SandboxConfig(disabled=frozenset({"seccomp", "namespaces"}),
                        optional=frozenset({"cgroups"}))
    p = profile(cfg)
    assert p.modes["seccomp"] == "disabled" and p.seccomp_bpf == b""
    assert p.namespaces == () and p.mount is None and p.agent_ids is None
    assert p.modes["cgroups"] == "optional" and p.cgroup_procs == ("/cg/1/cgroup.procs",)


def test_a_profile_survives_the_trip_to_the_zygote() -> None:
    p = profile(SandboxConfig())
    assert SandboxProfile.from_json(p.to_json()) == p


def test_a_tool_profile_sees_deno_and_its_tool_but_no_broker_socket() -> None:
    p = build_tool_profile(config=SandboxConfig(),
                           exe_files=("/venv/bin/deno", "/usr/lib/x/libc.so.6"),
                           symlinks=(), read_only_dirs=("/pkg/jit", "/home/jit/7/t"),
                           scratch="/s/t1", new_root="/run/root", cgroup_procs=(),
                           seccomp_bpf=b"\0" * 8, supervisor_uid=0, supervisor_gid=0)
    assert p.mount is not None
    assert p.mount.ro_binds == ("/venv/bin/deno", "/usr/lib/x/libc.so.6", "/pkg/jit",
                                "/home/jit/7/t")
    assert p.mount.rw_binds == ("/s/t1",)
    assert not any("sock" in x for x in (*p.landlock_ro, *p.landlock_rw))


def test_limits_take_image_values_then_defaults_lowered_to_ceilings() -> None:
    cfg = SandboxConfig(
        default_limits=Limits(memory_max_bytes=512 << 20, pids_max=64, cpu_max_cores=1.0,
                              wall_limit_s=3600.0),
        ceiling_limits=Limits(memory_max_bytes=1 << 30, pids_max=32),
    )
    eff = effective_limits(Limits(memory_max_bytes=1 << 30, cpu_max_cores=2.0), cfg)
    # pids: the image asked nothing, so the default (64) is lowered to the ceiling (32).
    assert eff == Limits(memory_max_bytes=1 << 30, pids_max=32, cpu_max_cores=2.0,
                         wall_limit_s=3600.0)


CEILING = SandboxConfig(ceiling_limits=Limits(memory_max_bytes=4 * GiB, pids_max=1024,
                                              cpu_max_cores=16.0, wall_limit_s=86400.0))


@pytest.mark.parametrize(("asked", "limit", "words"), [
    (Limits(memory_max_bytes=64 * GiB), "memory", "memory 64GiB, above the ceiling of 4GiB"),
    (Limits(pids_max=100_000), "pids", "pids 100000, above the ceiling of 1024"),
    (Limits(cpu_max_cores=64.0), "cpu", "cpu 64 cores, above the ceiling of 16 cores"),
    (Limits(wall_limit_s=9999 * 3600.0), "wall", "wall 9999h, above the ceiling of 24h"),
])
def test_an_image_asking_above_the_ceiling_is_refused_naming_the_limit(
    asked: Limits, limit: str, words: str
) -> None:
    with pytest.raises(LimitAboveCeiling) as e:
        effective_limits(asked, CEILING)
    assert isinstance(e.value, LimitExceeded) and e.value.code == "ELIMIT"
    assert e.value.limit == limit and words in e.value.message
    assert "[limits.ceiling]" in e.value.message and "\n" not in e.value.message


def test_an_image_asking_exactly_the_ceiling_gets_it() -> None:
    assert effective_limits(Limits(pids_max=1024), CEILING).pids_max == 1024


def test_the_default_ceiling_is_4gib_or_half_the_ram_1024_pids_the_cores_and_24h() -> None:
    assert default_ceiling(23 * GiB, 16) == Limits(memory_max_bytes=4 * GiB, pids_max=1024,
                                                  cpu_max_cores=16.0, wall_limit_s=86400.0)
    assert default_ceiling(2 * GiB, 2).memory_max_bytes == 1 * GiB
    assert default_ceiling(None, None).memory_max_bytes == 4 * GiB
    assert default_ceiling(None, None).cpu_max_cores is None


def test_the_built_in_config_has_a_ceiling_and_defaults_fit_under_it() -> None:
    cfg = SandboxConfig()
    c = cfg.ceiling_limits
    assert c.memory_max_bytes is not None and c.pids_max == 1024
    assert c.wall_limit_s == 86400.0 and c.cpu_max_cores is not None
    effective_limits(Limits(), cfg)  # an image asking for nothing always starts


def test_a_config_raising_one_ceiling_keeps_the_others() -> None:
    cfg = parse_config('[limits.ceiling]\nmemory = "64GiB"\n', "c.toml")
    assert cfg.ceiling_limits.memory_max_bytes == 64 * GiB
    assert cfg.ceiling_limits.pids_max == 1024
    assert effective_limits(Limits(memory_max_bytes=32 * GiB), cfg).memory_max_bytes == 32 * GiB


PARENT = ParentBudget(Limits(memory_max_bytes=256 * MiB, pids_max=8, cpu_max_cores=1.0,
                             wall_limit_s=60.0), wall_left_s=42.0)


def test_a_child_asking_for_more_than_its_parent_gets_the_parents_and_the_wall_left() -> None:
    eff = effective_limits(Limits(memory_max_bytes=512 * MiB, pids_max=64, cpu_max_cores=2.0,
                                  wall_limit_s=3600.0), CEILING, parent=PARENT)
    assert eff == Limits(memory_max_bytes=256 * MiB, pids_max=8, cpu_max_cores=1.0,
                         wall_limit_s=42.0)


def test_a_child_asking_for_less_than_its_parent_keeps_its_own() -> None:
    eff = effective_limits(Limits(memory_max_bytes=64 * MiB, pids_max=4, cpu_max_cores=0.5,
                                  wall_limit_s=10.0), CEILING, parent=PARENT)
    assert eff == Limits(memory_max_bytes=64 * MiB, pids_max=4, cpu_max_cores=0.5,
                         wall_limit_s=10.0)


def test_a_child_of_a_parent_without_a_wall_limit_keeps_its_own_wall() -> None:
    eff = effective_limits(Limits(wall_limit_s=10.0), CEILING,
                           parent=ParentBudget(Limits(), wall_left_s=None))
    assert eff.wall_limit_s == 10.0


def test_a_child_of_a_parent_past_its_wall_gets_no_time_at_all() -> None:
    eff = effective_limits(Limits(), CEILING, parent=ParentBudget(Limits(), wall_left_s=-3.0))
    assert eff.wall_limit_s == 0.0


def test_a_child_above_the_ceiling_is_refused_even_under_a_roomy_parent() -> None:
    with pytest.raises(LimitAboveCeiling):
        effective_limits(Limits(pids_max=5000), CEILING,
                         parent=ParentBudget(Limits(pids_max=10_000)))


def test_the_config_names_a_delegated_cgroup_root() -> None:
    cfg = parse_config('[sandbox]\ncgroup_root = "/agentlibos.slice"\n', "c.toml")
    assert cfg.cgroup_root == "/agentlibos.slice"
    with pytest.raises(PolicyError, match="cgroup_root must be an absolute cgroup path"):
        parse_config('[sandbox]\ncgroup_root = "relative"\n', "c.toml")


def test_the_config_file_sets_layers_limits_and_jit() -> None:
    cfg = parse_config(
        '[sandbox]\noptional = ["landlock"]\ndisable = ["seccomp"]\nagent_uid = -1\n'
        'user_namespace = "always"\nnofile = 256\nfsize = "16MiB"\n'
        'read_only_paths = ["/models"]\n'
        '[limits]\nmemory = "1GiB"\nwall = "2h"\n[limits.ceiling]\npids = 200\n'
        '[jit]\nmemory = "64MiB"\ntimeout = "5s"\nidle = "1m"\nheap = "48MiB"\n', "c.toml")
    assert cfg.layer_mode("landlock") == "optional"
    assert cfg.layer_mode("seccomp") == "disabled"
    assert cfg.layer_mode("cgroups") == "required"
    assert (cfg.agent_uid, cfg.user_namespace, cfg.nofile, cfg.fsize_bytes) == (
        None, "always", 256, 16 << 20)
    assert cfg.read_only_paths == ("/models",)
    assert cfg.default_limits.memory_max_bytes == 1 << 30
    assert cfg.default_limits.wall_limit_s == 7200.0
    assert cfg.default_limits.pids_max == 64  # the built-in default, kept
    assert cfg.ceiling_limits.pids_max == 200
    assert cfg.tool_limits.memory_max_bytes == 64 << 20
    assert (cfg.tool_timeout_s, cfg.tool_idle_s, cfg.tool_heap_mb) == (5.0, 60.0, 48)


@pytest.mark.parametrize(("text", "needle"), [
    ("[sandbox\n", "not valid TOML"),
    ("[network]\n", "unknown section"),
    ('[sandbox]\noptional = ["selinux"]\n', "selinux"),
    ("[sandbox]\ncolour = 1\n", "colour"),
    ('[sandbox]\nuser_namespace = "sometimes"\n', "auto, always or never"),
    ('[limits]\nmemory = "lots"\n', "cannot parse 'lots'"),
    ("[jit]\nthreads = 4\n", "[jit] takes"),
])
def test_a_bad_config_names_the_file_and_the_problem(text: str, needle: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_config(text, "my-config.toml")
    assert "my-config.toml" in e.value.message and needle in e.value.message
