"""Running one change: injection, the transaction or the STARTED entry, failure and rollback."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import traceback
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import Any

import anyio
import anyio.abc

from ._audit import AuditEntry, AuditState, new_id, now_ms
from ._changes import ChangeDescriptor, LoadedChange, Recovery
from ._errors import ChangeExecutionError, LockLostError
from ._injection import check_injectable, resolve_arguments, takes_arguments
from ._lock import LockManager
from ._progress import EventKind, RunProgress
from ._version import __version__
from .drivers._base import Driver

__all__ = ["ChangeContext", "ChangeExecutor"]

logger = logging.getLogger("flamingock_async")
change_logger = logging.getLogger("flamingock_async.change")

MAX_TRACE_CHARS = 16_000
"""Longer tracebacks are cut to their last part, so one entry stays far below store limits."""

Emit = Callable[..., None]


@dataclasses.dataclass
class ChangeContext:
    """The runner's services for a change unit, injected by type or by the name `context`.

    `metadata` is stored with the change's audit entry. `ensure_lock()` reads the lock and
    raises `LockLostError` if this runner no longer holds it; long changes call it before an
    irreversible step.
    """

    execution_id: str
    change_id: str
    stage: str
    author: str
    order: str
    logger: logging.LoggerAdapter[logging.Logger]
    metadata: MutableMapping[str, Any]
    _ensure_lock: Callable[[], Awaitable[None]]

    async def ensure_lock(self) -> None:
        await self._ensure_lock()


class ChangeExecutor:
    """Applies and undoes the changes of one execution under one held lock."""

    def __init__(
        self,
        *,
        driver: Driver,
        lock: LockManager,
        execution_id: str,
        dependencies: Sequence[object] | Mapping[str, object],
        progress: RunProgress,
        emit: Emit,
        shutdown_grace: float,
    ) -> None:
        self.driver = driver
        self.lock = lock
        self.execution_id = execution_id
        self.progress = progress
        self.shutdown_grace = shutdown_grace
        self.applied: list[str] = []
        self.skipped: tuple[str, ...] = ()  # what the plan under the lock found done already
        self.failed_change: str | None = None
        self.lost_error: LockLostError | None = None
        self.lock_acquired = False
        self._emit = emit
        self._named, self._typed = _split_dependencies(dependencies)
        self._sequence = 0
        self._scope: anyio.CancelScope | None = None
        self._audit_scope: anyio.CancelScope | None = None
        self._warned_not_atomic = False
        self._warned_outside: set[str] = set()

    # -- validation --------------------------------------------------------------------------

    @staticmethod
    def check_injection(
        driver: Driver,
        dependencies: Sequence[object] | Mapping[str, object],
        changes: Iterable[LoadedChange],
    ) -> list[str]:
        """Return a problem for every change parameter that nothing can fill."""
        named, typed = _split_dependencies(dependencies)
        catalogue: dict[str, type] = {"context": ChangeContext}
        catalogue.update(driver.provided_dependencies())
        catalogue.update({name: type(value) for name, value in named.items()})
        catalogue.update({f"<{type(value).__qualname__}>": type(value) for value in typed})
        problems: list[str] = []
        for change in changes:
            instance = change.new_instance()
            methods = ["execute", "rollback"] if change.has_rollback else ["execute"]
            for method in methods:
                where = f"{change.descriptor.id}.{method} ({change.descriptor.where})"
                problems.extend(
                    check_injectable(getattr(instance, method), names=catalogue, where=where)
                )
        return problems

    def warn_if_not_atomic(self, changes: Sequence[ChangeDescriptor]) -> None:
        """Log once per run that transactional changes run without a transaction here."""
        if self.driver.supports_transactions or self._warned_not_atomic:
            return
        names = [change.id for change in changes if change.transactional]
        if not names:
            return
        self._warned_not_atomic = True
        logger.warning(
            "%d transactional %s will run without a transaction because %s has "
            "transactions off; each gets a STARTED audit entry first: %s",
            len(names),
            "change" if len(names) == 1 else "changes",
            self.driver.describe(),
            ", ".join(names),
        )

    # -- the lease ---------------------------------------------------------------------------

    async def heartbeat(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self.lock.heartbeat(
            self._on_lock_lost, on_renewed=self._on_renewed, task_status=task_status
        )

    def _on_renewed(self) -> None:
        self._emit(EventKind.LOCK_RENEWED)

    def _on_lock_lost(self, error: LockLostError) -> None:
        self.lost_error = error
        logger.warning("Lock lost during execution %s: %s", self.execution_id, error)
        self._emit(EventKind.LOCK_LOST, error=error)
        if self._scope is not None:
            self._scope.cancel()

    def _raise_if_lost(self) -> None:
        if self.lost_error is not None:
            raise self.lost_error

    @contextlib.contextmanager
    def cancelled_by_lost_lock(self) -> Iterator[None]:
        """Cancel the changes run inside when the lock is lost, then raise `LockLostError`.

        One scope covers all the changes of a run: entering a cancel scope costs about as
        much as a trivial change's own Python work. A change cancelled this way gets no
        FAILED entry: the store would reject any write without the lock. Its STARTED entry,
        if any, stays for the next run to decide on. A second scope inside
        it is shielded while an audit entry is written (see `_store`).
        """
        with anyio.CancelScope() as scope, anyio.CancelScope() as audit_scope:
            self._scope, self._audit_scope = scope, audit_scope
            try:
                yield
            finally:
                self._scope = self._audit_scope = None
        self._raise_if_lost()

    # -- applying ----------------------------------------------------------------------------

    async def apply(self, change: LoadedChange) -> None:
        """Apply one change and audit it; raises `ChangeExecutionError` or `LockLostError`."""
        self._raise_if_lost()
        descriptor = change.descriptor
        self.progress.current_change = descriptor.id
        self._emit(EventKind.CHANGE_STARTED, change_id=descriptor.id)
        started = time.monotonic()
        if descriptor.transactional and self.driver.supports_transactions:
            await self._apply_atomic(change)
        else:
            await self._apply_audited(change)
        duration = time.monotonic() - started
        self.applied.append(descriptor.id)
        self.progress.applied += 1
        self._emit(EventKind.CHANGE_APPLIED, change_id=descriptor.id, duration=duration)
        if change_logger.isEnabledFor(logging.INFO):
            change_logger.info(
                "Applied change %s in %.1f ms",
                descriptor.id,
                duration * 1000,
                extra={"execution_id": self.execution_id, "change_id": descriptor.id},
            )

    async def _apply_atomic(self, change: LoadedChange) -> None:
        """Run the change, its APPLIED entry and the fence check in one store transaction."""
        descriptor = change.descriptor
        instance = change.new_instance()
        context = self._context_for(instance.execute, descriptor)
        started_ms = now_ms()

        async def body(handle: Any) -> None:
            await instance.execute(**self._arguments(instance.execute, context, handle))

        def applied_entry() -> AuditEntry:
            return self._entry(
                descriptor, AuditState.APPLIED, atomic=True, started_ms=started_ms,
                metadata=context.metadata if context else None,
            )  # fmt: skip

        try:
            await self.driver.run_in_transaction(self.lock.fence, body, applied_entry)
        except LockLostError:
            raise
        except Exception as error:
            self.failed_change = descriptor.id
            await self.append(descriptor, AuditState.FAILED, atomic=True, error=error)
            raise _execution_error(descriptor, error, None) from error
        except anyio.get_cancelled_exc_class():
            await self._audit_interrupted(change, instance, context, atomic=True)
            raise
        self._raise_if_lost()

    async def _apply_audited(self, change: LoadedChange) -> None:
        """Write STARTED, run the change, then APPLIED; on failure FAILED and the rollback."""
        descriptor = change.descriptor
        instance = change.new_instance()
        context = self._context_for(instance.execute, descriptor)
        arguments = self._arguments(instance.execute, context, None)
        started_ms = now_ms()
        await self.append(descriptor, AuditState.STARTED, atomic=False, started_ms=started_ms)
        try:
            await instance.execute(**arguments)
        except Exception as error:
            await self._fail_and_roll_back(change, instance, context, error)
        except anyio.get_cancelled_exc_class():
            await self._audit_interrupted(change, instance, context, atomic=False)
            raise
        self._raise_if_lost()
        await self.append(
            descriptor, AuditState.APPLIED, atomic=False, started_ms=started_ms,
            metadata=context.metadata if context else None,
        )  # fmt: skip

    async def _fail_and_roll_back(
        self,
        change: LoadedChange,
        instance: Any,
        context: ChangeContext | None,
        error: Exception,
    ) -> None:
        """Audit the failure, run the rollback if any, audit it, and raise."""
        descriptor = change.descriptor
        self.failed_change = descriptor.id
        await self.append(descriptor, AuditState.FAILED, atomic=False, error=error)
        rollback_error = await self._roll_back(change, instance, context)
        undone = change.has_rollback and rollback_error is None
        left_uncertain = not undone and descriptor.recovery is Recovery.MANUAL_INTERVENTION
        raise _execution_error(
            descriptor, error, rollback_error, needs_manual_intervention=left_uncertain
        ) from error

    async def _roll_back(
        self, change: LoadedChange, instance: Any, context: ChangeContext | None
    ) -> Exception | None:
        """Run and audit the rollback of a failed change; return its error, if any.

        `context` is the one `execute` received, so that the rollback can read its metadata.
        """
        if not change.has_rollback:
            return None
        descriptor = change.descriptor
        if context is None:
            context = self._context_for(instance.rollback, descriptor)
        try:
            await instance.rollback(**self._arguments(instance.rollback, context, None))
        except Exception as rollback_error:
            await self.append(
                descriptor, AuditState.ROLLBACK_FAILED, atomic=False, error=rollback_error
            )
            return rollback_error
        await self.append(descriptor, AuditState.ROLLED_BACK, atomic=False)
        self._emit(EventKind.CHANGE_ROLLED_BACK, change_id=descriptor.id)
        return None

    async def _audit_interrupted(
        self, change: LoadedChange, instance: Any, context: ChangeContext | None, *, atomic: bool
    ) -> None:
        """After an outside cancellation (shutdown), audit and roll back within the grace.

        A transactional change was aborted by its transaction, and its FAILED entry records
        that nothing was committed. Another change gets its rollback, and without one it
        stays FAILED for an operator to check.
        """
        descriptor = change.descriptor
        self.failed_change = descriptor.id
        if self.lost_error is not None:
            return  # cancelled by the lost lock: no write can pass the fence any more
        interrupted = InterruptedError(
            f"Change {descriptor.id!r} was cancelled by a shutdown before it finished."
        )
        with anyio.move_on_after(self.shutdown_grace, shield=True):
            try:
                await self.append(descriptor, AuditState.FAILED, atomic=atomic, error=interrupted)
                if not atomic:
                    await self._roll_back(change, instance, context)
            except Exception:
                logger.exception(
                    "Could not audit the interrupted change %s; the next run will find it "
                    "STARTED and stop for manual intervention",
                    descriptor.id,
                )

    # -- undoing -----------------------------------------------------------------------------

    async def undo(self, change: LoadedChange) -> None:
        """Run an applied change's rollback and audit ROLLED_BACK or ROLLBACK_FAILED."""
        self._raise_if_lost()
        descriptor = change.descriptor
        instance = change.new_instance()
        context = self._context_for(instance.rollback, descriptor)
        if descriptor.transactional and self.driver.supports_transactions:

            async def body(handle: Any) -> None:
                await instance.rollback(**self._arguments(instance.rollback, context, handle))

            def undone_entry() -> AuditEntry:
                return self._entry(descriptor, AuditState.ROLLED_BACK, atomic=True)

            try:
                await self.driver.run_in_transaction(self.lock.fence, body, undone_entry)
            except LockLostError:
                raise
            except Exception as error:
                await self.append(descriptor, AuditState.ROLLBACK_FAILED, atomic=True, error=error)
                raise _rollback_error(descriptor, error) from error
        else:
            rollback_error = await self._roll_back(change, instance, context)
            if rollback_error is not None:
                raise _rollback_error(descriptor, rollback_error) from rollback_error
        self._raise_if_lost()
        change_logger.info("Rolled back change %s", descriptor.id)

    # -- audit entries -----------------------------------------------------------------------

    async def append(
        self,
        descriptor: ChangeDescriptor,
        state: AuditState,
        *,
        atomic: bool,
        started_ms: int | None = None,
        error: BaseException | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Build the next entry of this execution and append it under the fence."""
        entry = self._entry(
            descriptor, state, atomic=atomic, started_ms=started_ms, error=error,
            metadata=metadata,
        )  # fmt: skip
        await self._store(entry)
        return entry

    async def _store(self, entry: AuditEntry) -> None:
        """Append `entry` shielded from cancellation, so that its outcome is known before going on.

        A cancelled write may still reach the store: a STARTED entry would then stand for
        a change that never ran, and an APPLIED entry could land after the lock's release
        and be rejected by its fence. Shielded, the write ends first, and the cancellation
        reaches the change's code or the next step. Within a run, the shield of a scope
        entered once for the run is switched on and off, since entering a new shielded
        scope for each entry cost as much as building the entry.
        """
        scope = self._audit_scope
        if scope is None or scope.shield:
            with anyio.CancelScope(shield=True):
                await self.driver.append_audit(entry, self.lock.fence)
            return
        scope.shield = True
        try:
            await self.driver.append_audit(entry, self.lock.fence)
        finally:
            scope.shield = False

    def _entry(
        self,
        descriptor: ChangeDescriptor,
        state: AuditState,
        *,
        atomic: bool,
        started_ms: int | None = None,
        error: BaseException | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        self._sequence += 1
        finished = now_ms()
        done = state is not AuditState.STARTED
        return AuditEntry(
            entry_id=new_id(),
            execution_id=self.execution_id,
            stage=descriptor.stage,
            change_id=descriptor.id,
            author=descriptor.author,
            order=descriptor.order,
            state=state,
            lock_epoch=self.lock.fence.epoch,
            sequence=self._sequence,
            created_at_ms=finished,
            started_at_ms=started_ms,
            finished_at_ms=finished if done else None,
            duration_ms=finished - started_ms if done and started_ms is not None else None,
            transactional=atomic,
            error_type=type(error).__qualname__ if error else None,
            error_message=str(error) if error else None,
            error_trace=_format_trace(error) if error else None,
            library_version=__version__,
            metadata=dict(metadata or {}),
        )

    # -- injection ---------------------------------------------------------------------------

    def _context_for(
        self, method: Callable[..., Any], descriptor: ChangeDescriptor
    ) -> ChangeContext | None:
        """Return a new context for a call of `method`, or None when it takes no argument."""
        return self._context(descriptor) if takes_arguments(method) else None

    def _context(self, descriptor: ChangeDescriptor) -> ChangeContext:
        adapter = logging.LoggerAdapter(
            change_logger, {"execution_id": self.execution_id, "change_id": descriptor.id}
        )
        return ChangeContext(
            execution_id=self.execution_id,
            change_id=descriptor.id,
            stage=descriptor.stage,
            author=descriptor.author,
            order=descriptor.order,
            logger=adapter,
            metadata={},
            _ensure_lock=self.lock.ensure_held,
        )

    def _arguments(
        self, function: Callable[..., Any], context: ChangeContext | None, handle: Any
    ) -> dict[str, Any]:
        """Return the arguments of `function`; `context` is None when it takes none."""
        if context is None or not takes_arguments(function):
            return {}
        named: dict[str, object] = dict(self.driver.target_dependencies())
        named.update(self._named)
        named["context"] = context
        typed: list[object] = [*self._typed, *named.values()]
        if handle is not None:
            for name in self.driver.transaction_handle_names:
                named[name] = handle
            typed.insert(0, handle)
        arguments = resolve_arguments(function, named=named, typed=_unique(typed))
        if handle is not None:
            self._warn_if_outside_transaction(context.change_id, arguments, handle)
        return arguments

    def _warn_if_outside_transaction(
        self, change_id: str, arguments: Mapping[str, Any], handle: Any
    ) -> None:
        """Log once per change when a transactional change can only write around its transaction.

        Such a change receives the store's own target (a client, a database, a second
        connection) and not the transaction handle, so its writes are not part of the
        transaction. After a crash that follows them the audit log shows nothing, and the
        next run applies the change again.
        """
        if change_id in self._warned_outside or any(v is handle for v in arguments.values()):
            return
        targets = list(self.driver.target_dependencies().values())
        outside = [name for name, value in arguments.items() if any(value is t for t in targets)]
        if not outside:
            return
        self._warned_outside.add(change_id)
        logger.warning(
            "Change %s is transactional but receives %s and not its transaction handle (%s): "
            "its writes through %s are not part of its transaction, so after a crash the next "
            "run would apply it again; write through the handle, or declare it "
            "transactional=False so that a STARTED entry guards it",
            change_id,
            ", ".join(outside),
            ", ".join(self.driver.transaction_handle_names),
            " and ".join(outside),
        )


def _split_dependencies(
    dependencies: Sequence[object] | Mapping[str, object],
) -> tuple[dict[str, object], list[object]]:
    if isinstance(dependencies, Mapping):
        return dict(dependencies), []
    return {}, list(dependencies)


def _unique(values: Iterable[object]) -> list[object]:
    seen: set[int] = set()
    unique: list[object] = []
    for value in values:
        if id(value) not in seen:
            seen.add(id(value))
            unique.append(value)
    return unique


def _format_trace(error: BaseException) -> str:
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return trace if len(trace) <= MAX_TRACE_CHARS else "...\n" + trace[-MAX_TRACE_CHARS:]


def _execution_error(
    descriptor: ChangeDescriptor,
    error: Exception,
    rollback_error: Exception | None,
    *,
    needs_manual_intervention: bool = False,
) -> ChangeExecutionError:
    message = (
        f"Change {descriptor.id!r} ({descriptor.where}) failed: {type(error).__name__}: {error}"
    )
    if rollback_error is not None:
        message += (
            f"; its rollback failed too ({type(rollback_error).__name__}: {rollback_error}), "
            f"so check the target system and run 'flamingock mark {descriptor.id} --as ...'"
        )
    elif needs_manual_intervention:
        message += (
            "; it has no rollback, so check the target system and run "
            f"'flamingock mark {descriptor.id} --as applied' or '--as rolled-back'"
        )
    return ChangeExecutionError(
        message,
        change_id=descriptor.id,
        rollback_error=rollback_error,
        needs_manual_intervention=needs_manual_intervention,
    )


def _rollback_error(descriptor: ChangeDescriptor, error: Exception) -> ChangeExecutionError:
    return ChangeExecutionError(
        f"Rollback of change {descriptor.id!r} ({descriptor.where}) failed: "
        f"{type(error).__name__}: {error}; check the target system and run "
        f"'flamingock mark {descriptor.id} --as applied' or '--as rolled-back'.",
        change_id=descriptor.id,
        rollback_error=error,
    )
