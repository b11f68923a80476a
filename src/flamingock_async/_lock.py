"""The lease lock, written once for every driver.

Drivers store one lock record per key and offer three atomic operations on it: read, insert
when absent, and replace when the stored `version` equals an expected one. Everything else —
epochs, heartbeats, takeover of an expired lease, fencing — lives here.

Safety rests on three rules:

* every write to the record increments `version`, so a compare-and-set on the version alone
  detects any change made by anybody since it was read;
* a waiter takes over a lease only after it has seen the *same* version for longer than the
  lease on its own monotonic clock, so no two machines' clocks are ever compared;
* each acquisition increments `epoch`, and every audit write is conditional on the holder's
  `(owner, epoch)` (the fence), so a runner that lost its lease cannot write history.

A released lock keeps its record with `owner=None`, so the epoch keeps counting up.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._audit import HOST, PID, new_id, now_ms
from ._errors import (
    DriverAuthError,
    DriverError,
    DriverUnavailableError,
    LockLostError,
    LockNotAcquiredError,
)

if TYPE_CHECKING:
    import anyio.abc

    from .drivers._base import Driver

__all__ = ["LockRecord", "Fence", "LockSettings", "LockManager", "holder_of"]

logger = logging.getLogger("flamingock_async.lock")


@dataclasses.dataclass(frozen=True, slots=True)
class LockRecord:
    """The stored state of one lock. `owner` is None once the lock is released."""

    key: str
    owner: str | None
    epoch: int
    version: int
    lease_ms: int
    acquired_at_ms: int
    renewed_at_ms: int
    host: str = ""
    pid: int = 0

    @property
    def is_free(self) -> bool:
        return self.owner is None

    def describe(self) -> str:
        """Return a short description of the holder for messages."""
        if self.owner is None:
            return f"free (last epoch {self.epoch})"
        return f"owner {self.owner} on host {self.host} pid {self.pid}, epoch {self.epoch}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockRecord:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in names})


def holder_of(record: LockRecord | None) -> str:
    """Say who holds a lock, to end a sentence: "it is held by owner ...", "it is free ..."."""
    if record is None:
        return "no lock record exists"
    if record.is_free:
        return f"it is free (released after epoch {record.epoch})"
    return f"it is held by {record.describe()}"


@dataclasses.dataclass(frozen=True, slots=True)
class Fence:
    """The holder's identity that every audit write is conditional on."""

    key: str
    owner: str
    epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class LockSettings:
    """Settings of the lock a runner takes and keeps. Durations are in seconds.

    `lease` is how long a holder that stops renewing keeps the lock; the heartbeat renews it
    every third of that. `wait_timeout` bounds how long a runner waits for another holder.
    `poll_interval` is the mean pause between attempts; each pause is jittered by ±50 %.
    """

    key: str = "flamingock"
    lease: float = 30.0
    wait_timeout: float = 300.0
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.lease < 0.3:
            raise ValueError(f"lease must be at least 0.3 seconds, got {self.lease}")
        if self.wait_timeout < 0:
            raise ValueError(f"wait_timeout must be zero or more, got {self.wait_timeout}")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {self.poll_interval}")
        if not self.key:
            raise ValueError("the lock key must not be empty")


class LockManager:
    """Takes, renews and releases one lock on behalf of one runner.

    `clock` is a monotonic clock in seconds and `sleep` an async sleep; tests pass fake
    ones. Every start imports this module for the lock records and settings, but only a run
    with work builds a lock manager, so what only the manager uses (anyio's `sleep` and
    task status, `random`) is looked up on first use.
    """

    def __init__(
        self,
        driver: Driver,
        settings: LockSettings | None = None,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if sleep is None:
            import anyio

            sleep = anyio.sleep
        self.driver = driver
        self.settings = settings or LockSettings()
        self.owner = owner or new_id()
        self._clock = clock
        self._sleep = sleep
        self._record: LockRecord | None = None
        self._fence: Fence | None = None  # of the current holding, built once per epoch
        self._renewed_at = 0.0
        self._observed_version: int | None = None
        self._observed_since = 0.0
        self.last_holder: LockRecord | None = None

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease * 1000)

    @property
    def fence(self) -> Fence:
        """The fence of the current holding; raises `LockLostError` when not held."""
        record = self._record
        if record is None or record.owner != self.owner:
            raise LockLostError(f"The lock {self.settings.key!r} is not held by this runner.")
        fence = self._fence
        if fence is None or fence.epoch != record.epoch:
            fence = self._fence = Fence(self.settings.key, self.owner, record.epoch)
        return fence

    @property
    def held(self) -> bool:
        return self._record is not None

    @property
    def record(self) -> LockRecord | None:
        return self._record

    # -- acquiring ---------------------------------------------------------------------------

    async def acquire(
        self, min_epoch: int = 0, *, on_attempt: Callable[[], None] | None = None
    ) -> Fence:
        """Wait for the lock, take it and return its fence.

        `min_epoch` is the highest epoch seen in the audit log, so that a lock record that was
        deleted by hand cannot restart the epochs below history that already exists.
        `on_attempt` is called after every attempt, so a caller can show it is still alive.
        Raises `LockNotAcquiredError` after `wait_timeout`.
        """
        deadline = self._clock() + self.settings.wait_timeout
        last_error: DriverUnavailableError | None = None
        while True:
            try:
                if await self.try_acquire(min_epoch):
                    return self.fence
            except DriverUnavailableError as error:
                # A store that is busy or briefly unreachable is not a reason to give up
                # before wait_timeout; SQLite reports a live writer this way.
                logger.debug("Lock attempt on %r failed, retrying: %s", self.settings.key, error)
                last_error = error
            if on_attempt is not None:
                on_attempt()
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._not_acquired_error() from last_error
            import random

            pause = self.settings.poll_interval * random.uniform(0.5, 1.5)
            await self._sleep(min(pause, remaining))

    async def try_acquire(self, min_epoch: int = 0) -> bool:
        """Make one attempt to take the lock; return whether this runner now holds it."""
        current = await self.driver.read_lock(self.settings.key)
        self.last_holder = current
        started = self._clock()
        if current is None:
            record = self._new_record(epoch=min_epoch + 1, version=1)
            taken = await self.driver.insert_lock(record)
        elif current.is_free or self._expired(current):
            epoch = max(current.epoch, min_epoch) + 1
            record = self._new_record(epoch=epoch, version=current.version + 1)
            if not current.is_free:
                logger.warning(
                    "Taking over the expired lock %r from %s", self.settings.key, current.describe()
                )
            taken = await self.driver.replace_lock(self.settings.key, current.version, record)
        else:
            return False
        if taken:
            self._record = record
            self._renewed_at = started
            logger.debug("Acquired lock %r at epoch %d", self.settings.key, record.epoch)
        return taken

    def _expired(self, current: LockRecord) -> bool:
        """Track how long `current.version` has stayed unchanged; True once past its lease."""
        now = self._clock()
        if current.version != self._observed_version:
            self._observed_version = current.version
            self._observed_since = now
            return False
        return now - self._observed_since > current.lease_ms / 1000

    def _new_record(self, *, epoch: int, version: int) -> LockRecord:
        stamp = now_ms()
        return LockRecord(
            key=self.settings.key,
            owner=self.owner,
            epoch=epoch,
            version=version,
            lease_ms=self.lease_ms,
            acquired_at_ms=stamp,
            renewed_at_ms=stamp,
            host=HOST,
            pid=PID,
        )

    def _not_acquired_error(self) -> LockNotAcquiredError:
        holder = self.last_holder.describe() if self.last_holder else "unknown"
        return LockNotAcquiredError(
            f"Could not acquire the lock {self.settings.key!r} within "
            f"{self.settings.wait_timeout:g} s; it is held by {holder}. Wait for that runner to "
            "finish, raise wait_timeout (--lock-wait-timeout), or run "
            "'flamingock lock release --force' if it is dead.",
            holder=holder,
        )

    # -- keeping -----------------------------------------------------------------------------

    async def renew(self) -> None:
        """Extend the lease by one compare-and-set; raises `LockLostError` if it was taken."""
        mine = self._require_record()
        started = self._clock()
        renewed = dataclasses.replace(mine, version=mine.version + 1, renewed_at_ms=now_ms())
        if not await self.driver.replace_lock(self.settings.key, mine.version, renewed):
            self._record = None
            raise LockLostError(
                f"The lock {self.settings.key!r} was taken over or released by someone else "
                f"while this runner held it at epoch {mine.epoch}."
            )
        self._record = renewed
        self._renewed_at = started
        logger.debug("Renewed lock %r (version %d)", self.settings.key, renewed.version)

    async def ensure_held(self) -> None:
        """Read the lock and raise `LockLostError` unless this runner still holds it."""
        mine = self._require_record()
        current = await self.driver.read_lock(self.settings.key)
        if current is None or current.owner != self.owner or current.epoch != mine.epoch:
            raise LockLostError(
                f"The lock {self.settings.key!r} is no longer held by this runner "
                f"(epoch {mine.epoch}); {holder_of(current)}."
            )

    async def heartbeat(
        self,
        on_lost: Callable[[LockLostError], None],
        *,
        on_renewed: Callable[[], None] | None = None,
        task_status: anyio.abc.TaskStatus[None] | None = None,
    ) -> None:
        """Renew the lease every third of it until cancelled; call `on_lost` and return if lost.

        A store error is retried until two thirds of the lease have passed since the last
        successful renewal. After that another runner may be about to take over, so the lock
        is treated as lost while a margin of a third of the lease remains. A rejected token or
        credential (`DriverAuthError`) is not retried: the lock is treated as lost at once.
        """
        interval = self.settings.lease / 3
        if task_status is not None:
            task_status.started()
        while True:
            await self._sleep(interval)
            try:
                await self.renew()
            except LockLostError as error:
                on_lost(error)
                return
            except DriverError as error:
                lost = self._renewal_failed(error)
                if lost is not None:
                    on_lost(lost)
                    return
                logger.warning("Renewing lock %r failed, retrying: %s", self.settings.key, error)
                interval = min(1.0, self.settings.lease / 10)
                continue
            interval = self.settings.lease / 3
            if on_renewed is not None:
                on_renewed()

    def _renewal_failed(self, error: DriverError) -> LockLostError | None:
        """Return the `LockLostError` that ends the heartbeat after `error`, or None to retry."""
        key = self.settings.key
        if isinstance(error, DriverAuthError):
            # The store rejects every retry the same way, so waiting only delays the report.
            # NOTE: the DynamoDB driver also reports a failed credential fetch
            # (CredentialRetrievalError), which may be transient, as DriverAuthError.
            message = f"Could not renew the lock {key!r}, and retrying cannot help: {error}"
        else:
            since = self._clock() - self._renewed_at
            if since < self.settings.lease * 2 / 3:
                return None
            message = (
                f"Could not renew the lock {key!r} for {since:.1f} s of its "
                f"{self.settings.lease:g} s lease: {error}"
            )
        lost = LockLostError(message)
        lost.__cause__ = error
        self._record = None
        return lost

    # -- releasing ---------------------------------------------------------------------------

    async def release(self) -> bool:
        """Mark the lock free if this runner still holds it; return whether it did.

        The compare-and-set on this runner's last version cannot remove a lock that another
        runner took over since.
        """
        mine = self._record
        if mine is None:
            return False
        self._record = None
        freed = dataclasses.replace(
            mine, owner=None, version=mine.version + 1, renewed_at_ms=now_ms()
        )
        released = await self.driver.replace_lock(self.settings.key, mine.version, freed)
        if not released:
            released = await self._release_unseen_renewal(mine)
        if released:
            logger.debug("Released lock %r at epoch %d", self.settings.key, mine.epoch)
        else:
            logger.warning(
                "Lock %r was no longer held by this runner at release (epoch %d)",
                self.settings.key,
                mine.epoch,
            )
        return released

    async def _release_unseen_renewal(self, mine: LockRecord) -> bool:
        """Free the lock if it still carries this runner's owner and epoch at a newer version.

        A renewal whose caller was cancelled (the heartbeat stops at the end of every run)
        may still have reached the store, so the stored version can be newer than `mine`.
        """
        current = await self.driver.read_lock(self.settings.key)
        if current is None or current.owner != self.owner or current.epoch != mine.epoch:
            return False
        freed = dataclasses.replace(
            current, owner=None, version=current.version + 1, renewed_at_ms=now_ms()
        )
        return await self.driver.replace_lock(self.settings.key, current.version, freed)

    def _require_record(self) -> LockRecord:
        if self._record is None:
            raise LockLostError(f"The lock {self.settings.key!r} is not held by this runner.")
        return self._record


async def force_release(driver: Driver, key: str) -> LockRecord | None:
    """Mark the lock free for an operator, whichever runner holds it; return the replaced record.

    Returns None when there was nothing to release. A holder that is still alive finds its
    lease gone at its next heartbeat and stops.
    """
    while True:
        current = await driver.read_lock(key)
        if current is None or current.is_free:
            return None
        freed = dataclasses.replace(
            current, owner=None, version=current.version + 1, renewed_at_ms=now_ms()
        )
        # A renewal between the read and this write changes the version; read again.
        if await driver.replace_lock(key, current.version, freed):
            return current
