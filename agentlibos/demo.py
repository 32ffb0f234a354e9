"""``agentlibos demo``: a deterministic end-to-end run needing no network and no model.

A coordinator spawns two workers from the same image with different (attenuated)
capabilities. The counter reads the input, writes files and a shared object; the
reviewer holds only fs:read, so its writes come back as typed PermissionDenied errors,
which it catches and reports. The coordinator collects both results. The demo ends by
printing the process tree, the audit's refusals, and verifying the audit hash chain.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Final

from agentlibos.config import Paths
from agentlibos.kernel.process import ProcessRecord
from agentlibos.launcher import run_image
from agentlibos.store.sqlite import SQLiteStore
from agentlibos.ui import format_ps

IMAGES: Final = Path(__file__).resolve().parent / "images"

INPUT: Final = {
    "a-lighthouse.txt": "The lighthouse keeper counted ships by night and words by day.\n",
    "b-harbour.txt": "Boats in the harbour rocked gently while gulls argued over bread.\n"
                     "Nobody on the quay noticed the tide turning.\n",
    "c-log.txt": "Fog. Then wind. Then nothing at all.\n",
}


def run_demo(*, keep: bool = False) -> int:
    home = Path(tempfile.mkdtemp(prefix="agentlibos-demo-"))
    try:
        paths = Paths(home)
        project = home / "project"
        (project / "input").mkdir(parents=True)
        for name, text in INPUT.items():
            (project / "input" / name).write_text(text)
        print("Agent libOS demo: three AgentProcesses, each a real OS process behind the broker")
        print(f"  project directory (the coordinator's cwd) holds input/ with {len(INPUT)} files")
        print()
        rec = run_image(paths, str(IMAGES / "demo-coordinator"), {}, cwd=str(project))
        assert isinstance(rec, ProcessRecord)
        result = rec.result or {}
        store = SQLiteStore(paths.db, readonly=True)
        try:
            procs = store.list_processes()
            print("process tree:")
            print("  " + format_ps(procs, tree=True).replace("\n", "\n  "))
            print()
            if rec.exit_reason != "returned":
                print(f"the coordinator did not finish: {rec.state} ({rec.exit_reason}): "
                      f"{rec.error}")
                return 1
            print(f"coordinator result: {result['total_words']} words in "
                  f"{len(result['files'])} files, counted by the JIT tool word_count "
                  "(TypeScript, in a Deno with no permissions)")
            tool_reads = [a for a in store.audit_records() if a.detail.get("tool")
                          == "word_count" and a.call == "fs.read"]
            print(f"  the tool read {len(tool_reads)} files through the broker, as process "
                  f"{tool_reads[0].pid if tool_reads else '?'}, each read audited")
            for f in sorted((project / "out").iterdir()):
                print(f"  wrote out/{f.name} ({f.stat().st_size} bytes)")
            print("reviewer (fs:read only) tried to write and was refused, as it should be:")
            for r in result["reviewer_refused"]:
                print(f"  {r['path']}: {r['error']}")
            denials = [a for a in store.audit_records() if a.verdict == "deny"]
            print(f"audit: {len(denials)} refusals recorded, e.g.")
            for a in denials[:2]:
                # Paths shown relative to the demo's temporary directories, so the
                # output is the same on every run.
                request = a.request.replace(str(project), "<project>").replace(str(home),
                                                                               "<state>")
                print(f"  pid {a.pid} {a.call} {request}")
            summary = store.get_object("proc/1", "summary")
            print(f"object proc/1/summary ({summary.type}, v{summary.version}): "
                  f"{json.dumps(summary.value['children'], sort_keys=True)}")
            check = store.verify_audit()
            print()
            if check.ok:
                print(f"audit chain verified: {check.count} records, hash chain intact")
            else:
                print(f"audit chain BROKEN at record {check.first_bad_seq}: {check.problem}")
                return 1
        finally:
            store.close()
        if keep:
            print(f"state kept in {home} (AGENTLIBOS_HOME={home} agentlibos ps --all --tree)")
        return 0
    finally:
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
