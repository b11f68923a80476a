"""The exception tree of flamingock-async.

FlamingockError
├── PipelineValidationError ........ a change or pipeline is malformed (nothing was written)
├── ConfigurationError (ValueError)  a store URL, option or environment variable is invalid
├── DriverError .................... the store failed or returned something unexpected
│   ├── DriverUnavailableError ..... the store could not be reached in time
│   ├── DriverAuthError ............ the store rejected the credentials or token
│   ├── CorruptAuditEntryError ..... an audit record cannot be read back
│   ├── MissingDependencyError (ImportError)  a driver's optional library is not installed
│   └── TransactionLimitError ...... a transaction would exceed a limit of the store
├── LockError
│   ├── LockNotAcquiredError ....... another runner kept the lock past `wait_timeout`
│   └── LockLostError .............. the lease expired or was taken over during a run
└── ChangeError .................... a change unit failed; `__cause__` is its exception
    ├── ChangeExecutionError ....... `execute` raised; `rollback_error` is set if rollback failed
    └── ManualInterventionRequiredError  a change's outcome is unknown and needs `flamingock mark`

Native errors of store libraries are translated into this tree by each driver, in one place,
with `raise ... from` so the original stays attached.
"""

from __future__ import annotations

__all__ = [
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


class FlamingockError(Exception):
    """Root of every error raised by flamingock-async."""


class PipelineValidationError(FlamingockError):
    """A change unit or the pipeline is invalid; raised before the store is touched.

    `problems` lists every problem found, each one sentence naming the change, its module and
    the fix, so that one run reports them all.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            message = f"The pipeline has {len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class ConfigurationError(FlamingockError, ValueError):
    """A store URL, option or environment variable is invalid, or so is a change id given.

    `change_id` is the id an operator command was given, when that id is the problem.
    """

    def __init__(self, message: str, *, change_id: str | None = None) -> None:
        super().__init__(message)
        self.change_id = change_id


class DriverError(FlamingockError):
    """The store failed, or returned something the driver cannot use."""


class DriverUnavailableError(DriverError):
    """The store could not be reached within the configured timeout."""


class DriverAuthError(DriverError):
    """The store rejected the credentials or the token."""


class CorruptAuditEntryError(DriverError):
    """An audit record in the store cannot be read back; `record_key` names it in the store."""

    def __init__(self, message: str, *, record_key: str) -> None:
        super().__init__(message)
        self.record_key = record_key


class MissingDependencyError(DriverError, ImportError):
    """A driver's optional library is not installed; the message names the extra to install."""

    def __init__(self, driver: str, package: str, extra: str) -> None:
        super().__init__(
            f"The {driver} driver needs the {package!r} package, which is not installed; "
            f"install it with: pip install 'flamingock-async[{extra}]'"
        )
        self.driver = driver
        self.package = package
        self.extra = extra


class TransactionLimitError(DriverError):
    """A transaction would exceed a limit of the store (item count, size, duplicate item)."""


class LockError(FlamingockError):
    """The lease lock could not be taken or was lost."""


class LockNotAcquiredError(LockError):
    """Another runner held the lock for longer than `wait_timeout`."""

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class LockLostError(LockError):
    """The lease expired or another runner took it over while this runner held it."""


class ChangeError(FlamingockError):
    """A change unit failed; `change_id` names it."""

    def __init__(self, message: str, *, change_id: str) -> None:
        super().__init__(message)
        self.change_id = change_id


class ChangeExecutionError(ChangeError):
    """`execute` raised; the original exception is `__cause__`.

    `rollback_error` is the exception of a rollback that failed afterwards, so the
    change's own error is never replaced by it. `needs_manual_intervention` is True when the
    failure left the change in a state the next run stops at (`FAILED` without a rollback,
    or `ROLLBACK_FAILED`), so an operator must check the target and run `flamingock mark`.
    """

    def __init__(
        self,
        message: str,
        *,
        change_id: str,
        rollback_error: BaseException | None = None,
        needs_manual_intervention: bool = False,
    ) -> None:
        super().__init__(message, change_id=change_id)
        self.rollback_error = rollback_error
        self.needs_manual_intervention = needs_manual_intervention


class ManualInterventionRequiredError(ChangeError):
    """A change was left `STARTED`, `FAILED` or `ROLLBACK_FAILED` and its outcome is unknown."""

    def __init__(self, message: str, *, change_id: str, state: str) -> None:
        super().__init__(message, change_id=change_id)
        self.state = state
