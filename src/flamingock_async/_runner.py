"""AsyncRunner: plans, locks, executes, audits and releases."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._audit import AuditEntry, AuditState, new_id
from ._changes import ChangeDescriptor, LoadedChange, Pipeline, Recovery, Stage
from ._errors import (
    ConfigurationError,
    FlamingockError,
    LockLostError,
    LockNotAcquiredError,
    PipelineValidationError,
)
from ._lock import LockSettings
from ._progress import EventKind, RunEvent, RunProgress, RunReport, RunState
from ._state_table import ids_to_run, max_epoch
from .drivers._base import Driver

if TYPE_CHECKING:
    from ._execution import ChangeExecutor
    from ._planning import RunPlan

__all__ = ["AsyncRunner", "ChangesSource", "Listener"]

logger = logging.getLogger("flamingock_async")

ChangesSource = str | os.PathLike[str] | Sequence[type] | Sequence[Stage]
Listener = Callable[[RunEvent], None]

_MARK_STATES = (AuditState.MANUAL_MARKED_AS_APPLIED, AuditState.MANUAL_MARKED_AS_ROLLED_BACK)


class AsyncRunner:
    """Applies a pipeline of change units to a store, exactly once per store.

    `driver` is a `Driver` or a store URL. `changes` is a package or module name, a pipeline
    file path, a list of change classes, or a list of `Stage`s. `dependencies` are objects
    injected into changes by type, or a mapping injected by name and type.
    `on_lock_timeout="skip"` makes `run()` return a report with `not_run=True` instead of
    raising `LockNotAcquiredError`. `shutdown_grace` bounds, in seconds, the cleanup after a
    cancellation: auditing the interrupted change, its rollback, and releasing the lock.
    """

    def __init__(
        self,
        driver: Driver | str,
        changes: ChangesSource,
        *,
        dependencies: Sequence[object] | Mapping[str, object] = (),
        lock: LockSettings | None = None,
        on_lock_timeout: Literal["raise", "skip"] = "raise",
        shutdown_grace: float = 10.0,
        manifest_cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if on_lock_timeout not in ("raise", "skip"):
            raise ConfigurationError(
                f"on_lock_timeout must be 'raise' or 'skip', got {on_lock_timeout!r}."
            )
        self._owns_driver = isinstance(driver, str)
        if isinstance(driver, str):
            from .drivers import driver_from_url

            driver = driver_from_url(driver)
        self.driver = driver
        self.changes = changes
        self.lock_settings = lock or LockSettings()
        self.on_lock_timeout = on_lock_timeout
        self.shutdown_grace = shutdown_grace
        self.progress = RunProgress()
        self._dependencies = dependencies
        self._manifest_cache = manifest_cache
        self._cache_dir = cache_dir
        self._listeners: list[Listener] = []
        self._pipeline: Pipeline | None = None
        self._executor: ChangeExecutor | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the driver if this runner created it from a URL; a passed driver stays open."""
        if self._owns_driver:
            with anyio.CancelScope(shield=True):
                await self.driver.aclose()

    async def __aenter__(self) -> AsyncRunner:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def _using_driver(self) -> AsyncIterator[Driver]:
        """Open the driver for one operation; close it after if this runner owns it.

        Drivers built from a URL are closed after each operation, so that a process that
        only calls `run()` leaves no connection threads behind that would keep it alive.
        """
        try:
            await self.driver.open()
            yield self.driver
        finally:
            await self.aclose()

    # -- listeners ---------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` with every `RunEvent`; an exception in it is logged and ignored."""
        self._listeners.append(listener)

    def _emit(self, kind: EventKind, execution_id: str, **details: Any) -> None:
        self.progress.touch()
        if not self._listeners:
            return
        event = RunEvent(kind, execution_id, **details)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("A run listener failed on %s; the run goes on", kind.value)

    # -- loading -----------------------------------------------------------------------------

    def load_pipeline(self) -> Pipeline:
        """Load and validate the pipeline once; raises `PipelineValidationError`."""
        if self._pipeline is None:
            from ._discovery import load_pipeline

            self._pipeline = load_pipeline(
                self.changes, use_cache=self._manifest_cache, cache_dir=self._cache_dir
            )
        return self._pipeline

    # -- read-only operations ----------------------------------------------------------------

    async def plan(self) -> RunPlan:
        """Return what `run()` would do now, without taking the lock or writing anything."""
        from ._planning import plan_run

        pipeline = self.load_pipeline()
        async with self._using_driver() as driver:
            return plan_run(pipeline, await driver.read_states())

    async def history(self, change_id: str | None = None) -> list[AuditEntry]:
        """Return the audit log (or one change's part of it), oldest first."""
        async with self._using_driver() as driver:
            return await driver.read_history(change_id)

    # -- run ---------------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Apply every pending change in order and return the report.

        Raises a `FlamingockError` subclass on failure, with the partial report attached as
        `error.report`; a failed run is never reported as success.
        """
        execution_id = new_id()
        started = time.monotonic()
        self.progress = RunProgress(state=RunState.CHECKING, execution_id=execution_id)
        self._emit(EventKind.RUN_STARTED, execution_id)
        self._executor = None
        try:
            async with self._using_driver():
                report = await self._run(execution_id)
        except BaseException as error:
            self._fail(execution_id, error, started)
            raise
        report = dataclasses.replace(report, duration=time.monotonic() - started)
        self._finish(report)
        return report

    async def _run(self, execution_id: str) -> RunReport:
        pipeline = self.load_pipeline()
        # Summaries carry only what planning reads, so that a start with nothing pending
        # stays cheap however long the history is. Under the lock the full entries are read.
        # What only a run with work needs, the executor and the lock manager, is neither
        # built nor imported before this point.
        states = await self.driver.read_state_summaries()
        wanted = ids_to_run(pipeline.planning_keys(), states)
        if not wanted:
            return self._nothing_to_do(execution_id, pipeline)
        self.progress.pending = len(wanted)

        from ._discovery import StaleManifestError

        try:
            loaded = self._load_changes(pipeline, wanted)
        except StaleManifestError:
            # The cached manifest no longer matched the code and the pipeline has reloaded
            # itself from the import, so plan again.
            wanted = ids_to_run(pipeline.planning_keys(), states)
            if not wanted:
                return self._nothing_to_do(execution_id, pipeline)
            loaded = self._load_changes(pipeline, wanted)
        executor = self._executor = self._new_executor(execution_id)
        await self.driver.setup()
        if not await self._acquire(executor, max_epoch(states)):
            return RunReport(executor.execution_id, not_run=True)
        try:
            return await self._run_locked(executor, pipeline, loaded)
        finally:
            await self._release(executor)

    def _new_executor(self, execution_id: str) -> ChangeExecutor:
        from ._execution import ChangeExecutor
        from ._lock import LockManager

        lock = LockManager(self.driver, self.lock_settings)
        return ChangeExecutor(
            driver=self.driver,
            lock=lock,
            execution_id=execution_id,
            dependencies=self._dependencies,
            progress=self.progress,
            emit=functools.partial(self._emit, execution_id=execution_id),
            shutdown_grace=self.shutdown_grace,
        )

    def _load_changes(self, pipeline: Pipeline, wanted: Sequence[str]) -> dict[str, LoadedChange]:
        """Import and validate the changes the run may apply, before anything is written."""
        from ._execution import ChangeExecutor

        loaded = dict(pipeline.load(wanted))
        problems = ChangeExecutor.check_injection(self.driver, self._dependencies, loaded.values())
        if problems:
            raise PipelineValidationError(problems)
        return loaded

    async def _acquire(self, executor: ChangeExecutor, min_epoch: int) -> bool:
        self.progress.state = RunState.WAITING_FOR_LOCK
        self._emit(EventKind.LOCK_WAITING, executor.execution_id)
        try:
            await executor.lock.acquire(min_epoch, on_attempt=self.progress.touch)
        except LockNotAcquiredError:
            if self.on_lock_timeout == "raise":
                raise
            logger.warning(
                "Lock %r not acquired within %g s; this run did nothing",
                self.lock_settings.key,
                self.lock_settings.wait_timeout,
            )
            return False
        executor.lock_acquired = True
        self._emit(EventKind.LOCK_ACQUIRED, executor.execution_id)
        return True

    async def _run_locked(
        self,
        executor: ChangeExecutor,
        pipeline: Pipeline,
        loaded: dict[str, LoadedChange],
    ) -> RunReport:
        """Run the plan, re-read under the lock, with the heartbeat in a task group."""
        failure: Exception | None = None
        report: RunReport | None = None
        async with anyio.create_task_group() as tasks:
            await tasks.start(executor.heartbeat)
            try:
                report = await self._apply_plan(executor, pipeline, loaded)
            except Exception as error:
                failure = error
            finally:
                tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if report is None:  # the task group was cancelled from outside
            raise executor.lost_error or LockLostError("The run was cancelled.")
        return report

    async def _apply_plan(
        self,
        executor: ChangeExecutor,
        pipeline: Pipeline,
        loaded: dict[str, LoadedChange],
    ) -> RunReport:
        from ._planning import Action, plan_run

        plan = plan_run(pipeline, await self.driver.read_states())
        executor.skipped = tuple(p.change.id for p in plan.changes if p.action is Action.SKIP)
        plan.raise_if_blocked()
        missing = [p.change.id for p in plan.to_apply if p.change.id not in loaded]
        if missing:
            loaded.update(self._load_changes(pipeline, missing))

        self.progress.state = RunState.RUNNING
        to_apply = plan.to_apply
        self.progress.pending = len(to_apply)
        executor.warn_if_not_atomic([p.change for p in to_apply])
        with executor.cancelled_by_lost_lock():
            for planned in to_apply:
                await executor.apply(loaded[planned.change.id])
                self.progress.pending -= 1
        applied = tuple(planned.change.id for planned in to_apply)
        return RunReport(executor.execution_id, applied, executor.skipped, lock_acquired=True)

    async def _release(self, executor: ChangeExecutor) -> None:
        """Release the lock, shielded from cancellation and bounded in time."""
        with anyio.move_on_after(self.shutdown_grace, shield=True) as scope:
            try:
                await executor.lock.release()
            except FlamingockError as error:
                logger.warning(
                    "Releasing lock %r failed; it expires after its %g s lease: %s",
                    self.lock_settings.key,
                    self.lock_settings.lease,
                    error,
                )
        if scope.cancelled_caught:
            logger.warning(
                "Releasing lock %r timed out after %g s; it expires after its lease",
                self.lock_settings.key,
                self.shutdown_grace,
            )

    def _nothing_to_do(self, execution_id: str, pipeline: Pipeline) -> RunReport:
        self._emit(EventKind.NOTHING_TO_DO, execution_id)
        logger.debug("Nothing to apply: all %d changes are applied", len(pipeline))
        return RunReport(execution_id, skipped=tuple(key.id for key in pipeline.planning_keys()))

    def _finish(self, report: RunReport) -> None:
        if report.not_run:
            self.progress.state = RunState.NOT_RUN
            self._emit(EventKind.RUN_NOT_RUN, report.execution_id)
            return
        self.progress.state = RunState.COMPLETED
        self.progress.current_change = None
        self.progress.pending = 0
        self._emit(EventKind.RUN_COMPLETED, report.execution_id, duration=report.duration)
        if report.applied:
            count = len(report.applied)
            logger.info(
                "Applied %d %s in %.3f s (execution %s)",
                count,
                "change" if count == 1 else "changes",
                report.duration,
                report.execution_id,
            )

    def _fail(self, execution_id: str, error: BaseException, started: float) -> None:
        self.progress.state = RunState.FAILED
        self.progress.error = f"{type(error).__name__}: {error}"
        if isinstance(error, FlamingockError):
            executor = self._executor  # None when the run failed before it had work
            error.report = RunReport(  # type: ignore[attr-defined]
                execution_id,
                applied=tuple(executor.applied) if executor else (),
                skipped=executor.skipped if executor else (),
                failed=executor.failed_change if executor else None,
                duration=time.monotonic() - started,
                lock_acquired=executor.lock_acquired if executor else False,
            )
        self._emit(EventKind.RUN_FAILED, execution_id, error=error)

    # -- operator actions --------------------------------------------------------------------

    async def mark(self, change_id: str, state: AuditState) -> AuditEntry:
        """Record by hand that a change is applied or rolled back, under the lock.

        For a change whose outcome an earlier run left unknown, after an operator checked
        the target system. Raises `ConfigurationError` for an id that is neither in the
        pipeline nor in the audit log, before anything is written.
        """
        if state not in _MARK_STATES:
            raise ConfigurationError(
                f"mark takes {' or '.join(s.value for s in _MARK_STATES)}, got {state!r}."
            )
        async with self._using_driver():
            descriptor = await self._known_change(change_id)
            # Checked before the lock too, so that a change already in that state or a
            # corrupt audit row fails without a lock write. The check under the lock decides.
            await self._check_not_already(change_id, state)
            async with self._holding_lock() as executor:
                await self._check_not_already(change_id, state)
                return await executor.append(descriptor, state, atomic=False)

    async def _check_not_already(self, change_id: str, state: AuditState) -> None:
        """Raise `ConfigurationError` when the change already is in the state to mark."""
        history = await self.driver.read_history(change_id)
        current = history[-1].state if history else None
        wanted_applied = state is AuditState.MANUAL_MARKED_AS_APPLIED
        if current is not None and (current.is_applied if wanted_applied else current.is_undone):
            next_step = (
                "mark it --as rolled-back instead if it was undone by hand"
                if wanted_applied
                else "'flamingock run' applies it again"
            )
            raise ConfigurationError(
                f"Change {change_id!r} is already {current.value}, so nothing was written; "
                f"{next_step}.",
                change_id=change_id,
            )

    async def rollback(self, to: str) -> list[str]:
        """Undo applied changes after `to`, newest first, and return their ids.

        `to` itself stays applied; every change to undo must have a `rollback` method,
        which is checked before anything runs. Each undo is audited `ROLLED_BACK`, or
        `ROLLBACK_FAILED` and the command stops.
        """
        pipeline = self.load_pipeline()
        if pipeline.get(to) is None:
            raise ConfigurationError(
                f"Change {to!r} is not in the pipeline; run 'flamingock status' to list ids.",
                change_id=to,
            )
        async with self._using_driver(), self._holding_lock() as executor:
            targets = await self._rollback_targets(pipeline, to)
            async with anyio.create_task_group() as tasks:
                await tasks.start(executor.heartbeat)
                try:
                    with executor.cancelled_by_lost_lock():
                        for change in targets:
                            await executor.undo(change)
                finally:
                    tasks.cancel_scope.cancel()
            return [change.descriptor.id for change in targets]

    @contextlib.asynccontextmanager
    async def _holding_lock(self) -> AsyncIterator[ChangeExecutor]:
        """Set up the store, take the lock for an operator action, and release it after."""
        executor = self._new_executor(new_id())
        await self.driver.setup()
        await executor.lock.acquire(await self._max_epoch())
        try:
            yield executor
        finally:
            await self._release(executor)

    async def _rollback_targets(self, pipeline: Pipeline, to: str) -> list[LoadedChange]:
        ids = [change.id for change in pipeline]
        later = ids[ids.index(to) + 1 :]
        states = {entry.change_id: entry for entry in await self.driver.read_states()}
        applied = [cid for cid in later if cid in states and states[cid].state.is_applied]
        loaded = pipeline.load(applied)
        missing = [loaded[cid].descriptor for cid in applied if not loaded[cid].has_rollback]
        if missing:
            raise PipelineValidationError([_no_rollback(change) for change in missing])
        return [loaded[cid] for cid in reversed(applied)]

    async def _known_change(self, change_id: str) -> ChangeDescriptor:
        descriptor = self.load_pipeline().get(change_id)
        if descriptor is not None:
            return descriptor
        history = await self.driver.read_history(change_id)
        if not history:
            raise ConfigurationError(
                f"Change {change_id!r} is neither in the pipeline nor in the audit log; "
                "run 'flamingock status' to list the known ids.",
                change_id=change_id,
            )
        last = history[-1]
        return ChangeDescriptor(
            id=last.change_id,
            order=last.order,
            author=last.author,
            stage=last.stage,
            transactional=False,
            recovery=Recovery.MANUAL_INTERVENTION,
            run_always=False,
            source="(audit log only)",
        )

    async def _max_epoch(self) -> int:
        return max_epoch(await self.driver.read_state_summaries())


def _no_rollback(change: ChangeDescriptor) -> str:
    """Say that `change` has nothing to undo it with, and how to give it something."""
    if change.template is not None:
        remedy = "add a 'rollback:' entry to it in the pipeline file"
    else:
        remedy = "add 'async def rollback(...)' to its class"
    return (
        f"Change {change.id!r} ({change.where}) has no rollback, so the pipeline cannot be "
        f"rolled back past it; {remedy}, or choose a later target."
    )
