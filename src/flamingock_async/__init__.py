"""flamingock-async: ordered, audited change units applied exactly once, under a lease lock.

This module is the public facade; everything else is private to the package unless a
module documents otherwise (`drivers`, `testing`, `fastapi`, `cli`, `backend`).
"""

from __future__ import annotations

import logging

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
from ._lock import LockSettings
from ._planning import Action, PlannedChange, RunPlan
from ._progress import ChangeContext, EventKind, RunEvent, RunProgress, RunReport, RunState
from ._runner import AsyncRunner
from ._version import __version__

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
