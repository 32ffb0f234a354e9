"""The broker's ROUTER, run by the supervisor's own loop: ZMTP 3.0 over AF_UNIX, no threads.

libzmq's ROUTER moved every request and reply through its I/O thread: the loop woke on a
mailbox, took the message from a queue the I/O thread had filled, and handed each reply
back the same way -- two thread hand-offs per call on the supervisor's side, and a third
thread competing for the cores every agent needs. Here the loop reads and writes the
agents' stream sockets itself (epoll over them, one fd in the loop's poll set), and a
request is parsed in the thread that serves it (docs/benchmarks.md, issue 14).

It speaks what libzmq's ROUTER speaks (ZMTP/3.0, rfc.zeromq.org/spec/23; NULL security,
spec 37), so any ZeroMQ DEALER or REQ can connect -- the SDK's own (protocol/zmtp.py) and
libzmq's alike -- and it keeps the guards the broker set on libzmq's socket:

* a frame larger than ``max_frame`` ends the connection before it is buffered (libzmq's
  MAXMSGSIZE), and so does a message of more than ``max_frames`` frames or
  ``max_message`` bytes (libzmq has no such bound: a peer could make it buffer
  frames without end);
* a peer is read only when nothing it sent is waiting to be served, at most ``CHUNK``
  bytes at a time, so a flooding process waits in its own socket buffer (libzmq's
  RCVHWM), and peers are served in turn, one message each (libzmq's fair queueing);
* a reply to a peer that has ``max_queued`` replies, or ``max_queued_bytes``, not yet
  taken by its socket is refused (:class:`Full`: libzmq's EAGAIN under
  ROUTER_MANDATORY and SNDHWM), one to a peer that is gone is dropped (EHOSTUNREACH);
* a peer can be paused (:meth:`Router.pause`): not read at all until resumed;
* a connection that has not finished its handshake within ``handshake_s`` is closed
  (libzmq's HANDSHAKE_IVL), and at most ``max_peers`` are open at once;
* peers are grouped by *owner* (``owner_of``: the broker's is the connecting process's
  cgroup, one per agent and whatever it forks): an owner may hold ``max_peers_per_owner``
  connections, and what its connections have buffered of unfinished messages together
  is bounded by ``owner_bytes``: past it, a connection of that owner that would be read
  is closed instead (one connection alone is bounded by ``max_message``, which always
  fits). One process opening thousands of connections, or holding a huge half-sent
  message on each, costs the supervisor one owner's bounds, never its file descriptors
  or its memory;
* a failed accept (EMFILE) takes the connection off the backlog and closes it, with a
  descriptor kept in reserve for that, instead of leaving it there to wake the loop
  again at once.

Everything a peer sends is untrusted: the broker authenticates every request by its pid
and token, and a peer that breaks the protocol is disconnected, never answered.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from agentlibos.protocol.zmtp import (
    CHUNK,
    COMMAND,
    GREETING,
    LONG,
    MORE,
    U32,
    U64,
    check_greeting,
    command,
    encode,
    frame_header,
    ipc_address,
    prop,
    split_command,
)

log = logging.getLogger(__name__)

# A large frame is read in pieces up to this size: not 64 KiB at a time.
_BIG_READ: Final = 4 << 20
# Before READY a peer sends only its greeting and commands this small.
_HANDSHAKE_FRAME: Final = 4096
# A failed accept is logged at most once in this many seconds (with how many failed).
_ACCEPT_LOG_S: Final = 10.0
# One sendmsg hands the kernel at most this much: a nonblocking send to a peer that
# reads as fast as it is written goes on copying while there is room, so one sendmsg
# of a 16 MiB buffer held the loop (and every other agent) for its whole copy.
_SEND_AT_ONCE: Final = 1 << 16
# At most this much is written to one peer per call; the rest goes when epoll says
# its socket has room, between other peers' requests.
_WRITE_PER_CALL: Final = 256 << 10
READY: Final = command(b"READY", prop(b"Socket-Type", b"ROUTER"))
# The peers a ROUTER accepts (ZMTP 23: "ROUTER accepts DEALER, REQ, ROUTER").
_PEER_TYPES: Final = frozenset({b"DEALER", b"REQ", b"ROUTER"})


class Full(Exception):
    """The peer has ``max_queued`` replies, or ``max_queued_bytes``, that its socket has
    not taken: it is not reading (fast enough)."""


@dataclass(eq=False)
class _Peer:
    sock: socket.socket
    rid: bytes
    since: float
    state: int = 0  # 0: its greeting awaited, 1: its READY awaited, 2: messages
    buf: bytearray = field(default_factory=bytearray)
    inbox: collections.deque[list[bytes]] = field(default_factory=collections.deque)
    frames: list[bytes] = field(default_factory=list)  # the message being parsed
    frames_bytes: int = 0
    out: collections.deque[memoryview] = field(default_factory=collections.deque)
    # Where each queued reply ends, counted in bytes ever pushed to this peer: a reply
    # is taken once ``written`` passes its end.
    out_msgs: collections.deque[int] = field(default_factory=collections.deque)
    pushed: int = 0
    written: int = 0
    turn: bool = False  # in the round-robin queue
    writing: bool = False  # EPOLLOUT wanted
    paused: bool = False  # not read until resumed (pause())
    # Who it is on the host: "pid:<host pid>" of the process that connected (its
    # SO_PEERCRED), else its routing id. Refusals are counted per sender (sender()).
    sender: bytes = b""
    owner: bytes = b""  # whose bounds it counts against (Router owner_of)


def pid_owner(pid: int) -> bytes:
    """A connection's process as the router names it (its sender, and its owner by
    default: the process that connected)."""
    return b"pid:%d" % pid


class Router:
    def __init__(self, endpoint: str, *, max_frame: int, max_message: int,
                 max_frames: int = 64,
                 max_queued: int = 4, max_queued_bytes: int = 1 << 20,
                 max_inbox: int = 16, max_peers: int = 65536,
                 handshake_s: float = 30.0, max_peers_per_owner: int = 8,
                 owner_bytes: int | None = None,
                 owner_of: Callable[[int], bytes] = pid_owner) -> None:
        self.endpoint = endpoint
        address = ipc_address(endpoint)
        self._path = None if address.startswith("\0") else address  # abstract: no file
        self.max_frame, self.max_frames, self.max_queued = max_frame, max_frames, max_queued
        self.max_message, self.max_queued_bytes = max_message, max_queued_bytes
        self.max_peers, self.handshake_s, self.max_inbox = max_peers, handshake_s, max_inbox
        self.max_peers_per_owner, self._owner_of = max_peers_per_owner, owner_of
        # One message of the largest size, and what one read may add, always fits: a
        # single connection is never closed for its own message.
        self.owner_bytes = owner_bytes if owner_bytes is not None else (
            max_message + 2 * _BIG_READ)
        self._by_owner: dict[bytes, set[_Peer]] = {}
        self._refused_accepts = 0
        self._accept_logged = 0.0
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM
                                     | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self._ep = select.epoll()
        try:
            if self._path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)  # a stale socket file, as libzmq does
            self._listen.bind(address)
            self._listen.listen(4096)
            self._ep.register(self._listen.fileno(), select.EPOLLIN)
        except BaseException:
            self._listen.close()
            self._ep.close()
            raise
        self._peers: dict[int, _Peer] = {}  # by fd
        self._by_rid: dict[bytes, _Peer] = {}
        self._turns: collections.deque[_Peer] = collections.deque()
        self._round = 0  # turns left in this round
        # Routing ids from a 64-bit counter: one never comes back, so a reply can never
        # reach a later connection that reused a gone peer's id (libzmq's are 32-bit).
        self._next_rid = 0
        self._handshaking: collections.deque[_Peer] = collections.deque()
        self.disconnected = 0  # peers dropped for breaking the protocol or a limit

    # ----------------------------------------------------------------- for the loop

    def fileno(self) -> int:
        """Readable when a peer or a new connection is: the one fd the loop polls."""
        return self._ep.fileno()

    def pending(self) -> bool:
        """Messages already read and parsed wait to be served (the fd will not say so)."""
        return bool(self._turns)

    def has_input(self) -> bool:
        """Anything to serve now, parsed or in a socket (one epoll_wait of 0 at most)."""
        if self._turns:
            return True
        self._events()
        self._round = len(self._turns)  # a new round begins: recv() need not ask again
        return bool(self._turns)

    def close(self) -> None:
        for p in list(self._peers.values()):
            self._drop(p)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self._listen.close()
        self._ep.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    def peers(self) -> int:
        return len(self._peers)

    def sender(self, rid: bytes) -> bytes:
        """Who sent what came with ``rid``: ``b"pid:<host pid>"`` for a process on this
        host, whatever connection it uses (a new one per frame, say), else ``rid``."""
        p = self._by_rid.get(rid)
        return p.sender if p is not None else rid

    # --------------------------------------------------------------------- reading

    def recv(self) -> list[bytes] | None:
        """The next message as [routing id, *frames], peers in turn; None if none.

        A round serves each peer that has input one message; epoll is asked for the
        peers that have input anew between rounds, so a peer whose first message just
        arrived waits at most one round, however much the others send."""
        if self._round <= 0:
            self._events()
            self._round = len(self._turns)
        while self._turns:
            self._round -= 1
            p = self._turns.popleft()
            p.turn = False
            if p.paused:
                continue
            if not p.inbox:
                self._read(p)
            if p.inbox:
                msg = p.inbox.popleft()
                if p.inbox or p.buf:  # more parsed or buffered (its socket: epoll says)
                    self._queue(p)
                return msg
        self._round = 0
        return None

    def _queue(self, p: _Peer) -> None:
        if not p.turn and not p.paused and p.rid in self._by_rid:
            p.turn = True
            self._turns.append(p)

    def _events(self) -> None:
        for fd, ev in self._ep.poll(0):
            if fd == self._listen.fileno():
                self._accept()
                continue
            p = self._peers.get(fd)
            if p is None:
                continue
            if ev & select.EPOLLOUT:
                self._write(p)
            gone = ev & (select.EPOLLHUP | select.EPOLLERR)
            if p.paused and gone:
                self._drop(p)  # gone while paused: nothing to read it for
            elif (ev & select.EPOLLIN or gone) and p.rid in self._by_rid:
                if p.state != 2:
                    self._read(p)  # the handshake is the router's own business
                if p.state == 2:
                    self._queue(p)

    def _accept(self) -> None:
        now = time.monotonic()
        while self._handshaking and (self._handshaking[0].state == 2
                                     or self._handshaking[0].rid not in self._by_rid
                                     or now - self._handshaking[0].since > self.handshake_s):
            p = self._handshaking.popleft()
            if p.state != 2 and p.rid in self._by_rid:
                self._disconnect(p, "did not finish its handshake in time")
        for _ in range(256):  # a turn's worth: the rest are accepted next turn
            try:
                conn, _addr = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: keep serving who is connected
                self._refuse_accept(e)
                return
            pid = _peer_pid(conn)
            owner = self._owner_of(pid) if pid is not None else b"rid"
            if (len(self._peers) >= self.max_peers
                    or len(self._by_owner.get(owner, ())) >= self.max_peers_per_owner):
                conn.close()
                self.disconnected += 1
                continue
            conn.setblocking(False)
            self._next_rid += 1
            p = _Peer(conn, b"\x00" + U64.pack(self._next_rid), now)
            p.sender = pid_owner(pid) if pid is not None else p.rid
            p.owner = owner
            self._by_owner.setdefault(owner, set()).add(p)
            self._peers[conn.fileno()] = p
            self._by_rid[p.rid] = p
            self._handshaking.append(p)
            self._ep.register(conn.fileno(), select.EPOLLIN)
            self._push(p, [memoryview(GREETING)])

    def _refuse_accept(self, e: OSError) -> None:
        """Out of descriptors: take the waiting connections off the backlog and close
        them (the spare descriptor makes room for one at a time), so the listening
        socket stops waking the loop; say so at most every _ACCEPT_LOG_S."""
        refused = 0
        if self._spare is None:  # lost at a refusal before: room may have come since
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        while self._spare is not None and refused < 256:
            os.close(self._spare)
            try:
                conn, _addr = self._listen.accept()
                conn.close()
                refused += 1
            except OSError:
                break
            finally:
                try:
                    self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    self._spare = None
        self._refused_accepts += refused
        self.disconnected += refused
        now = time.monotonic()
        if now - self._accept_logged >= _ACCEPT_LOG_S:
            self._accept_logged = now
            log.warning("cannot accept connections to the broker (%s): %d refused so far",
                        e.strerror, self._refused_accepts)

    def _owned_bytes(self, owner: bytes) -> int:
        return sum(len(q.buf) + q.frames_bytes for q in self._by_owner.get(owner, ()))

    def _read(self, p: _Peer) -> None:
        """Parse what is buffered; if that gives nothing, one read from the socket."""
        if p.buf and p.state == 2:
            self._parse_or_drop(p)
            if p.inbox:
                return
        if p.state == 2 and self._owned_bytes(p.owner) >= self.owner_bytes:
            self._disconnect(p, f"its owner's connections hold {self.owner_bytes} bytes "
                                "of unfinished messages")
            return
        want = CHUNK
        if p.state == 2 and len(p.buf) >= 9 and p.buf[0] & LONG:
            want = max(CHUNK, min(_BIG_READ, 9 + U64.unpack_from(p.buf, 1)[0] - len(p.buf)))
        try:
            data = p.sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(p)
            return
        if not data:
            self._drop(p)  # the peer hung up
            return
        p.buf += data
        self._parse_or_drop(p)

    def _parse_or_drop(self, p: _Peer) -> None:
        try:
            self._parse(p)
        except _Broken as e:
            self._disconnect(p, str(e))

    def _parse(self, p: _Peer) -> None:
        buf, pos, n = p.buf, 0, len(p.buf)
        if p.state == 0:
            if n < 64:
                if n >= 1 and buf[0] != 0xFF:
                    raise _Broken("it does not speak ZMTP")
                return
            try:
                check_greeting(bytes(buf[:64]))
            except ValueError as e:
                raise _Broken(str(e)) from None
            pos, p.state = 64, 1
            self._push(p, [memoryview(READY)])
        # At most max_inbox messages parsed ahead: the rest stays in the buffer, and the
        # socket is not read again until they are served (libzmq's RCVHWM).
        while len(p.inbox) < self.max_inbox:
            try:
                header = frame_header(buf, pos)
            except ValueError as e:
                raise _Broken(str(e)) from None
            if header is None:
                break
            flags, start, size = header
            if p.state != 2 and size > _HANDSHAKE_FRAME:
                raise _Broken(f"a frame of {size} bytes before its READY")
            if size > self.max_frame:
                raise _Broken(f"a frame of {size} bytes, over the limit of {self.max_frame}")
            if p.frames_bytes + size > self.max_message:
                raise _Broken(f"a message of more than {self.max_message} bytes")
            if n - start < size:
                break
            end = start + size
            pos = end
            if flags & COMMAND:
                if p.frames:
                    raise _Broken("a command inside a message")
                self._on_command(p, bytes(buf[start:end]))
                continue
            if p.state != 2:
                raise _Broken("a message before its READY")
            p.frames.append(bytes(buf[start:end]))
            p.frames_bytes += size
            if flags & MORE:
                if len(p.frames) >= self.max_frames:
                    raise _Broken(f"a message of more than {self.max_frames} frames")
                continue
            p.inbox.append([p.rid, *p.frames])
            p.frames, p.frames_bytes = [], 0
        if pos:
            del buf[:pos]

    def _on_command(self, p: _Peer, data: bytes) -> None:
        try:
            name, body = split_command(data)
        except ValueError as e:
            raise _Broken(str(e)) from None
        if p.state == 1:
            if name != b"READY":
                raise _Broken(f"{name!r} where READY was due")
            if _socket_type(body) not in _PEER_TYPES:
                raise _Broken("a socket type a ROUTER does not talk to")
            p.state = 2
        elif name == b"PING" and len(body) >= 2:
            self._push(p, [memoryview(command(b"PONG", body[2:]))])
        elif name == b"ERROR":
            raise _Broken("it sent ERROR")
        # Any other command (SUBSCRIBE, PONG, ...) means nothing to a ROUTER: ignored.

    # --------------------------------------------------------------------- writing

    def send(self, frames: list[bytes]) -> None:
        """Send ``frames[1:]`` as one message to the peer ``frames[0]`` names. Full if it
        has ``max_queued`` replies its socket has not taken; dropped if it is gone."""
        p = self._by_rid.get(frames[0])
        if p is None or p.state != 2:
            return  # gone (or never a peer): nobody to answer, as EHOSTUNREACH
        if len(p.out_msgs) >= self.max_queued or p.pushed - p.written >= self.max_queued_bytes:
            raise Full(frames[0].hex())
        # (An empty frame is its header alone: no empty buffer is queued. One left last
        # would never be taken off: the peer's queue would never empty, and epoll
        # would wake the loop for it, turn after turn.)
        self._push(p, [memoryview(b) for b in encode(frames[1:]) if b], message=True)

    def _push(self, p: _Peer, parts: list[memoryview], *, message: bool = False) -> None:
        p.out.extend(parts)
        p.pushed += sum(len(b) for b in parts)
        if message:
            p.out_msgs.append(p.pushed)
        if not p.writing:
            self._write(p)

    def _write(self, p: _Peer) -> None:
        budget = _WRITE_PER_CALL
        while p.out and budget > 0:
            batch, room = [], _SEND_AT_ONCE
            for b in p.out:
                if len(b) >= room:
                    batch.append(b[:room])
                    break
                batch.append(b)
                room -= len(b)
                if len(batch) >= 64:
                    break
            try:
                sent = p.sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(p)
                return
            p.written += sent
            budget -= sent
            while sent:
                head = p.out[0]
                if sent >= len(head):  # (no empty buffer is queued: see send)
                    sent -= len(head)
                    p.out.popleft()
                else:
                    p.out[0] = head[sent:]
                    sent = 0
        # Replies wholly written no longer count against the peer's queue.
        while p.out_msgs and p.out_msgs[0] <= p.written:
            p.out_msgs.popleft()
        self._want_write(p, bool(p.out))

    def _want_write(self, p: _Peer, want: bool) -> None:
        if want != p.writing and p.rid in self._by_rid:
            p.writing = want
            self._rearm(p)

    def _rearm(self, p: _Peer) -> None:
        self._ep.modify(p.sock.fileno(), (0 if p.paused else select.EPOLLIN)
                        | (select.EPOLLOUT if p.writing else 0))

    # ---------------------------------------------------------------------- pausing

    def pause(self, rid: bytes) -> None:
        """Read nothing more from peer ``rid`` until :meth:`resume`: what it sends waits
        in its own socket (the broker pauses a process at its in-flight bound, so that
        a flood of requests costs it a wait, not the loop a refusal each)."""
        p = self._by_rid.get(rid)
        if p is not None and not p.paused:
            p.paused = True
            self._rearm(p)

    def resume(self, rid: bytes) -> None:
        p = self._by_rid.get(rid)
        if p is not None and p.paused:
            p.paused = False
            self._rearm(p)
            if p.inbox or p.buf:
                self._queue(p)

    # ---------------------------------------------------------------------- ending

    def _disconnect(self, p: _Peer, why: str) -> None:
        self.disconnected += 1
        log.info("broker: disconnected a peer: %s", why)
        self._drop(p)

    def _drop(self, p: _Peer) -> None:
        if self._by_rid.pop(p.rid, None) is None:
            return
        fd = p.sock.fileno()
        self._peers.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(fd)
        p.sock.close()
        p.inbox.clear()
        p.out.clear()
        p.buf = bytearray()
        p.frames, p.frames_bytes = [], 0
        mine = self._by_owner.get(p.owner)
        if mine is not None:
            mine.discard(p)
            if not mine:
                del self._by_owner[p.owner]


class _Broken(Exception):
    """The peer broke the protocol or a limit: it is disconnected."""


def _peer_pid(conn: socket.socket) -> int | None:
    """The host pid of the process that connected a unix socket (the kernel says it, in
    this supervisor's pid namespace), or None (TCP, or no answer)."""
    if conn.family != socket.AF_UNIX:
        return None
    try:
        pid = int.from_bytes(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4],
                             "little", signed=True)
    except OSError:
        return None
    return pid if pid > 0 else None


def _socket_type(body: bytes) -> bytes | None:
    """The Socket-Type property of a READY command's body, None if malformed."""
    pos = 0
    while pos < len(body):
        n = body[pos]
        name = body[pos + 1:pos + 1 + n]
        pos += 1 + n
        if pos + 4 > len(body):
            return None
        size = U32.unpack_from(body, pos)[0]
        value = body[pos + 4:pos + 4 + size]
        pos += 4 + size
        if pos > len(body):
            return None
        if name.lower() == b"socket-type":
            return value
    return None

