"""open_store(url): which forms open a store and which are refused, and how."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentlibos.errors import InvalidArgument, NotFound, UnsupportedStore
from agentlibos.store import SQLiteStore, open_store


def test_a_plain_path_string_opens_sqlite(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "a" / "state.db"))
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == tmp_path / "a" / "state.db"
    finally:
        store.close()
    assert (tmp_path / "a" / "state.db").exists()


def test_a_path_object_opens_sqlite(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == tmp_path / "state.db"
    finally:
        store.close()


def test_a_sqlite_url_with_an_absolute_path_opens_that_file(tmp_path: Path) -> None:
    target = tmp_path / "my state.db"
    store = open_store(f"sqlite://{tmp_path}/my%20state.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == target
    finally:
        store.close()
    assert target.exists()


def test_readonly_passes_through_and_opens_nothing_new(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nothing has run yet"):
        open_store(f"sqlite://{tmp_path}/absent.db", readonly=True)
    assert not (tmp_path / "absent.db").exists()
    open_store(tmp_path / "state.db").close()
    store = open_store(str(tmp_path / "state.db"), readonly=True)
    try:
        assert isinstance(store, SQLiteStore)
        assert store.readonly
    finally:
        store.close()


@pytest.mark.parametrize("url", ["postgresql://alos@db.internal/alos",
                                 "postgres://db.internal:5432/alos"])
def test_a_postgresql_url_is_refused_as_not_supported_yet(url: str) -> None:
    with pytest.raises(UnsupportedStore, match="PostgreSQL stores are not supported yet"):
        open_store(url)


def test_a_refused_postgresql_url_does_not_echo_its_password() -> None:
    with pytest.raises(UnsupportedStore) as e:
        open_store("postgresql://alos:hunter2@db.internal/alos")
    assert "hunter2" not in str(e.value)
    assert "alos:***@db.internal" in str(e.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://db/alos", "unknown scheme 'mysql'"),
        ("file:///tmp/state.db", "unknown scheme 'file'"),
        ("sqlite://relative/state.db", "absolute path"),
        ("sqlite://", "absolute path"),
        ("sqlite:///tmp/state.db?mode=ro", "take no options"),
        ("", "empty store URL"),
        ("   ", "empty store URL"),
    ],
)
def test_other_forms_are_invalid_arguments(url: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        open_store(url)
