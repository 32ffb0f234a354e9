"""Per-tree budgets: how much of the shared stores one process tree may take. Pure.

A *tree* is one ``run`` and everything it spawns; every process record carries its
``root_pid``, and the tree is charged under it. Per-namespace object quotas alone do not
bound a tree (with ``obj:rw:*`` it can spread over any number of namespaces), and the
broker writes files as the supervisor, so neither RLIMIT_FSIZE nor the agent's cgroup
bounds what it writes *through* the broker. These quotas do.

Four amounts, each with the operator's limit (``[limits]`` in config.toml):

``object_bytes``, ``objects``
    *Held*: what the tree's objects take now. An object is charged to the tree that
    wrote it last; a put that replaces one charges the difference (or, when another
    tree wrote it before, moves the whole object onto the writer); a delete gives its
    bytes and its count back to the tree it was charged to.
``write_bytes``
    *Spent*: every byte the broker writes for the tree (whole-file writes and appends),
    a meter like a token budget. Deleting a file gives nothing back: the quota bounds
    the disk traffic and growth one tree can cause, whatever it deletes in between.
``journal_bytes``
    *Spent*: the bytes of answers over ``JOURNAL_SMALL`` that the journal kept whole for
    the tree, so that a resumed agent can be told them again (broker/journal.py). Not a
    refusal: past it, the answers of reads that can be made again (a file, a listing,
    an object) are kept by size and sha256, as a large file's always are; other answers
    (a model's, a human's) are kept whole and counted. It bounds how fast a tree can
    grow the state database by reading, which none of the other three sees.

The rule (:func:`overrun`, for the first three): a charge is refused when one of its
positive parts would take the tree's usage above that part's limit. Exactly reaching a
limit is allowed. A charge that only lowers usage (a delete, a smaller put, a refund) is
never refused, so a tree above its quota (the operator lowered it) can always get back
under.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

from agentlibos.errors import LimitExceeded
from agentlibos.kernel.units import format_size

__all__ = [
    "DEFAULT_JOURNAL_BYTES",
    "DEFAULT_OBJECTS",
    "DEFAULT_OBJECT_BYTES",
    "DEFAULT_WRITE_BYTES",
    "QUOTA_KEYS",
    "Overrun",
    "TreeQuota",
    "Usage",
    "apply",
    "delete_charges",
    "journal_charge",
    "overrun",
    "put_charges",
    "write_charge",
]

# The defaults, chosen so that ordinary agents never meet them and one tree still cannot
# fill a host: 256 MiB of objects is four full namespaces (the per-namespace quota is
# 64 MiB) and is read back into one SQLite database every agent shares; 100,000 objects
# is ten full namespaces by count; 1 GiB written through the broker is far above what
# an agent's own work needs and a small part of any disk the runtime is run on; 256 MiB
# of kept answers is some 4,000 reads of a 64 KiB file, far more than an agent resumed
# after a crash replays in the usual run, and bounds a loop of reads to that.
DEFAULT_OBJECT_BYTES: Final = 256 << 20
DEFAULT_OBJECTS: Final = 100_000
DEFAULT_WRITE_BYTES: Final = 1 << 30
DEFAULT_JOURNAL_BYTES: Final = 256 << 20

QUOTA_KEYS: Final = ("object_bytes", "objects", "write_bytes", "journal_bytes")
# The quotas a charge is refused for; journal_bytes changes how answers are kept instead.
_REFUSING: Final = QUOTA_KEYS[:3]


@dataclass(frozen=True)
class Usage:
    """What a tree holds or has spent; also a charge (a change, parts may be negative)."""

    object_bytes: int = 0
    objects: int = 0
    write_bytes: int = 0
    journal_bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.object_bytes + other.object_bytes, self.objects + other.objects,
                     self.write_bytes + other.write_bytes,
                     self.journal_bytes + other.journal_bytes)

    def __neg__(self) -> Usage:
        return Usage(-self.object_bytes, -self.objects, -self.write_bytes,
                     -self.journal_bytes)

    def __bool__(self) -> bool:
        return any((self.object_bytes, self.objects, self.write_bytes, self.journal_bytes))

    @property
    def grows(self) -> bool:
        """Some part is positive: a charge that takes something (and may be refused)."""
        return (self.object_bytes > 0 or self.objects > 0 or self.write_bytes > 0
                or self.journal_bytes > 0)

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TreeQuota:
    """The operator's per-tree limits (``[limits]`` object_bytes, objects, write_bytes,
    journal_bytes)."""

    object_bytes: int = DEFAULT_OBJECT_BYTES
    objects: int = DEFAULT_OBJECTS
    write_bytes: int = DEFAULT_WRITE_BYTES
    journal_bytes: int = DEFAULT_JOURNAL_BYTES

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"tree quota {f.name} must be a whole number >= 0, got {v!r}")


_SAYS: Final[dict[str, tuple[str, str]]] = {
    "object_bytes": ("holds", " of objects"),
    "objects": ("holds", ""),
    "write_bytes": ("has written", " through the broker"),
    "journal_bytes": ("has had", " of answers kept in the journal"),
}


def _amount(key: str, n: int) -> str:
    """``3 objects``, ``100 bytes``, or ``2097152 bytes (2MiB)`` where a unit is exact."""
    if key == "objects":
        return f"{n} objects"
    exact = format_size(n)
    return f"{n} bytes" if exact == f"{n}B" else f"{n} bytes ({exact})"


@dataclass(frozen=True)
class Overrun:
    """Why a charge is refused: the quota it would break, and by how much."""

    root_pid: int
    quota: str  # one of QUOTA_KEYS
    usage: int  # the tree's usage before the charge
    asked: int  # what the charge adds
    limit: int

    @property
    def message(self) -> str:
        verb, where = _SAYS[self.quota]
        return (f"process tree {self.root_pid} {verb} {_amount(self.quota, self.usage)}"
                f"{where}; {self.asked} more would exceed its {self.quota} quota of "
                f"{_amount(self.quota, self.limit)} ([limits] {self.quota} in the "
                "operator's config.toml)")

    def error(self, call: str | None = None) -> LimitExceeded:
        """The typed error an agent gets: names the quota, the usage and the limit."""
        prefix = f"{call}: " if call else ""
        return LimitExceeded(prefix + self.message, quota=self.quota, usage=self.usage,
                             asked=self.asked, limit=self.limit, root_pid=self.root_pid)


def overrun(root_pid: int, quota: TreeQuota, usage: Usage, charge: Usage) -> Overrun | None:
    """The first quota ``charge`` would break for a tree at ``usage``; None if it fits."""
    for key in _REFUSING:
        add, have, limit = getattr(charge, key), getattr(usage, key), getattr(quota, key)
        if add > 0 and have + add > limit:
            return Overrun(root_pid, key, have, add, limit)
    return None


def apply(usage: Usage, charge: Usage) -> Usage:
    """Usage after ``charge``. Never below zero: an object charged before budgets
    existed may be deleted by a tree that never paid for it."""
    after = usage + charge
    return Usage(max(0, after.object_bytes), max(0, after.objects), max(0, after.write_bytes),
                 max(0, after.journal_bytes))


def put_charges(writer: int, size: int, old_size: int | None,
                old_owner: int | None) -> dict[int, Usage]:
    """Charges, per tree, of tree ``writer`` putting ``size`` bytes on an object.

    ``old_size`` is the replaced object's size (None: it did not exist) and
    ``old_owner`` the tree it was charged to (None: nobody, e.g. the operator wrote it).
    """
    if old_size is not None and old_owner == writer:
        return {writer: Usage(object_bytes=size - old_size)}
    out = {writer: Usage(object_bytes=size, objects=1)}
    if old_size is not None and old_owner is not None:
        out[old_owner] = Usage(object_bytes=-old_size, objects=-1)
    return out


def delete_charges(size: int, owner: int | None) -> dict[int, Usage]:
    """Charges of deleting a ``size``-byte object charged to ``owner``: it gets them back."""
    return {} if owner is None else {owner: Usage(object_bytes=-size, objects=-1)}


def write_charge(nbytes: int) -> Usage:
    """The charge of writing ``nbytes`` through the broker (a write or an append)."""
    return Usage(write_bytes=nbytes)


def journal_charge(nbytes: int) -> Usage:
    """The charge of the journal keeping ``nbytes`` of answers whole for a tree."""
    return Usage(journal_bytes=nbytes)
