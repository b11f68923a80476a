"""The public facade: its names, and what importing it costs."""

from __future__ import annotations

import json
import subprocess
import sys

import flamingock_async

PUBLIC_NAMES = {
    "__version__",
    "change_unit",
    "Recovery",
    "Stage",
    "ChangeDescriptor",
    "AuditState",
    "AuditEntry",
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
}


def test_all_lists_the_public_names() -> None:
    assert set(flamingock_async.__all__) == PUBLIC_NAMES
    assert len(flamingock_async.__all__) == len(PUBLIC_NAMES)


def test_every_public_name_resolves() -> None:
    for name in flamingock_async.__all__:
        assert getattr(flamingock_async, name) is not None, name


def test_errors_share_one_root() -> None:
    errors = [getattr(flamingock_async, name) for name in PUBLIC_NAMES if name.endswith("Error")]

    for error in errors:
        assert issubclass(error, flamingock_async.FlamingockError), error.__name__


def test_import_loads_no_driver_library() -> None:
    code = (
        "import sys, json, flamingock_async; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout

    loaded = set(json.loads(output))
    for library in ("aiosqlite", "pymongo", "motor", "aioboto3", "botocore", "httpx"):
        assert library not in loaded, library
    for heavy in ("pydantic", "yaml", "click", "rich", "starlette"):
        assert heavy not in loaded, heavy
