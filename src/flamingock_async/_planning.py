"""Planning: what the next run does with each change, from its newest audit entry."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping

from ._audit import AuditEntry, AuditState, StateSummary
from ._changes import ChangeDescriptor, Recovery
from ._errors import ManualInterventionRequiredError

__all__ = ["Action", "PlannedChange", "RunPlan", "plan_run", "decide", "max_epoch", "ids_to_run"]


class Action(str, enum.Enum):
    APPLY = "APPLY"
    SKIP = "SKIP"
    MANUAL_INTERVENTION = "MANUAL_INTERVENTION"


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedChange:
    """One change, its newest audit entry (if any) and what the run does with it."""

    change: ChangeDescriptor
    action: Action
    latest: AuditEntry | None

    @property
    def state(self) -> AuditState | None:
        return self.latest.state if self.latest else None


@dataclasses.dataclass(frozen=True, slots=True)
class RunPlan:
    """The decision for every change of the pipeline, in execution order."""

    changes: tuple[PlannedChange, ...]
    max_epoch: int

    @property
    def to_apply(self) -> list[PlannedChange]:
        return [planned for planned in self.changes if planned.action is Action.APPLY]

    @property
    def blocked(self) -> list[PlannedChange]:
        return [p for p in self.changes if p.action is Action.MANUAL_INTERVENTION]

    @property
    def needs_lock(self) -> bool:
        """True when anything is not skipped; a blocked change is re-read under the lock.

        A change seen as `STARTED` may be running in the lock holder right now, so a
        verdict of manual intervention is only final once this runner holds the lock.
        """
        return any(planned.action is not Action.SKIP for planned in self.changes)

    def raise_if_blocked(self) -> None:
        """Raise `ManualInterventionRequiredError` for the first blocked change."""
        blocked = self.blocked
        if not blocked:
            return
        first = blocked[0]
        state = first.state.value if first.state else "unknown"
        others = f" ({len(blocked) - 1} more changes are blocked too)" if len(blocked) > 1 else ""
        raise ManualInterventionRequiredError(
            f"Change {first.change.id!r} ({first.change.where}) was left {state} by an earlier "
            "run, so whether it took effect is unknown. Check the target system, then run "
            f"'flamingock mark {first.change.id} --as applied' or "
            f"'flamingock mark {first.change.id} --as rolled-back'{others}.",
            change_id=first.change.id,
            state=state,
        )


def decide(change: ChangeDescriptor, latest: AuditEntry | StateSummary | None) -> Action:
    """Apply the state table to one change.

    `latest.transactional` records whether that attempt committed atomically with its audit
    entry; only then does a `STARTED` or `FAILED` entry prove that nothing was committed.
    """
    if latest is None or latest.state.is_undone:
        return Action.APPLY
    if latest.state.is_applied:
        return Action.APPLY if change.run_always else Action.SKIP
    atomic_attempt = latest.transactional and latest.state is not AuditState.ROLLBACK_FAILED
    if atomic_attempt or change.recovery is Recovery.ALWAYS_RETRY:
        return Action.APPLY
    return Action.MANUAL_INTERVENTION


def plan_run(changes: Iterable[ChangeDescriptor], states: Iterable[AuditEntry]) -> RunPlan:
    """Plan every change of the pipeline against the newest audit entry of each."""
    latest: Mapping[str, AuditEntry] = {entry.change_id: entry for entry in states}
    highest = max_epoch(latest.values())
    planned = tuple(
        PlannedChange(change, decide(change, latest.get(change.id)), latest.get(change.id))
        for change in changes
    )
    return RunPlan(planned, highest)


def max_epoch(states: Iterable[AuditEntry | StateSummary]) -> int:
    """Return the highest lock epoch among the newest entries, or 0 for an empty log.

    The newest entry of some change is the newest entry overall, so this is the epoch of
    the last acquisition that wrote history; the next one must start above it.
    """
    return max((state.lock_epoch for state in states), default=0)


def ids_to_run(changes: Iterable[ChangeDescriptor], states: Iterable[StateSummary]) -> list[str]:
    """Return the ids that `plan_run` would not skip, in order, without building the plan."""
    latest = {state.change_id: state for state in states}
    return [
        change.id for change in changes if decide(change, latest.get(change.id)) is not Action.SKIP
    ]
