"""The CLI starts a fresh interpreter per command: the parser, and a command that only
reads the store, must not import the supervisor, the zygote or every provider."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentlibos import providers, supervisor
from agentlibos.providers.fs import LocalFs
from agentlibos.supervisor.control import control_call
from agentlibos.supervisor.control.server import control_call as real_call
from agentlibos.supervisor.supervisor import Supervisor

HEAVY = ("agentlibos.supervisor.supervisor", "agentlibos.supervisor.processes",
         "agentlibos.zygote.zygote", "agentlibos.sandbox.doctor", "ssl")


def _loaded_after(code: str) -> dict[str, bool]:
    probe = (f"import sys, json\n{code}\n"
             f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    loaded: dict[str, bool] = json.loads(out.splitlines()[-1])
    return loaded


def test_building_the_parser_imports_no_supervisor() -> None:
    loaded = _loaded_after("from agentlibos.cli import build_parser; build_parser()")
    assert loaded == dict.fromkeys(HEAVY, False)


def test_a_store_only_command_imports_no_supervisor(tmp_path: Path) -> None:
    code = (f"from agentlibos.cli import main\n"
            f"try:\n    main(['--home', {str(tmp_path)!r}, 'ps', '--json'])\n"
            f"except SystemExit as e:\n    assert e.code == 0, e.code")
    loaded = _loaded_after(code)
    assert loaded == dict.fromkeys(HEAVY, False)


def test_the_lazy_names_are_the_real_ones() -> None:
    assert supervisor.Supervisor is Supervisor
    assert providers.LocalFs is LocalFs
    assert control_call is real_call
    for package in (providers, supervisor):
        for name in package.__all__:
            assert getattr(package, name) is not None
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            package.Nope  # noqa: B018 - the attribute access is the test
