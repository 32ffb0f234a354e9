"""Hostile agents: Python that ignores the SDK and attacks the host directly.

Every attack runs as a real AgentProcess under the default sandbox profile (every layer
required), and looks from inside. Each must be contained; the supervisor must survive
and keep serving; the outcome must show in the process table and the audit.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentlibos.config import Paths, SupervisorConfig
from agentlibos.sandbox.profile import LAYERS, SandboxConfig
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, log_of, run_proc

pytestmark = pytest.mark.privileged


# Each probe returns what happened as data; the tests assert on it.
PROBES = r'''
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)

def attempt(fn):
    try:
        r = fn()
        return {"ok": True, "value": r if isinstance(r, (int, str, bool, type(None))) else str(r)}
    except OSError as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}

def raw(nr, *args):
    def call():
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r
    return attempt(call)

def read(path):
    def f():
        with open(path, "rb") as fh:
            return fh.read(64).decode(errors="replace")
    return attempt(f)

def pdeathsig():
    sig = ctypes.c_int(-1)
    libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
    return sig.value

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out
'''


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    s = tmp_path / "host-secret.txt"
    s.write_text("the host's secret")
    s.chmod(0o644)  # readable by anyone on the host: only the sandbox keeps it out
    return s


def hostile(make_image: MakeImage, name: str, body: str, **kw: Any) -> Path:
    return make_image(name, PROBES + "\ndef main(ctx, args):\n" + body, **kw)


def test_inside_the_sandbox_every_layer_is_in_place(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = hostile(make_image, "inspect", """
    st = status()
    return {"status": {k: st.get(k) for k in ("NoNewPrivs", "Seccomp", "CapEff", "CapBnd",
                                               "Uid", "NSpid")},
            "pid": os.getpid(), "ppid": os.getppid(),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "root": sorted(os.listdir("/")), "hostname": socket.gethostname(),
            "cgroup": open("/proc/self/cgroup").read(), "pdeathsig": pdeathsig(),
            "rlimits": {n: __import__("resource").getrlimit(getattr(__import__("resource"), n))
                        for n in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_FSIZE")}}
""")
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    r = rec.result
    assert r["status"]["NoNewPrivs"] == "1"
    assert r["status"]["Seccomp"] == "2"
    assert r["status"]["CapEff"] == "0000000000000000"
    assert r["status"]["CapBnd"] == "0000000000000000"
    assert r["status"]["Uid"].split()[0] == "65534"
    assert r["pid"] == 1 and r["ppid"] == 0 and r["pids"] == [1]
    assert r["hostname"] == "agentlibos"
    # It dies with the zygote even though the uid switch cleared the first setting.
    assert r["pdeathsig"] == 9
    assert r["rlimits"] == {"RLIMIT_CORE": [0, 0], "RLIMIT_NOFILE": [1024, 1024],
                            "RLIMIT_FSIZE": [1 << 30, 1 << 30]}
    assert "home" not in r["root"] and "etc" in r["root"]
    assert f"/{rec.pid}" in r["cgroup"]
    assert set(rec.layers) == set(LAYERS)
    assert rec.missing_layers == []
    contain = [a for a in sup.store.audit_records(pid=rec.pid) if a.call == "proc.contain"]
    assert contain and set(contain[0].detail["layers"]) == set(LAYERS)


def test_with_a_user_namespace_every_layer_holds_too(
    paths: Paths, make_image: MakeImage, secret: Path
) -> None:
    # What an unprivileged supervisor gets: a user namespace lends the child the
    # capabilities the other namespaces need, and the pid namespace is entered by a
    # second fork in the child (the zygote cannot make one without privilege).
    img = hostile(make_image, "userns", """
    st = status()
    return {"status": {k: st.get(k) for k in ("NoNewPrivs", "Seccomp", "CapEff", "Uid")},
            "pid": os.getpid(), "pids": sorted(int(p) for p in os.listdir("/proc")
                                               if p.isdigit()),
            "secret": read(args["secret"]), "userns": os.readlink("/proc/self/ns/user")}
""")
    host_userns = os.readlink("/proc/self/ns/user")
    with Supervisor(paths, sandbox=SandboxConfig(user_namespace="always")) as sup:
        rec = run_proc(sup, img, {"secret": str(secret)})
    assert rec.exit_reason == "returned", rec.error
    r = rec.result
    assert set(rec.layers) == set(LAYERS)
    assert (r["status"]["NoNewPrivs"], r["status"]["Seccomp"]) == ("1", "2")
    assert r["status"]["CapEff"] == "0000000000000000"
    assert r["pid"] == 1 and r["pids"] == [1]
    assert r["secret"]["ok"] is False
    assert r["userns"] != host_userns


def test_raw_reads_and_writes_outside_scratch_fail(
    sup: Supervisor, make_image: MakeImage, secret: Path
) -> None:
    img = hostile(make_image, "snoop", """
    home = args["home"]
    return {
        "secret": read(args["secret"]),
        "etc_hostname": read("/etc/hostname"),
        "state_db": read(home + "/state.db"),
        "control_sock": attempt(lambda: socket.socket(socket.AF_UNIX).connect(
            home + "/run/control.sock")),
        "other_scratch": attempt(lambda: [n for n in os.listdir(home + "/scratch")
                                          if n != str(ctx.proc.getpid())]),
        "write_image": attempt(lambda: open(args["image"] + "/evil.py", "w")),
        "write_root": attempt(lambda: open("/evil", "w")),
        "write_usr": attempt(lambda: open("/usr/evil", "w")),
        "write_proc": attempt(lambda: open("/proc/sys/kernel/core_pattern", "w")),
        "scratch": attempt(lambda: open(os.getcwd() + "/mine.txt", "w").write("ok")),
        "tmp": attempt(lambda: __import__("tempfile").NamedTemporaryFile("w").write("ok")),
        "home_visible": os.path.exists(home),
        "cwd": os.getcwd(),
        "env_home": os.environ.get("HOME"),
        "endpoint": ctx.client.endpoint,
    }
""")
    rec = run_proc(sup, img, {"home": str(sup.paths.home), "secret": str(secret),
                              "image": str(img)})
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    r = rec.result
    for key in ("secret", "etc_hostname", "state_db", "control_sock", "write_image",
                "write_root", "write_usr", "write_proc"):
        assert r[key]["ok"] is False, (key, r[key])
    # Its own scratch directory is the only one there is, at a fixed place: nothing it
    # can see names the host's $AGENTLIBOS_HOME.
    assert r["other_scratch"] == {"ok": False, "errno": "ENOENT"}
    assert r["home_visible"] is False
    assert (r["cwd"], r["env_home"]) == ("/scratch", "/scratch")
    assert r["endpoint"] == "ipc:///run/agentlibos/broker.sock"
    assert str(sup.paths.home) not in json.dumps(r["cwd"]) + r["endpoint"]
    assert "the host's secret" not in json.dumps(r)
    assert r["scratch"] == {"ok": True, "value": 2}
    assert r["tmp"] == {"ok": True, "value": 2}
    assert not (img / "evil.py").exists()


def test_a_symlink_planted_in_scratch_leads_nowhere(
    sup: Supervisor, make_image: MakeImage, secret: Path
) -> None:
    img = hostile(make_image, "linker", """
    os.symlink(args["secret"], "to-secret")
    os.symlink(args["home"] + "/state.db", "to-db")
    os.symlink("/proc/1/root/" + args["secret"], "via-proc")
    return {"secret": read("to-secret"), "db": read("to-db"), "proc": read("via-proc")}
""")
    rec = run_proc(sup, img, {"secret": str(secret), "home": str(sup.paths.home)})
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert all(v["ok"] is False for v in rec.result.values()), rec.result


@pytest.fixture
def listeners() -> Iterator[dict[str, Any]]:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp.settimeout(0.2)
    udp.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
                seen.append("tcp")
                conn.close()
            except OSError:
                pass
            try:
                udp.recvfrom(100)
                seen.append("udp")
            except OSError:
                pass

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield {"tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1], "seen": seen}
    finally:
        stop.set()
        t.join(5)
        tcp.close()
        udp.close()


NET_PROBE = """
    port_t, port_u = args["tcp"], args["udp"]
    def tcp():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(("127.0.0.1", port_t))
    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"leak", ("127.0.0.1", port_u))
    def tcp6():
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect(("::1", port_t))
    return {"tcp": attempt(tcp), "udp": attempt(udp), "tcp6": attempt(tcp6),
            "raw_socket": raw(41, 2, 1, 0),
            "netlink": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)),
            "unix": attempt(lambda: socket.socket(socket.AF_UNIX).close())}
"""


def test_no_tcp_or_udp_reaches_the_host(
    sup: Supervisor, make_image: MakeImage, listeners: dict[str, Any]
) -> None:
    img = hostile(make_image, "netter", NET_PROBE)
    rec = run_proc(sup, img, {"tcp": listeners["tcp"], "udp": listeners["udp"]})
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    r = rec.result
    for key in ("tcp", "udp", "tcp6", "raw_socket", "netlink"):
        assert r[key] == {"ok": False, "errno": "EPERM"}, (key, r[key])
    assert r["unix"]["ok"] is True
    assert listeners["seen"] == []


def test_without_seccomp_the_network_namespace_still_holds(
    paths: Paths, make_image: MakeImage, listeners: dict[str, Any]
) -> None:
    # Defence in depth: with the socket filter off, the empty network namespace (and
    # Landlock's TCP rules) still keep every packet off the host.
    with Supervisor(paths, sandbox=SandboxConfig(disabled=frozenset({"seccomp"}))) as sup:
        rec = run_proc(sup, hostile(make_image, "netter2", NET_PROBE),
                       {"tcp": listeners["tcp"], "udp": listeners["udp"]})
    assert rec.exit_reason == "returned", rec.error
    assert rec.result["tcp"]["ok"] is False and rec.result["udp"]["ok"] is False
    assert listeners["seen"] == []
    assert any(m.startswith("seccomp: disabled") for m in rec.missing_layers)


def test_exec_and_dangerous_raw_syscalls_are_refused(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = hostile(make_image, "syscaller", """
    import subprocess
    return {
        "execv": attempt(lambda: os.execv("/bin/sh", ["sh", "-c", "true"])),
        "subprocess": attempt(lambda: subprocess.run(["/bin/true"])),
        "ptrace_parent": raw(101, 16, os.getppid(), 0, 0),
        "ptrace_1": raw(101, 16, 1, 0, 0),
        "process_vm_readv": raw(310, 1, 0, 0, 0, 0, 0),
        "unshare_user": raw(272, 0x10000000),
        "mount": raw(165, 0, 0, 0, 0, 0),
        "io_uring_setup": raw(425, 8, 0),
        "bpf": raw(321, 0, 0, 0),
        "keyctl": raw(250, 0, 0, 0, 0, 0),
        "setuid_0": attempt(lambda: os.setuid(0)),
    }
""")
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    for key, got in rec.result.items():
        assert got["ok"] is False, (key, got)
        assert got.get("errno") in ("EPERM", "EACCES"), (key, got)


def test_another_process_cannot_be_seen_traced_or_robbed(
    sup: Supervisor, make_image: MakeImage
) -> None:
    victim = make_image("victim", """
        import time
        def main(ctx, args):
            time.sleep(600)
    """)
    vpid = sup.submit_run(str(victim), {})
    assert sup.run_until(lambda: sup.store.get_process(vpid).state == "running", 20)
    host_pid = sup.store.get_process(vpid).host_pid
    assert host_pid is not None
    img = hostile(make_image, "thief", """
    hp = args["host_pid"]
    return {"environ": read(f"/proc/{hp}/environ"), "mem": read(f"/proc/{hp}/mem"),
            "kill": attempt(lambda: os.kill(hp, 9)),
            "pidfd": raw(434, hp, 0),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
""")
    rec = run_proc(sup, img, {"host_pid": host_pid})
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    r = rec.result
    assert r["pids"] == [1]
    for key in ("environ", "mem", "kill", "pidfd"):
        assert r[key]["ok"] is False, (key, r[key])
    assert sup.store.get_process(vpid).state == "running"  # untouched
    sup.terminate(vpid, "killed", "test over", grace_s=0)
    assert sup.run_until(lambda: vpid not in sup.live, 10)


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_supervisor_lives_on(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = hostile(make_image, "bomb", """
    import time
    kids = 0
    refused = None
    for _ in range(1000):
        try:
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)
            kids += 1
        except OSError as e:
            refused = errno.errorcode.get(e.errno)
            break
    return {"kids": kids, "refused": refused}
""", limits={"pids": 16})
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert rec.result["refused"] == "EAGAIN"
    assert rec.result["kids"] < 16
    exits = [a for a in sup.store.audit_records(pid=rec.pid) if a.call == "proc.exit"]
    assert exits[-1].detail["pids_limit_hit"] is True
    assert run_proc(sup, make_image("next", "def main(ctx, args):\n    return 1\n")).result == 1


def test_a_fork_bomb_that_crashes_is_reported_as_pids(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = hostile(make_image, "bomb2", """
    import time
    while True:
        if os.fork() == 0:
            time.sleep(600)
""", limits={"pids": 12})
    rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason) == ("killed", "pids"), rec.error


def test_allocating_past_the_memory_limit_is_reason_memory(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = hostile(make_image, "hog", """
    chunks = []
    while True:
        chunks.append(bytearray(16 << 20))
""", limits={"memory": "96MiB"})
    rec = run_proc(sup, img, timeout_s=60)
    assert (rec.state, rec.exit_reason) == ("killed", "memory"), rec.error
    assert "memory limit" in (rec.error or "")


def test_an_escaping_spinner_is_ended_whole_at_its_wall_limit(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = hostile(make_image, "escaper", """
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            ctx.obj.put("grandchild", os.getpid())
            while True:
                pass
        os._exit(0)
    while True:
        pass
""", limits={"wall": "1s"})
    rec = run_proc(sup, img, timeout_s=30)
    assert (rec.state, rec.exit_reason) == ("killed", "wall"), rec.error
    # Nothing of it is left: the cgroup is gone in every hierarchy.
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if p.info["cmdline"] and "escaper" in " ".join(p.info["cmdline"])]
    assert leftovers == []
    with open("/proc/self/cgroup") as f:
        mine = f.read()
    for line in mine.splitlines():
        ctrl, path = line.split(":", 2)[1], line.split(":", 2)[2]
        if ctrl in ("memory", "pids"):
            base = Path("/sys/fs/cgroup") / ctrl / path.lstrip("/")
            assert not list(base.glob(f"**/{rec.pid}")), f"cgroup {ctrl} of {rec.pid} left"


def test_the_supervisor_keeps_serving_after_all_of_it(
    sup: Supervisor, make_image: MakeImage
) -> None:
    bad = [
        hostile(make_image, "h1", "    ctypes.string_at(1)\n"),  # a real segfault
        hostile(make_image, "h2", "    os.abort()\n"),
        hostile(make_image, "h3", "    os._exit(7)\n"),
    ]
    for img in bad:
        rec = run_proc(sup, img)
        assert rec.state == "failed" and rec.exit_reason == "crashed", rec.error
    ok = run_proc(sup, make_image("fine", "def main(ctx, args):\n    return 'alive'\n"))
    assert ok.result == "alive"


# ----------------------------------------------------------------------- fail closed


def test_a_required_layer_the_host_lacks_stops_the_spawn_naming_it(
    sup: Supervisor, make_image: MakeImage
) -> None:
    sup.sandbox.unavailable["landlock"] = "simulated: this kernel has no Landlock"
    rec = run_proc(sup, make_image("never", "def main(ctx, args):\n    return 1\n"))
    assert (rec.state, rec.exit_reason) == ("failed", "start-failed")
    assert rec.error is not None and rec.error.startswith("landlock: simulated")
    assert rec.host_pid is None  # nothing was forked


def test_a_layer_failing_in_the_child_fails_closed_or_is_recorded_when_optional(
    paths: Paths, make_image: MakeImage
) -> None:
    img = make_image("plain", "def main(ctx, args):\n    return 'ran'\n")
    # The directory the child mounts its private root on vanishes after the supervisor
    # planned it: building the mount tree fails in the child, after fork. Cold spawns
    # (no warm pool): a pooled process may have built its tree before the rmdir.
    new_root = paths.run / "root"
    cold = SupervisorConfig(pool_size=0)
    with Supervisor(paths, cold) as sup:
        new_root.rmdir()
        rec = run_proc(sup, img)
    assert (rec.state, rec.exit_reason) == ("failed", "start-failed")
    assert rec.error is not None and "namespaces" in rec.error and str(new_root) in rec.error

    with Supervisor(paths, cold,
                    sandbox=SandboxConfig(optional=frozenset({"namespaces"}))) as sup:
        os.rmdir(new_root)  # the previous supervisor left it; this one made it again
        rec = run_proc(sup, img)
        contain = [a for a in sup.store.audit_records(pid=rec.pid) if a.call == "proc.contain"]
    assert rec.exit_reason == "returned" and rec.result == "ran"
    assert "namespaces" not in rec.layers
    assert any(m.startswith("namespaces:") for m in rec.missing_layers)
    assert any(m.startswith("namespaces:") for m in contain[0].detail["missing"])


def test_file_locks_cannot_signal_another_agent_but_scratch_still_locks(
    sup: Supervisor, make_image: MakeImage
) -> None:
    # Two agents signalled 170,000 bit/s through locks on the shared read-only runtime
    # (scripts/measure-lock-channel). flock(2) and testing another's lock are refused;
    # taking a lock and SQLite in scratch still work.
    img = make_image("locker", """
        import errno, fcntl, os, sqlite3, struct
        def attempt(fn):
            try:
                fn()
                return "ok"
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e.errno))
        def main(ctx, args):
            shared = os.open(os.__file__, os.O_RDONLY)
            mine = os.open("lock.bin", os.O_RDWR | os.O_CREAT)
            getlk = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
            db = sqlite3.connect("scratch.db")
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()
            return {
                "flock": attempt(lambda: fcntl.flock(shared, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                "getlk": attempt(lambda: fcntl.fcntl(shared, fcntl.F_GETLK, getlk)),
                "read_lock_shared": attempt(lambda: fcntl.lockf(shared, fcntl.LOCK_SH)),
                "write_lock_scratch": attempt(lambda: fcntl.lockf(mine, fcntl.LOCK_EX)),
                "sqlite": db.execute("SELECT x FROM t").fetchall(),
            }
    """)
    rec = run_proc(sup, img)
    assert rec.exit_reason == "returned", (rec.error, log_of(sup, rec.pid))
    assert rec.result == {"flock": "EPERM", "getlk": "EPERM", "read_lock_shared": "ok",
                          "write_lock_scratch": "ok", "sqlite": [[1]]}
