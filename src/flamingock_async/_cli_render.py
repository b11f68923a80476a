"""Text and JSON output of the `flamingock` command line.

Every function here turns a result into lines or a JSON-ready mapping; none does I/O on the
store. JSON shapes are part of the command line's interface for scripts, so a field is only
ever added, never renamed.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._audit import AuditEntry
from ._changes import Pipeline
from ._lock import LockRecord
from ._progress import RunReport
from ._state_table import Action

if TYPE_CHECKING:
    from ._planning import PlannedChange, RunPlan

__all__ = [
    "plural",
    "format_time",
    "plan_rows",
    "plan_json",
    "status_json",
    "states_json",
    "history_json",
    "history_lines",
    "lock_json",
    "lock_lines",
    "report_lines",
    "pipeline_json",
    "table",
]

_NEXT_STEP = {
    Action.APPLY: "apply",
    Action.SKIP: "skip",
    Action.MANUAL_INTERVENTION: "manual intervention",
}


def plural(count: int, noun: str) -> str:
    """Return `count` and `noun`, adding an "s" unless `count` is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_time(epoch_ms: int | None) -> str:
    """Return an epoch-milliseconds time as `YYYY-MM-DD HH:MM:SS` in UTC, or `-`."""
    if epoch_ms is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lay out rows in left-aligned columns under a header line."""
    materialised = [list(map(str, row)) for row in rows]
    widths = [len(header) for header in headers]
    for row in materialised:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    return [line(headers).rstrip()] + [line(row).rstrip() for row in materialised]


# -- plan and status -----------------------------------------------------------------------


def plan_rows(plan: RunPlan) -> list[str]:
    headers = ("STAGE", "ORDER", "CHANGE", "STATE", "NEXT RUN")
    rows = [
        (
            planned.change.stage,
            planned.change.order,
            planned.change.id,
            planned.state.value if planned.state else "PENDING",
            _next_step(planned),
        )
        for planned in plan.changes
    ]
    return table(headers, rows)


def _next_step(planned: PlannedChange) -> str:
    step = _NEXT_STEP[planned.action]
    if planned.action is Action.APPLY and planned.change.run_always and planned.latest:
        return "apply (run_always)"
    return step


def _planned_json(planned: PlannedChange) -> dict[str, Any]:
    latest = planned.latest
    return {
        "id": planned.change.id,
        "stage": planned.change.stage,
        "order": planned.change.order,
        "author": planned.change.author,
        "transactional": planned.change.transactional,
        "run_always": planned.change.run_always,
        "state": planned.state.value if planned.state else None,
        "action": planned.action.value,
        "updated_at_ms": latest.created_at_ms if latest else None,
        "execution_id": latest.execution_id if latest else None,
    }


def plan_json(plan: RunPlan) -> dict[str, Any]:
    return {
        "changes": [_planned_json(planned) for planned in plan.changes],
        "pending": len(plan.to_apply),
        "blocked": len(plan.blocked),
    }


def status_json(plan: RunPlan, store: str, unknown: Sequence[AuditEntry]) -> dict[str, Any]:
    """Return the status of a pipeline, plus audited changes the pipeline no longer has."""
    data = plan_json(plan)
    data["store"] = store
    data["not_in_pipeline"] = [_state_json(entry) for entry in unknown]
    return data


def _state_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.change_id,
        "stage": entry.stage,
        "order": entry.order,
        "author": entry.author,
        "state": entry.state.value,
        "updated_at_ms": entry.created_at_ms,
        "execution_id": entry.execution_id,
    }


def states_json(states: Sequence[AuditEntry], store: str) -> dict[str, Any]:
    """Return the newest audit state of each change, when no pipeline was given."""
    return {"store": store, "changes": [_state_json(entry) for entry in states]}


def state_rows(states: Sequence[AuditEntry]) -> list[str]:
    headers = ("STAGE", "ORDER", "CHANGE", "STATE", "UPDATED (UTC)")
    rows = [
        (e.stage, e.order, e.change_id, e.state.value, format_time(e.created_at_ms)) for e in states
    ]
    return table(headers, rows)


# -- history -------------------------------------------------------------------------------


def history_json(entries: Sequence[AuditEntry]) -> dict[str, Any]:
    return {"entries": [entry.to_dict() for entry in entries]}


def history_lines(entries: Sequence[AuditEntry]) -> list[str]:
    headers = ("TIME (UTC)", "CHANGE", "STATE", "DURATION", "EXECUTION", "ERROR")
    rows = []
    for entry in entries:
        duration = f"{entry.duration_ms} ms" if entry.duration_ms is not None else "-"
        error = f"{entry.error_type}: {entry.error_message}" if entry.error_type else ""
        rows.append(
            (
                format_time(entry.created_at_ms),
                entry.change_id,
                entry.state.value,
                duration,
                entry.execution_id[:12],
                _one_line(error, 80),
            )
        )
    return table(headers, rows)


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- lock ----------------------------------------------------------------------------------


def lock_json(key: str, record: LockRecord | None) -> dict[str, Any]:
    return {
        "key": key,
        "held": record is not None and not record.is_free,
        "record": record.to_dict() if record is not None else None,
    }


def lock_lines(key: str, record: LockRecord | None, now_ms: int) -> list[str]:
    if record is None:
        return [f"Lock {key!r}: never taken."]
    if record.is_free:
        return [f"Lock {key!r}: free (last epoch {record.epoch}, version {record.version})."]
    age = (now_ms - record.renewed_at_ms) / 1000
    return [
        f"Lock {key!r}: held",
        f"  owner      {record.owner}",
        f"  host, pid  {record.host}, {record.pid}",
        f"  epoch      {record.epoch}",
        f"  version    {record.version}",
        f"  lease      {record.lease_ms / 1000:g} s",
        f"  acquired   {format_time(record.acquired_at_ms)} UTC",
        f"  renewed    {format_time(record.renewed_at_ms)} UTC "
        f"({age:.1f} s ago by this machine's clock)",
    ]


# -- run and validate ----------------------------------------------------------------------


def report_lines(report: RunReport) -> list[str]:
    if report.not_run:
        return ["Not run: another runner held the lock; nothing was applied."]
    if not report.applied:
        return [f"Nothing to apply: all {plural(len(report.skipped), 'change')} are applied."]
    return [
        f"Applied {plural(len(report.applied), 'change')} in {report.duration:.2f} s "
        f"({len(report.skipped)} already applied), execution {report.execution_id}:",
        *(f"  {change_id}" for change_id in report.applied),
    ]


def pipeline_json(pipeline: Pipeline) -> dict[str, Any]:
    return {
        "valid": True,
        "count": len(pipeline),
        "stages": [
            {"name": stage.name, "changes": [change.to_dict() for change in stage.changes]}
            for stage in pipeline.stages
        ],
    }
