"""The driver conformance suite; see the `flamingock_async.testing` docstring for how to run it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

from .._audit import AuditEntry, AuditState
from .._changes import change_unit
from .._errors import LockLostError, LockNotAcquiredError
from .._lock import Fence, LockManager, LockRecord, LockSettings
from .._progress import EventKind, RunReport
from .._runner import AsyncRunner
from ..drivers._base import Driver
from ._helpers import FakeClock, hold_lock, make_entry, released, take_over_lock

__all__ = ["DriverConformance", "DriverFactory", "DriverPool"]

DriverFactory = Callable[[], Awaitable[Driver]]
"""An async callable that makes a new opened driver on the test's store, per call."""

KEY = "conformance-lock"


class DriverPool:
    """Drivers made by a `DriverFactory` for one test; `aclose()` closes them all."""

    def __init__(self, factory: DriverFactory) -> None:
        self._factory = factory
        self._drivers: list[Driver] = []

    async def new(self, *, setup: bool = True) -> Driver:
        """Return a new opened driver on the test's store, set up unless `setup` is False."""
        driver = await self._factory()
        self._drivers.append(driver)
        if setup:
            await driver.setup()
        return driver

    async def many(self, count: int, *, setup: bool = True) -> list[Driver]:
        """Return `count` new drivers on the test's store, made one after another."""
        return [await self.new(setup=setup) for _ in range(count)]

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for driver in reversed(self._drivers):
                await driver.aclose()
        self._drivers.clear()


class _Boom(Exception):
    """The error a change body raises in the transaction tests."""


class _Calls:
    """The ids of the changes that ran, injected into them by type."""

    def __init__(self) -> None:
        self.ran: list[str] = []


@change_unit(id="conformance-pending", order="0001", author="conformance", transactional=False)
class _PendingChange:
    ID = "conformance-pending"

    async def execute(self, calls: _Calls) -> None:
        calls.ran.append(self.ID)


def _runner(driver: Driver, calls: _Calls, *, wait_timeout: float) -> AsyncRunner:
    """Return a runner of the one pending change that waits `wait_timeout` for the lock."""
    settings = LockSettings(key=KEY, lease=1.0, wait_timeout=wait_timeout, poll_interval=0.05)
    return AsyncRunner(
        driver, [_PendingChange], dependencies=[calls], lock=settings, manifest_cache=False
    )


def _lock_record(owner: str, *, epoch: int = 1, version: int = 1) -> LockRecord:
    return LockRecord(
        key=KEY,
        owner=owner,
        epoch=epoch,
        version=version,
        lease_ms=30_000,
        acquired_at_ms=1_700_000_000_000,
        renewed_at_ms=1_700_000_000_500,
        host="host-ü",
        pid=1234,
    )


async def _race(count: int, attempt: Callable[[int], Awaitable[bool]]) -> list[bool]:
    """Run `attempt(0)` ... `attempt(count - 1)` concurrently; return their results in order."""
    results: list[bool] = [False] * count

    async def run(index: int) -> None:
        results[index] = await attempt(index)

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(run, index)
    return results


class DriverConformance:
    """The tests every driver must pass; subclass it and provide `driver_factory`.

    The name does not start with `Test`, so pytest collects only the subclasses.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    contenders: ClassVar[int] = 10
    """How many drivers on one store race in the concurrency tests."""

    concurrent_attempts: ClassVar[int] = 20
    """How many lock operations race in the insert and compare-and-set tests."""

    lease: ClassVar[float] = 1.0
    """The lease in seconds given to `LockManager`s; only the fake clock measures it."""

    many_changes: ClassVar[int] = 120
    """How many changes `test_read_states_many_changes` writes, two entries each."""

    transactions_lock_store: ClassVar[bool] = False
    """True when an open transaction blocks every other writer of the store (SQLite).

    No runner can then take the lock over while a change's transaction is open, so the test
    of a takeover during the body is skipped.
    """

    # -- hooks a driver's test module provides -----------------------------------------------

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        raise NotImplementedError(
            f"{type(self).__name__} must define a driver_factory fixture that returns an "
            "async callable making a new opened driver on one fresh store per test."
        )

    async def write_in_transaction(self, handle: Any, key: str, value: str) -> None:
        """Write `value` under `key` in the target system through a transaction handle."""
        pytest.fail(
            f"{type(self).__name__} must define write_in_transaction(handle, key, value) "
            "because its driver supports transactions."
        )

    async def read_target(self, driver: Driver, key: str) -> str | None:
        """Return the committed value under `key` in the target system, or None."""
        pytest.fail(
            f"{type(self).__name__} must define read_target(driver, key) because its driver "
            "supports transactions."
        )

    # -- fixtures ----------------------------------------------------------------------------

    @pytest.fixture
    async def drivers(self, driver_factory: DriverFactory) -> AsyncIterator[DriverPool]:
        pool = DriverPool(driver_factory)
        try:
            yield pool
        finally:
            await pool.aclose()

    def _manager(self, driver: Driver, owner: str, clock: FakeClock) -> LockManager:
        settings = LockSettings(key=KEY, lease=self.lease, wait_timeout=0, poll_interval=0.1)
        return LockManager(driver, settings, owner=owner, clock=clock, sleep=clock.sleep)

    async def _transactional_driver(self, drivers: DriverPool) -> Driver:
        driver = await drivers.new()
        if not driver.supports_transactions:
            pytest.skip(f"{driver.describe()} does not support transactions")
        return driver

    # -- a store that was never set up -------------------------------------------------------

    async def test_fresh_store_read_states_empty(self, drivers: DriverPool) -> None:
        driver = await drivers.new(setup=False)

        assert await driver.read_states() == []

    async def test_fresh_store_read_history_empty(self, drivers: DriverPool) -> None:
        driver = await drivers.new(setup=False)

        assert await driver.read_history() == []

    async def test_fresh_store_read_lock_none(self, drivers: DriverPool) -> None:
        driver = await drivers.new(setup=False)

        assert await driver.read_lock(KEY) is None

    async def test_fresh_store_reads_then_setup(self, drivers: DriverPool) -> None:
        """Reads of a store that was never set up leave nothing that breaks a later setup."""
        reader = await drivers.new(setup=False)
        await reader.read_states()
        await reader.read_lock(KEY)

        driver = await drivers.new()

        assert await driver.insert_lock(_lock_record("runner-a"))

    # -- setup -------------------------------------------------------------------------------

    async def test_setup_twice_is_harmless(self, drivers: DriverPool) -> None:
        driver = await drivers.new()

        await driver.setup()

        assert await driver.insert_lock(_lock_record("runner-a"))

    async def test_setup_keeps_existing_data(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1)
        await driver.append_audit(entry, fence)

        await (await drivers.new()).setup()

        assert await driver.read_history() == [entry]

    async def test_concurrent_setup_on_empty_store(self, drivers: DriverPool) -> None:
        racers = await drivers.many(self.contenders, setup=False)

        async with anyio.create_task_group() as group:
            for driver in racers:
                group.start_soon(driver.setup)

        fence = await hold_lock(racers[0], KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1)
        await racers[-1].append_audit(entry, fence)
        assert await racers[1].read_states() == [entry]

    # -- lock records ------------------------------------------------------------------------

    async def test_read_lock_absent_key(self, drivers: DriverPool) -> None:
        driver = await drivers.new()

        assert await driver.read_lock("no-such-lock") is None

    async def test_insert_lock_round_trip(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        record = _lock_record("runner-a", epoch=7, version=3)

        inserted = await driver.insert_lock(record)

        assert inserted is True
        assert await driver.read_lock(KEY) == record

    async def test_insert_lock_when_present_rejected(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        first = _lock_record("runner-a")
        await driver.insert_lock(first)

        inserted = await driver.insert_lock(_lock_record("runner-b"))

        assert inserted is False
        assert await driver.read_lock(KEY) == first

    async def test_insert_lock_keys_independent(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        await driver.insert_lock(_lock_record("runner-a"))
        other = dataclasses.replace(_lock_record("runner-b"), key="other-lock")

        inserted = await driver.insert_lock(other)

        assert inserted is True
        assert await driver.read_lock("other-lock") == other

    async def test_concurrent_insert_lock_one_winner(self, drivers: DriverPool) -> None:
        racers = await drivers.many(self.contenders)
        count = self.concurrent_attempts

        async def attempt(index: int) -> bool:
            return await racers[index % len(racers)].insert_lock(_lock_record(f"runner-{index}"))

        results = await _race(count, attempt)

        assert results.count(True) == 1
        stored = await racers[0].read_lock(KEY)
        assert stored is not None
        assert stored.owner == f"runner-{results.index(True)}"

    async def test_replace_lock_current_version(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        await driver.insert_lock(_lock_record("runner-a", version=1))
        renewed = _lock_record("runner-a", version=2)

        replaced = await driver.replace_lock(KEY, 1, renewed)

        assert replaced is True
        assert await driver.read_lock(KEY) == renewed

    async def test_replace_lock_stale_version_rejected(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        current = _lock_record("runner-a", version=5)
        await driver.insert_lock(current)

        replaced = await driver.replace_lock(KEY, 4, _lock_record("runner-b", version=5))

        assert replaced is False
        assert await driver.read_lock(KEY) == current

    async def test_replace_lock_absent_rejected(self, drivers: DriverPool) -> None:
        driver = await drivers.new()

        replaced = await driver.replace_lock(KEY, 1, _lock_record("runner-a", version=2))

        assert replaced is False
        assert await driver.read_lock(KEY) is None

    async def test_replace_lock_stores_free_owner(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        held = _lock_record("runner-a", epoch=3, version=4)
        await driver.insert_lock(held)

        await driver.replace_lock(KEY, 4, released(held))

        stored = await driver.read_lock(KEY)
        assert stored == released(held)
        assert stored is not None
        assert stored.is_free

    async def test_concurrent_replace_lock_one_winner(self, drivers: DriverPool) -> None:
        racers = await drivers.many(self.contenders)
        await racers[0].insert_lock(_lock_record("runner-a", version=1))

        async def attempt(index: int) -> bool:
            record = _lock_record(f"runner-{index}", epoch=2, version=2)
            return await racers[index % len(racers)].replace_lock(KEY, 1, record)

        results = await _race(self.concurrent_attempts, attempt)

        assert results.count(True) == 1
        stored = await racers[0].read_lock(KEY)
        assert stored is not None
        assert stored.owner == f"runner-{results.index(True)}"

    # -- the lock manager on top of the driver -----------------------------------------------

    async def test_manager_lock_exclusive(self, drivers: DriverPool) -> None:
        clock = FakeClock()
        first = self._manager(await drivers.new(), "runner-a", clock)
        second = self._manager(await drivers.new(), "runner-b", clock)

        assert await first.try_acquire() is True
        assert await second.try_acquire() is False

    async def test_concurrent_managers_one_holder(self, drivers: DriverPool) -> None:
        clock = FakeClock()
        racers = await drivers.many(self.contenders)
        managers = [self._manager(d, f"runner-{i}", clock) for i, d in enumerate(racers)]

        async def attempt(index: int) -> bool:
            return await managers[index].try_acquire()

        results = await _race(len(managers), attempt)

        assert results.count(True) == 1
        stored = await racers[0].read_lock(KEY)
        assert stored is not None
        assert stored.owner == f"runner-{results.index(True)}"

    async def test_manager_takeover_only_after_lease(self, drivers: DriverPool) -> None:
        holder = self._manager(await drivers.new(), "runner-a", FakeClock())
        clock = FakeClock()
        waiter = self._manager(await drivers.new(), "runner-b", clock)
        await holder.acquire()

        assert await waiter.try_acquire() is False
        clock.advance(self.lease)
        assert await waiter.try_acquire() is False
        clock.advance(0.001)
        assert await waiter.try_acquire() is True

    async def test_manager_renewal_prevents_takeover(self, drivers: DriverPool) -> None:
        holder = self._manager(await drivers.new(), "runner-a", FakeClock())
        clock = FakeClock()
        waiter = self._manager(await drivers.new(), "runner-b", clock)
        await holder.acquire()
        await waiter.try_acquire()

        for _ in range(3):
            clock.advance(self.lease * 0.75)
            await holder.renew()
            assert await waiter.try_acquire() is False

    async def test_manager_takeover_fences_old_holder(self, drivers: DriverPool) -> None:
        holder_driver = await drivers.new()
        holder = self._manager(holder_driver, "runner-a", FakeClock())
        clock = FakeClock()
        waiter = self._manager(await drivers.new(), "runner-b", clock)
        old_fence = await holder.acquire()
        await waiter.try_acquire()
        clock.advance(self.lease + 0.001)
        await waiter.try_acquire()

        with pytest.raises(LockLostError):
            await holder_driver.append_audit(make_entry("x", epoch=1, sequence=1), old_fence)
        with pytest.raises(LockLostError):
            await holder.renew()

    async def test_release_by_stale_owner_keeps_lock(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        stale = self._manager(driver, "runner-a", FakeClock())
        clock = FakeClock()
        current = self._manager(await drivers.new(), "runner-b", clock)
        await stale.acquire()
        await current.try_acquire()
        clock.advance(self.lease + 0.001)
        await current.try_acquire()

        released_by_stale = await stale.release()

        assert released_by_stale is False
        stored = await driver.read_lock(KEY)
        assert stored is not None
        assert stored.owner == "runner-b"
        assert stored.epoch == current.fence.epoch

    async def test_release_by_owner_frees_lock(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        manager = self._manager(driver, "runner-a", FakeClock())
        await manager.acquire()

        released_by_owner = await manager.release()

        assert released_by_owner is True
        stored = await driver.read_lock(KEY)
        assert stored is not None
        assert stored.is_free

    async def test_release_after_cancelled_renewal(self, drivers: DriverPool) -> None:
        """A runner cancels its heartbeat at the end of every run, maybe mid-renewal.

        The renewal then either never reached the store or the manager learns its outcome,
        so the release that follows still frees the lock.
        """
        driver = await drivers.new()
        manager = self._manager(driver, "runner-a", FakeClock())
        await manager.acquire()

        async with anyio.create_task_group() as group:
            group.start_soon(manager.renew)
            await anyio.lowlevel.checkpoint()
            group.cancel_scope.cancel()

        assert await manager.release() is True
        stored = await driver.read_lock(KEY)
        assert stored is not None
        assert stored.is_free

    # -- a runner that meets a held lock -----------------------------------------------------

    async def test_waiter_rereads_after_holder(self, drivers: DriverPool) -> None:
        """A runner that found a change pending and waited skips it once the holder applied it."""
        holder_driver = await drivers.new()
        holder = LockManager(holder_driver, LockSettings(key=KEY, lease=30.0))
        fence = await holder.acquire()
        calls = _Calls()
        waiter = _runner(await drivers.new(), calls, wait_timeout=5.0)
        waiting = anyio.Event()
        waiter.add_listener(
            lambda event: waiting.set() if event.kind is EventKind.LOCK_WAITING else None
        )
        reports: list[RunReport] = []

        async def run_waiter() -> None:
            reports.append(await waiter.run())

        async with anyio.create_task_group() as group:
            group.start_soon(run_waiter)
            with anyio.fail_after(10):
                await waiting.wait()
            applied = make_entry(_PendingChange.ID, epoch=fence.epoch, sequence=1)
            await holder_driver.append_audit(applied, fence)
            await holder.release()

        assert calls.ran == []
        assert reports[0].lock_acquired is True  # it waited, then planned again under the lock
        assert reports[0].applied == ()
        assert reports[0].skipped == (_PendingChange.ID,)
        history = await holder_driver.read_history(_PendingChange.ID)
        assert [entry.state for entry in history] == [AuditState.APPLIED]

    async def test_giving_up_keeps_holder_lock(self, drivers: DriverPool) -> None:
        """A runner that stops waiting for the lock leaves the holder's lock as it was."""
        driver = await drivers.new()
        holder = LockManager(driver, LockSettings(key=KEY, lease=30.0))
        fence = await holder.acquire()

        with pytest.raises(LockNotAcquiredError):
            await _runner(await drivers.new(), _Calls(), wait_timeout=0.3).run()

        stored = await driver.read_lock(KEY)
        assert stored is not None
        assert stored.owner == holder.owner
        assert stored.epoch == fence.epoch
        assert await holder.release() is True

    async def test_epoch_increases_across_acquisitions(self, drivers: DriverPool) -> None:
        first = self._manager(await drivers.new(), "runner-a", FakeClock())
        second = self._manager(await drivers.new(), "runner-b", FakeClock())
        clock = FakeClock()
        third = self._manager(await drivers.new(), "runner-c", clock)

        epoch_after_insert = (await first.acquire()).epoch
        await first.release()
        epoch_after_release = (await second.acquire()).epoch
        await third.try_acquire()
        clock.advance(self.lease + 0.001)
        await third.try_acquire()
        epoch_after_takeover = third.fence.epoch

        assert epoch_after_release > epoch_after_insert
        assert epoch_after_takeover > epoch_after_release

    async def test_epoch_respects_min_epoch(self, drivers: DriverPool) -> None:
        manager = self._manager(await drivers.new(), "runner-a", FakeClock())

        fence = await manager.acquire(min_epoch=41)

        assert fence.epoch == 42

    # -- fenced audit writes -----------------------------------------------------------------

    async def test_append_with_stale_epoch_rejected(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        old = await hold_lock(driver, KEY, "runner-a")
        await take_over_lock(driver, old, "runner-b")

        with pytest.raises(LockLostError) as raised:
            await driver.append_audit(make_entry("change-a", epoch=old.epoch, sequence=1), old)

        assert "runner-b" in str(raised.value)
        assert await driver.read_history() == []

    async def test_append_with_foreign_owner_rejected(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        held = await hold_lock(driver, KEY, "runner-a")
        forged = Fence(KEY, "runner-x", held.epoch)

        with pytest.raises(LockLostError):
            await driver.append_audit(make_entry("change-a", epoch=held.epoch, sequence=1), forged)

        assert await driver.read_history() == []

    async def test_append_without_lock_rejected(self, drivers: DriverPool) -> None:
        driver = await drivers.new()

        with pytest.raises(LockLostError):
            await driver.append_audit(
                make_entry("change-a", epoch=1, sequence=1), Fence(KEY, "runner-a", 1)
            )

        assert await driver.read_history() == []

    async def test_append_after_release_rejected(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        manager = self._manager(driver, "runner-a", FakeClock())
        fence = await manager.acquire()
        await manager.release()

        with pytest.raises(LockLostError):
            await driver.append_audit(make_entry("change-a", epoch=fence.epoch, sequence=1), fence)

        assert await driver.read_history() == []

    async def test_append_checks_fence_of_its_key(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        await hold_lock(driver, KEY, "runner-a")
        other = await hold_lock(driver, "other-lock", "runner-b")
        entry = make_entry("change-a", epoch=other.epoch, sequence=1)

        await driver.append_audit(entry, other)

        assert await driver.read_history() == [entry]

    # -- audit round trip and reads ----------------------------------------------------------

    async def test_audit_round_trip_every_field(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        entry = AuditEntry(
            entry_id="entry-0001",
            execution_id="execution-ä",
            stage="stage-1",
            change_id="add-email-index",
            author="platform ✓",
            order="0003.10",
            state=AuditState.ROLLBACK_FAILED,
            lock_epoch=fence.epoch,
            sequence=7,
            created_at_ms=1_700_000_000_123,
            started_at_ms=1_700_000_000_200,
            finished_at_ms=1_700_000_004_321,
            duration_ms=4_121,
            transactional=True,
            host="pod-7f9c",
            pid=31_337,
            error_type="ValueError",
            error_message="bad value: 'x' — ünïcode",
            error_trace='Traceback (most recent call last):\n  File "x.py", line 1\nValueError',
            library_version="1.2.3",
            metadata={"nested": {"list": [1, 2.5, "x", None, True]}, "empty": {}, "n": -3},
        )

        await driver.append_audit(entry, fence)

        assert await driver.read_history() == [entry]
        assert await driver.read_states() == [entry]

    async def test_audit_round_trip_defaults(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1)

        await driver.append_audit(entry, fence)

        stored = await driver.read_history()
        assert stored == [entry]
        assert stored[0].started_at_ms is None
        assert stored[0].metadata == {}

    async def test_audit_round_trip_every_state(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        states = list(AuditState)
        for sequence, state in enumerate(states, start=1):
            entry = make_entry("change-a", epoch=fence.epoch, sequence=sequence, state=state)
            await driver.append_audit(entry, fence)

        history = await driver.read_history()

        assert [entry.state for entry in history] == states
        assert all(isinstance(entry.state, AuditState) for entry in history)

    async def test_read_states_newest_per_change(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        first = await hold_lock(driver, KEY, "runner-a")
        write = driver.append_audit
        epoch = first.epoch
        await write(make_entry("a", epoch=epoch, sequence=1, state=AuditState.STARTED), first)
        await write(make_entry("a", epoch=epoch, sequence=2, state=AuditState.APPLIED), first)
        await write(make_entry("b", epoch=epoch, sequence=3, state=AuditState.STARTED), first)
        # Appended out of order: the newest of "c" is sequence 5, written first.
        await write(make_entry("c", epoch=epoch, sequence=5, state=AuditState.APPLIED), first)
        await write(make_entry("c", epoch=epoch, sequence=4, state=AuditState.STARTED), first)
        second = await take_over_lock(driver, first, "runner-b")
        # A later epoch wins although its sequence restarts at 1.
        await write(
            make_entry("b", epoch=second.epoch, sequence=1, state=AuditState.FAILED), second
        )

        states = {entry.change_id: entry for entry in await driver.read_states()}

        assert sorted(states) == ["a", "b", "c"]
        assert states["a"].state is AuditState.APPLIED
        assert states["b"].state is AuditState.FAILED
        assert states["b"].lock_epoch == second.epoch
        assert states["c"].state is AuditState.APPLIED
        assert states["c"].sequence == 5

    async def test_read_states_many_changes(self, drivers: DriverPool) -> None:
        """More entries than one page of a typical store cursor or query (often 100)."""
        driver = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        for index in range(self.many_changes):
            change_id = f"change-{index:04d}"
            started = make_entry(
                change_id, epoch=fence.epoch, sequence=2 * index, state=AuditState.STARTED
            )
            await driver.append_audit(started, fence)
            applied = make_entry(change_id, epoch=fence.epoch, sequence=2 * index + 1)
            await driver.append_audit(applied, fence)

        states = await driver.read_states()

        assert len(states) == self.many_changes
        assert {entry.state for entry in states} == {AuditState.APPLIED}
        assert len(await driver.read_history()) == 2 * self.many_changes

    async def test_read_states_visible_to_other_driver(self, drivers: DriverPool) -> None:
        writer = await drivers.new()
        reader = await drivers.new()
        fence = await hold_lock(writer, KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1)

        await writer.append_audit(entry, fence)

        assert await reader.read_states() == [entry]

    async def test_read_history_sorted_by_epoch_sequence(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        first = await hold_lock(driver, KEY, "runner-a")
        epoch = first.epoch
        third = make_entry("a", epoch=epoch, sequence=3)
        one = make_entry("b", epoch=epoch, sequence=1)
        two = make_entry("a", epoch=epoch, sequence=2)
        for entry in (third, one, two):
            await driver.append_audit(entry, first)
        second = await take_over_lock(driver, first, "runner-b")
        later = make_entry("b", epoch=second.epoch, sequence=1)
        await driver.append_audit(later, second)

        history = await driver.read_history()

        assert [entry.entry_id for entry in history] == [
            one.entry_id,
            two.entry_id,
            third.entry_id,
            later.entry_id,
        ]

    async def test_read_history_filter_by_change(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        epoch = fence.epoch
        entries = [
            make_entry("a", epoch=epoch, sequence=2),
            make_entry("b", epoch=epoch, sequence=1),
            make_entry("a", epoch=epoch, sequence=1),
        ]
        for entry in entries:
            await driver.append_audit(entry, fence)

        history = await driver.read_history("a")

        assert [entry.entry_id for entry in history] == [entries[2].entry_id, entries[0].entry_id]
        assert await driver.read_history("unknown") == []

    async def test_append_same_entry_id_once(self, drivers: DriverPool) -> None:
        driver = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1)
        await driver.append_audit(entry, fence)

        await driver.append_audit(entry, fence)
        await driver.append_audit(dataclasses.replace(entry, state=AuditState.FAILED), fence)

        assert await driver.read_history() == [entry]

    async def test_concurrent_append_same_entry_once(self, drivers: DriverPool) -> None:
        """A retried audit write racing with the original one is stored once."""
        racers = await drivers.many(self.contenders)
        fence = await hold_lock(racers[0], KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1)

        async def attempt(index: int) -> bool:
            await racers[index % len(racers)].append_audit(entry, fence)
            return True

        await _race(self.concurrent_attempts, attempt)

        assert await racers[0].read_history() == [entry]

    # -- transactions ------------------------------------------------------------------------

    async def test_transaction_commits_body_and_entry(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        reader = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1, transactional=True)

        async def body(handle: Any) -> None:
            await self.write_in_transaction(handle, "greeting", "hello")

        await driver.run_in_transaction(fence, body, lambda: entry)

        assert await self.read_target(reader, "greeting") == "hello"
        assert await reader.read_history() == [entry]

    async def test_transaction_empty_body_writes_entry(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        reader = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1, transactional=True)

        async def body(handle: Any) -> None:
            return None

        await driver.run_in_transaction(fence, body, lambda: entry)

        assert await reader.read_history() == [entry]

    async def test_transaction_body_error_aborts(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        reader = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")
        error = _Boom("the change failed halfway")

        async def body(handle: Any) -> None:
            await self.write_in_transaction(handle, "greeting", "hello")
            raise error

        with pytest.raises(_Boom) as raised:
            await driver.run_in_transaction(
                fence, body, lambda: make_entry("change-a", epoch=fence.epoch, sequence=1)
            )

        assert raised.value is error
        assert await self.read_target(reader, "greeting") is None
        assert await reader.read_history() == []

    async def test_transaction_stale_fence_aborts(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        reader = await drivers.new()
        old = await hold_lock(driver, KEY, "runner-a")
        new = await take_over_lock(reader, old, "runner-b")

        async def body(handle: Any) -> None:
            await self.write_in_transaction(handle, "greeting", "hello")

        with pytest.raises(LockLostError):
            await driver.run_in_transaction(
                old, body, lambda: make_entry("change-a", epoch=old.epoch, sequence=1)
            )

        assert await self.read_target(reader, "greeting") is None
        assert await reader.read_history() == []
        stored = await reader.read_lock(KEY)
        assert stored is not None
        assert stored.owner == new.owner

    async def test_transaction_takeover_during_body_aborts(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        if self.transactions_lock_store:
            pytest.skip("a transaction blocks every other writer, so no takeover can happen")
        reader = await drivers.new()
        old = await hold_lock(driver, KEY, "runner-a")

        async def body(handle: Any) -> None:
            await self.write_in_transaction(handle, "greeting", "hello")
            await take_over_lock(reader, old, "runner-b")

        with pytest.raises(LockLostError):
            await driver.run_in_transaction(
                old, body, lambda: make_entry("change-a", epoch=old.epoch, sequence=1)
            )

        assert await self.read_target(reader, "greeting") is None
        assert await reader.read_history() == []

    async def test_transaction_usable_after_abort(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        reader = await drivers.new()
        fence = await hold_lock(driver, KEY, "runner-a")

        async def failing(handle: Any) -> None:
            await self.write_in_transaction(handle, "first", "lost")
            raise _Boom("abort")

        async def succeeding(handle: Any) -> None:
            await self.write_in_transaction(handle, "second", "kept")

        with pytest.raises(_Boom):
            await driver.run_in_transaction(
                fence, failing, lambda: make_entry("a", epoch=fence.epoch, sequence=1)
            )
        entry = make_entry("b", epoch=fence.epoch, sequence=2)
        await driver.run_in_transaction(fence, succeeding, lambda: entry)

        assert await self.read_target(reader, "first") is None
        assert await self.read_target(reader, "second") == "kept"
        assert await reader.read_history() == [entry]

    async def test_transaction_audit_built_after_body(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        fence = await hold_lock(driver, KEY, "runner-a")
        events: list[str] = []

        async def body(handle: Any) -> None:
            events.append("body")

        def audit() -> AuditEntry:
            events.append("audit")
            return make_entry("change-a", epoch=fence.epoch, sequence=1)

        await driver.run_in_transaction(fence, body, audit)

        assert events[0] == "body"
        assert events[-1] == "audit"

    async def test_renewal_during_transaction_commit(self, drivers: DriverPool) -> None:
        driver = await self._transactional_driver(drivers)
        reader = await drivers.new()
        manager = self._manager(driver, "runner-a", FakeClock())
        fence = await manager.acquire()
        entry = make_entry("change-a", epoch=fence.epoch, sequence=1)

        async def body(handle: Any) -> None:
            await self.write_in_transaction(handle, "greeting", "hello")
            await manager.renew()

        await driver.run_in_transaction(fence, body, lambda: entry)

        stored = await reader.read_lock(KEY)
        assert stored == manager.record
        assert await reader.read_history() == [entry]
        assert await manager.release() is True

    async def test_renewal_during_transaction_abort(self, drivers: DriverPool) -> None:
        """A heartbeat renewal made while a change runs survives the change's rollback."""
        driver = await self._transactional_driver(drivers)
        reader = await drivers.new()
        manager = self._manager(driver, "runner-a", FakeClock())
        fence = await manager.acquire()

        async def body(handle: Any) -> None:
            await self.write_in_transaction(handle, "greeting", "hello")
            await manager.renew()
            raise _Boom("abort after renewing")

        with pytest.raises(_Boom):
            await driver.run_in_transaction(
                fence, body, lambda: make_entry("change-a", epoch=fence.epoch, sequence=1)
            )

        stored = await reader.read_lock(KEY)
        assert stored == manager.record
        assert await self.read_target(reader, "greeting") is None
        assert await manager.release() is True
