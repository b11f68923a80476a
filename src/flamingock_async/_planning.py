"""Planning: what the next run does with each change, from its newest audit entry."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ._audit import AuditEntry, AuditState
from ._changes import ChangeDescriptor
from ._errors import ManualInterventionRequiredError
from ._state_table import Action, decide, ids_to_run, max_epoch

__all__ = ["Action", "PlannedChange", "RunPlan", "plan_run", "decide", "max_epoch", "ids_to_run"]


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


def plan_run(changes: Iterable[ChangeDescriptor], states: Iterable[AuditEntry]) -> RunPlan:
    """Plan every change of the pipeline against the newest audit entry of each."""
    latest: Mapping[str, AuditEntry] = {entry.change_id: entry for entry in states}
    highest = max_epoch(latest.values())
    planned = tuple(
        PlannedChange(change, decide(change, latest.get(change.id)), latest.get(change.id))
        for change in changes
    )
    return RunPlan(planned, highest)
