"""The driver contract: what the core needs from a store of audit entries and locks.

A driver implements the `_`-prefixed coroutines below. The public methods of `Driver` wrap
them so that every store operation is counted in `stats` and every native exception passes
through the driver's `translate_error`, the one place where a store library's errors become
flamingock-async errors.

The lock algorithm itself is not here: drivers only store one lock record per key and offer a
read, an insert-if-absent and a compare-and-set on its `version` (see `flamingock_async._lock`).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from .._audit import AuditEntry, StateSummary
from .._errors import DriverError, FlamingockError
from .._lock import Fence, LockRecord

__all__ = ["Driver", "DriverStats", "TransactionBody", "ChangeBodyFailed"]

T = TypeVar("T")

TransactionBody = Callable[[Any], Awaitable[None]]
"""A change's work inside a store transaction; it receives the transaction handle."""


class ChangeBodyFailed(Exception):
    """Carries an exception raised by a change's own code through a driver's transaction.

    Drivers see it in `_run_in_transaction`: they abort the transaction and let it propagate
    (a MongoDB driver may retry first when `error` carries a transient-transaction label).
    `Driver.run_in_transaction` unwraps it, so callers get the change's exception unchanged
    and it is never mistaken for a store error.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(f"the change raised {type(error).__name__}: {error}")
        self.error = error


@dataclasses.dataclass(slots=True)
class DriverStats:
    """Counts of store operations, for benchmarks and for tests that bound round trips."""

    reads: int = 0
    writes: int = 0
    lock_operations: int = 0

    @property
    def round_trips(self) -> int:
        return self.reads + self.writes + self.lock_operations


class Driver(abc.ABC):
    """Base class of every store of audit entries and locks.

    Lifecycle: `open()` connects without writing anything; `setup()` creates tables,
    collections and indexes idempotently (safe when many runners race on an empty store);
    `aclose()` releases connections the driver created. `async with driver:` opens and closes.
    """

    name: ClassVar[str] = "driver"
    transaction_handle_names: ClassVar[tuple[str, ...]] = ("transaction",)
    """Parameter names under which a transactional change receives the transaction handle."""

    def __init__(self) -> None:
        self.stats = DriverStats()
        self._translated = _TranslatedErrors(self)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to the store; writes nothing. Calling it twice is harmless."""
        await self._call(self._open)

    async def setup(self) -> None:
        """Create the store's tables, collections and indexes if missing; idempotent."""
        await self._call(self._setup)

    async def aclose(self) -> None:
        """Close what the driver opened; connections passed in by the user stay open."""
        await self._aclose()

    async def __aenter__(self: T) -> T:
        await self.open()  # type: ignore[attr-defined]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- capabilities ------------------------------------------------------------------------

    @property
    def supports_transactions(self) -> bool:
        """Whether a change, its audit entry and the fence check can commit atomically."""
        return False

    def describe(self) -> str:
        """Return a description of the store for logs, with every credential removed."""
        return self.name

    def provided_dependencies(self) -> Mapping[str, type]:
        """Return the names and types this driver injects, known before connecting.

        Validation uses it to report a change parameter that nothing can fill, before the
        store is touched.
        """
        return {}

    def target_dependencies(self) -> Mapping[str, object]:
        """Return the default target system of changes, by parameter name, once opened."""
        return {}

    # -- lock records ------------------------------------------------------------------------

    async def read_lock(self, key: str) -> LockRecord | None:
        """Return the lock record of `key`, read with strong consistency, or None."""
        self.stats.lock_operations += 1
        return await self._call(self._read_lock, key)

    async def insert_lock(self, record: LockRecord) -> bool:
        """Insert `record` if no record with its key exists; return whether it was inserted."""
        self.stats.lock_operations += 1
        return await self._call(self._insert_lock, record)

    async def replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool:
        """Replace the record of `key` only if its version is `expected_version`.

        Returns False when the stored version differs or the record is absent.
        """
        self.stats.lock_operations += 1
        return await self._call(self._replace_lock, key, expected_version, record)

    # -- audit log ---------------------------------------------------------------------------

    async def read_states(self) -> list[AuditEntry]:
        """Return the newest entry of each change, in a bounded number of round trips.

        An absent or empty store returns an empty list; this call never creates anything.
        """
        self.stats.reads += 1
        return await self._call(self._read_states)

    async def read_state_summaries(self) -> list[StateSummary]:
        """Return what planning needs of the newest entry of each change, in one read.

        The runner checks for pending changes with this before it takes the lock. The
        default derives the summaries from `_read_states()`; a driver whose full entries
        are costly to read overrides `_read_state_summaries()` with a narrower query.
        """
        self.stats.reads += 1
        return await self._call(self._read_state_summaries)

    async def read_history(self, change_id: str | None = None) -> list[AuditEntry]:
        """Return every entry (or those of one change), oldest first by `(epoch, sequence)`."""
        self.stats.reads += 1
        return await self._call(self._read_history, change_id)

    async def append_audit(self, entry: AuditEntry, fence: Fence) -> None:
        """Append `entry` if the lock still carries the fence's owner and epoch.

        Raises `LockLostError` and writes nothing otherwise. Appending an entry whose
        `entry_id` is already stored is a no-op, so a retried write is never doubled. A
        cancelled append may still store the entry; a caller that must know whether it
        did shields the call from cancellation, as the runner does.
        """
        self.stats.writes += 1
        # Not through _call(), which would add a coroutine that the trip to the store resumes
        # again. A run makes one or two appends per change.
        with self._translated:
            await self._append_audit(entry, fence)

    async def run_in_transaction(
        self,
        fence: Fence,
        body: TransactionBody,
        audit: Callable[[], AuditEntry],
    ) -> None:
        """Run `body` in one store transaction with the entry `audit()` and the fence check.

        The transaction commits only if the lock still carries the fence; otherwise nothing
        is committed and `LockLostError` is raised. If `body` raises, the transaction is
        aborted and the exception propagates unchanged. A driver may run `body` again when
        the store reports a transient conflict, so `body` must not keep state between calls.
        Only called when `supports_transactions` is True.
        """
        self.stats.writes += 1

        async def guarded_body(handle: Any) -> None:
            try:
                await body(handle)
            except Exception as error:
                raise ChangeBodyFailed(error) from error

        failure: Exception | None = None
        try:
            # Not through _call(), which would add a coroutine that each trip to the store
            # resumes again.
            with self._translated:
                await self._run_in_transaction(fence, guarded_body, audit)
        except ChangeBodyFailed as carrier:
            failure = carrier.error
        if failure is not None:
            raise failure

    # -- what each driver implements ---------------------------------------------------------

    async def _open(self) -> None:
        return None

    async def _setup(self) -> None:
        return None

    async def _aclose(self) -> None:
        return None

    @abc.abstractmethod
    async def _read_lock(self, key: str) -> LockRecord | None: ...

    @abc.abstractmethod
    async def _insert_lock(self, record: LockRecord) -> bool: ...

    @abc.abstractmethod
    async def _replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool: ...

    @abc.abstractmethod
    async def _read_states(self) -> list[AuditEntry]: ...

    async def _read_state_summaries(self) -> list[StateSummary]:
        return [StateSummary.of(entry) for entry in await self._read_states()]

    @abc.abstractmethod
    async def _read_history(self, change_id: str | None) -> list[AuditEntry]: ...

    @abc.abstractmethod
    async def _append_audit(self, entry: AuditEntry, fence: Fence) -> None: ...

    async def _run_in_transaction(
        self,
        fence: Fence,
        body: TransactionBody,
        audit: Callable[[], AuditEntry],
    ) -> None:
        raise DriverError(f"The {self.name} driver does not support transactions.")

    def translate_error(self, error: Exception) -> FlamingockError:
        """Map a native exception of the store library to a flamingock-async error.

        Drivers override this; it is the single place where native errors are translated.
        """
        return DriverError(f"{self.describe()}: {type(error).__name__}: {error}")

    async def _call(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        with self._translated:
            return await operation(*args)


class _TranslatedErrors:
    """Context that raises a native store error again as the driver's `translate_error()`.

    Errors of flamingock-async and a failed change body pass through unchanged. It keeps no
    state, so one instance per driver serves every operation, nested or concurrent.
    """

    __slots__ = ("_driver",)

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if not isinstance(error, Exception) or isinstance(
            error, (FlamingockError, ChangeBodyFailed)
        ):
            return
        raise self._driver.translate_error(error) from error
