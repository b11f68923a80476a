"""Small building blocks for tests of drivers and of code that uses the lock."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import anyio.lowlevel

from .._audit import AuditEntry, AuditState, new_id
from .._errors import DriverError
from .._lock import Fence, LockRecord
from ..drivers._base import Driver

__all__ = ["FakeClock", "make_entry", "hold_lock", "take_over_lock"]


class FakeClock:
    """A monotonic clock in seconds that moves only through `advance` or `sleep`.

    Pass the instance as `LockManager(clock=...)` and its `sleep` as `LockManager(sleep=...)`.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance the clock by `seconds`, then yield to other tasks once."""
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def make_entry(
    change_id: str,
    *,
    epoch: int,
    sequence: int,
    state: AuditState = AuditState.APPLIED,
    **fields: Any,
) -> AuditEntry:
    """Build an audit entry of `change_id` at `(epoch, sequence)`; `fields` override the rest."""
    values: dict[str, Any] = {
        "entry_id": new_id(),
        "execution_id": f"execution-{epoch}",
        "stage": "default",
        "change_id": change_id,
        "author": "conformance",
        "order": f"{sequence:04d}",
        "state": state,
        "lock_epoch": epoch,
        "sequence": sequence,
        "created_at_ms": 1_700_000_000_000 + sequence,
    }
    values.update(fields)
    return AuditEntry(**values)


def _record(key: str, owner: str, *, epoch: int, version: int) -> LockRecord:
    return LockRecord(
        key=key,
        owner=owner,
        epoch=epoch,
        version=version,
        lease_ms=60_000,
        acquired_at_ms=1_700_000_000_000,
        renewed_at_ms=1_700_000_000_000,
        host="conformance-host",
        pid=4242,
    )


async def hold_lock(driver: Driver, key: str, owner: str) -> Fence:
    """Make `owner` the holder of lock `key` at the next epoch and return its fence.

    Writes the record directly with the driver's insert or compare-and-set, replacing any
    current holder without a lease check, the way a runner that took over an expired lease
    would.
    """
    current = await driver.read_lock(key)
    if current is None:
        record = _record(key, owner, epoch=1, version=1)
        if await driver.insert_lock(record):
            return Fence(key, owner, record.epoch)
        current = await driver.read_lock(key)
    if current is None:
        raise DriverError(f"The lock {key!r} vanished while the test took it.")
    record = _record(key, owner, epoch=current.epoch + 1, version=current.version + 1)
    if not await driver.replace_lock(key, current.version, record):
        raise DriverError(f"The lock {key!r} changed while the test took it.")
    return Fence(key, owner, record.epoch)


async def take_over_lock(driver: Driver, fence: Fence, owner: str) -> Fence:
    """Take lock `fence.key` away from its holder for `owner`; return the new holder's fence."""
    taken = await hold_lock(driver, fence.key, owner)
    if taken.epoch <= fence.epoch:
        raise DriverError(f"The epoch of lock {fence.key!r} did not increase on takeover.")
    return taken


def released(record: LockRecord) -> LockRecord:
    """Return `record` marked free, with its version incremented."""
    return dataclasses.replace(record, owner=None, version=record.version + 1)
