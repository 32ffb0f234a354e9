"""The syscall client: one DEALER connection to the broker, one call at a time.

Every SDK method is exactly one :meth:`Client.call`. A refused call raises the typed
error the broker raised (:func:`agentlibos.errors.from_wire`).
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from agentlibos.errors import InvalidArgument, ProtocolError, Timeout, from_wire
from agentlibos.kernel.journal import UNJOURNALED, args_digest
from agentlibos.protocol.wire import decode_reply, encode_request, size_error
from agentlibos.protocol.zmtp import Dealer


class Client:
    def __init__(self, endpoint: str, pid: int, token: bytes,
                 *, dealer: Dealer | None = None) -> None:
        """``dealer``: a connection made earlier (a pooled process connects while it
        waits for its assignment); otherwise one is made to ``endpoint`` here."""
        self.endpoint = endpoint
        self.pid = pid
        self._token = token
        self._dealer = dealer or Dealer(endpoint)
        self._ids = itertools.count(1)
        # The broker checks that calls arrive numbered 1, 2, 3...: the journal's order.
        # The number of the next journaled call, taken only by a call that is sent.
        self._next_seq = 1
        # A resumed process's journal: seq -> (call, digest, status, result JSON text).
        self._replay: dict[int, tuple[str, str, str, str]] = {}

    def close(self) -> None:
        self._dealer.close()

    def call(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        blobs: list[bytes] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> tuple[Any, list[bytes]]:
        """Make one syscall; return ``(result, blobs)`` or raise its typed error."""
        req_id = next(self._ids)
        seq = None if name in UNJOURNALED else self._next_seq
        # Encoded before the journal is consulted, so a call refused here neither sends
        # anything nor uses up the journaled answer meant for the call after it.
        frames = self._encode(req_id, name, args or {}, blobs or [], seq)
        if seq is not None and self._replay:
            local = self._replayed(seq, name, args or {}, blobs or [])
            if local is not None:
                return local
        too_big = size_error(frames)
        if too_big is not None:
            # Refused here, unnumbered, as the broker would refuse it at its door: the
            # agent may catch the error and go on, its next call keeps this number.
            raise type(too_big)(f"{name}: {too_big.message}")
        if seq is not None:
            self._next_seq += 1
        dealer = self._dealer
        dealer.send(frames)
        while True:
            try:
                frames = dealer.recv(timeout_s)
            except Timeout:
                raise Timeout(f"{name}: no answer from the broker within {timeout_s} s"
                              ) from None
            reply = decode_reply(frames)
            if reply.id is not None and reply.id != req_id:
                continue  # a late answer to an earlier call that timed out
            if reply.ok:
                return reply.result, reply.blobs
            if reply.id is None and reply.error is None:
                raise ProtocolError(f"{name}: malformed error reply")
            raise from_wire(reply.error)

    def _encode(self, req_id: int, name: str, args: dict[str, Any], blobs: list[bytes],
                seq: int | None) -> list[bytes]:
        """The request's frames, or InvalidArgument when the caller's arguments are not
        JSON values (bytes, a set, an object, a cycle, nesting deeper than Python
        recurses) or a payload is not bytes; the agent's mistake, so nothing is sent."""
        for blob in blobs:
            if not isinstance(blob, bytes | bytearray):
                raise InvalidArgument(f"{name}: payloads must be bytes, not "
                                      f"{type(blob).__name__}")
        try:
            return encode_request(req_id, self.pid, name, args, self._token, blobs,
                                  seq=seq)
        except (TypeError, ValueError, RecursionError) as e:
            raise InvalidArgument(f"{name}: arguments are not JSON: {e}") from None

    def load_replay(self, upto: int) -> None:
        """Fetch the journal this resumed process replays (docs/durability.md): its calls
        within it are answered here, without a round trip, when they are the journaled
        ones. Anything else -- another call, other arguments, a large answer kept by
        digest -- goes to the broker, which decides (and stops a process that diverged)."""
        after = 0
        while after < upto:
            page = self.call("proc.journal", {"after": after, "limit": 1000})[0]
            entries = page.get("entries") or []
            if not entries:
                break
            for seq, call, digest, status, result in entries:
                self._replay[int(seq)] = (call, digest, status, result)
            after = int(entries[-1][0])

    def _replayed(self, seq: int, name: str, args: dict[str, Any],
                  blobs: list[bytes]) -> tuple[Any, list[bytes]] | None:
        entry = self._replay.pop(seq, None)
        if entry is None:
            return None
        call, digest, status, result = entry
        try:
            if call != name or args_digest(name, args, blobs) != digest:
                return None
        except (TypeError, ValueError, RecursionError):
            return None
        doc = json.loads(result)
        if status == "error":
            self._next_seq = seq + 1  # answered here: it took its number
            raise from_wire(doc)
        out: list[bytes] = []
        for b in doc.get("blobs") or []:
            if not isinstance(b, str):
                return None  # kept by digest only: the broker reads it again and checks
            out.append(base64.b64decode(b))
        self._next_seq = seq + 1
        return doc.get("result"), out

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
