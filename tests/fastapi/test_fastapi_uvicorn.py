"""The adapter end to end: real uvicorn processes on 127.0.0.1, the SQLite store on disk.

The service under test is `apps/e2e_service.py`; its environment variables choose the
changes (a slow one, a failing one), the mode and the failure policy.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from uvicorn_helpers import Uvicorn, read_rows, read_store, wait_until

from flamingock_async import AuditState

pytestmark = pytest.mark.slow

SHUTDOWN_GRACE = 5.0


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "service.db"


@pytest.fixture
def start(tmp_path: Path, store_path: Path) -> Iterator[Callable[..., Uvicorn]]:
    """Start e2e_service processes; every one still running is stopped after the test."""
    started: list[Uvicorn] = []

    def start_service(extra: tuple[str, ...] = (), **env: str) -> Uvicorn:
        variables = {"E2E_STORE": f"sqlite:///{store_path}", "E2E_SHUTDOWN_GRACE": "5"}
        variables.update({f"E2E_{name.upper()}": value for name, value in env.items()})
        log = tmp_path / f"uvicorn-{len(started)}.log"
        server = Uvicorn("e2e_service:app", log=log, env=variables, extra=extra)
        started.append(server)
        return server

    yield start_service
    for server in started:
        server.stop()


def states(entries: list[Any], change_id: str) -> list[AuditState]:
    return [entry.state for entry in entries if entry.change_id == change_id]


def test_probes_answer_during_slow_change(start: Callable[..., Uvicorn]) -> None:
    server = start(changes="slow", slow_seconds="4")
    first, latency = server.first_answer("/livez")
    readiness = server.get("/readyz")
    guarded = server.get("/items")
    # Shown with `pytest -rP`; measurements, not pass conditions.
    print(f"first /livez answer {latency:.3f} s after the process was spawned")
    entered = re.search(r"lifespan entered at ([0-9.]+)", server.output())
    if entered is not None and server.first_answer_at is not None:
        since_lifespan = server.first_answer_at - float(entered.group(1))
        print(f"first /livez answer {since_lifespan * 1000:.0f} ms after the lifespan started")

    assert first.status_code == 200
    assert readiness.status_code == 503
    assert readiness.json()["ready"] is False
    assert readiness.json()["state"] in ("CHECKING", "WAITING_FOR_LOCK", "RUNNING")
    assert guarded.status_code == 503
    assert guarded.headers["retry-after"] == "5"


def test_probes_turn_ready_after_run(start: Callable[..., Uvicorn]) -> None:
    server = start(changes="slow", slow_seconds="2")
    server.first_answer("/livez")
    running = server.wait_for("/readyz", 503)
    ready = server.wait_for("/readyz", 200)
    liveness = server.get("/livez")
    items = server.get("/items")

    assert running.json()["current_change"] in (None, "slow-backfill")
    assert ready.json()["state"] == "COMPLETED"
    assert ready.json()["applied"] == 2
    assert liveness.status_code == 200
    assert items.status_code == 200


def test_failing_change_keeps_readiness_503(
    start: Callable[..., Uvicorn], store_path: Path
) -> None:
    server = start(changes="failing")
    server.first_answer("/livez")
    failed = server.wait_for("/livez", 503)
    readiness = server.get("/readyz")
    items = server.get("/items")
    lock, entries = read_store(store_path)

    assert failed.json()["state"] == "FAILED"
    assert "no_such_table" in failed.json()["error"]
    assert readiness.status_code == 503
    assert items.status_code == 503
    assert server.process.poll() is None
    assert states(entries, "broken-index") == [AuditState.FAILED]
    assert read_rows(store_path, "SELECT name FROM sqlite_master WHERE name = 'half_done'") == []
    assert lock is not None
    assert lock.owner is None


def test_failing_change_exit_ends_process(start: Callable[..., Uvicorn]) -> None:
    server = start(changes="failing", on_failure="exit", exit_code="7")
    code = server.wait(timeout=30)

    assert code == 7
    assert "stopping the server, then exiting with status 7" in server.output()


def test_sigterm_during_change_audits_and_releases(
    start: Callable[..., Uvicorn], store_path: Path
) -> None:
    server = start(changes="slow", slow_seconds="60")
    server.first_answer("/livez")
    wait_until(lambda: server.get("/readyz").json()["current_change"] == "slow-backfill")
    server.terminate()
    code = server.wait(timeout=SHUTDOWN_GRACE * 2 + 10)
    lock, entries = read_store(store_path)
    marks = [row[0] for row in read_rows(store_path, "SELECT name FROM marks ORDER BY rowid")]

    # uvicorn re-raises the SIGTERM once its graceful shutdown is over, so the process ends
    # by that signal; a hung shutdown would have failed the wait above instead.
    assert code == -signal.SIGTERM
    assert lock is not None
    assert lock.owner is None
    assert states(entries, "slow-backfill") == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
    ]
    assert states(entries, "create-items") == []
    assert marks == ["started", "rolled back"]


def test_restart_after_sigterm_applies_change(
    start: Callable[..., Uvicorn], store_path: Path
) -> None:
    """A change rolled back on shutdown is applied again by the next process."""
    first = start(changes="slow", slow_seconds="60")
    first.first_answer("/livez")
    wait_until(lambda: first.get("/readyz").json()["current_change"] == "slow-backfill")
    first.terminate()
    first.wait(timeout=SHUTDOWN_GRACE * 2 + 10)
    second = start(changes="slow", slow_seconds="0.5")
    second.first_answer("/livez")
    second.wait_for("/readyz", 200)
    _, entries = read_store(store_path)

    assert states(entries, "slow-backfill")[-1] == AuditState.APPLIED
    assert states(entries, "create-items") == [AuditState.APPLIED]


def test_blocking_mode_serves_only_when_ready(start: Callable[..., Uvicorn]) -> None:
    server = start(changes="slow", slow_seconds="1", mode="blocking")
    first, _ = server.first_answer("/readyz")
    items = server.get("/items")

    assert first.status_code == 200
    assert first.json()["state"] == "COMPLETED"
    assert items.status_code == 200


def test_blocking_mode_failure_fails_startup(start: Callable[..., Uvicorn]) -> None:
    server = start(changes="failing", mode="blocking")
    code = server.wait(timeout=30)

    assert code == 3
    assert "Application startup failed" in server.output()


def test_several_processes_apply_once(start: Callable[..., Uvicorn], store_path: Path) -> None:
    """Three processes of one service on one store: one applies, all turn ready."""
    servers = [start(changes="slow", slow_seconds="2") for _ in range(3)]
    for server in servers:
        server.first_answer("/livez")
    answers = [server.wait_for("/readyz", 200) for server in servers]
    _, entries = read_store(store_path)
    applied = [entry for entry in entries if entry.state is AuditState.APPLIED]
    marks = read_rows(store_path, "SELECT name, pid FROM marks")

    assert all(server.process.poll() is None for server in servers)
    assert [answer.json()["state"] for answer in answers] == ["COMPLETED"] * 3
    assert sorted(entry.change_id for entry in applied) == ["create-items", "slow-backfill"]
    assert len({entry.execution_id for entry in applied}) == 1
    assert [name for name, _ in marks] == ["started", "finished"]
    assert sum(answer.json()["applied"] for answer in answers) == 2
    for server in servers:
        server.terminate()
    assert [server.wait(timeout=20) for server in servers] == [-signal.SIGTERM] * 3
