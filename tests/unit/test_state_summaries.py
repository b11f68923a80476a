"""Tests of state summaries: the default derivation and planning from summaries."""

from __future__ import annotations

import pytest

from flamingock_async import AuditState, Recovery
from flamingock_async._audit import StateSummary
from flamingock_async._changes import ChangeDescriptor
from flamingock_async._planning import Action, ids_to_run, plan_run
from flamingock_async.drivers.memory import MemoryDriver, MemoryStore
from flamingock_async.testing import hold_lock, make_entry


def descriptor(
    change_id: str, *, recovery: Recovery = Recovery.MANUAL_INTERVENTION, run_always: bool = False
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


async def test_default_summaries_from_states() -> None:
    driver = MemoryDriver(MemoryStore())
    fence = await hold_lock(driver, "k", "runner-a")
    await driver.append_audit(make_entry("a", epoch=fence.epoch, sequence=1), fence)
    started = make_entry("a", epoch=fence.epoch, sequence=2, state=AuditState.STARTED)
    await driver.append_audit(started, fence)

    summaries = await driver.read_state_summaries()

    assert summaries == [StateSummary("a", AuditState.STARTED, False, fence.epoch)]


@pytest.mark.parametrize(
    "latest",
    [
        None,
        StateSummary("c", AuditState.APPLIED, False, 1),
        StateSummary("c", AuditState.MANUAL_MARKED_AS_APPLIED, False, 1),
        StateSummary("c", AuditState.STARTED, False, 1),
        StateSummary("c", AuditState.STARTED, True, 1),
        StateSummary("c", AuditState.FAILED, False, 1),
        StateSummary("c", AuditState.ROLLED_BACK, False, 1),
        StateSummary("c", AuditState.ROLLBACK_FAILED, True, 1),
    ],
)
@pytest.mark.parametrize("run_always", [False, True])
@pytest.mark.parametrize("recovery", list(Recovery))
def test_ids_to_run_agree_with_plan(
    latest: StateSummary | None, run_always: bool, recovery: Recovery
) -> None:
    changes = [descriptor("c", recovery=recovery, run_always=run_always)]
    states = [] if latest is None else [latest]
    entries = [
        make_entry(s.change_id, epoch=s.lock_epoch, sequence=1, state=s.state,
                   transactional=s.transactional)
        for s in states
    ]  # fmt: skip

    plan = plan_run(changes, entries)
    expected = [p.change.id for p in plan.changes if p.action is not Action.SKIP]

    assert ids_to_run(changes, states) == expected


def test_ids_to_run_keeps_pipeline_order() -> None:
    changes = [descriptor("a"), descriptor("b"), descriptor("c")]
    states = [StateSummary("b", AuditState.APPLIED, False, 1)]

    assert ids_to_run(changes, states) == ["a", "c"]
