"""``agentlibos doctor``: which isolation layers this host can enforce, and why not."""

from __future__ import annotations

import argparse
import dataclasses

from agentlibos.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_command,
    print_json,
    sandbox_config,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(sub, "doctor", help="show which isolation layers this host can enforce",
                func=cmd_doctor, example="""
        agentlibos doctor
        agentlibos --config ./config.toml doctor --json
    """)


def cmd_doctor(ns: argparse.Namespace) -> int:
    # Here, not at the top: the probe imports the whole supervisor, and every command
    # imports this module to build the parser.
    from agentlibos.sandbox import doctor  # noqa: PLC0415

    report = doctor.run(sandbox_config(ns))
    if ns.json:
        print_json(dataclasses.asdict(report) | {"ok": report.ok})
    else:
        print(doctor.format_report(report), flush=True)
    return EXIT_OK if report.ok else EXIT_FAILED
