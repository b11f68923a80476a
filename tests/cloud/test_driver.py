"""The cloud driver against the backend: the driver contract over HTTP."""

from __future__ import annotations

import pytest

from flamingock_async import AuditState, LockLostError, LockSettings
from flamingock_async._audit import AuditEntry, new_id, now_ms
from flamingock_async._lock import Fence, LockManager, LockRecord
from flamingock_async.drivers.cloud import CloudDriver


def entry(change_id: str, state: AuditState, epoch: int, sequence: int) -> AuditEntry:
    return AuditEntry(
        entry_id=new_id(),
        execution_id="exec-1",
        stage="default",
        change_id=change_id,
        author="tests",
        order="0001",
        state=state,
        lock_epoch=epoch,
        sequence=sequence,
        created_at_ms=now_ms(),
    )


def record(owner: str | None, epoch: int, version: int) -> LockRecord:
    return LockRecord("flamingock", owner, epoch, version, 30_000, now_ms(), now_ms())


async def test_read_lock_absent(driver: CloudDriver) -> None:
    assert await driver.read_lock("flamingock") is None


async def test_insert_lock_once(driver: CloudDriver) -> None:
    first = await driver.insert_lock(record("a", 1, 1))
    second = await driver.insert_lock(record("b", 1, 1))
    assert first is True
    assert second is False


async def test_replace_lock_on_version(driver: CloudDriver) -> None:
    await driver.insert_lock(record("a", 1, 1))
    stale = await driver.replace_lock("flamingock", 5, record("b", 2, 6))
    current = await driver.replace_lock("flamingock", 1, record("b", 2, 2))
    assert stale is False
    assert current is True
    stored = await driver.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == "b"


async def test_append_audit_fenced(driver: CloudDriver) -> None:
    manager = LockManager(driver, LockSettings(lease=5))
    fence = await manager.acquire()
    await driver.append_audit(entry("c1", AuditState.APPLIED, fence.epoch, 1), fence)
    with pytest.raises(LockLostError):
        await driver.append_audit(
            entry("c2", AuditState.APPLIED, fence.epoch, 2), Fence("flamingock", "other", 99)
        )
    states = await driver.read_states()
    assert [state.change_id for state in states] == ["c1"]


async def test_append_audit_idempotent(driver: CloudDriver) -> None:
    manager = LockManager(driver, LockSettings(lease=5))
    fence = await manager.acquire()
    applied = entry("c1", AuditState.APPLIED, fence.epoch, 1)
    await driver.append_audit(applied, fence)
    await driver.append_audit(applied, fence)
    history = await driver.read_history()
    assert len(history) == 1


async def test_history_of_one_change(driver: CloudDriver) -> None:
    manager = LockManager(driver, LockSettings(lease=5))
    fence = await manager.acquire()
    await driver.append_audit(entry("c1", AuditState.STARTED, fence.epoch, 1), fence)
    await driver.append_audit(entry("c1", AuditState.APPLIED, fence.epoch, 2), fence)
    await driver.append_audit(entry("c2", AuditState.APPLIED, fence.epoch, 3), fence)
    history = await driver.read_history("c1")
    assert [item.state for item in history] == [AuditState.STARTED, AuditState.APPLIED]


async def test_lock_manager_cycle(driver: CloudDriver) -> None:
    manager = LockManager(driver, LockSettings(lease=5))
    await manager.acquire()
    await manager.renew()
    released = await manager.release()
    stored = await driver.read_lock("flamingock")
    assert released is True
    assert stored is not None
    assert stored.owner is None


async def test_describe_hides_token(driver: CloudDriver) -> None:
    token = driver._api_token.reveal()
    assert token not in driver.describe()
    assert token not in repr(driver)
    assert token not in repr(vars(driver))
