"""The runnable examples under integrations/, run as their README shows, on SQLite files.

The bookmarks service is served by uvicorn with two worker processes on one store; the jobs
worker runs as three processes on one store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uvicorn_helpers import REPOSITORY, Uvicorn, read_rows, read_store, wait_until

from flamingock_async import AuditState

pytestmark = pytest.mark.slow

SERVICE = REPOSITORY / "integrations" / "fastapi_service"
WORKER = REPOSITORY / "integrations" / "worker"


@pytest.fixture
def bookmarks(tmp_path: Path) -> Iterator[tuple[Uvicorn, Path]]:
    """The bookmarks service under `uvicorn --workers 2`, on a fresh SQLite file."""
    store = tmp_path / "bookmarks.db"
    server = Uvicorn(
        "bookmarks.app:app",
        log=tmp_path / "bookmarks.log",
        env={"BOOKMARKS_STORE": f"sqlite:///{store}"},
        cwd=SERVICE,
        extra=("--workers", "2"),
    )
    yield server, store
    server.stop()


def test_bookmarks_service_applies_once(bookmarks: tuple[Uvicorn, Path]) -> None:
    server, store = bookmarks
    server.first_answer("/livez")
    ready = server.wait_for("/readyz", 200)
    answers = [server.get("/readyz") for _ in range(10)]
    _, entries = read_store(store, lock_key="bookmarks")
    applied = [entry for entry in entries if entry.state is AuditState.APPLIED]

    assert ready.json()["state"] == "COMPLETED"
    assert sorted(entry.change_id for entry in applied) == [
        "add-bookmark-tags",
        "create-bookmarks-table",
        "seed-welcome-bookmark",
    ]
    assert len({entry.execution_id for entry in applied}) == 1
    assert {answer.status_code for answer in answers} == {200}
    assert server.process.poll() is None


def test_bookmarks_service_serves_its_data(bookmarks: tuple[Uvicorn, Path]) -> None:
    server, store = bookmarks
    server.first_answer("/livez")
    server.wait_for("/readyz", 200)
    created = server.client.post(
        "/bookmarks", json={"url": "https://example.org/", "title": "Example", "tags": ["a"]}
    )
    tagged = server.get("/bookmarks?tag=a")
    welcome = server.get("/bookmarks/welcome")
    missing = server.get("/bookmarks/nothing")

    assert created.status_code == 201
    assert [item["url"] for item in tagged.json()] == ["https://example.org/"]
    assert welcome.json()["tags"] == ["python"]
    assert missing.status_code == 404
    assert read_rows(store, "SELECT count(*) FROM bookmarks") == [(2,)]


def test_bookmarks_service_stops_on_sigterm(bookmarks: tuple[Uvicorn, Path]) -> None:
    server, store = bookmarks
    server.first_answer("/livez")
    server.wait_for("/readyz", 200)
    server.terminate()
    code = server.wait(timeout=30)
    lock, _ = read_store(store, lock_key="bookmarks")

    assert code == 0
    assert lock is not None
    assert lock.owner is None
    with pytest.raises(httpx.TransportError):
        server.get("/livez")


DONE = "SELECT count(*) FROM jobs WHERE status = 'done'"


def enqueue(store: Path, payloads: list[str]) -> None:
    with contextlib.closing(sqlite3.connect(store)) as db:
        db.executemany("INSERT INTO jobs (payload) VALUES (?)", [(text,) for text in payloads])
        db.commit()


def start_worker(store: Path, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "JOBS_STORE": f"sqlite:///{store}",
        "JOBS_POLL_INTERVAL": "0.1",
        "PYTHONPATH": os.pathsep.join([str(WORKER), str(REPOSITORY / "src")]),
    }
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs_worker"],
            cwd=WORKER,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def test_workers_migrate_then_consume(tmp_path: Path) -> None:
    """Three workers on one empty store: the changes are applied once, each job done once."""
    store = tmp_path / "jobs.db"
    logs = [tmp_path / f"worker-{index}.log" for index in range(3)]
    workers = [start_worker(store, log) for log in logs]
    try:
        wait_until(lambda: all("consuming jobs" in log.read_text() for log in logs))
        enqueue(store, ["one two three"] * 60)
        wait_until(lambda: read_rows(store, DONE) == [(60,)])
        running = [worker.poll() is None for worker in workers]
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=20) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    _, entries = read_store(store, lock_key="jobs")
    applied = [entry for entry in entries if entry.state is AuditState.APPLIED]
    jobs = read_rows(store, "SELECT result, attempts, count(*) FROM jobs GROUP BY 1, 2")

    assert running == [True, True, True]
    assert codes == [0, 0, 0]
    assert len(applied) == 3
    assert len({entry.execution_id for entry in applied}) == 1
    assert jobs == [("3", 1, 60)]
