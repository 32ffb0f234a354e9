"""``run --ask prompt``: ask the human at the terminal while the run waits.

A thread beside the wait polls the control operation ``approvals`` for pending items
of this run's tree (``root_pid``) and, one at a time, shows each on stderr and reads the
answer from stdin. It acts only through the control channel (approve, deny, answer),
like `agentlibos approve` from another terminal would, so an embedded supervisor, whose
loop runs in the main thread, serves it like any other client. Whichever answer comes
first wins: an item decided elsewhere while the prompt is up is dropped from the screen.

Everything an agent chose (the summary, the request, a question and its choices) is
printed through :func:`agentlibos.ui.printable`.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from typing import Any, Final, TextIO

from agentlibos.config import Paths
from agentlibos.errors import Conflict, InvalidArgument, LibOSError, NotFound
from agentlibos.supervisor.control import control_call
from agentlibos.ui import printable

POLL_S: Final = 0.2  # how often the queue is looked at while nothing is on screen
NOTIFY_POLL_S: Final = 0.5  # how often `--ask queue` looks for new items to mention
RECHECK_S: Final = 1.0  # how often an item on screen is checked for an answer from elsewhere
CALL_TIMEOUT_S: Final = 2.0
# Typed as the answer to a question, declines it (as `agentlibos deny ID` does). An answer
# that must begin with this word is given with `agentlibos answer` instead.
DECLINE: Final = "!decline"


class _Gone(Exception):
    """The item on screen was decided elsewhere, or the prompter is stopping."""


class Prompter:
    """Answers this tree's approvals and questions from a terminal, in a thread."""

    def __init__(self, paths: Paths, root_pid: int, *, fd_in: int = 0,
                 out: TextIO | None = None) -> None:
        self.endpoint = paths.control_endpoint
        self.root_pid = root_pid
        self.fd_in = fd_in
        self.out = out if out is not None else sys.stderr
        self._stop = threading.Event()
        self._eof = False
        self._eof_seen = False  # stdin ended; lines read before it are still answered
        self._typed = b""  # read from stdin, not yet answered
        self._thread = threading.Thread(target=self._main, name=f"ask-prompt-{root_pid}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the prompting; an unanswered item stays in the queue."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(CALL_TIMEOUT_S + 1)

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        while not self._stop.is_set() and not self._eof:
            try:
                for item in self._pending():
                    if self._stop.is_set() or self._eof:
                        break
                    self._handle(item)
            except LibOSError:
                pass  # the supervisor is busy or going away; the run's wait says which
            self._stop.wait(POLL_S)

    def _pending(self) -> list[dict[str, Any]]:
        reply = control_call(self.endpoint, {"op": "approvals", "all": False},
                             timeout_s=CALL_TIMEOUT_S)
        return [it for it in reply.get("items") or []
                if it.get("root_pid") == self.root_pid and it.get("state") == "pending"]

    def _still_pending(self, item_id: int) -> bool:
        try:
            return any(it.get("id") == item_id for it in self._pending())
        except LibOSError:
            return True  # cannot tell: keep asking

    def _say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _handle(self, item: dict[str, Any]) -> None:
        try:
            if item.get("kind") == "question":
                self._ask_question(item)
            else:
                self._ask_approval(item)
        except _Gone:
            if self._stop.is_set():
                self._say("\n")  # the run is over: end the prompt's line
            elif not self._eof:
                self._say(f"\nagentlibos: {item.get('kind')} {item.get('id')} was answered "
                          "elsewhere\n")
        except (Conflict, NotFound) as e:
            self._say(f"agentlibos: {printable(e.message)}\n")

    def _header(self, item: dict[str, Any], what: str) -> str:
        return (f"\nagentlibos: pid {item.get('pid')} ({printable(item.get('image'))}) "
                f"{what} {item.get('id')}: {printable(item.get('summary') or '')}\n")

    def _ask_approval(self, item: dict[str, Any]) -> None:
        self._say(self._header(item, "asks for approval")
                  + f"  request: {printable(item.get('request'))}\n"
                  + f"  digest:  {printable(item.get('digest'))}\n")
        while True:
            choice = self._read(item, "  allow? [y] once, [a] always, [n] deny: ").lower()
            if choice in ("y", "yes", "a", "always"):
                always = choice.startswith("a")
                self._call({"op": "approve", "id": item["id"], "always": always})
                self._say("  approved" + (" for the rest of the process's life" if always
                                          else " once") + "\n")
                return
            if choice in ("n", "no"):
                reason = self._read(item, "  reason (optional, Enter for none): ")
                self._call({"op": "deny", "id": item["id"], "reason": reason or None})
                self._say("  denied\n")
                return

    def _ask_question(self, item: dict[str, Any]) -> None:
        text = self._header(item, "asks question") + \
            f"  question: {printable(item.get('question'))}\n"
        choices = item.get("choices")
        if choices:
            text += "  choices:  " + " | ".join(printable(c) for c in choices) + "\n"
        self._say(text + f"  ({DECLINE} [reason] declines it)\n")
        while True:
            answer = self._read(item, "  answer: ")
            if not answer:
                continue
            word, _, reason = answer.partition(" ")
            if word == DECLINE:  # the agent's human.ask fails with PermissionDenied
                self._call({"op": "deny", "id": item["id"], "reason": reason.strip() or None})
                self._say("  declined\n")
                return
            try:
                self._call({"op": "answer", "id": item["id"], "text": answer})
            except InvalidArgument as e:  # not one of the choices: say so and ask again
                self._say(f"  {printable(e.message)}\n")
                continue
            self._say("  answered\n")
            return

    def _call(self, req: dict[str, Any]) -> None:
        control_call(self.endpoint, req, timeout_s=CALL_TIMEOUT_S)

    def _read(self, item: dict[str, Any], prompt: str) -> str:
        """One line from the terminal; _Gone if the item is decided elsewhere meanwhile."""
        self._say(prompt)
        checked = time.monotonic()
        while True:
            if self._stop.is_set():
                raise _Gone
            # Lines read ahead are kept for the next question (stdin may be a pipe that
            # holds every answer at once): one line answers one question.
            if b"\n" in self._typed:
                line, self._typed = self._typed.split(b"\n", 1)
                return line.decode(errors="replace").strip()
            if self._eof_seen:
                if self._typed:  # a last line without its newline
                    line, self._typed = self._typed, b""
                    return line.decode(errors="replace").strip()
                # stdin closed: nobody is there to ask any more
                self._eof = True
                self._say("\nagentlibos: stdin closed; answer with `agentlibos approve "
                          f"{item.get('id')}`, `deny` or `answer`\n")
                raise _Gone
            ready, _, _ = select.select([self.fd_in], [], [], POLL_S)
            if ready:
                chunk = os.read(self.fd_in, 4096)
                if chunk:
                    self._typed += chunk
                else:
                    self._eof_seen = True
            elif time.monotonic() - checked >= RECHECK_S:
                checked = time.monotonic()
                if not self._still_pending(int(item["id"])):
                    raise _Gone


class Notifier(Prompter):
    """``run --ask queue``: says on stderr, once each, what of this tree waits in the
    queue and the command that answers it -- so a run waiting on an operator does not
    look hung. It answers nothing itself."""

    def _main(self) -> None:
        seen: set[int] = set()
        while not self._stop.is_set():
            try:
                for item in self._pending():
                    if item["id"] not in seen:
                        seen.add(item["id"])
                        self._say(self._note(item))
            except LibOSError:
                pass  # the supervisor is busy or going away; the run's wait says which
            self._stop.wait(NOTIFY_POLL_S)

    def _note(self, item: dict[str, Any]) -> str:
        n = item.get("id")
        if item.get("kind") == "question":
            return (self._header(item, "waits on question").lstrip("\n")
                    + f"  answer it: agentlibos answer {n} TEXT (or deny {n})\n")
        return (self._header(item, "waits on approval").lstrip("\n")
                + f"  request: {printable(item.get('request'))}\n"
                + f"  answer it: agentlibos approve {n} [--always] | agentlibos deny {n}\n")
