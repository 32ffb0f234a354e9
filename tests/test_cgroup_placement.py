"""Where the supervisor's cgroup group goes: plan_placement() over described hierarchies.

Pure: every host here is written down (mounts, what each level offers, who else lives
there, what is writable, euid), so pure cgroup v2 hosts, crowded session scopes,
read-only cgroupfs and unprivileged users are covered from a host that has none of
them. describe_host() is checked on the rules-keeping FakeCgroup2 of test_cgroups.
"""

from __future__ import annotations

import os

from agentlibos.sandbox.cgroups import (
    DELEGATE_COMMAND,
    UNIFIED,
    CgroupHost,
    CgroupLevel,
    CgroupLimits,
    CgroupManager,
    HostDescription,
    Placement,
    Refusal,
    describe_host,
    detect,
    place,
    plan_layout,
    plan_placement,
)
from tests.test_cgroups import (
    HYBRID_CGROUP,
    HYBRID_FILES,
    HYBRID_MOUNTINFO,
    V1_CGROUP,
    V1_FILES,
    V1_MOUNTINFO,
    V2_MOUNTINFO,
    FakeCgroup2,
)

ALL = frozenset({"cpu", "io", "memory", "pids"})
SCOPE = "/user.slice/user-0.slice/session-1.scope"
SCOPE_DIR = f"/sys/fs/cgroup{SCOPE}"


def v2_host(own: str = SCOPE, offered: str = "memory") -> CgroupHost:
    return detect(V2_MOUNTINFO, f"0::{own}\n", files={
        f"/sys/fs/cgroup{own.rstrip('/')}/cgroup.controllers": offered,
        f"/sys/fs/cgroup{own.rstrip('/')}/cgroup.kill": "",
        "/proc/sys/kernel/osrelease": "6.18.0"})


def level(path: str, controllers: frozenset[str] = ALL, *, others: bool = False,
          writable: bool = True, exempt: bool = False, exists: bool = True,
          subtree: frozenset[str] = frozenset()) -> CgroupLevel:
    return CgroupLevel(path=path, directory=f"/sys/fs/cgroup{path}".rstrip("/") or "/",
                       controllers=controllers, subtree_control=subtree, others=others,
                       writable=writable, exempt=exempt, exists=exists)


ROOT = CgroupLevel(path="/", directory="/sys/fs/cgroup", controllers=ALL, exempt=True)


def pure_v2(own: CgroupLevel, *, euid: int = 0, root: CgroupLevel | None = ROOT,
            delegated: CgroupLevel | None = None) -> HostDescription:
    offered = " ".join(sorted(own.controllers))
    return HostDescription(host=v2_host(own.path, offered), euid=euid, own=own, root=root,
                           delegated=delegated)


def planned(d: HostDescription) -> Placement:
    p = plan_placement(d)
    assert isinstance(p, Placement), p
    return p


def refused(d: HostDescription) -> Refusal:
    p = plan_placement(d)
    assert isinstance(p, Refusal), p
    return p


# ------------------------------------------------------------------- v1 and hybrid


def test_a_v1_host_keeps_each_hierarchys_own_cgroup() -> None:
    host = detect(V1_MOUNTINFO, V1_CGROUP, files=V1_FILES)
    p = planned(HostDescription(host=host, euid=0))
    assert p.kind == "v1" and p.enable == ()
    assert p.bases["memory"] == "/sys/fs/cgroup/memory/system.slice/agentlibos.service"


def test_a_hybrid_host_keeps_its_own_cgroups_and_enables_nothing_on_cgroup2() -> None:
    host = detect(HYBRID_MOUNTINFO, HYBRID_CGROUP, files=HYBRID_FILES)
    d = HostDescription(host=host, euid=0, own=level("/", frozenset({"hugetlb"}), others=True,
                                                     exempt=True), root=ROOT)
    p = planned(d)
    assert p.kind == "v1" and p.enable == ()
    assert p.bases[UNIFIED] == "/sys/fs/cgroup/unified"
    assert "v1" in p.describe()


def test_a_hybrid_host_unprivileged_is_still_planned_and_fails_later_at_mkdir() -> None:
    # v1 has no process rule to plan around; setup() names the permission problem.
    host = detect(HYBRID_MOUNTINFO, HYBRID_CGROUP, files=HYBRID_FILES)
    assert planned(HostDescription(host=host, euid=1000)).kind == "v1"


# ------------------------------------------------------------------------ pure v2


def test_pure_v2_in_a_cgroup_of_its_own_uses_it() -> None:
    own = level("/system.slice/agentlibos.service")
    p = planned(pure_v2(own))
    assert p.kind == "own" and p.enable == ("memory", "pids", "cpu")
    assert p.bases[UNIFIED] == "/sys/fs/cgroup/system.slice/agentlibos.service"
    assert not p.base_exempt


def test_pure_v2_sitting_in_the_root_cgroup_uses_it_and_never_disables_there() -> None:
    p = planned(pure_v2(level("/", others=True, exempt=True)))
    assert p.kind == "own" and p.base_exempt
    assert p.bases[UNIFIED] == "/sys/fs/cgroup"


def test_pure_v2_in_a_crowded_session_scope_as_root_creates_a_cgroup_under_the_root() -> None:
    p = planned(pure_v2(level(SCOPE, others=True)))
    assert p.kind == "root" and p.base_exempt
    assert p.bases[UNIFIED] == "/sys/fs/cgroup"
    assert p.enable == ("memory", "pids", "cpu")
    assert "holds other processes" in p.why and "under the root" in p.describe()


def test_pure_v2_own_cgroup_offering_only_memory_as_root_goes_under_the_root() -> None:
    p = planned(pure_v2(level(SCOPE, frozenset({"memory"}))))
    assert p.kind == "root"
    assert "not offered pids cpu" in p.why


def test_pure_v2_without_pids_delegated_unprivileged_is_refused_naming_pids() -> None:
    r = refused(pure_v2(level(SCOPE, frozenset({"cpu", "memory"})), euid=1000))
    assert "not offered pids" in r.reason
    assert r.command == DELEGATE_COMMAND


def test_pure_v2_crowded_scope_unprivileged_is_refused_with_the_command() -> None:
    r = refused(pure_v2(level(SCOPE, others=True), euid=1000))
    assert "not root" in r.reason and "holds other processes" in r.reason
    assert r.message().endswith(f"to fix it run: {DELEGATE_COMMAND}")


def test_pure_v2_unprivileged_in_a_delegated_scope_of_its_own_uses_it() -> None:
    # What `systemd-run --user --scope -p Delegate=yes agentlibos serve` gives it.
    p = planned(pure_v2(level("/user.slice/user-1000.slice/user@1000.service/app.slice/"
                              "run-1.scope"), euid=1000))
    assert p.kind == "own"


def test_pure_v2_controllers_already_enabled_below_a_crowded_cgroup_need_no_write() -> None:
    own = level(SCOPE, others=True, subtree=frozenset({"memory", "pids", "cpu"}))
    assert planned(pure_v2(own, euid=1000)).kind == "own"


def test_pure_v2_on_a_read_only_cgroupfs_is_refused_even_as_root() -> None:
    r = refused(pure_v2(level(SCOPE, writable=False),
                        root=CgroupLevel("/", "/sys/fs/cgroup", ALL, writable=False,
                                         exempt=True)))
    assert "not writable" in r.reason


def test_pure_v2_in_a_containers_cgroup_namespace_is_refused_not_exempt() -> None:
    ns_root = CgroupLevel("/", "/sys/fs/cgroup", ALL, others=True, exempt=False)
    r = refused(pure_v2(level("/", others=True), root=ns_root))
    assert "cgroup namespace" in r.reason and r.command is not None


def test_pure_v2_as_root_when_the_root_lacks_a_controller_is_refused() -> None:
    root = CgroupLevel("/", "/sys/fs/cgroup", frozenset({"memory", "cpu"}), exempt=True)
    r = refused(pure_v2(level(SCOPE, others=True), root=root))
    assert "not offered pids" in r.reason


# ----------------------------------------------------------------------- delegated


def test_a_delegated_cgroup_is_used_whatever_the_own_cgroup_is() -> None:
    d = pure_v2(level(SCOPE, others=True), euid=1000, delegated=level("/agentlibos.slice"))
    p = planned(d)
    assert p.kind == "delegated" and p.bases[UNIFIED] == "/sys/fs/cgroup/agentlibos.slice"
    assert "delegated" in p.describe()


def test_a_delegated_cgroup_that_does_not_exist_is_refused() -> None:
    d = pure_v2(level(SCOPE), delegated=level("/nowhere", exists=False))
    assert "does not exist" in refused(d).reason


def test_a_delegated_cgroup_holding_processes_is_refused() -> None:
    d = pure_v2(level(SCOPE), euid=1000, delegated=level("/busy", others=True))
    r = refused(d)
    assert "holds other processes" in r.reason and r.command == DELEGATE_COMMAND


def test_a_delegated_cgroup_on_v1_must_exist_in_every_hierarchy() -> None:
    host = detect(V1_MOUNTINFO, V1_CGROUP, files=V1_FILES)
    r = refused(HostDescription(host=host, euid=0, delegated_v1={"memory": None}))
    assert "does not exist in the memory hierarchy" in r.reason


def test_no_cgroups_at_all_is_refused_with_the_reason() -> None:
    host = detect("", "", files={})
    assert "no usable cgroup hierarchy" in refused(HostDescription(host=host, euid=0)).reason


# --------------------------------------------------------- the layout of a placement


def test_a_root_placement_lays_the_group_out_under_the_root_and_enables_all_three() -> None:
    p = planned(pure_v2(level(SCOPE, frozenset({"memory"}), others=True)))
    lay = plan_layout(v2_host(SCOPE), "agentlibos-7", p)
    u = lay.unified()
    assert u is not None and u.serves >= {"memory", "pids", "cpu", "kill"}
    assert lay.group_dir(u) == "/sys/fs/cgroup/agentlibos-7"
    assert u.own_dir == SCOPE_DIR  # where it goes back to
    assert [w[0] for w in lay.subtree_control_writes()] == [
        "/sys/fs/cgroup/cgroup.subtree_control",
        "/sys/fs/cgroup/agentlibos-7/cgroup.subtree_control",
        "/sys/fs/cgroup/agentlibos-7/agents/cgroup.subtree_control"]


# ------------------------------------- describe_host + the manager, on the fake cgroup2


def crowded_fake() -> FakeCgroup2:
    fake = FakeCgroup2()
    fake.add("/sys/fs/cgroup/user.slice", subtree=("memory",))
    fake.add("/sys/fs/cgroup/user.slice/user-0.slice", subtree=("memory",))
    fake.add(SCOPE_DIR, procs=(os.getpid(), 1111))  # the login shell shares it
    return fake


def test_describe_host_reads_who_lives_where_and_what_is_offered() -> None:
    fake = crowded_fake()
    d = describe_host(v2_host(), euid=0, fs=fake)
    assert d.own is not None and d.root is not None
    assert (d.own.others, d.own.exempt, d.own.controllers) == (True, False,
                                                                frozenset({"memory"}))
    assert d.root.exempt and d.root.controllers == ALL


def test_as_root_in_a_crowded_scope_setup_moves_under_the_root_and_teardown_undoes_it() -> None:
    fake = crowded_fake()
    host = v2_host()
    p = place(host, euid=0, fs=fake)
    assert isinstance(p, Placement) and p.kind == "root"
    m = CgroupManager(host, "agentlibos-7", fs=fake, placement=p)
    m.setup()
    assert fake.where(os.getpid()) == "/sys/fs/cgroup/agentlibos-7/supervisor"
    assert fake.where(1111) == SCOPE_DIR  # nobody else was moved
    assert fake.nodes["/sys/fs/cgroup/agentlibos-7/agents"].subtree == {"memory", "pids", "cpu"}
    parent = m.create("1", CgroupLimits(64 << 20, 8, 1.0))
    child = m.create("2", CgroupLimits(pids_max=4), parent=parent)
    assert child.dirs == ("/sys/fs/cgroup/agentlibos-7/agents/1/2",)
    fake.write(child.procs_files[0], "4242")
    parent.kill()  # a parent's kill takes its children with it
    assert 4242 in fake.killed
    parent.remove()
    m.teardown()
    assert fake.where(os.getpid()) == SCOPE_DIR
    assert not fake.under("/sys/fs/cgroup/agentlibos-7")
    assert "/sys/fs/cgroup/agentlibos-7" not in fake.nodes
    # Never disabled at the root: other cgroups there may use them by now.
    assert fake.nodes["/sys/fs/cgroup"].subtree >= {"memory", "pids", "cpu"}


def test_unprivileged_in_a_crowded_scope_place_refuses_before_touching_anything() -> None:
    fake = crowded_fake()
    r = place(v2_host(), euid=1000, fs=fake)
    assert isinstance(r, Refusal) and r.command == DELEGATE_COMMAND
    assert fake.writes == []


def test_a_configured_cgroup_root_may_be_given_as_a_cgroupfs_path() -> None:
    fake = crowded_fake()
    fake.add("/sys/fs/cgroup/agentlibos.slice")
    d = describe_host(v2_host(), cgroup_root="/sys/fs/cgroup/agentlibos.slice", euid=0, fs=fake)
    assert d.delegated is not None and d.delegated.path == "/agentlibos.slice"
    assert planned(d).bases[UNIFIED] == "/sys/fs/cgroup/agentlibos.slice"


def test_the_package_face_names_everything_others_import_and_nothing_private() -> None:
    from agentlibos.sandbox import cgroups  # noqa: PLC0415

    assert all(hasattr(cgroups, n) for n in cgroups.__all__)
    assert not [n for n in cgroups.__all__ if n.startswith("_")]
    for used in ("CgroupManager", "CgroupLimits", "ProcessCgroup", "detect", "join",
                 "describe", "place", "Refusal", "UNIFIED", "CGROUPS_LAYER"):
        assert used in cgroups.__all__
