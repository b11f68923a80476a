"""The lifespan adapter in process: every mode and failure path, on the memory driver.

These tests are about the adapter alone, so the store is the memory driver. The end-to-end
tests run real uvicorn processes on the SQLite store.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi_helpers import LifespanFailed, serving, until
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import flamingock_async.fastapi as adapter
from flamingock_async import (
    AsyncRunner,
    AuditState,
    ConfigurationError,
    LockSettings,
    RunState,
    change_unit,
)
from flamingock_async._lock import LockManager
from flamingock_async.drivers.memory import MemoryDriver, MemoryStore, MemoryTransaction
from flamingock_async.fastapi import FlamingockLifespan, ReadinessGuard, flamingock_lifespan


class Gate:
    """Holds the slow change until the test releases it."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()


@change_unit(id="slow-change", order="0001", author="tests", transactional=False)
class SlowChange:
    async def execute(self, gate: Gate, data: dict[str, Any]) -> None:
        gate.entered.set()
        await gate.release.wait()
        data["slow"] = "applied"

    async def rollback(self, data: dict[str, Any]) -> None:
        data["slow"] = "rolled back"


@change_unit(id="broken-change", order="0002", author="tests")
class BrokenChange:
    async def execute(self, tx: MemoryTransaction) -> None:
        tx.data["half"] = "written"
        raise RuntimeError("the target rejected the change")


@change_unit(id="quick-change", order="0001", author="tests")
class QuickChange:
    async def execute(self, tx: MemoryTransaction) -> None:
        tx.data["quick"] = "applied"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the adapter's requests to stop the server and to exit, instead of doing them."""
    calls: list[str] = []
    monkeypatch.setattr(adapter, "_stop_server", lambda: calls.append("stop"))
    monkeypatch.setattr(adapter, "_exit_process", lambda code: calls.append(f"exit {code}"))
    return calls


def make_runner(
    store: MemoryStore, changes: list[type], *deps: object, **options: Any
) -> AsyncRunner:
    return AsyncRunner(MemoryDriver(store), changes, dependencies=list(deps), **options)


def make_app(flamingock: FlamingockLifespan) -> FastAPI:
    app = FastAPI(lifespan=flamingock)
    app.include_router(flamingock.api_router())
    app.add_middleware(ReadinessGuard, flamingock=flamingock)

    @app.get("/items")
    async def items() -> list[int]:
        return [1, 2]

    return app


def audit_states(store: MemoryStore, change_id: str) -> list[AuditState]:
    return [entry.state for entry in store.audit if entry.change_id == change_id]


# -- background mode ---------------------------------------------------------------------------


async def test_background_probes_during_run(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate))
    async with serving(make_app(flamingock)) as client:
        await gate.entered.wait()
        liveness = await client.get("/livez")
        readiness = await client.get("/readyz")
        gate.release.set()

    assert liveness.status_code == 200
    assert readiness.status_code == 503
    body = readiness.json()
    assert body["ready"] is False
    assert body["live"] is True
    assert body["state"] == RunState.RUNNING.value
    assert body["current_change"] == "slow-change"
    assert body["applied"] == 0
    assert body["pending"] == 1
    assert body["error"] is None


async def test_background_probes_answer_head(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate))
    async with serving(make_app(flamingock)) as client:
        await gate.entered.wait()
        liveness = await client.head("/livez")
        readiness = await client.head("/readyz")
        gate.release.set()

    assert liveness.status_code == 200
    assert readiness.status_code == 503


async def test_ready_after_run_completes(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate))
    async with serving(make_app(flamingock)) as client:
        await gate.entered.wait()
        gate.release.set()
        await until(lambda: flamingock.report is not None)
        liveness = await client.get("/livez")
        readiness = await client.get("/readyz")
        items = await client.get("/items")

    assert liveness.status_code == 200
    assert readiness.status_code == 200
    assert readiness.json()["state"] == RunState.COMPLETED.value
    assert readiness.json()["applied"] == 1
    assert items.status_code == 200
    assert store.data["slow"] == "applied"


async def test_guard_middleware_refuses_until_ready(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate), retry_after=7)
    async with serving(make_app(flamingock)) as client:
        await gate.entered.wait()
        refused = await client.get("/items")
        unknown = await client.get("/nowhere")
        gate.release.set()

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "7"
    assert refused.json()["status"]["current_change"] == "slow-change"
    assert "still being applied" in refused.json()["detail"]
    assert unknown.status_code == 503


async def test_guard_dependency_refuses_until_ready(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate))
    app = FastAPI(lifespan=flamingock)

    @app.get("/guarded", dependencies=[Depends(flamingock.require_ready)])
    async def guarded() -> str:
        return "served"

    async with serving(app) as client:
        await gate.entered.wait()
        refused = await client.get("/guarded")
        gate.release.set()
        await until(flamingock.is_ready)
        served = await client.get("/guarded")

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "still being applied" in refused.json()["detail"]
    assert served.status_code == 200
    assert served.json() == "served"


async def test_liveness_fails_when_run_stalls(store: MemoryStore, gate: Gate) -> None:
    """A change that shows no progress for longer than liveness_timeout fails liveness."""
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate), liveness_timeout=0.2)
    async with serving(make_app(flamingock)) as client:
        await gate.entered.wait()
        await until(lambda: flamingock.seconds_since_progress() > 0.3)
        stalled = await client.get("/livez")
        gate.release.set()
        await until(flamingock.is_ready)
        recovered = await client.get("/livez")

    assert stalled.status_code == 503
    assert stalled.json()["state"] == RunState.RUNNING.value
    assert recovered.status_code == 200


async def test_lease_renewals_keep_liveness(store: MemoryStore, gate: Gate) -> None:
    """Lease renewals count as progress: a long change with a live lease stays live."""
    runner = make_runner(store, [SlowChange], gate, lock=LockSettings(lease=0.3))
    flamingock = flamingock_lifespan(runner, liveness_timeout=0.25)
    async with serving(make_app(flamingock)) as client:
        await gate.entered.wait()
        entered_at = runner.progress.last_progress
        await until(lambda: runner.progress.last_progress > entered_at + 0.3)
        liveness = await client.get("/livez")
        gate.release.set()

    assert liveness.status_code == 200


# -- failures ----------------------------------------------------------------------------------


async def test_failed_transactional_change_never_ready(
    store: MemoryStore, exits: list[str]
) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [BrokenChange]))
    async with serving(make_app(flamingock)) as client:
        await until(lambda: flamingock.failed)
        readiness = await client.get("/readyz")
        liveness = await client.get("/livez")
        items = await client.get("/items")

    assert readiness.status_code == 503
    assert readiness.json()["state"] == RunState.FAILED.value
    assert "the target rejected the change" in readiness.json()["error"]
    assert liveness.status_code == 503
    assert items.status_code == 503
    assert "failed" in items.json()["detail"]
    assert flamingock.report is None
    assert "half" not in store.data
    assert audit_states(store, "broken-change") == [AuditState.FAILED]
    assert exits == []


async def test_failed_run_stays_unready_for_good(store: MemoryStore, exits: list[str]) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [BrokenChange]))
    async with serving(make_app(flamingock)) as client:
        await until(lambda: flamingock.failed)
        await anyio.sleep(0.1)
        later = await client.get("/readyz")

    assert later.status_code == 503
    assert flamingock.is_ready() is False


async def test_failed_run_exit_stops_server(store: MemoryStore, exits: list[str]) -> None:
    flamingock = flamingock_lifespan(
        make_runner(store, [BrokenChange]), on_failure="exit", exit_code=7
    )
    async with serving(make_app(flamingock)) as client:
        await until(lambda: flamingock.failed)
        stop_requested = list(exits)
        readiness = await client.get("/readyz")
        liveness = await client.get("/livez")

    assert stop_requested == ["stop"]
    assert exits == ["stop", "exit 7"]
    assert readiness.status_code == 503
    assert liveness.status_code == 503


async def test_lock_not_acquired_counts_as_failed(store: MemoryStore, exits: list[str]) -> None:
    """A run skipped because another runner kept the lock never reports ready."""
    holder = LockManager(MemoryDriver(store), LockSettings(key="flamingock"))
    await holder.acquire()
    runner = make_runner(
        store,
        [QuickChange],
        lock=LockSettings(wait_timeout=0, poll_interval=0.05),
        on_lock_timeout="skip",
    )
    flamingock = flamingock_lifespan(runner)
    async with serving(make_app(flamingock)) as client:
        await until(lambda: flamingock.failed)
        readiness = await client.get("/readyz")
        liveness = await client.get("/livez")

    assert readiness.status_code == 503
    assert readiness.json()["state"] == RunState.NOT_RUN.value
    assert "was not acquired" in readiness.json()["error"]
    assert liveness.status_code == 503
    assert "quick" not in store.data


# -- blocking mode -----------------------------------------------------------------------------


async def test_blocking_runs_before_serving(store: MemoryStore) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [QuickChange]), mode="blocking")
    async with serving(make_app(flamingock)) as client:
        readiness = await client.get("/readyz")
        items = await client.get("/items")

    assert readiness.status_code == 200
    assert items.status_code == 200
    assert store.data["quick"] == "applied"


async def test_blocking_failure_fails_startup(store: MemoryStore, exits: list[str]) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [BrokenChange]), mode="blocking")
    with pytest.raises(LifespanFailed, match="the target rejected the change"):
        async with serving(make_app(flamingock)):
            pass

    assert flamingock.is_ready() is False
    assert flamingock.failed is True
    assert exits == []


async def test_blocking_lock_not_acquired_fails_startup(store: MemoryStore) -> None:
    holder = LockManager(MemoryDriver(store), LockSettings(key="flamingock"))
    await holder.acquire()
    runner = make_runner(
        store,
        [QuickChange],
        lock=LockSettings(wait_timeout=0, poll_interval=0.05),
        on_lock_timeout="skip",
    )
    flamingock = flamingock_lifespan(runner, mode="blocking")
    with pytest.raises(LifespanFailed, match="was not acquired"):
        async with serving(make_app(flamingock)):
            pass


# -- shutdown ----------------------------------------------------------------------------------


async def test_shutdown_during_run_audits_and_releases(store: MemoryStore, gate: Gate) -> None:
    runner = make_runner(store, [SlowChange], gate)
    flamingock = flamingock_lifespan(runner)
    async with serving(make_app(flamingock)):
        await gate.entered.wait()

    lock = store.locks["flamingock"]
    assert lock.owner is None
    assert audit_states(store, "slow-change") == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
    ]
    assert store.data["slow"] == "rolled back"
    assert flamingock.is_ready() is False


async def test_shutdown_after_run_leaves_audit(store: MemoryStore) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [QuickChange]))
    async with serving(make_app(flamingock)):
        await until(flamingock.is_ready)

    assert audit_states(store, "quick-change") == [AuditState.APPLIED]
    assert store.locks["flamingock"].owner is None


# -- the application's own lifespan -------------------------------------------------------------


async def test_app_lifespan_state_passed_through(store: MemoryStore, gate: Gate) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def own_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        events.append("app started")
        yield {"greeting": "hello"}
        events.append(f"app stopped, change {store.data.get('slow')}")

    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate), lifespan=own_lifespan)
    app = FastAPI(lifespan=flamingock)

    @app.get("/greeting")
    async def greeting(request: Request) -> str:
        return str(request.state.greeting)

    async with serving(app) as client:
        await gate.entered.wait()
        events.append("change running")
        answer = await client.get("/greeting")

    assert answer.json() == "hello"
    assert events == ["app started", "change running", "app stopped, change rolled back"]


async def test_app_lifespan_without_state(store: MemoryStore) -> None:
    @contextlib.asynccontextmanager
    async def own_lifespan(app: Any) -> AsyncIterator[None]:
        yield

    flamingock = flamingock_lifespan(make_runner(store, [QuickChange]), lifespan=own_lifespan)
    async with serving(make_app(flamingock)) as client:
        await until(flamingock.is_ready)
        readiness = await client.get("/readyz")

    assert readiness.status_code == 200


# -- other applications and options --------------------------------------------------------------


async def test_plain_starlette_application(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate))

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[*flamingock.routes, Route("/hello", hello)],
        middleware=[Middleware(ReadinessGuard, flamingock=flamingock)],
        lifespan=flamingock,
    )
    async with serving(app) as client:
        await gate.entered.wait()
        refused = await client.get("/hello")
        readiness = await client.get("/readyz")
        gate.release.set()
        await until(flamingock.is_ready)
        served = await client.get("/hello")

    assert refused.status_code == 503
    assert readiness.status_code == 503
    assert served.text == "hello"


async def test_custom_probe_paths(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(
        make_runner(store, [SlowChange], gate),
        liveness_path="/health/live",
        readiness_path="/health/ready",
    )
    async with serving(make_app(flamingock)) as client:
        await gate.entered.wait()
        liveness = await client.get("/health/live")
        readiness = await client.get("/health/ready")
        default = await client.get("/livez")
        gate.release.set()

    assert liveness.status_code == 200
    assert readiness.status_code == 503
    assert default.status_code == 503


async def test_guard_exempt_paths_and_root_path(store: MemoryStore, gate: Gate) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [SlowChange], gate))
    app = make_app(flamingock)
    guard = ReadinessGuard(app, flamingock=flamingock, exempt_paths=("/version",))
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/version",
        "root_path": "/api",
        "headers": [],
        "query_string": b"",
    }
    passed: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    guard.app = inner
    await guard(scope, receive, send)
    await guard({**scope, "path": "/api/items"}, receive, send)

    assert passed == ["/api/version"]
    assert sent[0]["status"] == 503


async def test_guard_closes_websocket_until_ready(store: MemoryStore) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [QuickChange]))
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the guarded application must not be called")

    guard = ReadinessGuard(inner, flamingock=flamingock)
    await guard({"type": "websocket", "path": "/ws", "headers": []}, receive, send)

    assert sent == [{"type": "websocket.close", "code": 1013}]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("mode", "eager"),
        ("on_failure", "crash"),
        ("exit_code", 0),
        ("exit_code", 256),
        ("liveness_timeout", 0),
        ("retry_after", -1),
        ("liveness_path", "livez"),
        ("readiness_path", ""),
    ],
)
def test_invalid_option_rejected(store: MemoryStore, option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=option):
        flamingock_lifespan(make_runner(store, [QuickChange]), **{option: value})  # type: ignore[arg-type]


def test_default_liveness_timeout_follows_lease(store: MemoryStore) -> None:
    runner = make_runner(store, [QuickChange], lock=LockSettings(lease=12))
    flamingock = flamingock_lifespan(runner)

    assert flamingock.liveness_timeout == 24


async def test_lifespan_reentry_rejected(store: MemoryStore) -> None:
    flamingock = flamingock_lifespan(make_runner(store, [QuickChange]))
    app = make_app(flamingock)
    async with flamingock(app):
        with pytest.raises(RuntimeError, match="already running"):
            async with flamingock(app):
                pass


async def test_lifespan_reusable_after_exit(store: MemoryStore, exits: list[str]) -> None:
    """A second startup (a test client opened twice) starts from a clean outcome."""
    flamingock = flamingock_lifespan(make_runner(store, [BrokenChange]))
    app = make_app(flamingock)
    async with serving(app):
        await until(lambda: flamingock.failed)
    store.audit.clear()
    flamingock.runner = make_runner(store, [QuickChange])
    async with serving(app) as client:
        await until(flamingock.is_ready)
        readiness = await client.get("/readyz")

    assert readiness.status_code == 200
