"""Waiting, decided in pure code: the human queue's records, one-shot grants, event names.

A policy ``ask`` stops a call before it acts. The call waits; a record enters the human
queue with the exact resolved request (``fs:write:/abs/path``) and a digest of the
call's arguments (the bytes to write, the argv, the URL and body). Approving it once
creates a :class:`Grant` bound to that request *and* that digest, which exists only
inside the re-run of that very call: an identical later call asks again, and a call
with other bytes can never ride on it. ``--always`` instead adds the request to the
process's standing approvals, which an ``ask`` rule no longer stops.

No I/O here; the store keeps the records, ``supervisor/approvals.py`` acts on them.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from agentlibos.errors import InvalidArgument
from agentlibos.kernel.policy import Decision, Request
from agentlibos.kernel.text import storable

AskKind = Literal["approval", "question"]
AskState = Literal["pending", "approved", "denied", "expired", "answered"]
ASK_MODES: Final = ("prompt", "queue", "deny")

# Event names: what `event:wait:<name>` capabilities glob over and `ps` shows.
EVENT_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
# The longest a sleep may be: long enough for any agent, finite for every clock.
MAX_SLEEP_S: Final = 10 * 365 * 86400.0
MAX_QUESTION: Final = 4096
MAX_CHOICES: Final = 32
MAX_SUMMARY: Final = 600


class NeedsApproval(Exception):
    """Raised by the authority check when policy says ``ask``: the dispatch suspends the
    call on a new approval and runs it again, from the start, once it is decided."""

    def __init__(self, call: str, request: Request, decision: Decision) -> None:
        super().__init__(f"{call}: {request} needs a human's approval")
        self.call = call
        self.request = request
        self.decision = decision


@dataclass(frozen=True)
class Grant:
    """A one-shot approval: valid once, for this request, inside the call whose
    arguments have this digest."""

    ask_id: int
    request: str
    digest: str

    def covers(self, request: Request, digest: str) -> bool:
        return str(request) == self.request and digest == self.digest


@dataclass(frozen=True)
class AskRecord:
    id: int
    kind: AskKind
    pid: int
    root_pid: int
    image: str
    call: str
    digest: str
    summary: str
    request: str | None = None
    question: str | None = None
    choices: list[str] | None = None
    topic: str | None = None
    state: AskState = "pending"
    always: bool = False
    answer: str | None = None
    reason: str | None = None
    created_at: float = 0.0
    decided_at: float | None = None

    def public(self) -> dict[str, Any]:
        """What ``approvals --json`` and the control channel show."""
        return {
            "id": self.id, "kind": self.kind, "pid": self.pid, "root_pid": self.root_pid,
            "image": self.image, "call": self.call, "request": self.request,
            "question": self.question, "choices": self.choices, "topic": self.topic,
            "digest": self.digest, "summary": self.summary, "state": self.state,
            "always": self.always, "answer": self.answer, "reason": self.reason,
            "created_at": self.created_at, "decided_at": self.decided_at,
        }


@dataclass(frozen=True)
class EventRecord:
    id: int
    name: str
    payload: Any
    posted_by: int | None
    posted_at: float

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "payload": self.payload,
                "posted_by": self.posted_by, "posted_at": self.posted_at}


def _head(text: str, n: int = 120) -> str:
    """The start of an agent-given text, quoted, saying how much more there is."""
    shown = shlex.quote(text[:n])
    return shown if len(text) <= n else f"{shown}... [{len(text) - n} more characters]"


def _what_runs(inner: dict[str, Any], argv: list[str]) -> str:
    """A command as it will run: its environment first (``env K=V ...``, what a shell
    would type), the argv, then its stdin. A variable like GIT_CONFIG_* or LD_* changes
    what a program does as much as its arguments: a human shown only ``git status``
    would approve a hook they never saw."""
    env = inner.get("env")
    pre = ""
    if isinstance(env, dict) and env:
        pre = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " "
    text = pre + shlex.join(argv)
    stdin = inner.get("stdin")
    if isinstance(stdin, str) and stdin:
        text += f" <<< {_head(stdin)}"
    return text


def _net_extra(inner: dict[str, Any], blobs: list[bytes]) -> str:
    """A request's method, the names of the headers it sets and what its body holds."""
    parts = [inner["method"].upper()]
    headers = inner.get("headers")
    if isinstance(headers, dict) and headers:
        parts.append("headers " + ", ".join(map(str, headers)))
    body = inner.get("body")
    if isinstance(body, str) and body:
        parts.append(f"body {_head(body)}")
    elif blobs:
        parts.append(f"body of {sum(len(b) for b in blobs)} bytes")
    return f" ({'; '.join(parts)})"


# A run of blanks longer than this is shown as its count: padding must not push what
# follows it out of sight (`echo docs<200 spaces>; curl ...`).
_BLANKS: Final = re.compile(r"[ \t]{4,}")


def summary_of(call: str, request: Request, args: dict[str, Any], blobs: list[bytes]) -> str:
    """One line a human can judge: what the call will do, with its size -- for a command
    the command itself with its environment and stdin, for a request its method, headers
    and body (the digest alone would have a human approve `sh -c ...` blind). Nothing
    is cut silently: what does not fit says how much is missing. ``args`` may be a
    builtin tool's call (``tool.call``), whose own arguments are under ``args``."""
    nested = args.get("args")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else args
    size = sum(len(b) for b in blobs)
    extra = ""
    argv = inner.get("argv")
    question = inner.get("question")
    if request.kind == "shell" and isinstance(argv, list) and all(
            isinstance(a, str) for a in argv):
        text = f"{call} wants to run: {_what_runs(inner, argv)}"
    elif request.kind == "human" and isinstance(question, str):
        # Asking a human is what is approved: show what it would ask.
        choices = inner.get("choices")
        shown = f" [{' / '.join(map(str, choices))}]" if isinstance(choices, list) else ""
        text = f"{call} wants to ask: {question}{shown}"
    else:
        if call == "fs.write":
            extra = (f" ({'append ' if inner.get('append') else ''}{size} bytes)")
        elif request.kind == "net" and isinstance(inner.get("method"), str):
            extra = _net_extra(inner, blobs)
        elif blobs:
            extra = f" ({size} bytes)"
        text = f"{call} wants {request.right} on {request.kind} {request.resource}{extra}"
    text = _BLANKS.sub(lambda m: f" [{len(m.group())} blanks] ", storable(text, 8192))
    # One line: a control character (an argv's newline) is shown escaped.
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) <= MAX_SUMMARY:
        return text
    cut = f"... [{len(text) - (MAX_SUMMARY - 40)} more characters not shown]"
    return text[: MAX_SUMMARY - 40] + cut


def check_event_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not EVENT_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what}: {name!r} is not a valid event name (1-128 characters of letters, "
            "digits and _ . : / -, starting with a letter or digit)")
    return name


def check_sleep(seconds: float, what: str = "clock.sleep") -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidArgument(f"{what}: seconds must be a number")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{what}: seconds must be a finite number >= 0, not {seconds!r}")
    if seconds > MAX_SLEEP_S:
        raise InvalidArgument(f"{what}: at most {MAX_SLEEP_S:g} seconds (ten years)")
    return float(seconds)


def check_question(question: str, choices: list[Any] | None) -> list[str] | None:
    if not question.strip() or len(question) > MAX_QUESTION:
        raise InvalidArgument(f"human.ask: the question must be 1-{MAX_QUESTION} characters")
    if choices is None:
        return None
    if (not choices or len(choices) > MAX_CHOICES
            or not all(isinstance(c, str) and 0 < len(c) <= 256 for c in choices)
            or len(set(choices)) != len(choices)):
        raise InvalidArgument(f"human.ask: choices must be 1-{MAX_CHOICES} distinct strings "
                              "of 1-256 characters")
    return list(choices)


def check_answer(rec: AskRecord, text: str) -> str:
    if rec.kind != "question":
        raise InvalidArgument(f"{rec.id} is an approval: approve or deny it, not answer it")
    if rec.choices is not None and text not in rec.choices:
        raise InvalidArgument(f"question {rec.id} takes one of: "
                              f"{', '.join(json.dumps(c) for c in rec.choices)}")
    return text


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
