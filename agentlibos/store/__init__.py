"""Durable state behind one interface: :class:`Store`; SQLite today."""

from agentlibos.store.sqlite import ImageRecord, ObjectQuota, ObjectRecord, SQLiteStore, Store

__all__ = ["ImageRecord", "ObjectQuota", "ObjectRecord", "SQLiteStore", "Store"]
