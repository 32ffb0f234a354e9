"""Parsing of human-written sizes ("256MiB") and durations ("10m") in images and policies."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Final

from agentlibos.errors import InvalidArgument

_SIZE_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}

_DURATION_UNITS: Final[dict[str, float]] = {
    "": 1.0,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

MAX_DURATION_S: Final = 100 * 365 * 86400.0
# The kernel refuses a CPU quota under 1 ms per 100 ms period (EINVAL), so a smaller
# share could never be enforced: refused where it is written, not at the spawn.
MIN_CPU_CORES: Final = 0.01
MAX_CPU_CORES: Final = 1_000_000.0
# What the store's integers (SQLite: signed 64 bits) can hold.
MAX_SIZE_BYTES: Final = (1 << 63) - 1

_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object, *, what: str = "size") -> int:
    """Bytes from an int or a string such as ``"256MiB"``, ``"1.5G"`` or ``"4096"``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: expected a size like '256MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"{what}: must not be negative, got {value}")
        if value > MAX_SIZE_BYTES:
            raise InvalidArgument(f"{what}: {value} is more than 8 EiB")
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: expected a size like '256MiB', got {value!r}")
    m = _NUMBER_UNIT.match(value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise InvalidArgument(
            f"{what}: cannot parse {value!r}; use a number with B, KiB, MiB, GiB (or K, M, G)"
        )
    # Fraction, not float: "2.01MB" must be 2010000 bytes, not 2009999, and a
    # 400-digit number must not overflow a float.
    n = int(Fraction(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n > MAX_SIZE_BYTES:
        raise InvalidArgument(f"{what}: {value!r} is more than 8 EiB")
    return n


def parse_count(value: object, *, what: str = "count") -> int:
    """A whole number >= 1 (a TOML integer, not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{what} must be a positive integer, got {value!r}")
    return value


def parse_cores(value: object, *, what: str = "cpu") -> float:
    """A number of CPU cores (``1``, ``0.5``) that a cgroup can enforce."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{what} must be a number of cores like 0.5 or 2, got {value!r}")
    if not math.isfinite(value) or not MIN_CPU_CORES <= value <= MAX_CPU_CORES:
        raise InvalidArgument(f"{what} must be from {MIN_CPU_CORES} to {MAX_CPU_CORES:g} "
                              f"cores (the kernel enforces no smaller share), got {value!r}")
    return float(value)


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds from a number or a string such as ``"10m"``, ``"500ms"``, ``"2h"``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: expected a duration like '10m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidArgument(f"{what}: must not be negative, got {value}")
        if not math.isfinite(value) or value > MAX_DURATION_S:
            raise InvalidArgument(f"{what}: {value!r} is longer than 100 years")
        return float(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: expected a duration like '10m', got {value!r}")
    m = _NUMBER_UNIT.match(value)
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise InvalidArgument(f"{what}: cannot parse {value!r}; use a number with ms, s, m or h")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise InvalidArgument(f"{what}: {value!r} is longer than 100 years")
    return seconds


def format_size(n: int) -> str:
    """The shortest exact binary-unit spelling, for `ps` and docs."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def format_duration(s: float) -> str:
    for unit, factor in (("h", 3600.0), ("m", 60.0)):
        if s >= factor and s % factor == 0:
            return f"{int(s // factor)}{unit}"
    # repr is the shortest exact spelling; Decimal writes it without an exponent
    # ("1e+06s" would not parse back), normalize() drops a trailing ".0".
    return f"{Decimal(repr(s)).normalize():f}s"
