"""What the runtime needs from durable state: the :class:`Store` protocol and its records.

Callers type against :class:`Store` and get one from :func:`agentlibos.store.open_store`;
:class:`~agentlibos.store.sqlite.SQLiteStore` is the one implementation today, and a
PostgreSQL store will implement the same protocol. Nothing outside ``store/`` writes SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from agentlibos.kernel.approvals import AskRecord, EventRecord
from agentlibos.kernel.audit import AuditRecord, VerifyResult
from agentlibos.kernel.budgets import TreeQuota, Usage
from agentlibos.kernel.journal import JournalEntry, JournalStatus
from agentlibos.kernel.process import ProcessRecord
from agentlibos.kernel.tokens import TokenUsage


@dataclass(frozen=True)
class ObjectRecord:
    ns: str
    name: str
    type: str
    version: int
    value: Any
    size: int
    created_at: float
    updated_at: float
    updated_by: int | None

    def stat(self) -> dict[str, Any]:
        return {
            "ns": self.ns,
            "name": self.name,
            "type": self.type,
            "version": self.version,
            "size": self.size,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True)
class ImageRecord:
    name: str
    version: str
    path: str
    description: str
    registered_at: float


@dataclass(frozen=True)
class ObjectQuota:
    max_objects_per_ns: int = 10_000
    max_bytes_per_ns: int = 64 << 20


class ObjectStore(Protocol):
    """Object memory: the part of the store obj handlers may touch, and nothing else.

    ``root_pid`` is the writer's tree, charged in the same transaction and checked
    against ``tree_quota`` when one is given (kernel/budgets.py)."""

    def get_object(self, ns: str, name: str) -> ObjectRecord: ...
    def put_object(
        self, ns: str, name: str, type_: str, value_json: str, pid: int | None,
        expect_version: int | None, quota: ObjectQuota, *,
        root_pid: int | None = None, tree_quota: TreeQuota | None = None,
    ) -> ObjectRecord: ...
    def list_objects(self, ns: str, prefix: str, limit: int) -> list[ObjectRecord]: ...
    def delete_object(self, ns: str, name: str, expect_version: int | None) -> None: ...


class Store(ObjectStore, Protocol):
    """Durable state: processes, capabilities, objects, images, the journal and audit.

    Writes join the open :meth:`batch`/:meth:`transaction`; :meth:`savepoint` scopes one
    syscall so a handler bug rolls back its writes (audit and journal together) while a
    typed refusal keeps them. See docs/store.md.
    """

    def close(self) -> None: ...
    # transactions
    def transaction(self) -> AbstractContextManager[None]: ...
    def batch(self) -> AbstractContextManager[None]: ...
    def savepoint(self) -> AbstractContextManager[None]: ...
    # processes
    def policy_id(self, source: str, text: str) -> int: ...
    def create_process(self, rec: ProcessRecord) -> ProcessRecord: ...
    def update_process(self, pid: int, **fields: Any) -> None: ...
    def get_process(self, pid: int) -> ProcessRecord: ...
    def list_processes(self, *, live_only: bool = False) -> list[ProcessRecord]: ...
    def children(self, pid: int) -> list[ProcessRecord]: ...
    def mark_orphans(self, reason: str, now: float) -> list[int]: ...
    # capabilities
    def set_caps(self, pid: int, caps: list[str]) -> None: ...
    def get_caps(self, pid: int) -> list[str]: ...
    # objects: see ObjectStore
    # per-tree budgets
    def tree_usage(self, root_pid: int) -> Usage: ...
    def charge_tree(
        self, root_pid: int, charge: Usage, quota: TreeQuota | None = None
    ) -> Usage: ...
    # token budgets of model calls (kernel/tokens.py), on the tree root's row
    def tokens_usage(self, root_pid: int) -> TokenUsage: ...
    def tokens_set_limit(self, root_pid: int, limit: int | None) -> None: ...
    def tokens_settle(self, root_pid: int, prompt: int, completion: int) -> TokenUsage: ...
    # images
    def put_image(self, rec: ImageRecord) -> None: ...
    def get_image(self, name: str) -> ImageRecord | None: ...
    def list_images(self) -> list[ImageRecord]: ...
    def delete_image(self, name: str) -> ImageRecord | None: ...
    # journal
    def journal_append(self, entry: JournalEntry) -> None: ...
    def journal_append_many(self, entries: list[JournalEntry]) -> None: ...
    def journal_settle(
        self, pid: int, seq: int, status: JournalStatus, result: str
    ) -> None: ...
    def journal_entries(
        self, pid: int, *, after_seq: int = 0, limit: int = 1000
    ) -> list[JournalEntry]: ...
    def journal_last_seq(self, pid: int) -> int: ...
    # audit
    def append_audit(
        self, pid: int | None, call: str, request: str, verdict: str, detail: dict[str, Any]
    ) -> int: ...
    def audit_records(
        self, *, pid: int | None = None, since_seq: int = 0, limit: int | None = None
    ) -> list[AuditRecord]: ...
    def verify_audit(self) -> VerifyResult: ...

    def audit_head_seq(self) -> int: ...

    # The human queue and events (store/waiting.py).
    def ask_create(self, rec: AskRecord) -> AskRecord: ...
    def ask_get(self, ask_id: int) -> AskRecord: ...
    def ask_list(self, *, pending_only: bool = True, limit: int = 100_000) -> list[AskRecord]: ...
    def ask_decide(self, ask_id: int, state: str, *, answer: str | None = None,
                   reason: str | None = None, always: bool = False) -> AskRecord: ...
    def asks_of(self, pid: int) -> Iterator[AskRecord]: ...
    def event_append(self, name: str, payload: Any, posted_by: int | None) -> EventRecord: ...
    def event_last_id(self) -> int: ...
    def event_after(self, name: str, after_id: int) -> EventRecord | None: ...
