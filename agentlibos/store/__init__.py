"""Durable state behind one interface: :class:`Store`, opened with :func:`open_store`.

SQLite today (:class:`SQLiteStore`); the schema is built by numbered migrations applied
at open. See docs/store.md.
"""

from agentlibos.store.base import ImageRecord, ObjectQuota, ObjectRecord, ObjectStore, Store
from agentlibos.store.durable import CheckpointRecord
from agentlibos.store.sqlite import SQLiteStore
from agentlibos.store.url import open_store

__all__ = ["CheckpointRecord", "ImageRecord", "ObjectQuota", "ObjectRecord", "ObjectStore",
           "SQLiteStore", "Store", "open_store"]
