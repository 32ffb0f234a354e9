"""The one-line summary an operator approves by (kernel/approvals.summary_of): what the
call will do, not only which capability it needs."""

from __future__ import annotations

from agentlibos.kernel.approvals import summary_of
from agentlibos.kernel.policy import Request


def test_a_question_to_approve_shows_the_question_and_its_choices() -> None:
    req = Request("human", "ask", "*")
    assert summary_of("human.ask", req, {"question": "Deploy?", "choices": ["yes", "no"]},
                      []) == "human.ask wants to ask: Deploy? [yes / no]"
    # Asked through the agent loop's builtin tool: its arguments are nested.
    assert summary_of("human.ask", req, {"name": "ask", "args": {"question": "Why?\n"}},
                      []) == "human.ask wants to ask: Why?\\n"


def test_other_calls_keep_their_capability_summary() -> None:
    assert summary_of("fs.write", Request("fs", "write", "/p/x"), {"path": "x"},
                      [b"abc"]) == "fs.write wants write on fs /p/x (3 bytes)"
