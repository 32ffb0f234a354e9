"""Starting a root AgentProcess: on the running daemon if there is one, else embedded.

Both ways end the same: a :class:`RunOutcome` saying what became of the process, and
whether the operator interrupted the wait or the daemon died under it. Ctrl-C (SIGINT,
SIGTERM) stops the tree this run started in both modes: embedded, the supervisor in
this process terminates it; on a daemon, the control operation ``kill`` does.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import zmq

from agentlibos.config import Paths
from agentlibos.errors import Conflict, NotFound, ProtocolError, Unavailable, from_wire
from agentlibos.kernel.image import load_image
from agentlibos.kernel.policy import Policy
from agentlibos.sandbox.profile import SandboxConfig
from agentlibos.store import open_store
from agentlibos.supervisor import control
from agentlibos.supervisor.control import control_call, host_pid_alive, ping

if TYPE_CHECKING:
    from agentlibos.supervisor import Supervisor

# How often a wait on a daemon checks that the daemon still lives, and how long after
# asking it to kill a tree we wait for the tree's record before giving up.
DAEMON_CHECK_S: Final = 0.2
KILL_WAIT_S: Final = 30.0

# How a run's asks reach a human (DESIGN.md, "Waiting"): the CLI that started the run
# prompts on its terminal; the queue waits for `approve`/`deny`; deny refuses at once.
ASK_MODES: Final = ("prompt", "queue", "deny")


@contextlib.contextmanager
def signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Interrupt:
    """A signal handler that only notes the signal; the waiting loop acts on it."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


@dataclass
class RunOutcome:
    """What became of a process this CLI started or waited for."""

    pid: int
    record: dict[str, Any]  # the public record (run --json); its last known state
    interrupted: bool = False  # the operator pressed Ctrl-C (or sent SIGTERM)
    lost: str | None = None  # why the supervisor serving it is gone, if it is
    # The processes in attention that hold it up (Embedded.stuck): an embedded supervisor
    # stopped for the operator, leaving them for `resolve` and `resume`.
    stuck: tuple[int, ...] = ()

    @property
    def returned(self) -> bool:
        return self.record.get("exit_reason") == "returned" and not self.lost


def resolve_image_arg(ref: str) -> str:
    """A directory becomes an absolute path (validated now); a name stays a name."""
    p = Path(ref)
    if "/" in ref or ref.startswith(".") or p.is_dir():
        img = load_image(p)  # raises ImageError with the file and the problem
        return str(img.path)
    return ref


def stored_record(paths: Paths, pid: int) -> dict[str, Any]:
    """The process's record as the store has it (read-only; no supervisor needed)."""
    if not paths.db.exists():
        raise NotFound(f"no process {pid}: nothing has run in {paths.home}")
    store = open_store(paths.db, readonly=True)
    try:
        rec = store.get_process(pid)
        out = rec.public()
        out["live"] = rec.live
        return out
    finally:
        store.close()


def wait_on_daemon(
    paths: Paths, pid: int, daemon_pid: int, *, interrupt: Interrupt | None = None,
    kill_on_interrupt: bool = True,
) -> RunOutcome:
    """Wait for ``pid`` on the daemon, noticing within a fraction of a second if it dies.

    On an interrupt, ``kill_on_interrupt`` asks the daemon to stop the tree and waits for
    its record; otherwise the wait just ends (``agentlibos wait``: the process goes on).
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    killed_at: float | None = None
    try:
        sock.connect(paths.control_endpoint)
        sock.send(json.dumps({"op": "wait", "pid": pid}).encode())
        while True:
            if sock.poll(int(DAEMON_CHECK_S * 1000)):
                reply = json.loads(sock.recv())
                if not isinstance(reply, dict):
                    raise ProtocolError("malformed reply from the supervisor")
                if not reply.get("ok"):
                    raise from_wire(reply.get("error"))
                return RunOutcome(pid, dict(reply["record"]), interrupted=bool(interrupt))
            if not host_pid_alive(daemon_pid):
                return RunOutcome(pid, stored_record(paths, pid), interrupted=bool(interrupt),
                                  lost=f"the supervisor serving it (pid {daemon_pid}) died")
            if interrupt and not kill_on_interrupt:
                return RunOutcome(pid, stored_record(paths, pid), interrupted=True)
            if interrupt and killed_at is None:
                killed_at = time.monotonic()
                with contextlib.suppress(Conflict):  # it ended already: the wait answers
                    control_call(paths.control_endpoint, {"op": "kill", "pid": pid})
            if killed_at is not None and time.monotonic() - killed_at > KILL_WAIT_S:
                return RunOutcome(pid, stored_record(paths, pid), interrupted=True,
                                  lost=f"the supervisor did not report its end within "
                                       f"{KILL_WAIT_S:g} s of being asked to kill it")
    finally:
        sock.close(0)


def daemon_pid(paths: Paths) -> int | None:
    """The host pid of the daemon answering on the control socket, if one does."""
    info = ping(paths.control_endpoint)
    return None if info is None else int(info["pid"])


def run_request(
    image: str, args: dict[str, Any], *, cwd: str | None, policy: Policy | None, ask: str,
    tokens: int | None = None,
) -> dict[str, Any]:
    """The control operation ``run`` (without waiting), the same for daemon and embedded."""
    req: dict[str, Any] = {"op": "run", "image": image, "args": args, "cwd": cwd,
                           "wait": False, "ask": ask}
    if policy is not None:
        req["policy_text"], req["policy_source"] = policy.text, policy.source
    if tokens is not None:
        req["tokens"] = tokens
    return req


def start_on_daemon(
    paths: Paths, image: str, args: dict[str, Any], *, cwd: str | None,
    policy: Policy | None, ask: str = "queue", tokens: int | None = None,
    daemon_only: bool = False,
) -> tuple[int, int] | None:
    """Submit the run to the daemon without waiting: (pid, daemon pid), or None if none is up.

    ``daemon_only``: not to a supervisor another command embeds (an `agentlibos run` in
    the foreground serves its own tree and ends with it; a run handed to it would hold
    that command open until it ends too)."""
    info = ping(paths.control_endpoint)
    if info is None or (daemon_only and info.get("mode") == "embedded"):
        return None
    req = run_request(image, args, cwd=cwd, policy=policy, ask=ask, tokens=tokens)
    # Its pid: a supervisor that dies with the request in hand is said so at once.
    holder = int(info["pid"])
    try:
        reply = control_call(paths.control_endpoint, req, holder=holder)
    except Unavailable:
        # Another command's supervisor ends with its own tree, and may end between our
        # ping and our request: then the request went unread, and the caller starts
        # again (its own supervisor, or the next one). A daemon's end is not retried: it
        # may have started the process before it died.
        if info.get("mode") != "embedded" or host_pid_alive(holder):
            raise  # or its own answer (it could not start the run): the caller's error
        return None
    return int(reply["pid"]), holder


def embedded_sup(paths: Paths, sandbox: SandboxConfig | None) -> Supervisor:
    """A supervisor in this process. Imported here, not at the top: every command
    imports this module, and most of them never start a supervisor."""
    from agentlibos.supervisor import Supervisor  # noqa: PLC0415

    return Supervisor(paths, mode="embedded", sandbox=sandbox)


def run_image(
    paths: Paths,
    image: str,
    args: dict[str, Any],
    *,
    cwd: str | None = None,
    policy: Policy | None = None,
    on_start: Callable[[int], None] | None = None,
    sandbox: SandboxConfig | None = None,
    ask: str = "queue",
    tokens: int | None = None,
) -> RunOutcome:
    """Run an image to completion, on the daemon if one is up, else on an embedded one.

    One signal handler covers the whole call, so a Ctrl-C at any moment is seen: before
    the process exists it ends the call (KeyboardInterrupt); after, it stops the tree.
    ``ask`` (:data:`ASK_MODES`) goes to the supervisor with the run, in both modes.
    """
    paths.ensure()
    interrupt = Interrupt()
    sup: Supervisor | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupt(signum, frame)
        if sup is not None:
            sup.request_stop()

    with signals(on_signal):
        deadline = time.monotonic() + 10
        while not interrupt:
            started = start_on_daemon(paths, image, args, cwd=cwd, policy=policy, ask=ask,
                                      tokens=tokens)
            if started is not None:
                pid, supervisor = started
                if on_start is not None:
                    on_start(pid)
                return wait_on_daemon(paths, pid, supervisor, interrupt=interrupt)
            candidate = embedded_sup(paths, sandbox)
            try:
                candidate.start()
            except Conflict:
                # Another supervisor holds the lock; it binds its control socket right
                # after taking the lock, so wait for it to answer.
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"another supervisor holds {paths.lock} but does not answer on "
                        f"{paths.control_endpoint}"
                    ) from None
                time.sleep(0.05)
                continue
            sup = candidate
            try:
                req = run_request(image, args, cwd=cwd, policy=policy, ask=ask, tokens=tokens)
                return _run_embedded(sup, req, on_start=on_start, interrupt=interrupt)
            finally:
                sup.stop()
    raise KeyboardInterrupt  # interrupted before any process was started


def _submit_embedded(sup: Supervisor, req: dict[str, Any]) -> int:
    """The ``run`` operation on our own supervisor: the same code a daemon's client reaches.

    Called directly rather than over the socket because the loop that would serve the
    socket is this thread's, and it is not running yet.
    """
    replies: list[dict[str, Any]] = []
    control.handle(sup.control_ctx, req, replies.append)
    if not replies or not replies[0].get("ok"):
        raise ProtocolError(f"the run operation answered {replies!r}")
    return int(replies[0]["pid"])


def _run_embedded(
    sup: Supervisor, req: dict[str, Any], *, on_start: Callable[[int], None] | None,
    interrupt: Interrupt,
) -> RunOutcome:
    if interrupt:
        raise KeyboardInterrupt
    pid = _submit_embedded(sup, req)
    if on_start is not None:
        on_start(pid)
    # Serve until this tree is done and nobody else (a `run` that found us via the
    # control socket) still has a live process here, or until every one left waits for
    # the operator (a crash cut off an effect: `resolve`); a signal stops the loop.
    here = Embedded(sup, interrupt)
    here.serve()
    stuck = () if interrupt or not sup.live else tuple(here.stuck())
    if interrupt:
        sup.mode = "embedded"  # what was left is stopped, not kept
        for p in list(sup.live):
            sup.terminate(p, "killed", "interrupted by the operator")
        sup.settle(timeout_s=sup.config.kill_grace_s + 5)
    return RunOutcome(pid, sup.store.get_process(pid).public(), interrupted=bool(interrupt),
                      stuck=stuck)


# How often an embedded supervisor serving a resumed tree asks whether only the
# operator can move it now (Embedded.stuck).
STUCK_CHECK_S: Final = 0.25


class Embedded:
    """A supervisor in this process, for a command that needs one when no daemon is up
    (``checkpoint``, ``restore``, ``resume``, ``resolve``): :func:`embedded_supervisor`."""

    def __init__(self, sup: Supervisor, interrupt: Interrupt) -> None:
        self.sup = sup
        self.interrupt = interrupt

    def call(self, req: dict[str, Any]) -> dict[str, Any]:
        """A control operation on it, in one store turn, as a daemon's client would."""
        replies: list[dict[str, Any]] = []
        with self.sup.journal.turn():
            control.handle(self.sup.control_ctx, req, replies.append)
        if not replies or not replies[0].get("ok"):
            raise ProtocolError(f"the {req.get('op')} operation answered {replies!r}")
        return {k: v for k, v in replies[0].items() if k != "ok"}

    def serve(self) -> bool:
        """Serve until no process is live here, or until every one that is waits for the
        operator (:meth:`stuck`), which are then left as a daemon leaves its processes
        (evicted, their waits in the store, for `resolve` and `resume`); True if a
        signal ended it first."""
        # stuck() reads every live process's row: asked at most every STUCK_CHECK_S,
        # not at every turn of the loop, so a large resumed tree is not slowed by it.
        checked = [0.0]

        def done() -> bool:
            if not self.sup.live:
                return True
            now = time.monotonic()
            if now - checked[0] < STUCK_CHECK_S:
                return False
            checked[0] = now
            return bool(self.stuck())

        self.sup.run_until(done)
        if self.sup.live:
            self.sup.mode = "serve"  # stop() keeps them
        return bool(self.interrupt)

    def stuck(self) -> list[int]:
        """The processes in attention that hold up every live one here, or [] if any can
        move on its own. Stuck: a process in attention (only `agentlibos resolve` moves
        it), or one waiting for a stuck child (proc.wait)."""
        if not self.sup.durable.attention:
            return []  # the cheap answer for every turn of a tree with none
        recs = {p: self.sup.store.get_process(p) for p in self.sup.live}

        def stuck(pid: int, seen: frozenset[int] = frozenset()) -> bool:
            rec = recs.get(pid)
            if rec is None or pid in seen:
                return False
            if rec.state == "attention":
                return True
            wait = rec.wait or ""
            return (rec.state == "waiting" and wait.startswith("proc:")
                    and wait[5:].isdigit() and stuck(int(wait[5:]), seen | {pid}))

        if not recs or not all(stuck(p) for p in recs):
            return []
        return sorted(p for p, r in recs.items() if r.state == "attention")

    def record(self, pid: int) -> dict[str, Any]:
        return self.sup.store.get_process(pid).public()


@contextlib.contextmanager
def embedded_supervisor(paths: Paths, *, sandbox: SandboxConfig | None = None,
                        resume_tree: int | None = None) -> Iterator[Embedded]:
    """Start a supervisor here (no daemon is up). It settles what the last one left:
    the tree rooted at ``resume_tree`` is resumed, the rest stays for whoever resumes it.

    Ctrl-C (SIGINT, SIGTERM) ends the serving, not the processes: they stop as they
    stop with a daemon (evicted, every wait in the store), and ``agentlibos resume``
    or ``serve`` goes on with them later."""
    paths.ensure()
    interrupt = Interrupt()
    sup = embedded_sup(paths, sandbox)
    sup.resume_tree = resume_tree

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupt(signum, frame)
        sup.request_stop()

    with signals(on_signal):
        try:
            sup.start()
        except Conflict:
            raise Unavailable(f"another supervisor holds {paths.lock}: it is starting or "
                              "stopping; try again") from None
        try:
            yield Embedded(sup, interrupt)
        finally:
            if interrupt:
                sup.mode = "serve"  # stop() then keeps the processes, as a daemon's
            sup.stop()
