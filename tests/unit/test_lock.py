"""The core lock algorithm on the memory driver, with a fake monotonic clock."""

from __future__ import annotations

import pytest

from flamingock_async import (
    DriverAuthError,
    DriverUnavailableError,
    LockLostError,
    LockNotAcquiredError,
    LockSettings,
)
from flamingock_async._lock import LockManager, LockRecord, force_release
from flamingock_async.drivers.memory import MemoryDriver, MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def manager(store: MemoryStore, clock: FakeClock, **settings: float) -> LockManager:
    lock_settings = LockSettings(
        key="svc",
        lease=settings.get("lease", 30.0),
        wait_timeout=settings.get("wait_timeout", 0.0),
        poll_interval=settings.get("poll_interval", 1.0),
    )
    return LockManager(MemoryDriver(store), lock_settings, clock=clock, sleep=clock.sleep)


async def test_first_acquisition_starts_above_min_epoch() -> None:
    store, clock = MemoryStore(), FakeClock()

    fence = await manager(store, clock).acquire(min_epoch=7)

    assert fence.epoch == 8


async def test_second_runner_cannot_acquire_held_lock() -> None:
    store, clock = MemoryStore(), FakeClock()
    await manager(store, clock).acquire()

    with pytest.raises(LockNotAcquiredError) as raised:
        await manager(store, clock, wait_timeout=5).acquire()

    assert "held by owner" in str(raised.value)


async def test_takeover_only_after_same_version_outlives_lease() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder = manager(store, clock, lease=10)
    await holder.acquire()
    waiter = manager(store, clock, lease=10)

    assert not await waiter.try_acquire()
    clock.now += 9.9
    assert not await waiter.try_acquire()
    clock.now += 0.2
    assert await waiter.try_acquire()
    assert waiter.fence.epoch == 2


async def test_heartbeat_resets_takeover_clock() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder = manager(store, clock, lease=10)
    await holder.acquire()
    waiter = manager(store, clock, lease=10)
    assert not await waiter.try_acquire()

    clock.now += 8
    await holder.renew()
    clock.now += 8

    assert not await waiter.try_acquire()


async def test_waiter_takes_over_dead_holder_within_timeout() -> None:
    store, clock = MemoryStore(), FakeClock()
    await manager(store, clock, lease=10).acquire()
    waiter = manager(store, clock, lease=10, wait_timeout=60)

    fence = await waiter.acquire()

    assert fence.epoch == 2
    assert clock.now - 1000.0 < 10 + 2 * 1.5


async def test_renew_after_takeover_raises_lock_lost() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder = manager(store, clock, lease=10)
    await holder.acquire()
    waiter = manager(store, clock, lease=10)
    await waiter.try_acquire()
    clock.now += 11
    await waiter.try_acquire()

    with pytest.raises(LockLostError):
        await holder.renew()


async def test_stale_release_leaves_new_holder() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder = manager(store, clock, lease=10)
    await holder.acquire()
    waiter = manager(store, clock, lease=10)
    await waiter.try_acquire()
    clock.now += 11
    assert await waiter.try_acquire()

    released = await holder.release()

    assert not released
    assert store.locks["svc"].owner == waiter.owner


async def test_release_keeps_epoch_for_next_holder() -> None:
    store, clock = MemoryStore(), FakeClock()
    first = manager(store, clock)
    await first.acquire()
    await first.release()

    fence = await manager(store, clock).acquire()

    assert store.locks["svc"].owner is not None
    assert fence.epoch == 2


async def test_ensure_held_detects_force_release() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder = manager(store, clock)
    await holder.acquire()

    replaced = await force_release(holder.driver, "svc")

    assert replaced is not None
    assert replaced.owner == holder.owner
    with pytest.raises(LockLostError, match=r"it is free \(released after epoch 1\)"):
        await holder.ensure_held()


async def test_force_release_of_free_lock_returns_none() -> None:
    store, _clock = MemoryStore(), FakeClock()

    assert await force_release(MemoryDriver(store), "svc") is None


async def test_heartbeat_reports_loss_after_takeover() -> None:
    store, clock = MemoryStore(), FakeClock()
    holder = manager(store, clock, lease=3)
    await holder.acquire()
    store.locks["svc"] = store.locks["svc"].__class__(
        **{**store.locks["svc"].to_dict(), "owner": "intruder", "version": 99}
    )
    lost: list[LockLostError] = []

    await holder.heartbeat(lost.append)

    assert len(lost) == 1
    assert not holder.held


class RejectingDriver(MemoryDriver):
    """A memory driver whose lock writes fail with `error` once `rejecting` is set."""

    def __init__(self, store: MemoryStore, error: Exception) -> None:
        super().__init__(store)
        self.error = error
        self.rejecting = False
        self.renewals = 0

    async def _replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool:
        if not self.rejecting:
            return await super()._replace_lock(key, expected_version, record)
        self.renewals += 1
        raise self.error


async def heartbeat_until_lost(driver: RejectingDriver, clock: FakeClock) -> list[LockLostError]:
    holder = LockManager(driver, LockSettings(key="svc", lease=30), clock=clock, sleep=clock.sleep)
    await holder.acquire()
    driver.rejecting = True
    lost: list[LockLostError] = []

    await holder.heartbeat(lost.append)

    assert not holder.held
    return lost


async def test_heartbeat_stops_at_first_auth_rejection() -> None:
    clock = FakeClock()
    rejection = DriverAuthError("PUT .../lock/svc was rejected (TOKEN_REVOKED): revoked.")
    driver = RejectingDriver(MemoryStore(), rejection)

    lost = await heartbeat_until_lost(driver, clock)

    assert driver.renewals == 1
    assert clock.now == 1000.0 + 10
    assert len(lost) == 1
    assert "TOKEN_REVOKED" in str(lost[0])
    assert lost[0].__cause__ is rejection


async def test_heartbeat_retries_unavailable_store() -> None:
    clock = FakeClock()
    outage = DriverUnavailableError("the store timed out")
    driver = RejectingDriver(MemoryStore(), outage)

    lost = await heartbeat_until_lost(driver, clock)

    assert driver.renewals > 1
    assert clock.now >= 1000.0 + 20  # two thirds of the lease after the last renewal
    assert "the store timed out" in str(lost[0])
    assert lost[0].__cause__ is outage
