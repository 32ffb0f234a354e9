"""Fixtures, and the rule that privileged and Deno tests never skip in CI.

CI (``.ci/run``) sets ``AGENTLIBOS_STRICT=1``: a test marked ``privileged`` or ``deno``
that skips is then reported as a failure, because on CI every kernel feature and Deno
are available and a skip would hide a broken sandbox.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentlibos.config import Paths
from agentlibos.sandbox.profile import LAYERS, SandboxConfig
from agentlibos.store import SQLiteStore
from agentlibos.supervisor import Supervisor
from tests.helpers import write_image

STRICT = os.environ.get("AGENTLIBOS_STRICT") == "1"

# Fixtures of the waiting CLI tests (a project, the asking policy, writer and asker
# images), shared by test_cli_ask.py.
pytest_plugins = ["tests.test_cli_waiting"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if STRICT and rep.skipped:
        marks = [m for m in ("privileged", "deno") if item.get_closest_marker(m)]
        if marks:
            rep.outcome = "failed"
            rep.longrepr = (f"{item.nodeid} is marked {', '.join(marks)} and skipped, but "
                            f"AGENTLIBOS_STRICT=1 (CI) forbids skipping it: {rep.longrepr}")


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh $AGENTLIBOS_HOME with a short path (unix socket paths are limited)."""
    d = Path(tempfile.mkdtemp(prefix="alos-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where a test's own state database lives."""
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    """A real SQLite store at ``db``, closed after the test."""
    s = SQLiteStore(db)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def paths(home: Path) -> Paths:
    return Paths(home)


def default_sandbox() -> SandboxConfig:
    """The product's default (every layer required) where the host allows it: as root.

    Unprivileged, the runtime's semantics are still tested, with every layer optional;
    the sandbox's own tests are marked ``privileged`` and must not skip in CI.
    """
    if os.geteuid() == 0:
        return SandboxConfig()
    return SandboxConfig(optional=frozenset(LAYERS))


@pytest.fixture
def sup(paths: Paths) -> Iterator[Supervisor]:
    s = Supervisor(paths, sandbox=default_sandbox())
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    return d


@pytest.fixture
def make_image(images: Path) -> Callable[..., Path]:
    def make(name: str, code: str, **kw: Any) -> Path:
        return write_image(images, name, code, **kw)

    return make
