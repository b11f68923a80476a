"""Planning of executions and management of the lock, for one service at a time.

Every function takes the service's `Driver` and keeps nothing between calls, so any backend
process on the same store can serve the next request. The lock rules are those of the core
lock: every write increments `version` through a compare-and-set, and an acquisition
increments `epoch`. A waiting runner takes over an expired lease only by quoting the
acquisition id it was shown and the time it has waited on its own clock, so the backend
never compares its clock with a runner's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from .._audit import AuditEntry, new_id, now_ms
from .._changes import ChangeDescriptor
from .._lock import LockRecord, holder_of
from .._planning import decide
from ..drivers import Driver
from ._models import (
    AwaitInfo,
    ChangeAction,
    ExecutionAction,
    ExecutionRequest,
    ExecutionResponse,
    LockGrant,
    PlannedChangeModel,
    PlannedStageModel,
)

__all__ = [
    "acquisition_id",
    "grant_of",
    "plan_execution",
    "compare_and_set",
    "extend",
    "release",
    "LockNotHeld",
]

logger = logging.getLogger(__name__)


class LockNotHeld(Exception):
    """The caller does not hold the lock it tried to extend or release."""


def acquisition_id(record: LockRecord) -> str:
    """Return the id of one state of the lock; it changes with every write to the record."""
    return f"{record.epoch}-{record.version}"


def grant_of(record: LockRecord) -> LockGrant:
    if record.owner is None:
        raise LockNotHeld(f"The lock {record.key!r} is free; nobody holds it.")
    return LockGrant(
        key=record.key,
        owner=record.owner,
        epoch=record.epoch,
        version=record.version,
        lease_ms=record.lease_ms,
        acquisition_id=acquisition_id(record),
    )


# -- compare-and-set ----------------------------------------------------------------------


async def compare_and_set(
    driver: Driver, key: str, expected_version: int | None, record: LockRecord
) -> tuple[bool, LockRecord | None]:
    """Insert (`expected_version` None) or replace the record; return `(applied, current)`.

    A request that is sent again after its response was lost finds its own record stored and
    counts as applied: versions only grow, so an equal record can only be that write.
    """
    if expected_version is None:
        applied = await driver.insert_lock(record)
    else:
        applied = await driver.replace_lock(key, expected_version, record)
    current = await driver.read_lock(key)
    return applied or current == record, current


# -- planning -----------------------------------------------------------------------------


async def plan_execution(
    driver: Driver, request: ExecutionRequest, runner_id: str
) -> ExecutionResponse:
    """Decide what the runner does next; take the lock for it when something is pending."""
    problem = _pipeline_problem(request)
    if problem is not None:
        return ExecutionResponse(action=ExecutionAction.ABORT, reason=problem)

    states = await _states(driver)
    stages = _plan(request, states)
    if not _needs_lock(stages):
        return ExecutionResponse(action=ExecutionAction.CONTINUE, stages=stages)

    max_epoch = max((entry.lock_epoch for entry in states.values()), default=0)
    outcome = await _acquire(driver, request, runner_id, max_epoch)
    if isinstance(outcome, AwaitInfo):
        return ExecutionResponse.model_validate(
            {"action": ExecutionAction.AWAIT, "stages": stages, "await": outcome}
        )

    # Another runner may have applied changes while this one waited: plan again under the lock.
    stages = _plan(request, await _states(driver))
    if not _needs_lock(stages):
        await release(driver, request.lock_key, runner_id, outcome.epoch)
        return ExecutionResponse(action=ExecutionAction.CONTINUE, stages=stages)
    execution_id = new_id()
    logger.info(
        "Execution %s granted to runner %s with lock %r at epoch %d",
        execution_id,
        runner_id,
        outcome.key,
        outcome.epoch,
    )
    return ExecutionResponse(
        action=ExecutionAction.EXECUTE,
        execution_id=execution_id,
        lock=grant_of(outcome),
        stages=stages,
    )


def _pipeline_problem(request: ExecutionRequest) -> str | None:
    seen: dict[str, str] = {}
    for stage in request.stages:
        orders: set[str] = set()
        for change in stage.changes:
            if change.id in seen:
                first = seen[change.id]
                return f"Change id {change.id!r} is in stage {first!r} and in {stage.name!r}."
            if change.order in orders:
                return f"Order {change.order!r} appears twice in stage {stage.name!r}."
            seen[change.id] = stage.name
            orders.add(change.order)
    return None


async def _states(driver: Driver) -> Mapping[str, AuditEntry]:
    return {entry.change_id: entry for entry in await driver.read_states()}


def _plan(request: ExecutionRequest, states: Mapping[str, AuditEntry]) -> list[PlannedStageModel]:
    planned = []
    for stage in request.stages:
        changes = []
        for change in stage.changes:
            descriptor = ChangeDescriptor(
                id=change.id,
                order=change.order,
                author=change.author,
                stage=stage.name,
                transactional=change.transactional,
                recovery=change.recovery,
                run_always=change.run_always,
                source="remote runner",
            )
            latest = states.get(change.id)
            action = ChangeAction(decide(descriptor, latest).value)
            changes.append(
                PlannedChangeModel(
                    id=change.id, action=action, state=latest.state if latest else None
                )
            )
        planned.append(PlannedStageModel(name=stage.name, changes=changes))
    return planned


def _needs_lock(stages: list[PlannedStageModel]) -> bool:
    # A change seen as STARTED may be running under another runner's lock right now, so a
    # verdict of manual intervention is only final under the lock, like an APPLY.
    return any(
        change.action is not ChangeAction.SKIP for stage in stages for change in stage.changes
    )


async def _acquire(
    driver: Driver, request: ExecutionRequest, runner_id: str, max_epoch: int
) -> LockRecord | AwaitInfo:
    key = request.lock_key
    current = await driver.read_lock(key)
    if current is None:
        record = _new_record(request, runner_id, epoch=max_epoch + 1, version=1)
        applied, current = await compare_and_set(driver, key, None, record)
    elif current.owner == runner_id:
        record = dataclasses.replace(current, version=current.version + 1, renewed_at_ms=now_ms())
        applied, current = await compare_and_set(driver, key, current.version, record)
    elif current.is_free or _waited_out(request, current):
        if not current.is_free:
            logger.warning(
                "Runner %s takes over the expired lock %r from %s",
                runner_id,
                key,
                current.describe(),
            )
        epoch = max(current.epoch, max_epoch) + 1
        record = _new_record(request, runner_id, epoch=epoch, version=current.version + 1)
        applied, current = await compare_and_set(driver, key, current.version, record)
    else:
        applied = False
    if applied:
        return record
    if current is None or current.owner is None:
        # The record changed between our read and our write, so the runner only has to retry.
        return AwaitInfo(acquisition_id="", holder="nobody", lease_ms=0, retry_after_ms=100)
    return AwaitInfo(
        acquisition_id=acquisition_id(current),
        holder=current.describe(),
        lease_ms=current.lease_ms,
        retry_after_ms=max(100, min(1_000, current.lease_ms // 3)),
    )


def _waited_out(request: ExecutionRequest, current: LockRecord) -> bool:
    """Return whether the runner saw this very state of the lock for longer than its lease."""
    return (
        request.last_acquisition_id == acquisition_id(current)
        and request.elapsed_ms is not None
        and request.elapsed_ms > current.lease_ms
    )


def _new_record(request: ExecutionRequest, owner: str, *, epoch: int, version: int) -> LockRecord:
    stamp = now_ms()
    return LockRecord(
        key=request.lock_key,
        owner=owner,
        epoch=epoch,
        version=version,
        lease_ms=request.lease_ms,
        acquired_at_ms=stamp,
        renewed_at_ms=stamp,
        host=request.host,
        pid=request.pid,
    )


# -- extend and release by the owner ------------------------------------------------------


async def extend(driver: Driver, key: str, owner: str, acquisition: str) -> LockGrant:
    """Extend the lease of `owner`; the quoted acquisition id must be of its current epoch.

    Matching on the epoch rather than the whole id lets a runner repeat an extension whose
    response it lost.
    """
    current = await driver.read_lock(key)
    if current is None or current.owner != owner or not acquisition.startswith(f"{current.epoch}-"):
        raise LockNotHeld(_not_held(key, owner, current))
    renewed = dataclasses.replace(current, version=current.version + 1, renewed_at_ms=now_ms())
    applied, stored = await compare_and_set(driver, key, current.version, renewed)
    if not applied:
        raise LockNotHeld(_not_held(key, owner, stored))
    return grant_of(renewed)


async def release(driver: Driver, key: str, owner: str, epoch: int) -> None:
    """Mark the lock free if `owner` holds it at `epoch`; repeating a release is harmless."""
    current = await driver.read_lock(key)
    if current is not None and current.owner is None and current.epoch == epoch:
        return
    if current is None or current.owner != owner or current.epoch != epoch:
        raise LockNotHeld(_not_held(key, owner, current))
    freed = dataclasses.replace(
        current, owner=None, version=current.version + 1, renewed_at_ms=now_ms()
    )
    applied, stored = await compare_and_set(driver, key, current.version, freed)
    if not applied:
        raise LockNotHeld(_not_held(key, owner, stored))
    logger.info("Lock %r released by runner %s at epoch %d", key, owner, epoch)


def _not_held(key: str, owner: str, current: LockRecord | None) -> str:
    return f"The lock {key!r} is not held by {owner!r}; {holder_of(current)}."
