"""Run progress, run events and the final run report."""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any

__all__ = ["RunState", "RunProgress", "EventKind", "RunEvent", "RunReport"]


class RunState(str, enum.Enum):
    """The phase a run is in; `COMPLETED`, `FAILED` and `NOT_RUN` are final."""

    IDLE = "IDLE"
    CHECKING = "CHECKING"
    WAITING_FOR_LOCK = "WAITING_FOR_LOCK"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    NOT_RUN = "NOT_RUN"

    @property
    def is_final(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.NOT_RUN)


@dataclasses.dataclass
class RunProgress:
    """The live state of a runner, kept in memory so that probes can read it without I/O.

    `last_progress` is the monotonic time (seconds) of the last sign of life: a lock attempt,
    a heartbeat, or a change that started or finished.
    """

    state: RunState = RunState.IDLE
    execution_id: str | None = None
    current_change: str | None = None
    applied: int = 0
    pending: int = 0
    error: str | None = None
    last_progress: float = dataclasses.field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_progress = time.monotonic()

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "execution_id": self.execution_id,
            "current_change": self.current_change,
            "applied": self.applied,
            "pending": self.pending,
            "error": self.error,
        }


class EventKind(str, enum.Enum):
    RUN_STARTED = "RUN_STARTED"
    NOTHING_TO_DO = "NOTHING_TO_DO"
    LOCK_WAITING = "LOCK_WAITING"
    LOCK_ACQUIRED = "LOCK_ACQUIRED"
    LOCK_RENEWED = "LOCK_RENEWED"
    LOCK_LOST = "LOCK_LOST"
    CHANGE_STARTED = "CHANGE_STARTED"
    CHANGE_APPLIED = "CHANGE_APPLIED"
    CHANGE_FAILED = "CHANGE_FAILED"
    CHANGE_ROLLED_BACK = "CHANGE_ROLLED_BACK"
    RUN_COMPLETED = "RUN_COMPLETED"
    RUN_FAILED = "RUN_FAILED"
    RUN_NOT_RUN = "RUN_NOT_RUN"


@dataclasses.dataclass(frozen=True, slots=True)
class RunEvent:
    """One thing that happened in a run, handed to every listener."""

    kind: EventKind
    execution_id: str
    change_id: str | None = None
    duration: float | None = None
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RunReport:
    """The outcome of `AsyncRunner.run()`. Durations are in seconds.

    `not_run` is True when the lock was not acquired and `on_lock_timeout` is "skip".
    A failed run raises; its error carries the report as `error.report`, with `failed` set.
    """

    execution_id: str
    applied: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: str | None = None
    duration: float = 0.0
    lock_acquired: bool = False
    not_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "applied": list(self.applied),
            "skipped": list(self.skipped),
            "failed": self.failed,
            "duration": round(self.duration, 6),
            "lock_acquired": self.lock_acquired,
            "not_run": self.not_run,
        }
