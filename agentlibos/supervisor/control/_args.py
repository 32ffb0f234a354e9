"""Checking a control request's fields: one clear InvalidArgument naming the field."""

from __future__ import annotations

from typing import Any

from agentlibos.errors import InvalidArgument
from agentlibos.kernel.process import INT64_MAX, INT64_MIN


def int_field(req: dict[str, Any], name: str) -> int:
    v = req.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgument(f"{req.get('op')}: {name} must be an integer")
    if not INT64_MIN <= v <= INT64_MAX:  # what the store can hold
        raise InvalidArgument(f"{req.get('op')}: {name} {v} is out of range")
    return v


def str_field(req: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    v = req.get(name)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise InvalidArgument(f"{req.get('op')}: {name} must be a string")
    return v
