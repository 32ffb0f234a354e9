"""``agentlibos demo``: a deterministic end-to-end run needing no network and no model.

A coordinator spawns two workers from the same image with different (attenuated)
capabilities. The counter reads the input, writes files and a shared object; the
reviewer holds only fs:read, so its writes come back as typed PermissionDenied errors,
which it catches and reports. The coordinator collects both results. The demo ends by
printing the process tree, the audit's refusals, and verifying the audit hash chain.

The demo always runs in a fresh temporary state directory, never in
``$AGENTLIBOS_HOME``: it must not mix its processes and audit records into the
operator's, and it must show the same output on every run. ``--keep`` keeps it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from agentlibos.config import Paths
from agentlibos.launcher import run_image
from agentlibos.providers.fs import discard_tree
from agentlibos.store import Store, open_store
from agentlibos.ui import format_ps, printable, ps_row

IMAGES: Final = Path(__file__).resolve().parent / "images"

INPUT: Final = {
    "a-lighthouse.txt": "The lighthouse keeper counted ships by night and words by day.\n",
    "b-harbour.txt": "Boats in the harbour rocked gently while gulls argued over bread.\n"
                     "Nobody on the quay noticed the tide turning.\n",
    "c-log.txt": "Fog. Then wind. Then nothing at all.\n",
}



def _shown(text: str, base: Path) -> str:
    """Paths relative to the demo's temporary directory, so the output is the same on
    every run: its project, its state, and anything else under it."""
    return (text.replace(str(base / "project"), "<project>")
            .replace(str(base / "state"), "<state>").replace(str(base), "<demo>"))

def run_demo(*, keep: bool = False, as_json: bool = False) -> int:
    """Run the demo; with ``as_json`` print one JSON object instead of the narration."""
    say: Callable[[str], None] = (lambda _text: None) if as_json else print
    # The state directory and the project side by side, as a user keeps them (the
    # agents reach the project, never the runtime's files: providers/base.StateGuard).
    base = Path(tempfile.mkdtemp(prefix="agentlibos-demo-", dir="/tmp"))
    home, project = base / "state", base / "project"
    home.mkdir()
    summary: dict[str, Any] = {"ok": False, "home": str(home) if keep else None}
    try:
        paths = Paths(home)
        (project / "input").mkdir(parents=True)
        for name, text in INPUT.items():
            (project / "input" / name).write_text(text)
        say("Agent libOS demo: three AgentProcesses, each a real OS process behind the broker")
        say(f"  project directory (the coordinator's cwd) holds input/ with {len(INPUT)} "
            "files")
        say("")
        rec = run_image(paths, str(IMAGES / "demo-coordinator"), {}, cwd=str(project)).record
        summary["coordinator"] = rec
        result = rec.get("result") or {}
        store = open_store(paths.db, readonly=True)
        try:
            procs = store.list_processes()
            summary["processes"] = [ps_row(p) for p in procs]
            say("process tree:")
            say("  " + format_ps(procs, tree=True, now=0.0).replace("\n", "\n  "))
            say("")
            if rec.get("exit_reason") != "returned":
                say(printable(f"the coordinator did not finish: {rec.get('state')} "
                              f"({rec.get('exit_reason')}): {rec.get('error')}"))
                return _end(summary, as_json, 1)
            say(f"coordinator result: {result['total_words']} words in "
                f"{len(result['files'])} files, counted by the JIT tool word_count "
                "(TypeScript, in a Deno with no permissions)")
            tool_reads = [a for a in store.audit_records() if a.detail.get("tool")
                          == "word_count" and a.call == "fs.read"]
            say(f"  the tool read {len(tool_reads)} files through the broker, as process "
                f"{tool_reads[0].pid if tool_reads else '?'}, each read audited")
            for f in sorted((project / "out").iterdir()):
                say(f"  wrote out/{f.name} ({f.stat().st_size} bytes)")
            say("reviewer (fs:read only) tried to write and was refused, as it should be:")
            for r in result["reviewer_refused"]:
                say(printable(f"  {r['path']}: {r['error']}"))
            denials = [a for a in store.audit_records() if a.verdict == "deny"]
            summary["refusals"] = len(denials)
            say(f"audit: {len(denials)} refusals recorded, e.g.")
            for a in denials[:2]:
                # Paths shown relative to the demo's temporary directories, so the
                # output is the same on every run.
                say(printable(f"  pid {a.pid} {a.call} {_shown(a.request, base)}"))
            obj = store.get_object("proc/1", "summary")
            say(f"object proc/1/summary ({obj.type}, v{obj.version}): "
                f"{json.dumps(obj.value['children'], sort_keys=True)}")
            say("")
            if not _audit_verifies(store, summary, say):
                return _end(summary, as_json, 1)
        finally:
            store.close()
        if keep:
            say(f"state kept in {home} (AGENTLIBOS_HOME={home} agentlibos ps --all --tree)")
        summary["ok"] = True
        return _end(summary, as_json, 0)
    finally:
        if not keep:
            discard_tree(base)


def _audit_verifies(store: Store, summary: dict[str, Any], say: Callable[[str], None]) -> bool:
    """Verify the audit's hash chain, say what was found, and record it in the summary."""
    check = store.verify_audit()
    summary["audit"] = check.__dict__
    if not check.ok:
        say(f"audit chain BROKEN at record {check.first_bad_seq}: {check.problem}")
    else:
        say(f"audit chain verified: {check.count} records, hash chain intact")
    return check.ok


def _end(summary: dict[str, Any], as_json: bool, code: int) -> int:
    if as_json:
        print(json.dumps(summary, default=str), flush=True)
    return code


# ---------------------------------------------------------------- agentlibos demo --llm

# The scripted model's answers, in order: what a model would send the built-in loop.
LLM_SCRIPT: Final = {"responses": [
    {"content": "Let me see what there is to read.",
     "tool_calls": [{"name": "list_dir", "arguments": {"path": "input"}}]},
    {"tool_calls": [{"name": "read_file", "arguments": {"path": "input/a-lighthouse.txt"}},
                    {"name": "read_file", "arguments": {"path": "input/b-harbour.txt"}}]},
    {"content": "I will note the summary in the first input file.",
     "tool_calls": [{"name": "write_file", "arguments": {
         "path": "input/a-lighthouse.txt", "text": "summarised\n", "append": True}}]},
    {"content": "That was refused: I may write only under out/. Writing there instead.",
     "tool_calls": [{"name": "write_file", "arguments": {
         "path": "out/summary.md",
         "text": "# Summary\n\n- A lighthouse keeper counts ships and words.\n"
                 "- A quiet harbour; the tide turns unnoticed.\n"}}]},
    {"content": "Summarised 2 files into out/summary.md. My attempt to edit "
                "input/a-lighthouse.txt was refused (PermissionDenied), as it should be."},
]}


def run_llm_demo(*, keep: bool = False, as_json: bool = False) -> int:
    """An LLM agent (the built-in loop, a scripted model) reads, is refused, answers."""
    say: Callable[[str], None] = (lambda _text: None) if as_json else print
    # The state directory and the project side by side, as a user keeps them (the
    # agents reach the project, never the runtime's files: providers/base.StateGuard).
    base = Path(tempfile.mkdtemp(prefix="agentlibos-demo-llm-", dir="/tmp"))
    home, project = base / "state", base / "project"
    home.mkdir()
    summary: dict[str, Any] = {"ok": False, "home": str(home) if keep else None}
    try:
        paths = Paths(home)
        (project / "input").mkdir(parents=True)
        (project / "out").mkdir()
        for name, text in INPUT.items():
            (project / "input" / name).write_text(text)
        (home / "script.json").write_text(json.dumps(LLM_SCRIPT))
        (home / "config.toml").write_text(
            f'[models.script]\nkind = "scripted"\nscript = "{home / "script.json"}"\n')
        say("Agent libOS demo --llm: the built-in agent loop, driven by a scripted model")
        say("  image demo-llm: tools list_dir, read_file, write_file; may read ./**, "
            "write ./out/**; 20000 tokens")
        say("")
        rec = run_image(paths, str(IMAGES / "demo-llm"), {"task": "Summarise input/."},
                        cwd=str(project)).record
        summary["agent"] = rec
        store = open_store(paths.db, readonly=True)
        try:
            records = store.audit_records(pid=int(rec["pid"]))
            for a in records:
                tool = a.detail.get("tool")
                where = _shown(a.request, base)
                if a.call == "model.chat" and a.verdict == "info":
                    u = a.detail.get("usage", {})
                    say(f"  model  {a.detail.get('model')}: {u.get('total_tokens')} tokens, "
                        f"{a.detail.get('tool_calls')} tool call(s)")
                elif tool and a.verdict in ("allow", "deny"):
                    say(printable(f"  tool   {tool}: {a.call} {where} -> {a.verdict}"))
                    if a.verdict == "deny":
                        say(printable("         the model reads: PermissionDenied: "
                                      + _shown(f"{a.call}: {a.detail.get('reason')}",
                                               base)))
            say("")
            result = rec.get("result") or {}
            if rec.get("exit_reason") != "returned":
                say(printable(f"the agent did not finish: {rec.get('state')} "
                              f"({rec.get('exit_reason')}): {rec.get('error')}"))
                return _end(summary, as_json, 1)
            say(printable(f"answer ({result['steps']} steps, "
                          f"{result['usage']['total_tokens']} tokens): {result['answer']}"))
            say(f"  out/summary.md: {(project / 'out/summary.md').stat().st_size} bytes; "
                f"input/a-lighthouse.txt unchanged: "
                f"{(project / 'input/a-lighthouse.txt').read_text() == INPUT['a-lighthouse.txt']}")
            denials = [a for a in records if a.verdict == "deny"]
            summary["refusals"] = len(denials)
            if not _audit_verifies(store, summary, say):
                return _end(summary, as_json, 1)
            if not denials:
                say("the refused write is missing from the audit")
                return _end(summary, as_json, 1)
        finally:
            store.close()
        if keep:
            say(f"state kept in {home} (AGENTLIBOS_HOME={home} agentlibos ps --all)")
        summary["ok"] = True
        return _end(summary, as_json, 0)
    finally:
        if not keep:
            discard_tree(base)
