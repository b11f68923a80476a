"""Audit entries: the append-only record of every state transition of every change."""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "AuditState",
    "AuditEntry",
    "StateSummary",
    "now_ms",
    "new_id",
    "latest_by_change",
    "HOST",
    "PID",
]

HOST = socket.gethostname()
PID = os.getpid()


def now_ms() -> int:
    """Return the wall-clock time in epoch milliseconds; stored for people, never compared."""
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """Return a new random identifier (32 hex digits, 128 random bits)."""
    return os.urandom(16).hex()


class AuditState(str, enum.Enum):
    """The state a change reached; the newest entry of a change is its current state."""

    STARTED = "STARTED"
    APPLIED = "APPLIED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"
    MANUAL_MARKED_AS_APPLIED = "MANUAL_MARKED_AS_APPLIED"
    MANUAL_MARKED_AS_ROLLED_BACK = "MANUAL_MARKED_AS_ROLLED_BACK"

    @property
    def is_applied(self) -> bool:
        return self in (AuditState.APPLIED, AuditState.MANUAL_MARKED_AS_APPLIED)

    @property
    def is_undone(self) -> bool:
        return self in (AuditState.ROLLED_BACK, AuditState.MANUAL_MARKED_AS_ROLLED_BACK)

    @property
    def is_uncertain(self) -> bool:
        """True for states after which the change's effect on the target is unknown."""
        return self in (AuditState.STARTED, AuditState.FAILED, AuditState.ROLLBACK_FAILED)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """One append-only audit record: one state transition of one change in one execution.

    Entries are ordered by `(lock_epoch, sequence)`: every write happens under the lock, each
    acquisition has a higher epoch than the one before, and `sequence` counts the entries of
    one execution. No clock is compared. `entry_id` makes a repeated append idempotent.
    """

    entry_id: str
    execution_id: str
    stage: str
    change_id: str
    author: str
    order: str
    state: AuditState
    lock_epoch: int
    sequence: int
    created_at_ms: int
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    duration_ms: int | None = None
    transactional: bool = False
    host: str = HOST
    pid: int = PID
    error_type: str | None = None
    error_message: str | None = None
    error_trace: str | None = None
    library_version: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.lock_epoch, self.sequence)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain mapping of JSON-compatible values, as drivers and the CLI store it."""
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["state"] = self.state.value
        data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        """Build an entry from `to_dict` output; raises `KeyError`, `TypeError` or `ValueError`.

        Drivers catch those and raise `CorruptAuditEntryError` naming the record.
        """
        values = {name: data[name] for name in _FIELD_NAMES if name in data}
        missing = [name for name in _REQUIRED_FIELDS if name not in values]
        if missing:
            raise KeyError(f"missing fields: {', '.join(missing)}")
        values["state"] = AuditState(values["state"])
        for name in ("lock_epoch", "sequence", "created_at_ms"):
            if not isinstance(values[name], int) or isinstance(values[name], bool):
                raise TypeError(f"field {name!r} must be an integer, got {values[name]!r}")
        values["metadata"] = dict(values.get("metadata") or {})
        return cls(**values)


class StateSummary(NamedTuple):
    """The columns of a change's newest audit entry that planning reads.

    `Driver.read_state_summaries()` returns these, so that a start with nothing pending
    need not read and decode every column of every entry.
    """

    change_id: str
    state: AuditState
    transactional: bool
    lock_epoch: int

    @classmethod
    def of(cls, entry: AuditEntry) -> StateSummary:
        return cls(entry.change_id, entry.state, entry.transactional, entry.lock_epoch)


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(AuditEntry))
_REQUIRED_FIELDS = tuple(
    field.name
    for field in dataclasses.fields(AuditEntry)
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
)


def latest_by_change(entries: Iterable[AuditEntry]) -> dict[str, AuditEntry]:
    """Return the newest entry of each change id, by `(lock_epoch, sequence)`."""
    latest: dict[str, AuditEntry] = {}
    for entry in entries:
        current = latest.get(entry.change_id)
        if current is None or entry.sort_key > current.sort_key:
            latest[entry.change_id] = entry
    return latest
