"""The zygote never blocks telling the supervisor (zygote.py, Zygote.send).

The supervisor's send of a spawn request blocks while the zygote is busy; during a
burst of spawns in one of its turns it does not read the zygote's news. If the zygote
blocked in its own send then, each would wait for the other for ever: a burst of 10,000
`submit_run`s in one turn once stopped a supervisor with 3,475 agents started. Its news
now waits in an outbox, in order, with its own copies of the fds it carries."""

from __future__ import annotations

import json
import os
import socket

from agentlibos.zygote.zygote import Zygote


def test_news_that_does_not_fit_waits_in_order_with_its_fds_and_goes_out_later() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    zygote = Zygote(ours)
    r, w = os.pipe()
    sent = 0
    while not zygote.outbox:  # fill the socket: nobody reads the other end yet
        zygote.send({"op": "spawned", "n": sent}, [r])
        sent += 1
        assert sent < 1_000_000
    for n in range(sent, sent + 50):
        zygote.send({"op": "exited", "n": n}, [r])  # queued behind, never blocking
    os.close(r)  # the caller closes its own copy; the queued ones hold theirs
    assert len(zygote.outbox) == 51

    got: list[int] = []
    theirs.settimeout(5)
    while len(got) < sent + 50:
        zygote.flush()
        data, fds, _, _ = socket.recv_fds(theirs, 1 << 16, 4)
        got.append(json.loads(data)["n"])
        for fd in fds:
            if len(got) > sent:  # one sent from the queue: its pipe is still the pipe
                os.write(w, b"x")
                assert os.read(fd, 1) == b"x"
            os.close(fd)
    assert got == list(range(sent + 50))
    assert not zygote.outbox
    os.close(w)
    ours.close()
    theirs.close()
