"""Lock contention and a failing rollback on DynamoDB.

Every runner and lock holder gets a driver with a client of its own, as separate services would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from flamingock_async import (
    AsyncRunner,
    AuditState,
    ChangeExecutionError,
    EventKind,
    LockNotAcquiredError,
    LockSettings,
    ManualInterventionRequiredError,
    RunReport,
    change_unit,
)
from flamingock_async._lock import LockManager
from flamingock_async.drivers.dynamodb import DynamoDriver

from .conftest import REGION
from .helpers import entry

RUNNER_LOCK = LockSettings(lease=1.0, wait_timeout=5.0, poll_interval=0.05)
IMPATIENT_LOCK = LockSettings(lease=1.0, wait_timeout=0.3, poll_interval=0.05)
HOLDER_LOCK = LockSettings(lease=30.0)
STALE_LOCK = LockSettings(lease=0.3)
SUCCESSOR_LOCK = LockSettings(lease=30.0, wait_timeout=5.0, poll_interval=0.05)

MakeDriver = Callable[[], DynamoDriver]


class Calls:
    """Records which changes and rollbacks ran, injected by type."""

    def __init__(self) -> None:
        self.log: list[str] = []


@change_unit(id="add-index", order="0001", author="tests", transactional=False)
class AddIndex:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("add-index")


@change_unit(id="import-plans", order="0002", author="tests", transactional=False)
class BrokenRollback:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("import-plans")
        raise RuntimeError("the import file is truncated")

    async def rollback(self, calls: Calls) -> None:
        calls.log.append("rollback import-plans")
        raise OSError("the backup is missing")


@pytest.fixture
async def make_driver(endpoint: str) -> AsyncIterator[MakeDriver]:
    """Build unopened drivers on the emptied moto server and close them after the test."""
    created: list[DynamoDriver] = []

    def build() -> DynamoDriver:
        created.append(DynamoDriver(region=REGION, endpoint_url=endpoint))
        return created[-1]

    yield build
    for driver in created:
        await driver.aclose()


def build_runner(
    driver: DynamoDriver, changes: list[type], calls: Calls, lock: LockSettings = RUNNER_LOCK
) -> AsyncRunner:
    return AsyncRunner(driver, changes, dependencies=[calls], lock=lock, manifest_cache=False)


async def open_driver(make_driver: MakeDriver) -> DynamoDriver:
    """Build a driver with its own client, open it and create the tables."""
    driver = make_driver()
    await driver.open()
    await driver.setup()
    return driver


async def read_audit_states(make_driver: MakeDriver, change_id: str) -> list[AuditState]:
    reader = await open_driver(make_driver)
    return [item.state for item in await reader.read_history(change_id)]


async def test_waiter_rereads_after_holder(make_driver: MakeDriver) -> None:
    """A runner that saw a change pending and waited does not apply it once the holder did."""
    holder_driver = await open_driver(make_driver)
    holder = LockManager(holder_driver, HOLDER_LOCK)
    fence = await holder.acquire()
    calls = Calls()
    waiting = build_runner(make_driver(), [AddIndex], calls)
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
        await holder_driver.append_audit(entry("add-index", epoch=fence.epoch), fence)
        await holder.release()

    assert calls.log == []
    # lock_acquired is False when the runner found nothing pending before waiting.
    assert reports[0].lock_acquired is True
    assert reports[0].applied == ()
    assert reports[0].skipped == ("add-index",)
    assert await read_audit_states(make_driver, "add-index") == [AuditState.APPLIED]


async def test_giving_up_keeps_holder_lock(make_driver: MakeDriver) -> None:
    """A runner that stops waiting for the lock leaves the holder's lock in place."""
    holder = LockManager(await open_driver(make_driver), HOLDER_LOCK)
    fence = await holder.acquire()

    with pytest.raises(LockNotAcquiredError):
        await build_runner(make_driver(), [AddIndex], Calls(), IMPATIENT_LOCK).run()

    observer = await open_driver(make_driver)
    stored = await observer.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == holder.owner
    assert stored.epoch == fence.epoch
    assert await holder.release() is True


async def test_stale_release_keeps_new_holder(make_driver: MakeDriver) -> None:
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


async def test_failed_rollback_blocks_next_run(make_driver: MakeDriver) -> None:
    """The rollback's error is attached to the change's error, and the next run stops."""
    calls = Calls()
    with pytest.raises(ChangeExecutionError) as raised:
        await build_runner(make_driver(), [AddIndex, BrokenRollback], calls).run()

    assert raised.value.change_id == "import-plans"
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert "the import file is truncated" in str(raised.value)
    assert isinstance(raised.value.rollback_error, OSError)
    assert calls.log == ["add-index", "import-plans", "rollback import-plans"]
    assert await read_audit_states(make_driver, "import-plans") == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLBACK_FAILED,
    ]

    with pytest.raises(ManualInterventionRequiredError, match="import-plans") as blocked:
        await build_runner(make_driver(), [AddIndex, BrokenRollback], calls).run()

    assert blocked.value.change_id == "import-plans"
    assert blocked.value.state == "ROLLBACK_FAILED"
    assert calls.log == ["add-index", "import-plans", "rollback import-plans"]
