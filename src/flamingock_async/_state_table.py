"""The state table: what the next run does with one change, from its newest audit entry.

A start with nothing pending imports only this module. `_planning` builds the full plan
that the `plan` and `status` commands show and that a run with work follows.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from ._audit import AuditEntry, AuditState, StateSummary
from ._changes import ChangeDescriptor, ChangeKey, Recovery

__all__ = ["Action", "decide", "max_epoch", "ids_to_run"]


class Action(str, enum.Enum):
    APPLY = "APPLY"
    SKIP = "SKIP"
    MANUAL_INTERVENTION = "MANUAL_INTERVENTION"


def decide(
    change: ChangeDescriptor | ChangeKey, latest: AuditEntry | StateSummary | None
) -> Action:
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


def max_epoch(states: Iterable[AuditEntry | StateSummary]) -> int:
    """Return the highest lock epoch among the newest entries, or 0 for an empty log.

    The newest entry of some change is the newest entry overall, so this is the epoch of
    the last acquisition that wrote history. The next acquisition must start above it.
    """
    return max((state.lock_epoch for state in states), default=0)


def ids_to_run(
    changes: Iterable[ChangeDescriptor | ChangeKey], states: Iterable[StateSummary]
) -> list[str]:
    """Return the ids that `plan_run` would not skip, in order, without building the plan."""
    latest = {state.change_id: state for state in states}
    return [
        change.id for change in changes if decide(change, latest.get(change.id)) is not Action.SKIP
    ]
