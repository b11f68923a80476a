"""The `flamingock` command line: apply, inspect and repair a pipeline of change units.

Every command takes the store as a URL (`--store` or `FLAMINGOCK_STORE`) and, where it needs
the pipeline, the changes as a package or module name or a pipeline file (`--changes` or
`FLAMINGOCK_CHANGES`). The current directory is put on `sys.path`, so a package in the project
folder can be named without installing it.

Exit codes, also listed by `flamingock --help`:

* 0: done (or nothing to do);
* 1: failed: a change, the store or the lock failed during the command;
* 2: bad usage: an invalid option, store URL or pipeline, detected before the store changed;
* 3: manual intervention needed: a change was left in an unknown state by an earlier run;
* 4: lock not acquired: another runner held the lock past `--lock-wait-timeout`;
* 5: `wait` timed out with changes still pending.

The module keeps its start-up light: `flamingock run` with nothing pending, for changes given
as a package or module, imports click, the core and the one driver the URL names, and neither
rich nor pydantic. A pipeline file also needs PyYAML, and the pipeline loader imports the
modules and templates it names (the `sql` template uses pydantic).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ._audit import AuditState, now_ms
from ._changes import LoadedChange, Pipeline
from ._cli_render import plural
from ._errors import (
    ChangeExecutionError,
    ConfigurationError,
    FlamingockError,
    LockNotAcquiredError,
    ManualInterventionRequiredError,
    MissingDependencyError,
    PipelineValidationError,
)
from ._lock import LockRecord, LockSettings
from ._runner import AsyncRunner
from .drivers import Driver, driver_from_url, redact_url

if TYPE_CHECKING:
    from ._planning import RunPlan

__all__ = ["cli", "main", "exit_code_for"]

T = TypeVar("T")

_DEFAULT_LOCK = LockSettings()

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MANUAL_INTERVENTION = 3
EXIT_LOCK_NOT_ACQUIRED = 4
EXIT_WAIT_TIMEOUT = 5

EXIT_CODES_HELP = """\b
Exit codes:
  0  done, or nothing to do
  1  failed: a change, the store or the lock failed (also: stopped by SIGTERM,
     or a rollback not confirmed)
  2  bad usage: invalid option, store URL or pipeline (the store is unchanged)
  3  manual intervention needed: run 'flamingock mark' after checking the target
     (also: a change failed and its rollback is missing or failed)
  4  lock not acquired within --lock-wait-timeout
  5  'wait' timed out with changes still pending
"""

STORE_HELP = (
    "Store of the audit log and the lock, as a URL: sqlite:///relative.db, "
    "sqlite:////absolute/path.db, mongodb://host/db, dynamodb://table?region=..., "
    "https://backend."
)
CHANGES_HELP = (
    "The pipeline: a package or module name (every change unit in it, recursively), its "
    "folder or file under the current directory (myapp/changes), or a pipeline file (.yaml)."
)

_MARK_STATES = {
    "applied": AuditState.MANUAL_MARKED_AS_APPLIED,
    "rolled-back": AuditState.MANUAL_MARKED_AS_ROLLED_BACK,
}


def exit_code_for(error: BaseException) -> int:
    """Return the documented exit code for an error a command raised."""
    if isinstance(error, (PipelineValidationError, ConfigurationError, MissingDependencyError)):
        return EXIT_USAGE
    if isinstance(error, ManualInterventionRequiredError):
        return EXIT_MANUAL_INTERVENTION
    if isinstance(error, ChangeExecutionError) and error.needs_manual_intervention:
        return EXIT_MANUAL_INTERVENTION
    if isinstance(error, LockNotAcquiredError):
        return EXIT_LOCK_NOT_ACQUIRED
    return EXIT_FAILED


# -- options shared by the commands --------------------------------------------------------


@dataclasses.dataclass
class Settings:
    """The options of one command invocation."""

    store: str | None = None
    changes: str | None = None
    json: bool = False
    verbose: int = 0
    lock_key: str = _DEFAULT_LOCK.key
    lock_lease: float = _DEFAULT_LOCK.lease
    lock_wait_timeout: float = _DEFAULT_LOCK.wait_timeout

    @property
    def lock(self) -> LockSettings:
        return LockSettings(
            key=self.lock_key, lease=self.lock_lease, wait_timeout=self.lock_wait_timeout
        )

    def require_store(self) -> str:
        if not self.store:
            raise click.UsageError(
                "Missing store: pass --store URL or set FLAMINGOCK_STORE "
                "(for example --store sqlite:///app.db)."
            )
        return self.store

    def require_changes(self) -> str:
        if not self.changes:
            raise click.UsageError(
                "Missing pipeline: pass --changes with a package, module or pipeline file, "
                "or set FLAMINGOCK_CHANGES (for example --changes myapp.changes)."
            )
        try:
            return module_name_of(self.changes)
        except ConfigurationError as error:
            _fail(self, error)

    def redact(self, text: str) -> str:
        """Remove the store URL's password and tokens from `text`, wherever they appear.

        Drivers redact the URLs they put in messages, but a message may quote a part of
        the URL, so every secret of the URL is replaced on its own too. Secrets shorter
        than three characters are replaced only as part of the whole URL, because replacing
        them everywhere would garble the text.
        """
        if not self.store:
            return text
        text = text.replace(self.store, _masked_url(self.store))
        for secret in _url_secrets(self.store):
            text = text.replace(secret, "***")
        return text


def module_name_of(changes: str) -> str:
    """Return the module name for a `--changes` value given as a path, else the value.

    `myapp/changes`, `myapp/changes/` and `myapp/changes.py` become `myapp.changes` when
    that folder or file exists under the current directory, which is on `sys.path`.
    Pipeline files and dotted names are returned unchanged.
    """
    if changes.lower().endswith((".yaml", ".yml")):
        return changes
    looks_like_path = "/" in changes or os.sep in changes or changes.endswith(".py")
    if not looks_like_path:
        return changes
    path = os.path.normpath(changes)
    if not (os.path.isdir(path) or (path.endswith(".py") and os.path.isfile(path))):
        return changes
    relative = os.path.relpath(os.path.abspath(path), os.getcwd())
    if relative == os.curdir:
        raise ConfigurationError(
            f"The changes path {changes!r} is the current directory; give the package "
            "folder inside it (for example myapp/changes) or its dotted module name."
        )
    if relative.startswith(os.pardir):
        raise ConfigurationError(
            f"The changes path {changes!r} is outside the current directory, so it cannot be "
            "imported as a module; run flamingock from a folder that contains it, or give "
            "its dotted module name."
        )
    parts = relative[: -len(".py")] if relative.endswith(".py") else relative
    names = [name for name in parts.split(os.sep) if name]
    if names and names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def _url_secrets(url: str) -> list[str]:
    """Return the password and the token values found in `url`."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an invalid port or bracketed host
        return []
    secrets = [password, unquote(password)] if password else []
    for name, value in parse_qsl(parts.query):
        if name.lower().endswith("token") and value:
            secrets.append(value)
    return [secret for secret in secrets if len(secret) >= 3]


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _store_option() -> Decorator:
    return click.option(
        "--store", envvar="FLAMINGOCK_STORE", show_envvar=True, metavar="URL", help=STORE_HELP
    )


def _changes_option() -> Decorator:
    return click.option(
        "--changes",
        envvar="FLAMINGOCK_CHANGES",
        show_envvar=True,
        metavar="MODULE_OR_FILE",
        help=CHANGES_HELP,
    )


def _json_option() -> Decorator:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON on standard output."
    )


def _verbose_option() -> Decorator:
    return click.option(
        "-v",
        "--verbose",
        count=True,
        help="Log more to standard error: -v for each change applied, -vv for lock details.",
    )


def _lock_key_option() -> Decorator:
    return click.option(
        "--lock-key",
        default=_DEFAULT_LOCK.key,
        show_default=True,
        envvar="FLAMINGOCK_LOCK_KEY",
        show_envvar=True,
        help="Name of the lock; runners that share a store and a key never run together.",
    )


def _lock_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--lock-wait-timeout",
        type=click.FloatRange(min=0),
        default=_DEFAULT_LOCK.wait_timeout,
        show_default=True,
        envvar="FLAMINGOCK_LOCK_WAIT_TIMEOUT",
        show_envvar=True,
        metavar="SECONDS",
        help="How long to wait for another runner's lock before exiting with code 4.",
    )(function)
    function = click.option(
        "--lock-lease",
        type=click.FloatRange(min=0.3),
        default=_DEFAULT_LOCK.lease,
        show_default=True,
        envvar="FLAMINGOCK_LOCK_LEASE",
        show_envvar=True,
        metavar="SECONDS",
        help="How long the lock outlives this process if it dies; renewed every third of it.",
    )(function)
    return _lock_key_option()(function)


def _common(*, changes: bool = True, lock: bool = False) -> Decorator:
    """Add --store, --changes (optional), --json, -v and the lock options to a command."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        decorated = _verbose_option()(_json_option()(function))
        if lock:
            decorated = _lock_options(decorated)
        if changes:
            decorated = _changes_option()(decorated)
        return _store_option()(decorated)

    return decorate


def _settings(ctx: click.Context, /, **options: Any) -> Settings:
    """Build the settings of a command from its options and the group's -v count."""
    parent = ctx.find_object(Settings) or Settings()
    wait_timeout = options.get("lock_wait_timeout")
    settings = Settings(
        store=options.get("store"),
        changes=options.get("changes"),
        json=bool(options.get("as_json")),
        verbose=parent.verbose + int(options.get("verbose") or 0),
        lock_key=options.get("lock_key") or _DEFAULT_LOCK.key,
        lock_lease=float(options.get("lock_lease") or _DEFAULT_LOCK.lease),
        lock_wait_timeout=_DEFAULT_LOCK.wait_timeout if wait_timeout is None else wait_timeout,
    )
    _configure_logging(ctx, settings)
    return settings


def _configure_logging(ctx: click.Context, settings: Settings) -> None:
    """Send the package's log records to standard error at the chosen level.

    The logger's previous level and handlers come back when the command ends, so that a
    program invoking the command line in-process keeps its own logging set-up.
    """
    verbose = settings.verbose
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    package = logging.getLogger("flamingock_async")
    previous_level = package.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(settings, "%(levelname)s %(name)s: %(message)s"))
    package.setLevel(level)
    package.addHandler(handler)

    def restore() -> None:
        package.removeHandler(handler)
        package.setLevel(previous_level)

    ctx.call_on_close(restore)


class _RedactingFormatter(logging.Formatter):
    """Format log records with the store URL's secrets removed."""

    def __init__(self, settings: Settings, fmt: str) -> None:
        super().__init__(fmt)
        self._settings = settings

    def format(self, record: logging.LogRecord) -> str:
        return self._settings.redact(super().format(record))


# -- running a command ---------------------------------------------------------------------


def _execute(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on a new event loop; turn a `FlamingockError` into its message and exit code."""
    try:
        return asyncio.run(_call(work))
    except FlamingockError as error:
        _fail(settings, error)


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


class _TerminationGuard:
    """A SIGTERM handler that cancels the command's task.

    The runner then audits the interrupted change, runs its rollback if it is not
    transactional, and releases the lock, within its shutdown grace, as it does for Ctrl+C.
    Without this a container's SIGTERM would kill the process and leave the lock held
    until its lease expires.
    """

    def __init__(self) -> None:
        self.received = False
        self._task: asyncio.Task[Any] | None = None

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            loop.add_signal_handler(signal.SIGTERM, self._on_signal)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not main thread
            return await work()
        try:
            return await work()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    def _on_signal(self) -> None:
        self.received = True
        if self._task is not None:
            self._task.cancel()


def _run_until_terminated(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` like `asyncio.run`; on SIGTERM, let it clean up, then exit with code 1."""
    guard = _TerminationGuard()
    try:
        return asyncio.run(guard.run(work))
    except asyncio.CancelledError:
        if not guard.received:
            raise
    click.echo(
        "Error: stopped by SIGTERM before the command finished; run 'flamingock status' "
        "and 'flamingock lock show' to see what remains.",
        err=True,
    )
    raise click.exceptions.Exit(EXIT_FAILED)


def _fail(
    settings: Settings,
    error: FlamingockError,
    *,
    code: int | None = None,
    data: dict[str, Any] | None = None,
) -> NoReturn:
    """Print `error` on standard error, with the cause's trace under -v, and exit.

    With --json, standard output gets `data`, or else an object with only the error, so a
    script reading it always finds JSON.
    """
    exit_code = exit_code_for(error) if code is None else code
    if settings.json:
        _echo_json(settings, data or {"error": _error_json(settings, error, exit_code)})
    if settings.verbose and error.__cause__ is not None:
        import traceback

        trace = "".join(traceback.format_exception(error.__cause__))
        click.echo(settings.redact(trace.rstrip()), err=True)
    click.echo(f"Error: {settings.redact(str(error))}", err=True)
    raise click.exceptions.Exit(exit_code)


def _error_json(settings: Settings, error: FlamingockError, exit_code: int) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "message": settings.redact(str(error)),
        "change_id": getattr(error, "change_id", None),
        "exit_code": exit_code,
    }


def _echo_json(settings: Settings, data: Any) -> None:
    import json

    click.echo(settings.redact(json.dumps(data, indent=2, sort_keys=False, default=str)))


def _make_driver(settings: Settings) -> Driver:
    url = settings.require_store()
    try:
        return driver_from_url(url)
    except ConfigurationError:
        raise
    except ValueError as error:  # urllib rejects the URL, for example an invalid port
        raise ConfigurationError(
            f"Invalid store URL {_masked_url(url)!r}: {error}; check the host, the port and "
            "any brackets (for example sqlite:///app.db or mongodb://host:27017/db)."
        ) from error


def _masked_url(url: str) -> str:
    """Return `url` redacted, or with everything before '@' masked when urllib rejects it."""
    try:
        return redact_url(url)
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)


async def _with_driver(settings: Settings, use: Callable[[Driver], Awaitable[T]]) -> T:
    """Build the store's driver from its URL, call `use` with it, and close it."""
    driver = _make_driver(settings)
    try:
        return await use(driver)
    finally:
        _print_stats(driver)
        await driver.aclose()


def _print_stats(driver: Driver) -> None:
    """Print the driver's operation counts on standard error when FLAMINGOCK_STATS=1.

    A debugging aid that the start-up benchmark reads; the line format may change.
    """
    if os.environ.get("FLAMINGOCK_STATS") != "1":
        return
    stats = driver.stats
    click.echo(
        f"flamingock stats: reads={stats.reads} writes={stats.writes} "
        f"lock_operations={stats.lock_operations} round_trips={stats.round_trips}",
        err=True,
    )


def _runner(settings: Settings, driver: Driver, *, need_changes: bool = True) -> AsyncRunner:
    if not need_changes and not settings.changes:
        return _AuditLogRunner(driver, [], lock=settings.lock)
    return AsyncRunner(driver, settings.require_changes(), lock=settings.lock)


class _AuditLogRunner(AsyncRunner):
    """A runner without a pipeline, for `mark` of a change known only from the audit log."""

    def load_pipeline(self) -> Pipeline:
        return Pipeline((), _no_changes)


def _no_changes(change_ids: Sequence[str]) -> Mapping[str, LoadedChange]:
    raise ConfigurationError(
        f"Changes {', '.join(change_ids)} cannot be loaded without a pipeline; pass --changes."
    )


def _ensure_cwd_importable() -> None:
    """Put the current directory first on `sys.path`, as `python -m` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


# -- the command group ---------------------------------------------------------------------


class _Group(click.Group):
    """The top-level group, which mounts the self-hosted backend's `serve` group if installed.

    The backend is looked up only when `serve` is asked for or help lists the commands, so
    no other command imports it (or FastAPI).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        if _serve_command() is not None:
            names.append("serve")
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "serve" and cmd_name not in self.commands:
            return _serve_command()
        return super().get_command(ctx, cmd_name)


def _serve_command() -> click.Command | None:
    import importlib
    import importlib.util

    try:
        if importlib.util.find_spec("flamingock_async.backend.cli") is None:
            return None
        module = importlib.import_module("flamingock_async.backend.cli")
    except ImportError:
        return None
    command = getattr(module, "serve", None)
    return command if isinstance(command, click.Command) else None


@click.group(cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"max_content_width": 100})
@_verbose_option()
@click.version_option(package_name="flamingock-async", prog_name="flamingock")
@click.pass_context
def cli(ctx: click.Context, /, verbose: int) -> None:
    """Apply, inspect and repair a pipeline of flamingock-async change units.

    \b
    Store URLs (--store, or FLAMINGOCK_STORE):
      sqlite:///relative/app.db    relative to the current directory
      sqlite:////var/lib/app.db    absolute path (four slashes)
      mongodb://user:pass@host/db, dynamodb://table?region=eu-west-1, https://backend
    Passwords and tokens in the store URL are removed from all output.
    """
    ctx.obj = Settings(verbose=verbose)
    _ensure_cwd_importable()


# -- run and plan --------------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@_common(lock=True)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on standard error; on by default when it is a terminal.",
)
@click.pass_context
def run(ctx: click.Context, /, progress: bool | None, **options: Any) -> None:
    """Apply every pending change, in order, under the lock.

    With nothing pending, no lock is taken and nothing is written.
    """
    settings = _settings(ctx, **options)
    settings.require_changes()
    show_progress = sys.stderr.isatty() if progress is None else progress

    async def work(driver: Driver) -> Any:
        runner = _runner(settings, driver)
        bar = None
        if show_progress:
            from ._cli_progress import TerminalProgress

            bar = TerminalProgress(runner.progress, sys.stderr)
            runner.add_listener(bar.on_event)
        try:
            return await runner.run()
        finally:
            if bar is not None:
                bar.close()

    try:
        report = _run_until_terminated(settings, lambda: _with_driver(settings, work))
    except FlamingockError as error:
        _fail(settings, error, data=_failed_run_json(settings, error))

    if settings.json:
        _echo_json(settings, {**report.as_dict(), "error": None})
        return
    from ._cli_render import report_lines

    for line in report_lines(report):
        click.echo(line)


def _failed_run_json(settings: Settings, error: FlamingockError) -> dict[str, Any]:
    report = getattr(error, "report", None)
    data: dict[str, Any] = report.as_dict() if report is not None else {}
    data["error"] = _error_json(settings, error, exit_code_for(error))
    return data


@cli.command(epilog=EXIT_CODES_HELP)
@_common()
@click.pass_context
def plan(ctx: click.Context, /, **options: Any) -> None:
    """Show what 'run' would do now, without taking the lock or writing anything.

    A change shown as needing manual intervention may still be running in another runner;
    'run' re-reads it under the lock.
    """
    settings = _settings(ctx, **options)
    settings.require_changes()

    async def work(driver: Driver) -> RunPlan:
        return await _runner(settings, driver).plan()

    result = _execute(settings, lambda: _with_driver(settings, work))

    from ._cli_render import plan_json, plan_rows

    if settings.json:
        _echo_json(settings, plan_json(result))
        return
    to_apply = result.to_apply
    if not to_apply and not result.blocked:
        click.echo(f"Nothing to apply: all {plural(len(result.changes), 'change')} are applied.")
        return
    for line in plan_rows(result):
        click.echo(line)
    click.echo("")
    click.echo(
        f"{len(to_apply)} to apply, {len(result.blocked)} need manual intervention, "
        f"{len(result.changes) - len(to_apply) - len(result.blocked)} to skip."
    )


# -- status and history --------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@_common()
@click.pass_context
def status(ctx: click.Context, /, **options: Any) -> None:
    """Show the state of every change: from the pipeline with --changes, else from the log."""
    settings = _settings(ctx, **options)
    store_shown = redact_url(settings.require_store())

    from ._cli_render import plan_rows, state_rows, states_json, status_json

    if not settings.changes:
        states = _execute(settings, lambda: _with_driver(settings, _read_states))
        if settings.json:
            _echo_json(settings, states_json(states, store_shown))
            return
        for line in state_rows(states) if states else ["No change has been audited yet."]:
            click.echo(line)
        return

    async def work(driver: Driver) -> tuple[RunPlan, list[Any], LockRecord | None]:
        pipeline = _runner(settings, driver).load_pipeline()
        states = await _read_states(driver)
        known = {change.id for change in pipeline}
        unknown = [entry for entry in states if entry.change_id not in known]
        from ._planning import plan_run

        return plan_run(pipeline, states), unknown, await driver.read_lock(settings.lock_key)

    result, unknown, lock = _execute(settings, lambda: _with_driver(settings, work))
    if settings.json:
        from ._cli_render import lock_json

        data = status_json(result, store_shown, unknown)
        data["lock"] = lock_json(settings.lock_key, lock)
        _echo_json(settings, data)
        return
    for line in plan_rows(result):
        click.echo(line)
    applied = sum(1 for p in result.changes if p.state is not None and p.state.is_applied)
    click.echo("")
    click.echo(
        f"{applied} applied, {len(result.to_apply)} to apply at the next run, "
        f"{len(result.blocked)} need manual intervention."
    )
    if result.blocked and lock is not None and not lock.is_free:
        # A STARTED change may belong to the run that holds the lock right now.
        click.echo(
            f"The lock {settings.lock_key!r} is held ({lock.describe()}): a STARTED change "
            "may still be running there. Check 'flamingock lock show' before marking it."
        )
    if unknown:
        click.echo(
            f"{plural(len(unknown), 'audited change')} not in the pipeline: "
            + ", ".join(entry.change_id for entry in unknown)
        )


async def _read_states(driver: Driver) -> list[Any]:
    await driver.open()
    return await driver.read_states()


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("change_id", required=False)
@_common(changes=False)
@click.pass_context
def history(ctx: click.Context, /, change_id: str | None, **options: Any) -> None:
    """Show the audit log, oldest first: every attempt of every change, or of CHANGE_ID."""
    settings = _settings(ctx, **options)

    async def work(driver: Driver) -> list[Any]:
        await driver.open()
        return await driver.read_history(change_id)

    entries = _execute(settings, lambda: _with_driver(settings, work))

    from ._cli_render import history_json, history_lines

    if settings.json:
        _echo_json(settings, history_json(entries))
        return
    if not entries:
        subject = f"change {change_id!r}" if change_id else "this store"
        click.echo(f"No audit entries for {subject}.")
        return
    for line in history_lines(entries):
        click.echo(settings.redact(line))


# -- validate ------------------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@_changes_option()
@_store_option()
@_json_option()
@_verbose_option()
@click.pass_context
def validate(ctx: click.Context, /, **options: Any) -> None:
    """Import and validate every change of the pipeline, without touching the store.

    With --store, also check that every parameter of every change can be injected by that
    store's driver; the store is not opened.
    """
    settings = _settings(ctx, **options)
    changes = settings.require_changes()

    def check() -> Any:
        driver = _make_driver(settings) if settings.store else None
        runner = AsyncRunner(driver or _NoStore(), changes, manifest_cache=False)
        pipeline = runner.load_pipeline()
        loaded = pipeline.load([change.id for change in pipeline])
        if driver is not None:
            from ._execution import ChangeExecutor

            problems = ChangeExecutor.check_injection(driver, (), loaded.values())
            if problems:
                raise PipelineValidationError(problems)
        return pipeline

    try:
        pipeline = check()
    except FlamingockError as error:
        _fail(settings, error, data=_invalid_pipeline_json(settings, error))

    if settings.json:
        from ._cli_render import pipeline_json

        _echo_json(settings, pipeline_json(pipeline))
        return
    stages = ", ".join(f"{stage.name} ({len(stage.changes)})" for stage in pipeline.stages)
    click.echo(
        f"Valid: {plural(len(pipeline), 'change')} in "
        f"{plural(len(pipeline.stages), 'stage')}: {stages}."
    )
    if not settings.store:
        click.echo(
            "Change parameters were not checked, because what can be injected depends on the "
            "store: pass --store (or set FLAMINGOCK_STORE) to check them too.",
            err=True,
        )


def _invalid_pipeline_json(settings: Settings, error: FlamingockError) -> dict[str, Any]:
    """Build the `validate --json` output for a pipeline that failed validation."""
    problems = error.problems if isinstance(error, PipelineValidationError) else [str(error)]
    return {
        "valid": False,
        "problems": [settings.redact(problem) for problem in problems],
        "error": _error_json(settings, error, exit_code_for(error)),
    }


class _NoStore(Driver):
    """A placeholder driver for `validate` without --store; any store access is a bug."""

    name = "none"

    def _refuse(self) -> NoReturn:
        raise ConfigurationError("validate does not touch the store; this is a bug.")

    async def _read_lock(self, key: str) -> Any:
        self._refuse()

    async def _insert_lock(self, record: Any) -> bool:
        self._refuse()

    async def _replace_lock(self, key: str, expected_version: int, record: Any) -> bool:
        self._refuse()

    async def _read_states(self) -> list[Any]:
        self._refuse()

    async def _read_history(self, change_id: str | None) -> list[Any]:
        self._refuse()

    async def _append_audit(self, entry: Any, fence: Any) -> None:
        self._refuse()


# -- lock ----------------------------------------------------------------------------------


@cli.group(epilog=EXIT_CODES_HELP)
def lock() -> None:
    """Show or force-release the lock."""


@lock.command("show", epilog=EXIT_CODES_HELP)
@_lock_key_option()
@_common(changes=False)
@click.pass_context
def lock_show(ctx: click.Context, /, **options: Any) -> None:
    """Show who holds the lock, its epoch and when it was last renewed."""
    settings = _settings(ctx, **options)

    async def work(driver: Driver) -> Any:
        await driver.open()
        return await driver.read_lock(settings.lock_key)

    record = _execute(settings, lambda: _with_driver(settings, work))

    from ._cli_render import lock_json, lock_lines

    if settings.json:
        _echo_json(settings, lock_json(settings.lock_key, record))
        return
    for line in lock_lines(settings.lock_key, record, now_ms()):
        click.echo(line)


@lock.command("release", epilog=EXIT_CODES_HELP)
@click.option("--force", is_flag=True, help="Confirm that the holder is dead or stuck.")
@_lock_key_option()
@_common(changes=False)
@click.pass_context
def lock_release(ctx: click.Context, /, force: bool, **options: Any) -> None:
    """Free the lock whoever holds it, after its holder died or hung.

    A holder that is still alive finds its lease gone at its next renewal and stops.
    """
    settings = _settings(ctx, **options)
    if not force:
        raise click.UsageError(
            "lock release frees the lock whoever holds it; check that its holder is dead "
            "('flamingock lock show'), then add --force."
        )

    async def work(driver: Driver) -> Any:
        from ._lock import force_release

        await driver.open()
        return await force_release(driver, settings.lock_key)

    released = _execute(settings, lambda: _with_driver(settings, work))
    if settings.json:
        _echo_json(
            settings,
            {
                "key": settings.lock_key,
                "released": released is not None,
                "previous": released.to_dict() if released is not None else None,
            },
        )
        return
    if released is None:
        click.echo(f"Lock {settings.lock_key!r} was not held; nothing to release.")
        return
    click.echo(f"Released lock {settings.lock_key!r}, which was held by {released.describe()}.")


# -- mark and rollback ---------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("change_id")
@click.option(
    "--as",
    "mark_as",
    required=True,
    type=click.Choice(sorted(_MARK_STATES)),
    help="applied: the change took effect; rolled-back: it did not, so the next run applies it.",
)
@_common(lock=True)
@click.pass_context
def mark(ctx: click.Context, /, change_id: str, mark_as: str, **options: Any) -> None:
    """Record by hand that CHANGE_ID is applied or rolled back, after checking the target.

    Usually for a change that an earlier run left STARTED, FAILED or ROLLBACK_FAILED. A
    change marked rolled back is applied again by the next run, so mark an applied change
    rolled back only after undoing it by hand. The id must be in the pipeline (--changes)
    or in the audit log.
    """
    settings = _settings(ctx, **options)

    async def work(driver: Driver) -> Any:
        runner = _runner(settings, driver, need_changes=False)
        return await runner.mark(change_id, _MARK_STATES[mark_as])

    entry = _execute(settings, lambda: _with_driver(settings, work))
    if settings.json:
        _echo_json(settings, entry.to_dict())
        return
    click.echo(f"Marked change {change_id!r} as {entry.state.value}.")
    if entry.state is AuditState.MANUAL_MARKED_AS_ROLLED_BACK:
        click.echo(f"The next 'flamingock run' applies {change_id!r} again.", err=True)


@cli.command(epilog=EXIT_CODES_HELP)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="CHANGE_ID",
    help="The last change to keep; every applied change after it is rolled back.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_common(lock=True)
@click.pass_context
def rollback(ctx: click.Context, /, target: str, yes: bool, **options: Any) -> None:
    """Undo the applied changes after --to, newest first, with their rollback methods."""
    settings = _settings(ctx, **options)
    settings.require_changes()

    async def preview(driver: Driver) -> list[str]:
        return await _rollback_preview(_runner(settings, driver), target)

    planned = _execute(settings, lambda: _with_driver(settings, preview))
    if not planned:
        if settings.json:
            _echo_json(settings, {"rolled_back": []})
            return
        click.echo(f"Nothing to roll back: no change after {target!r} is applied.")
        return
    if not yes:
        click.echo(f"Changes to roll back, newest first: {', '.join(planned)}", err=True)
        try:
            confirmed = click.confirm(f"Roll back {plural(len(planned), 'change')}?", err=True)
        except click.Abort:  # end of input or Ctrl-C at the prompt
            confirmed = False
        if not confirmed:
            message = "Nothing was rolled back; pass --yes to skip this question."
            if settings.json:
                declined = {"type": "NotConfirmed", "message": message, "change_id": None}
                _echo_json(settings, {"rolled_back": [], "error": {**declined, "exit_code": 1}})
            click.echo(message, err=True)
            raise click.exceptions.Exit(1)

    async def work(driver: Driver) -> list[str]:
        return await _runner(settings, driver).rollback(to=target)

    try:
        undone = _run_until_terminated(settings, lambda: _with_driver(settings, work))
    except FlamingockError as error:
        _fail(settings, error)
    if settings.json:
        _echo_json(settings, {"rolled_back": undone})
        return
    click.echo(f"Rolled back {plural(len(undone), 'change')}: {', '.join(undone)}.")


async def _rollback_preview(runner: AsyncRunner, target: str) -> list[str]:
    """Return the ids `rollback(to=target)` would undo, newest first, without the lock."""
    pipeline = runner.load_pipeline()
    if pipeline.get(target) is None:
        raise ConfigurationError(
            f"Change {target!r} is not in the pipeline; run 'flamingock status' to list ids."
        )
    states = {entry.change_id: entry for entry in await _read_states(runner.driver)}
    ids = [change.id for change in pipeline]
    later = ids[ids.index(target) + 1 :]
    applied = [cid for cid in later if cid in states and states[cid].state.is_applied]
    return list(reversed(applied))


# -- wait ----------------------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up and exit with code 5 after this long.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Pause between two reads of the audit log.",
)
@_common()
@click.pass_context
def wait(ctx: click.Context, /, timeout: float, interval: float, **options: Any) -> None:
    """Wait until every change of the pipeline is applied; for init containers.

    Reads the audit log every --interval seconds without taking the lock. A run_always
    change counts as applied once it was applied at least once. Stops at once with exit
    code 3 when a change needs manual intervention and no runner holds the lock, since
    nothing will apply it until someone runs 'flamingock mark'.
    """
    settings = _settings(ctx, **options)
    settings.require_changes()

    async def work(driver: Driver) -> _Waited:
        return await _wait_until_applied(_runner(settings, driver), timeout, interval)

    waited = _execute(settings, lambda: _with_driver(settings, work))
    if not waited.pending:
        if settings.json:
            _echo_json(settings, waited.as_json())
        else:
            click.echo(f"All changes are applied (waited {waited.seconds:.1f} s).")
        return

    code, error = _wait_failure(waited, timeout)
    if settings.json:
        message = error["message"]
        sentence = {**error, "message": message[0].upper() + message[1:], "exit_code": code}
        _echo_json(settings, {**waited.as_json(), "error": sentence})
    click.echo(f"Error: {error['message']}", err=True)
    raise click.exceptions.Exit(code)


def _wait_failure(waited: _Waited, timeout: float) -> tuple[int, dict[str, Any]]:
    """Return the exit code and the error (type, message, change id) of a failed wait."""
    if waited.blocked:
        change_id, state = waited.blocked[0]
        message = (
            f"change {change_id!r} was left {state} by an earlier run and no runner holds "
            "the lock, so nothing will apply it: check the target system, then run "
            f"'flamingock mark {change_id} --as applied' or '--as rolled-back'."
        )
        error = {"type": "ManualInterventionRequired", "message": message, "change_id": change_id}
        return EXIT_MANUAL_INTERVENTION, error
    listed = ", ".join(waited.pending[:10]) + (" ..." if len(waited.pending) > 10 else "")
    message = (
        f"timed out after {timeout:g} s with {plural(len(waited.pending), 'change')} "
        f"not applied: {listed}; check the runner with 'flamingock status' and "
        "'flamingock lock show'."
    )
    return EXIT_WAIT_TIMEOUT, {"type": "WaitTimedOut", "message": message, "change_id": None}


@dataclasses.dataclass
class _Waited:
    """The outcome of `wait`: changes not applied, those nothing will apply, time waited."""

    pending: list[str]
    blocked: list[tuple[str, str]]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "done": not self.pending,
            "pending": self.pending,
            "blocked": [change_id for change_id, _ in self.blocked],
            "waited": round(self.seconds, 3),
        }


async def _wait_until_applied(runner: AsyncRunner, timeout: float, interval: float) -> _Waited:
    """Poll the audit states until every change is applied, one is blocked, or time is up."""
    pipeline = runner.load_pipeline()
    started = time.monotonic()
    while True:
        await runner.driver.open()  # a store created since the last poll is opened now
        latest = {entry.change_id: entry for entry in await runner.driver.read_states()}
        pending = list(_not_applied(pipeline, latest))
        blocked = _blocked(pipeline, latest)
        if blocked and not await _lock_is_free(runner):
            blocked = []  # a STARTED entry under a held lock may be a run in progress
        waited = time.monotonic() - started
        if not pending or blocked or waited >= timeout:
            return _Waited(pending, blocked, waited)
        await asyncio.sleep(min(interval, timeout - waited))


def _blocked(pipeline: Any, latest: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (id, state) of each change that the next run would stop at."""
    from ._state_table import Action, decide

    return [
        (change.id, latest[change.id].state.value)
        for change in pipeline
        if change.id in latest and decide(change, latest[change.id]) is Action.MANUAL_INTERVENTION
    ]


async def _lock_is_free(runner: AsyncRunner) -> bool:
    record = await runner.driver.read_lock(runner.lock_settings.key)
    return record is None or record.is_free


def _not_applied(pipeline: Any, latest: dict[str, Any]) -> Iterator[str]:
    for change in pipeline:
        entry = latest.get(change.id)
        if entry is None or not entry.state.is_applied:
            yield change.id


def main() -> None:
    """Entry point of the `flamingock` console script."""
    import gc

    # The process runs one command and exits, and what the imports created (modules,
    # classes, functions) lives until then. Freezing it keeps the garbage collector from
    # scanning it again at every collection and at exit: a start with nothing pending then
    # executes about 6% fewer instructions.
    gc.freeze()
    cli(prog_name="flamingock")


if __name__ == "__main__":
    main()
