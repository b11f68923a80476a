"""Run the pipeline from an ASGI lifespan, with liveness and readiness probes and a route guard.

Works for any Starlette application, FastAPI included; only Starlette is required
(`pip install 'flamingock-async[fastapi]'`)::

    from fastapi import Depends, FastAPI
    from flamingock_async import AsyncRunner
    from flamingock_async.fastapi import ReadinessGuard, flamingock_lifespan

    runner = AsyncRunner("sqlite:///app.db", "myapp.changes")
    flamingock = flamingock_lifespan(runner)          # background mode
    app = FastAPI(lifespan=flamingock)
    app.include_router(flamingock.api_router())       # GET /livez and GET /readyz
    app.add_middleware(ReadinessGuard, flamingock=flamingock)
    # or per route: @app.get("/items", dependencies=[Depends(flamingock.require_ready)])

Modes:

* `background` (default): the lifespan starts `runner.run()` as a task it owns and returns
  at once, so the server opens its port and responds to probes while changes run. Readiness is 503
  until the run completes. Liveness is 200 while the run shows signs of life.
* `blocking`: the lifespan awaits the run before the server starts serving. A failed run
  raises, so the server reports that startup failed (uvicorn then exits with status 3). No
  probe gets a response while the run goes on, so Kubernetes needs a startup probe long
  enough for the slowest run. uvicorn also acts on SIGTERM only once startup is over.

After a failed run the service is never ready. In background mode, `on_failure="stay_unready"`
also turns liveness to 503, so that Kubernetes restarts the container, and
`on_failure="exit"` sends the process SIGTERM so that the server shuts down gracefully, then
ends it with `exit_code`. A run that did nothing because the lock stayed taken
(`on_lock_timeout="skip"`) counts as failed here, because the changes may still be pending.

On shutdown during a run (SIGTERM), the run task is cancelled: the runner audits the running
change, rolls it back or lets its transaction abort, and releases the lock, shielded and
bounded by the runner's `shutdown_grace`. The lifespan waits for that cleanup, then leaves
the application's own lifespan, then closes the runner's driver.

Probes read state kept in memory and do no I/O, so they answer at once even while the store
is slow. They cannot answer while a change blocks the event loop with synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc

from ._errors import ConfigurationError, LockNotAcquiredError
from ._progress import RunReport
from ._runner import AsyncRunner

try:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Route
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "flamingock_async.fastapi needs the 'starlette' package, which is not installed; "
        "install it with: pip install 'flamingock-async[fastapi]'"
    ) from error

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = [
    "FlamingockLifespan",
    "ReadinessGuard",
    "flamingock_lifespan",
    "Mode",
    "OnFailure",
    "AppLifespan",
]

logger = logging.getLogger(__name__)

Mode = Literal["background", "blocking"]
OnFailure = Literal["stay_unready", "exit"]
AppLifespan = Callable[[Any], AbstractAsyncContextManager[Any]]
"""The application's own lifespan: called with the app, returns an async context manager."""

_MODES = ("background", "blocking")
_ON_FAILURE = ("stay_unready", "exit")
WEBSOCKET_TRY_AGAIN_LATER = 1013
"""WebSocket close code for a service that is temporarily unavailable (RFC 6455 registry)."""


def flamingock_lifespan(
    runner: AsyncRunner,
    *,
    mode: Mode = "background",
    on_failure: OnFailure = "stay_unready",
    lifespan: AppLifespan | None = None,
    liveness_timeout: float | None = None,
    exit_code: int = 1,
    retry_after: int = 5,
    liveness_path: str = "/livez",
    readiness_path: str = "/readyz",
) -> FlamingockLifespan:
    """Build the lifespan that runs `runner` at startup; pass it as `lifespan=` to the app.

    `lifespan` is the application's own lifespan; it is entered first and left last, and the
    state it yields is passed through unchanged. `liveness_timeout` is how many seconds
    without a sign of life from the runner turn liveness to 503. Signs of life are lock
    attempts, lease renewals, and changes that start or finish. It defaults to twice the lock
    lease, or to three lock poll intervals if that is longer. `exit_code` is the process
    exit status for `on_failure="exit"`. In blocking mode a failed run always fails the
    startup, whatever `on_failure` says. `retry_after` is the `Retry-After` value, in
    seconds, of guarded responses. The paths are those of the probe routes.
    """
    return FlamingockLifespan(
        runner,
        mode=mode,
        on_failure=on_failure,
        lifespan=lifespan,
        liveness_timeout=liveness_timeout,
        exit_code=exit_code,
        retry_after=retry_after,
        liveness_path=liveness_path,
        readiness_path=readiness_path,
    )


@dataclasses.dataclass
class _Outcome:
    """What this lifespan recorded about its run, besides the runner's own progress."""

    started: bool = False
    report: RunReport | None = None
    error: str | None = None
    exit_requested: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None


class FlamingockLifespan:
    """An ASGI lifespan that runs the pipeline, and the probes and guard that report on it.

    Build it with `flamingock_lifespan()`. Calling it with the application returns the
    async context manager that Starlette and FastAPI enter at startup.
    """

    def __init__(
        self,
        runner: AsyncRunner,
        *,
        mode: Mode = "background",
        on_failure: OnFailure = "stay_unready",
        lifespan: AppLifespan | None = None,
        liveness_timeout: float | None = None,
        exit_code: int = 1,
        retry_after: int = 5,
        liveness_path: str = "/livez",
        readiness_path: str = "/readyz",
    ) -> None:
        _check_options(mode, on_failure, liveness_timeout, exit_code, retry_after)
        for name, path in (("liveness_path", liveness_path), ("readiness_path", readiness_path)):
            if not path.startswith("/"):
                raise ConfigurationError(
                    f"{name} must start with '/', got {path!r}; for example '/livez'."
                )
        self.runner = runner
        self.mode = mode
        self.on_failure = on_failure
        self.app_lifespan = lifespan
        self.liveness_timeout = (
            liveness_timeout if liveness_timeout is not None else _default_liveness(runner)
        )
        self.exit_code = exit_code
        self.retry_after = retry_after
        self.liveness_path = liveness_path
        self.readiness_path = readiness_path
        self._outcome = _Outcome()
        self._active = False

    # -- state -------------------------------------------------------------------------------

    @property
    def report(self) -> RunReport | None:
        """The report of the completed run, or None until the run completes."""
        return self._outcome.report

    @property
    def failed(self) -> bool:
        return self._outcome.failed

    def is_ready(self) -> bool:
        """Return whether the run completed, so that the service may take traffic."""
        report = self._outcome.report
        return report is not None and not report.not_run and not self._outcome.failed

    def is_live(self) -> bool:
        """Return False after a failed run, or when the running run shows no sign of life.

        A run that has not started yet or has completed is live.
        """
        if self._outcome.failed:
            return False
        if not self._outcome.started or self._outcome.report is not None:
            return True
        return self.seconds_since_progress() <= self.liveness_timeout

    def seconds_since_progress(self) -> float:
        """Return the seconds since the runner's last sign of life, on the monotonic clock."""
        return max(0.0, time.monotonic() - self.runner.progress.last_progress)

    def status(self) -> dict[str, Any]:
        """Return the probe body: readiness, liveness and the run's progress."""
        progress = self.runner.progress.as_dict()
        if self._outcome.error is not None:
            progress["error"] = self._outcome.error
        return {
            "ready": self.is_ready(),
            "live": self.is_live(),
            **progress,
            "seconds_since_progress": round(self.seconds_since_progress(), 3),
        }

    # -- lifespan ----------------------------------------------------------------------------

    def __call__(self, app: Any) -> AbstractAsyncContextManager[Any]:
        return self._lifespan(app)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[Any]:
        if self._active:
            raise RuntimeError(
                "This flamingock lifespan is already running; build one per application "
                "with flamingock_lifespan()."
            )
        self._active = True
        self._outcome = _Outcome()
        try:
            app_context = self.app_lifespan(app) if self.app_lifespan else contextlib.nullcontext()
            async with app_context as state:
                if self.mode == "blocking":
                    await self._run_blocking()
                    yield state
                else:
                    async with self._background_run():
                        yield state
        finally:
            self._active = False
            await self._close_driver()
        if self._outcome.exit_requested:
            _exit_process(self.exit_code)

    async def _run_blocking(self) -> None:
        self._outcome.started = True
        try:
            report = await self.runner.run()
        except Exception as error:
            self._outcome.error = _describe(error)
            raise
        self._record_report(report)
        if self._outcome.failed:
            raise LockNotAcquiredError(f"{self._outcome.error}; the service does not start.")

    @contextlib.asynccontextmanager
    async def _background_run(self) -> AsyncIterator[None]:
        """Run the pipeline in a task owned by this context; cancel it and wait on exit."""
        async with anyio.create_task_group() as tasks:
            await tasks.start(self._run_in_background)
            try:
                yield
            finally:
                self._log_if_interrupted()
                tasks.cancel_scope.cancel()

    async def _run_in_background(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the pipeline and record its outcome; an `Exception` is logged, not raised.

        An exception escaping here would cancel the task group and, through it, the server's
        lifespan task. Cancellation and other `BaseException`s propagate.
        """
        self._outcome.started = True
        task_status.started()
        try:
            report = await self.runner.run()
        except Exception as error:
            self._outcome.error = _describe(error)
            self._after_failure(error)
            return
        self._record_report(report)
        if self._outcome.failed:
            self._after_failure(None)
            return
        logger.info("The flamingock run completed; the service is ready")

    def _record_report(self, report: RunReport) -> None:
        self._outcome.report = report
        if report.not_run:
            settings = self.runner.lock_settings
            self._outcome.error = (
                f"The lock {settings.key!r} was not acquired within {settings.wait_timeout:g} s, "
                "so the changes may still be pending"
            )

    def _after_failure(self, error: BaseException | None) -> None:
        """Log the failure once, and stop the server when `on_failure` is 'exit'."""
        if self.on_failure == "stay_unready":
            logger.error(
                "The flamingock run failed; the service stays unready and liveness reports "
                "503 so that the container is restarted: %s",
                self._outcome.error,
                exc_info=error,
            )
            return
        logger.error(
            "The flamingock run failed; stopping the server, then exiting with status %d: %s",
            self.exit_code,
            self._outcome.error,
            exc_info=error,
        )
        self._outcome.exit_requested = True
        _stop_server()

    async def _close_driver(self) -> None:
        """Close the store connections the run opened, after the application's own lifespan.

        Some store libraries keep a thread per connection (aiosqlite does), and an open one
        would keep the interpreter from exiting after a failed startup or with `exit`.
        """
        with anyio.move_on_after(self.runner.shutdown_grace, shield=True) as scope:
            try:
                await self.runner.driver.aclose()
            except Exception:
                logger.warning(
                    "Closing %s failed at shutdown", self.runner.driver.describe(), exc_info=True
                )
        if scope.cancelled_caught:
            logger.warning(
                "Closing %s timed out after %g s at shutdown",
                self.runner.driver.describe(),
                self.runner.shutdown_grace,
            )

    def _log_if_interrupted(self) -> None:
        progress = self.runner.progress
        if not self._outcome.started or progress.state.is_final:
            return
        logger.warning(
            "Shutdown during the flamingock run (state %s, change %s): cancelling it; the "
            "change is audited and the lock released within %g s per step",
            progress.state.value,
            progress.current_change,
            self.runner.shutdown_grace,
        )

    # -- probes ------------------------------------------------------------------------------

    async def liveness(self, request: Request) -> Response:
        """Respond 200 while the run is alive or completed, 503 when it stalled or failed."""
        return self._probe_response(self.is_live())

    async def readiness(self, request: Request) -> Response:
        """Respond 200 once the run completed, 503 with the run's status until then."""
        return self._probe_response(self.is_ready())

    def _probe_response(self, healthy: bool) -> Response:
        return JSONResponse(
            self.status(),
            status_code=200 if healthy else 503,
            headers={"Cache-Control": "no-store"},
        )

    @property
    def routes(self) -> list[BaseRoute]:
        """The liveness and readiness routes, for `Starlette(routes=[...])`."""
        return [
            Route(
                self.liveness_path,
                self.liveness,
                methods=["GET", "HEAD"],
                name="flamingock_liveness",
                include_in_schema=False,
            ),
            Route(
                self.readiness_path,
                self.readiness,
                methods=["GET", "HEAD"],
                name="flamingock_readiness",
                include_in_schema=False,
            ),
        ]

    def api_router(self) -> APIRouter:
        """Return a FastAPI `APIRouter` with the probe routes, for `app.include_router()`."""
        try:
            from fastapi import APIRouter
        except ImportError as error:
            raise ImportError(
                "api_router() needs the 'fastapi' package, which is not installed; install "
                "it, or add FlamingockLifespan.routes to a Starlette application instead."
            ) from error
        router = APIRouter()
        for route in self.routes:
            if isinstance(route, Route):
                router.add_route(
                    route.path,
                    route.endpoint,
                    methods=sorted(route.methods or ()),
                    name=route.name,
                    include_in_schema=False,
                )
        return router

    @property
    def probe_paths(self) -> tuple[str, str]:
        return (self.liveness_path, self.readiness_path)

    # -- guard -------------------------------------------------------------------------------

    async def require_ready(self) -> None:
        """Raise HTTP 503 with `Retry-After` until the run completes; a FastAPI dependency."""
        if self.is_ready():
            return
        raise HTTPException(
            status_code=503,
            detail=self._unavailable_message(),
            headers={"Retry-After": str(self.retry_after)},
        )

    def _unavailable_message(self) -> str:
        if self._outcome.failed:
            return "The service is unavailable because applying its changes failed."
        return "The service is starting: its changes are still being applied."


class ReadinessGuard:
    """ASGI middleware that responds 503 with `Retry-After` until the run completes.

    HTTP requests get a JSON body with the run's status; WebSocket connections are closed
    with code 1013 (try again later). The probe paths and `exempt_paths` always pass, and so
    does everything once the service is ready. Paths are compared without the root path.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        flamingock: FlamingockLifespan,
        exempt_paths: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.flamingock = flamingock
        self.exempt_paths = frozenset((*flamingock.probe_paths, *exempt_paths))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._passes(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_TRY_AGAIN_LATER})
            return
        response = JSONResponse(
            {
                "detail": self.flamingock._unavailable_message(),
                "status": self.flamingock.status(),
            },
            status_code=503,
            headers={"Retry-After": str(self.flamingock.retry_after)},
        )
        await response(scope, receive, send)

    def _passes(self, scope: Scope) -> bool:
        if self.flamingock.is_ready():
            return True
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        return path in self.exempt_paths


# -- helpers -----------------------------------------------------------------------------------


def _check_options(
    mode: str,
    on_failure: str,
    liveness_timeout: float | None,
    exit_code: int,
    retry_after: int,
) -> None:
    if mode not in _MODES:
        raise ConfigurationError(f"mode must be 'background' or 'blocking', got {mode!r}.")
    if on_failure not in _ON_FAILURE:
        raise ConfigurationError(
            f"on_failure must be 'stay_unready' or 'exit', got {on_failure!r}."
        )
    if liveness_timeout is not None and not liveness_timeout > 0:
        raise ConfigurationError(
            f"liveness_timeout must be a positive number of seconds, got {liveness_timeout!r}."
        )
    if not 1 <= exit_code <= 255:
        raise ConfigurationError(
            f"exit_code must be between 1 and 255 so that the failure shows, got {exit_code!r}."
        )
    if retry_after < 0:
        raise ConfigurationError(f"retry_after must be zero or more seconds, got {retry_after!r}.")


def _default_liveness(runner: AsyncRunner) -> float:
    """Return twice the lease, or three poll intervals if longer.

    A holder renews every third of the lease and a waiter attempts about once per poll
    interval (at most 1.5 times it, with jitter), and each counts as a sign of life.
    """
    settings = runner.lock_settings
    return max(2 * settings.lease, 3 * settings.poll_interval)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _stop_server() -> None:
    """Ask the server to shut down gracefully, as on `kill <pid>`.

    On SIGTERM uvicorn stops accepting connections, finishes the requests in flight and runs
    the lifespan shutdown, which then sets the exit status.
    NOTE: checked with uvicorn 0.55 only; another server must also shut down on SIGTERM.
    """
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_process(code: int) -> None:
    """End the process with `code` once the lifespan shutdown has finished.

    The server would catch a `SystemExit` raised in the lifespan itself. Raised from a loop
    callback, asyncio lets it propagate out of the event loop instead: the server's remaining
    shutdown is cancelled, `finally` blocks and `atexit` handlers run, and the interpreter
    exits with `code`. Without it, uvicorn 0.55 re-raises the SIGTERM once it has shut down,
    and the process ends by that signal (status 143 in a shell).
    """
    asyncio.get_running_loop().call_soon(_raise_system_exit, code)


def _raise_system_exit(code: int) -> None:
    raise SystemExit(code)
