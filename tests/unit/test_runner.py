"""The runner's behaviour on the memory driver: order, audit, failures, lock, cancellation."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from flamingock_async import (
    AsyncRunner,
    AuditEntry,
    AuditState,
    ChangeContext,
    ChangeExecutionError,
    ConfigurationError,
    EventKind,
    LockLostError,
    LockNotAcquiredError,
    LockSettings,
    ManualInterventionRequiredError,
    PipelineValidationError,
    Recovery,
    RunEvent,
    RunState,
    change_unit,
)
from flamingock_async._lock import Fence
from flamingock_async.drivers.memory import MemoryDriver, MemoryStore, MemoryTransaction

FAST_LOCK = LockSettings(key="svc", lease=0.6, wait_timeout=5.0, poll_interval=0.05)


class Calls:
    """Records what changes did, injected by type."""

    def __init__(self) -> None:
        self.log: list[str] = []


@change_unit(id="create-users", order="0001", author="platform")
class CreateUsers:
    async def execute(self, transaction: MemoryTransaction, calls: Calls) -> None:
        transaction.data["users"] = []
        calls.log.append("create-users")


@change_unit(id="seed-users", order="0002", author="platform", transactional=False)
class SeedUsers:
    async def execute(self, data: dict[str, Any], calls: Calls) -> None:
        data["users"].append("ada")
        calls.log.append("seed-users")

    async def rollback(self, data: dict[str, Any], calls: Calls) -> None:
        data["users"].clear()
        calls.log.append("rollback seed-users")


def runner_for(
    store: MemoryStore, changes: list[type], calls: Calls, **options: Any
) -> AsyncRunner:
    options.setdefault("lock", FAST_LOCK)
    return AsyncRunner(MemoryDriver(store), changes, dependencies=[calls], **options)


def states(store: MemoryStore, change_id: str) -> list[AuditState]:
    entries = sorted((e for e in store.audit if e.change_id == change_id), key=lambda e: e.sort_key)
    return [entry.state for entry in entries]


async def test_run_applies_changes_in_order() -> None:
    store, calls = MemoryStore(), Calls()

    report = await runner_for(store, [SeedUsers, CreateUsers], calls).run()

    assert report.applied == ("create-users", "seed-users")
    assert calls.log == ["create-users", "seed-users"]
    assert store.data["users"] == ["ada"]
    assert states(store, "create-users") == [AuditState.APPLIED]
    assert states(store, "seed-users") == [AuditState.STARTED, AuditState.APPLIED]


async def test_second_run_reads_once_without_lock() -> None:
    store, calls = MemoryStore(), Calls()
    await runner_for(store, [CreateUsers, SeedUsers], calls).run()
    driver = MemoryDriver(store)

    report = await AsyncRunner(driver, [CreateUsers, SeedUsers], dependencies=[calls]).run()

    assert report.applied == ()
    assert report.skipped == ("create-users", "seed-users")
    assert not report.lock_acquired
    assert driver.stats.round_trips == 1
    assert driver.stats.lock_operations == 0


async def test_lock_released_after_run() -> None:
    store, calls = MemoryStore(), Calls()

    await runner_for(store, [CreateUsers], calls).run()

    assert store.locks["svc"].is_free


async def test_entries_carry_epoch_and_sequence() -> None:
    store, calls = MemoryStore(), Calls()

    await runner_for(store, [CreateUsers, SeedUsers], calls).run()

    entries = sorted(store.audit, key=lambda e: e.sort_key)
    assert [e.sequence for e in entries] == [1, 2, 3]
    assert {e.lock_epoch for e in entries} == {1}
    assert entries[0].transactional
    assert not entries[1].transactional
    assert entries[2].duration_ms is not None


@change_unit(id="bad-seed", order="0003", author="platform", transactional=False)
class FailingWithRollback:
    attempts = 0

    async def execute(self, data: dict[str, Any]) -> None:
        FailingWithRollback.attempts += 1
        data["half"] = True
        if FailingWithRollback.attempts == 1:
            raise RuntimeError("disk full")

    async def rollback(self, data: dict[str, Any]) -> None:
        data.pop("half", None)


async def test_failed_change_rolled_back_then_reapplied() -> None:
    store, calls = MemoryStore(), Calls()
    FailingWithRollback.attempts = 0
    runner = runner_for(store, [CreateUsers, FailingWithRollback], calls)

    with pytest.raises(ChangeExecutionError) as raised:
        await runner.run()
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert raised.value.rollback_error is None
    assert not raised.value.needs_manual_intervention
    assert "half" not in store.data

    report = await runner_for(store, [CreateUsers, FailingWithRollback], calls).run()

    assert report.applied == ("bad-seed",)
    assert states(store, "bad-seed") == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
        AuditState.STARTED,
        AuditState.APPLIED,
    ]


async def test_failed_run_report_lists_skipped() -> None:
    store, calls = MemoryStore(), Calls()
    await runner_for(store, [CreateUsers], calls).run()
    FailingWithRollback.attempts = 0

    with pytest.raises(ChangeExecutionError) as raised:
        await runner_for(store, [CreateUsers, FailingWithRollback], calls).run()

    report = raised.value.report  # type: ignore[attr-defined]
    assert report.skipped == ("create-users",)
    assert report.failed == "bad-seed"
    assert report.applied == ()


@change_unit(id="broken", order="0001", author="platform", transactional=False)
class RollbackAlsoFails:
    async def execute(self) -> None:
        raise ValueError("bad row 17")

    async def rollback(self) -> None:
        raise OSError("rollback lost its connection")


async def test_failing_rollback_is_attached_not_replacing() -> None:
    store, calls = MemoryStore(), Calls()

    with pytest.raises(ChangeExecutionError) as raised:
        await runner_for(store, [RollbackAlsoFails], calls).run()

    assert isinstance(raised.value.__cause__, ValueError)
    assert isinstance(raised.value.rollback_error, OSError)
    assert raised.value.needs_manual_intervention
    assert "bad row 17" in str(raised.value)
    assert states(store, "broken") == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLBACK_FAILED,
    ]
    with pytest.raises(ManualInterventionRequiredError) as blocked:
        await runner_for(store, [RollbackAlsoFails], calls).run()
    assert blocked.value.change_id == "broken"


@change_unit(id="tx-fails", order="0001", author="platform")
class TransactionalFailure:
    fail = True

    async def execute(self, transaction: MemoryTransaction) -> None:
        transaction.data["partial"] = True
        if TransactionalFailure.fail:
            raise RuntimeError("timeout halfway")


async def test_transactional_failure_commits_nothing_and_retries() -> None:
    store, calls = MemoryStore(), Calls()
    TransactionalFailure.fail = True

    with pytest.raises(ChangeExecutionError) as raised:
        await runner_for(store, [TransactionalFailure], calls).run()

    assert "partial" not in store.data
    assert states(store, "tx-fails") == [AuditState.FAILED]
    assert not raised.value.needs_manual_intervention
    assert raised.value.report.failed == "tx-fails"  # type: ignore[attr-defined]
    assert raised.value.report.lock_acquired  # type: ignore[attr-defined]
    TransactionalFailure.fail = False
    report = await runner_for(store, [TransactionalFailure], calls).run()
    assert report.applied == ("tx-fails",)
    assert store.data["partial"] is True


async def test_failed_run_sets_progress_failed() -> None:
    store, calls = MemoryStore(), Calls()
    runner = runner_for(store, [RollbackAlsoFails], calls)

    with pytest.raises(ChangeExecutionError):
        await runner.run()

    assert runner.progress.state is RunState.FAILED
    assert runner.progress.error is not None
    assert "bad row 17" in runner.progress.error


def started_entry_left_by_crash(store: MemoryStore, change_id: str) -> None:
    store.audit.append(
        dataclasses.replace(
            _template_entry(), change_id=change_id, state=AuditState.STARTED, entry_id="crash"
        )
    )


def _template_entry() -> Any:
    from flamingock_async import AuditEntry

    return AuditEntry(
        entry_id="x",
        execution_id="dead",
        stage="default",
        change_id="x",
        author="platform",
        order="0001",
        state=AuditState.STARTED,
        lock_epoch=1,
        sequence=1,
        created_at_ms=0,
    )


@change_unit(id="backfill", order="0001", author="platform", transactional=False)
class Backfill:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("backfill")


@change_unit(
    id="backfill", order="0001", author="platform", transactional=False,
    recovery=Recovery.ALWAYS_RETRY,
)  # fmt: skip
class RetriedBackfill:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("backfill")


async def test_started_change_needs_manual_intervention() -> None:
    store, calls = MemoryStore(), Calls()
    started_entry_left_by_crash(store, "backfill")

    with pytest.raises(ManualInterventionRequiredError) as raised:
        await runner_for(store, [Backfill], calls).run()

    assert raised.value.change_id == "backfill"
    assert calls.log == []
    assert store.locks["svc"].is_free


async def test_always_retry_change_runs_again() -> None:
    store, calls = MemoryStore(), Calls()
    started_entry_left_by_crash(store, "backfill")

    report = await runner_for(store, [RetriedBackfill], calls).run()

    assert report.applied == ("backfill",)


@change_unit(id="slow", order="0001", author="platform", transactional=False)
class SlowChange:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("slow started")
        await anyio.sleep(0.5)
        calls.log.append("slow finished")


async def test_waiting_runner_replans_after_lock() -> None:
    """Runner B finds a change pending, waits for A that applies it, and then skips it."""
    store, calls = MemoryStore(), Calls()
    first = runner_for(store, [SlowChange], calls)
    second = runner_for(store, [SlowChange], calls)
    reports = []

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: _collect(first, reports))
        await anyio.sleep(0.1)
        tasks.start_soon(lambda: _collect(second, reports))

    assert calls.log == ["slow started", "slow finished"]
    assert sorted(len(r.applied) for r in reports) == [0, 1]


async def _collect(runner: AsyncRunner, reports: list[Any]) -> None:
    reports.append(await runner.run())


@change_unit(id="long", order="0001", author="platform", transactional=False)
class LongChange:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("long started")
        await anyio.sleep(5)
        calls.log.append("long finished")


async def test_lock_timeout_raises_or_skips() -> None:
    store, calls = MemoryStore(), Calls()
    impatient = LockSettings(key="svc", lease=5, wait_timeout=0.2, poll_interval=0.05)
    holder = runner_for(store, [LongChange], calls)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(holder.run)
        await anyio.sleep(0.1)
        with pytest.raises(LockNotAcquiredError):
            await runner_for(store, [LongChange], calls, lock=impatient).run()
        skipped = await runner_for(
            store, [LongChange], calls, lock=impatient, on_lock_timeout="skip"
        ).run()
        tasks.cancel_scope.cancel()

    assert skipped.not_run


async def test_lost_lock_cancels_running_change() -> None:
    store, calls = MemoryStore(), Calls()
    runner = runner_for(store, [LongChange], calls)

    async def steal_lock() -> None:
        await anyio.sleep(0.1)
        record = store.locks["svc"]
        store.locks["svc"] = dataclasses.replace(record, owner="intruder", version=999)

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(steal_lock)
            with pytest.raises(LockLostError) as raised:
                await runner.run()

    assert calls.log == ["long started"]
    assert states(store, "long") == [AuditState.STARTED]
    assert store.locks["svc"].owner == "intruder"
    assert raised.value.report.failed == "long"  # type: ignore[attr-defined]


async def test_cancelled_run_audits_and_releases() -> None:
    store, calls = MemoryStore(), Calls()
    runner = runner_for(store, [LongChange], calls, shutdown_grace=2)

    with anyio.move_on_after(0.2):
        await runner.run()

    assert states(store, "long") == [AuditState.STARTED, AuditState.FAILED]
    assert store.locks["svc"].is_free
    failed = next(e for e in store.audit if e.state is AuditState.FAILED)
    assert "cancelled by a shutdown" in (failed.error_message or "")


class CancelledWhileAppending(MemoryDriver):
    """Cancels `scope` while the entry of state `during` is written, before it is stored."""

    def __init__(self, store: MemoryStore, during: AuditState, scope: anyio.CancelScope) -> None:
        super().__init__(store)
        self.during, self.scope = during, scope

    async def _append_audit(self, entry: AuditEntry, fence: Fence) -> None:
        if entry.state is self.during and not self.scope.cancel_called:
            self.scope.cancel()
            await anyio.lowlevel.checkpoint()  # a cancellation would stop the append here
        await super()._append_audit(entry, fence)


@change_unit(id="slow-import", order="0001", author="platform", transactional=False)
class SlowImport:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("import started")
        await anyio.sleep(5)

    async def rollback(self, calls: Calls) -> None:
        calls.log.append("import rolled back")


@change_unit(id="quick-import", order="0001", author="platform", transactional=False)
class QuickImport:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("import done")


async def test_cancel_while_writing_started() -> None:
    store, calls = MemoryStore(), Calls()

    with anyio.CancelScope() as scope:
        driver = CancelledWhileAppending(store, AuditState.STARTED, scope)
        await AsyncRunner(driver, [SlowImport], dependencies=[calls], lock=FAST_LOCK).run()

    assert scope.cancelled_caught
    assert states(store, "slow-import") == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
    ]
    assert calls.log == ["import started", "import rolled back"]
    assert store.locks["svc"].is_free


async def test_cancel_while_writing_applied() -> None:
    store, calls = MemoryStore(), Calls()

    with anyio.CancelScope() as scope:
        driver = CancelledWhileAppending(store, AuditState.APPLIED, scope)
        await AsyncRunner(driver, [QuickImport], dependencies=[calls], lock=FAST_LOCK).run()

    assert states(store, "quick-import") == [AuditState.STARTED, AuditState.APPLIED]
    assert calls.log == ["import done"]
    assert store.locks["svc"].is_free


@change_unit(id="needs-mailer", order="0001", author="platform")
class NeedsMailer:
    async def execute(self, mailer: object) -> None:
        raise AssertionError("must not run")


async def test_unknown_dependency_fails_before_writing() -> None:
    store, calls = MemoryStore(), Calls()

    with pytest.raises(PipelineValidationError) as raised:
        await runner_for(store, [NeedsMailer], calls).run()

    assert "mailer" in str(raised.value)
    assert store.audit == []
    assert store.locks == {}


@change_unit(id="uses-context", order="0001", author="platform", transactional=False)
class UsesContext:
    async def execute(self, context: ChangeContext) -> None:
        await context.ensure_lock()
        context.metadata["rows"] = 3
        context.logger.info("working")


async def test_context_metadata_stored_on_applied_entry() -> None:
    store, calls = MemoryStore(), Calls()

    await runner_for(store, [UsesContext], calls).run()

    applied = next(e for e in store.audit if e.state is AuditState.APPLIED)
    assert applied.metadata == {"rows": 3}


@change_unit(id="plain-execute", order="0001", author="platform", transactional=False)
class RollbackWantsContext:
    async def execute(self) -> None:
        raise RuntimeError("quota exceeded")

    async def rollback(self, context: ChangeContext, calls: Calls) -> None:
        calls.log.append(f"rollback {context.change_id} of {context.execution_id}")


async def test_rollback_context_without_execute_arguments() -> None:
    store, calls = MemoryStore(), Calls()

    with pytest.raises(ChangeExecutionError) as raised:
        await runner_for(store, [RollbackWantsContext], calls).run()

    execution_id = raised.value.report.execution_id  # type: ignore[attr-defined]
    assert calls.log == [f"rollback plain-execute of {execution_id}"]
    assert states(store, "plain-execute")[-1] is AuditState.ROLLED_BACK


@change_unit(id="bypass", order="0001", author="platform")
class WritesAroundTransaction:
    async def execute(self, data: dict[str, Any]) -> None:
        data["bypassed"] = True


async def test_writes_around_transaction_warned(caplog: pytest.LogCaptureFixture) -> None:
    store, calls = MemoryStore(), Calls()

    with caplog.at_level("WARNING", logger="flamingock_async"):
        await runner_for(store, [WritesAroundTransaction], calls).run()

    warnings = [r.getMessage() for r in caplog.records if "transaction handle" in r.getMessage()]
    assert len(warnings) == 1
    assert "Change bypass is transactional but receives data" in warnings[0]
    assert "transactional=False" in warnings[0]


async def test_transaction_handle_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    store, calls = MemoryStore(), Calls()

    with caplog.at_level("WARNING", logger="flamingock_async"):
        await runner_for(store, [CreateUsers], calls).run()

    assert not [r for r in caplog.records if "transaction handle" in r.getMessage()]


@change_unit(id="refresh", order="0009", author="platform", run_always=True)
class Refresh:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("refresh")


async def test_run_always_change_runs_every_time() -> None:
    store, calls = MemoryStore(), Calls()

    await runner_for(store, [Refresh], calls).run()
    await runner_for(store, [Refresh], calls).run()

    assert calls.log == ["refresh", "refresh"]


async def test_events_and_progress_follow_the_run() -> None:
    store, calls = MemoryStore(), Calls()
    runner = runner_for(store, [CreateUsers, SeedUsers], calls)
    events: list[RunEvent] = []
    runner.add_listener(events.append)

    await runner.run()

    kinds = [event.kind for event in events]
    assert kinds[0] is EventKind.RUN_STARTED
    assert kinds[-1] is EventKind.RUN_COMPLETED
    assert kinds.count(EventKind.CHANGE_APPLIED) == 2
    assert runner.progress.state is RunState.COMPLETED
    assert runner.progress.applied == 2


async def test_mark_resolves_manual_intervention() -> None:
    store, calls = MemoryStore(), Calls()
    started_entry_left_by_crash(store, "backfill")

    await runner_for(store, [Backfill], calls).mark("backfill", AuditState.MANUAL_MARKED_AS_APPLIED)
    report = await runner_for(store, [Backfill], calls).run()

    assert report.applied == ()
    assert calls.log == []


async def test_rollback_to_undoes_later_changes_newest_first() -> None:
    store, calls = MemoryStore(), Calls()
    await runner_for(store, [CreateUsers, SeedUsers], calls).run()

    undone = await runner_for(store, [CreateUsers, SeedUsers], calls).rollback(to="create-users")

    assert undone == ["seed-users"]
    assert store.data["users"] == []
    assert states(store, "seed-users")[-1] is AuditState.ROLLED_BACK


async def test_mark_of_applied_change_rejected() -> None:
    store, calls = MemoryStore(), Calls()
    await runner_for(store, [Backfill], calls).run()
    entries_before = list(store.audit)

    with pytest.raises(ConfigurationError) as raised:
        await runner_for(store, [Backfill], calls).mark(
            "backfill", AuditState.MANUAL_MARKED_AS_APPLIED
        )

    assert "already APPLIED" in str(raised.value)
    assert store.audit == entries_before
    assert store.locks["svc"].is_free
