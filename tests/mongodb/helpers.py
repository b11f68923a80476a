"""Builders shared by the MongoDB tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from flamingock_async._audit import AuditEntry, AuditState, new_id, now_ms
from flamingock_async._lock import Fence, LockRecord


def lock_record(
    key: str = "flamingock", *, owner: str | None = "runner-a", **fields: Any
) -> LockRecord:
    values: dict[str, Any] = {
        "key": key,
        "owner": owner,
        "epoch": 1,
        "version": 1,
        "lease_ms": 30_000,
        "acquired_at_ms": now_ms(),
        "renewed_at_ms": now_ms(),
        "host": "test-host",
        "pid": 1,
    }
    values.update(fields)
    return LockRecord(**values)


def entry(change_id: str = "change-1", **fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "entry_id": new_id(),
        "execution_id": "execution-1",
        "stage": "default",
        "change_id": change_id,
        "author": "tests",
        "order": "0001",
        "state": AuditState.APPLIED,
        "lock_epoch": 1,
        "sequence": 1,
        "created_at_ms": now_ms(),
    }
    values.update(fields)
    return AuditEntry(**values)


def fence_of(record: LockRecord) -> Fence:
    if record.owner is None:
        raise ValueError("a free lock has no fence")
    return Fence(record.key, record.owner, record.epoch)


def bumped(record: LockRecord, **fields: Any) -> LockRecord:
    """Return `record` with its version incremented and `fields` changed."""
    return dataclasses.replace(record, version=record.version + 1, **fields)
