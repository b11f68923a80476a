"""Every row of the state table: what the next run does with a change's newest entry."""

from __future__ import annotations

import pytest

from flamingock_async import AuditEntry, AuditState, ManualInterventionRequiredError, Recovery
from flamingock_async._changes import ChangeDescriptor
from flamingock_async._planning import Action, decide, plan_run


def descriptor(
    change_id: str = "add-index",
    *,
    recovery: Recovery = Recovery.MANUAL_INTERVENTION,
    run_always: bool = False,
) -> ChangeDescriptor:
    return ChangeDescriptor(
        id=change_id,
        order="0001",
        author="platform",
        stage="default",
        transactional=False,
        recovery=recovery,
        run_always=run_always,
        source="tests:Change",
    )


def entry(
    state: AuditState,
    *,
    change_id: str = "add-index",
    transactional: bool = False,
    epoch: int = 1,
    sequence: int = 1,
) -> AuditEntry:
    return AuditEntry(
        entry_id=f"{change_id}-{epoch}-{sequence}",
        execution_id="exec",
        stage="default",
        change_id=change_id,
        author="platform",
        order="0001",
        state=state,
        lock_epoch=epoch,
        sequence=sequence,
        created_at_ms=0,
        transactional=transactional,
    )


@pytest.mark.parametrize(
    "state",
    [None, AuditState.ROLLED_BACK, AuditState.MANUAL_MARKED_AS_ROLLED_BACK],
)
def test_absent_or_undone_change_is_applied(state: AuditState | None) -> None:
    latest = entry(state) if state else None

    assert decide(descriptor(), latest) is Action.APPLY


@pytest.mark.parametrize("state", [AuditState.APPLIED, AuditState.MANUAL_MARKED_AS_APPLIED])
def test_applied_change_is_skipped(state: AuditState) -> None:
    assert decide(descriptor(), entry(state)) is Action.SKIP


@pytest.mark.parametrize("state", [AuditState.APPLIED, AuditState.MANUAL_MARKED_AS_APPLIED])
def test_run_always_change_is_applied_again(state: AuditState) -> None:
    assert decide(descriptor(run_always=True), entry(state)) is Action.APPLY


@pytest.mark.parametrize("state", [AuditState.STARTED, AuditState.FAILED])
def test_atomic_attempt_is_applied_again(state: AuditState) -> None:
    assert decide(descriptor(), entry(state, transactional=True)) is Action.APPLY


@pytest.mark.parametrize(
    "state", [AuditState.STARTED, AuditState.FAILED, AuditState.ROLLBACK_FAILED]
)
def test_uncertain_change_needs_manual_intervention(state: AuditState) -> None:
    assert decide(descriptor(), entry(state)) is Action.MANUAL_INTERVENTION


def test_rollback_failed_needs_intervention_even_if_atomic() -> None:
    latest = entry(AuditState.ROLLBACK_FAILED, transactional=True)

    assert decide(descriptor(), latest) is Action.MANUAL_INTERVENTION


@pytest.mark.parametrize(
    "state", [AuditState.STARTED, AuditState.FAILED, AuditState.ROLLBACK_FAILED]
)
def test_always_retry_applies_uncertain_change(state: AuditState) -> None:
    change = descriptor(recovery=Recovery.ALWAYS_RETRY)

    assert decide(change, entry(state)) is Action.APPLY


def test_plan_uses_newest_entry_and_max_epoch() -> None:
    states = [entry(AuditState.APPLIED, epoch=3, sequence=2)]

    plan = plan_run([descriptor()], states)

    assert plan.changes[0].action is Action.SKIP
    assert plan.max_epoch == 3
    assert not plan.needs_lock


def test_blocked_change_needs_lock_before_verdict() -> None:
    plan = plan_run([descriptor()], [entry(AuditState.STARTED)])

    assert plan.needs_lock
    assert [p.change.id for p in plan.blocked] == ["add-index"]


def test_blocked_plan_raises_with_mark_command() -> None:
    plan = plan_run([descriptor()], [entry(AuditState.STARTED)])

    with pytest.raises(ManualInterventionRequiredError) as raised:
        plan.raise_if_blocked()

    assert raised.value.change_id == "add-index"
    assert raised.value.state == "STARTED"
    assert "flamingock mark add-index" in str(raised.value)


def test_entries_of_changes_not_in_pipeline_are_ignored() -> None:
    plan = plan_run([descriptor("new")], [entry(AuditState.STARTED, change_id="removed")])

    assert [p.action for p in plan.changes] == [Action.APPLY]
