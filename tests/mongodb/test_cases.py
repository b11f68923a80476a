"""Lock contention on MongoDB: a waiter, a runner that gives up, a holder that was taken over.

Every runner and lock holder gets a driver with a client of its own, as separate services would.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from flamingock_async import (
    AsyncRunner,
    AuditState,
    EventKind,
    LockNotAcquiredError,
    LockSettings,
    RunReport,
    change_unit,
)
from flamingock_async._lock import LockManager
from flamingock_async.drivers.mongodb import MongoDriver

from .helpers import entry

WAITER_LOCK = LockSettings(lease=1.0, wait_timeout=5.0, poll_interval=0.05)
IMPATIENT_LOCK = LockSettings(lease=1.0, wait_timeout=0.3, poll_interval=0.05)
HOLDER_LOCK = LockSettings(lease=30.0)
STALE_LOCK = LockSettings(lease=0.3)
SUCCESSOR_LOCK = LockSettings(lease=30.0, wait_timeout=5.0, poll_interval=0.05)


class Calls:
    """Records which changes ran, injected by type."""

    def __init__(self) -> None:
        self.log: list[str] = []


@change_unit(id="add-index", order="0001", author="tests", transactional=False)
class AddIndex:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("add-index")


def build_runner(driver: MongoDriver, calls: Calls, lock: LockSettings) -> AsyncRunner:
    return AsyncRunner(driver, [AddIndex], dependencies=[calls], lock=lock, manifest_cache=False)


async def open_driver(make_driver: Callable[..., MongoDriver]) -> MongoDriver:
    """Build a driver with its own client, open it and create the collections."""
    driver = make_driver()
    await driver.open()
    await driver.setup()
    return driver


async def read_audit_states(
    make_driver: Callable[..., MongoDriver], change_id: str
) -> list[AuditState]:
    reader = await open_driver(make_driver)
    return [item.state for item in await reader.read_history(change_id)]


async def test_waiter_rereads_after_holder(make_driver: Callable[..., MongoDriver]) -> None:
    """A runner that saw a change pending and waited does not apply it once the holder did."""
    holder_driver = await open_driver(make_driver)
    holder = LockManager(holder_driver, HOLDER_LOCK)
    fence = await holder.acquire()
    calls = Calls()
    waiting = build_runner(make_driver(), calls, WAITER_LOCK)
    planned_and_waiting = anyio.Event()
    waiting.add_listener(
        lambda event: planned_and_waiting.set() if event.kind is EventKind.LOCK_WAITING else None
    )

    reports: list[RunReport] = []

    async def run_waiter() -> None:
        reports.append(await waiting.run())

    async with anyio.create_task_group() as group:
        group.start_soon(run_waiter)
        with anyio.fail_after(10):
            await planned_and_waiting.wait()
        applied = entry("add-index", lock_epoch=fence.epoch)
        await holder_driver.append_audit(applied, fence)
        await holder.release()

    assert calls.log == []
    # lock_acquired is False when the runner found nothing pending before waiting.
    assert reports[0].lock_acquired is True
    assert reports[0].applied == ()
    assert reports[0].skipped == ("add-index",)
    assert await read_audit_states(make_driver, "add-index") == [AuditState.APPLIED]


async def test_giving_up_keeps_holder_lock(make_driver: Callable[..., MongoDriver]) -> None:
    """A runner that stops waiting for the lock leaves the holder's lock in place."""
    holder = LockManager(await open_driver(make_driver), HOLDER_LOCK)
    fence = await holder.acquire()

    with pytest.raises(LockNotAcquiredError):
        await build_runner(make_driver(), Calls(), IMPATIENT_LOCK).run()

    observer = await open_driver(make_driver)
    stored = await observer.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == holder.owner
    assert stored.epoch == fence.epoch
    assert await holder.release() is True


async def test_stale_release_keeps_new_holder(make_driver: Callable[..., MongoDriver]) -> None:
    """A holder whose lease was taken over cannot release the new holder's lock."""
    stale = LockManager(await open_driver(make_driver), STALE_LOCK)
    await stale.acquire()
    # The stale holder never renews, so the successor takes over once it has seen the same
    # lock version for longer than the stale lease of 0.3 s.
    successor = LockManager(await open_driver(make_driver), SUCCESSOR_LOCK)
    fence = await successor.acquire()

    released = await stale.release()

    observer = await open_driver(make_driver)
    stored = await observer.read_lock("flamingock")
    assert released is False
    assert stored is not None
    assert stored.owner == successor.owner
    assert stored.epoch == fence.epoch
    assert await successor.release() is True
