"""flamingock-async: ordered, audited change units applied exactly once, under a lease lock.

This module is the public facade; everything else is private to the package unless a
module documents otherwise (`drivers`, `testing`, `fastapi`, `cli`, `backend`).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._audit import AuditEntry, AuditState
from ._changes import ChangeDescriptor, Recovery, Stage, change_unit
from ._errors import (
    ChangeError,
    ChangeExecutionError,
    ConfigurationError,
    CorruptAuditEntryError,
    DriverAuthError,
    DriverError,
    DriverUnavailableError,
    FlamingockError,
    LockError,
    LockLostError,
    LockNotAcquiredError,
    ManualInterventionRequiredError,
    MissingDependencyError,
    PipelineValidationError,
    TransactionLimitError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._execution import ChangeContext
    from ._lock import LockSettings
    from ._planning import PlannedChange, RunPlan
    from ._progress import (
        EventKind,
        RunEvent,
        RunProgress,
        RunReport,
        RunState,
    )
    from ._runner import AsyncRunner

# The runner and its lock pull in anyio; they are imported on first use, so that modules
# which only declare change units import as little as possible.
_LAZY_NAMES = {
    "AsyncRunner": "._runner",
    "LockSettings": "._lock",
    "Action": "._state_table",
    "PlannedChange": "._planning",
    "RunPlan": "._planning",
    "ChangeContext": "._execution",
    "EventKind": "._progress",
    "RunEvent": "._progress",
    "RunProgress": "._progress",
    "RunReport": "._progress",
    "RunState": "._progress",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


__all__ = [
    "__version__",
    # declaring changes
    "change_unit",
    "Recovery",
    "Stage",
    "ChangeDescriptor",
    # audit
    "AuditState",
    "AuditEntry",
    # running
    "AsyncRunner",
    "LockSettings",
    "ChangeContext",
    "RunReport",
    "RunProgress",
    "RunState",
    "RunEvent",
    "EventKind",
    "RunPlan",
    "PlannedChange",
    "Action",
    # errors
    "FlamingockError",
    "PipelineValidationError",
    "ConfigurationError",
    "DriverError",
    "DriverUnavailableError",
    "DriverAuthError",
    "CorruptAuditEntryError",
    "MissingDependencyError",
    "TransactionLimitError",
    "LockError",
    "LockNotAcquiredError",
    "LockLostError",
    "ChangeError",
    "ChangeExecutionError",
    "ManualInterventionRequiredError",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
