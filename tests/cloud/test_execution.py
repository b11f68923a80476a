"""The execution planning endpoint and the owner-only lock operations of the protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from flamingock_async import AuditState, LockLostError, LockSettings
from flamingock_async._audit import AuditEntry, new_id, now_ms
from flamingock_async._lock import Fence, LockManager
from flamingock_async.drivers.cloud import CloudDriver

from .conftest import Backend, Service, cloud_driver

LEASE_MS = 1_000


def change(change_id: str, order: str, **flags: object) -> dict[str, object]:
    return {"id": change_id, "order": order, "author": "tests", **flags}


def pipeline(*changes: dict[str, object]) -> list[dict[str, object]]:
    return [{"name": "default", "changes": list(changes)}]


def actions(answer: dict[str, object]) -> dict[str, str]:
    stages = answer["stages"]
    assert isinstance(stages, list)
    return {item["id"]: item["action"] for stage in stages for item in stage["changes"]}


def audit(
    change_id: str, state: AuditState, epoch: int, *, transactional: bool = False
) -> AuditEntry:
    return AuditEntry(
        entry_id=new_id(),
        execution_id=new_id(),
        stage="default",
        change_id=change_id,
        author="tests",
        order="0001",
        state=state,
        lock_epoch=epoch,
        sequence=1,
        created_at_ms=now_ms(),
        transactional=transactional,
    )


async def record_state(driver: CloudDriver, change_id: str, state: AuditState) -> None:
    """Write one audit entry under the lock, as an earlier run would have."""
    manager = LockManager(driver, LockSettings(lease=5))
    fence = await manager.acquire()
    await driver.append_audit(audit(change_id, state, fence.epoch), fence)
    await manager.release()


@pytest.fixture
async def runners(backend: Backend, service: Service) -> AsyncIterator[Callable[[], CloudDriver]]:
    created: list[CloudDriver] = []

    def make() -> CloudDriver:
        created.append(cloud_driver(backend.url, service))
        return created[-1]

    yield make
    for driver in created:
        await driver.aclose()


async def test_continue_when_all_applied(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    await record_state(runner, "a", AuditState.APPLIED)
    answer = await runner.request_execution(pipeline(change("a", "1")))
    assert answer["action"] == "CONTINUE"
    assert answer["lock"] is None
    assert actions(answer) == {"a": "SKIP"}


async def test_execute_grants_lock(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    answer = await runner.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    lock = answer["lock"]
    assert answer["action"] == "EXECUTE"
    assert answer["execution_id"]
    assert lock["owner"] == runner.runner_id
    assert actions(answer) == {"a": "APPLY"}
    stored = await runner.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == runner.runner_id


async def test_second_runner_awaits(runners: Callable[[], CloudDriver]) -> None:
    first, second = runners(), runners()
    granted = await first.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    answer = await second.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    assert answer["action"] == "AWAIT"
    assert answer["await"]["acquisition_id"] == granted["lock"]["acquisition_id"]
    assert answer["lock"] is None


async def test_takeover_after_elapsed_lease(runners: Callable[[], CloudDriver]) -> None:
    first, second = runners(), runners()
    granted = await first.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    waiting = await second.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    seen = waiting["await"]["acquisition_id"]
    answer = await second.request_execution(
        pipeline(change("a", "1")), last_acquisition_id=seen, elapsed_ms=LEASE_MS + 1
    )
    assert answer["action"] == "EXECUTE"
    assert answer["lock"]["owner"] == second.runner_id
    assert answer["lock"]["epoch"] == granted["lock"]["epoch"] + 1


async def test_no_takeover_within_lease(runners: Callable[[], CloudDriver]) -> None:
    first, second = runners(), runners()
    await first.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    waiting = await second.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    answer = await second.request_execution(
        pipeline(change("a", "1")),
        last_acquisition_id=waiting["await"]["acquisition_id"],
        elapsed_ms=LEASE_MS - 1,
    )
    assert answer["action"] == "AWAIT"


async def test_no_takeover_after_extend(runners: Callable[[], CloudDriver]) -> None:
    """A holder that extended its lease has a new acquisition id, so the old one buys nothing."""
    first, second = runners(), runners()
    granted = await first.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    waiting = await second.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    lock = granted["lock"]
    extended = await first.extend_lock("flamingock", lock["owner"], lock["acquisition_id"])
    answer = await second.request_execution(
        pipeline(change("a", "1")),
        last_acquisition_id=waiting["await"]["acquisition_id"],
        elapsed_ms=LEASE_MS * 10,
    )
    assert extended["acquisition_id"] != lock["acquisition_id"]
    assert answer["action"] == "AWAIT"


async def test_fence_of_grant_appends(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    granted = await runner.request_execution(pipeline(change("a", "1")))
    lock = granted["lock"]
    fence = Fence(lock["key"], lock["owner"], lock["epoch"])
    await runner.append_audit(audit("a", AuditState.APPLIED, lock["epoch"]), fence)
    states = await runner.read_states()
    assert [entry.state for entry in states] == [AuditState.APPLIED]


async def test_fence_rejected_after_takeover(runners: Callable[[], CloudDriver]) -> None:
    first, second = runners(), runners()
    granted = await first.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    waiting = await second.request_execution(pipeline(change("a", "1")), lease_ms=LEASE_MS)
    await second.request_execution(
        pipeline(change("a", "1")),
        last_acquisition_id=waiting["await"]["acquisition_id"],
        elapsed_ms=LEASE_MS + 1,
    )
    lock = granted["lock"]
    with pytest.raises(LockLostError):
        await first.append_audit(
            audit("a", AuditState.APPLIED, lock["epoch"]),
            Fence(lock["key"], lock["owner"], lock["epoch"]),
        )
    assert await first.read_history() == []


async def test_extend_by_other_rejected(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    granted = await runner.request_execution(pipeline(change("a", "1")))
    with pytest.raises(LockLostError):
        await runner.extend_lock("flamingock", "intruder", granted["lock"]["acquisition_id"])


async def test_release_by_other_rejected(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    granted = await runner.request_execution(pipeline(change("a", "1")))
    with pytest.raises(LockLostError):
        await runner.release_lock("flamingock", "intruder", granted["lock"]["epoch"])
    stored = await runner.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == runner.runner_id


async def test_release_of_old_epoch_rejected(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    granted = await runner.request_execution(pipeline(change("a", "1")))
    with pytest.raises(LockLostError):
        await runner.release_lock("flamingock", runner.runner_id, granted["lock"]["epoch"] - 1)
    stored = await runner.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == runner.runner_id


async def test_release_by_owner(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    granted = await runner.request_execution(pipeline(change("a", "1")))
    await runner.release_lock("flamingock", runner.runner_id, granted["lock"]["epoch"])
    await runner.release_lock("flamingock", runner.runner_id, granted["lock"]["epoch"])
    stored = await runner.read_lock("flamingock")
    assert stored is not None
    assert stored.owner is None


async def test_started_needs_manual_intervention(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    await record_state(runner, "a", AuditState.STARTED)
    answer = await runner.request_execution(pipeline(change("a", "1", transactional=False)))
    assert answer["action"] == "EXECUTE"
    assert actions(answer) == {"a": "MANUAL_INTERVENTION"}


async def test_started_always_retry_applies(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    await record_state(runner, "a", AuditState.STARTED)
    answer = await runner.request_execution(pipeline(change("a", "1", recovery="ALWAYS_RETRY")))
    assert actions(answer) == {"a": "APPLY"}


async def test_rolled_back_applies_again(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    await record_state(runner, "a", AuditState.ROLLED_BACK)
    answer = await runner.request_execution(pipeline(change("a", "1")))
    assert actions(answer) == {"a": "APPLY"}


async def test_duplicate_ids_abort(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    answer = await runner.request_execution(pipeline(change("a", "1"), change("a", "2")))
    assert answer["action"] == "ABORT"
    assert "'a'" in answer["reason"]
    assert await runner.read_lock("flamingock") is None


async def test_duplicate_orders_abort(runners: Callable[[], CloudDriver]) -> None:
    runner = runners()
    answer = await runner.request_execution(pipeline(change("a", "1"), change("b", "1")))
    assert answer["action"] == "ABORT"
