"""Real uvicorn processes on 127.0.0.1 for the end-to-end tests, and reads of their store."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx

from flamingock_async import AuditEntry
from flamingock_async._lock import LockRecord
from flamingock_async.drivers.sqlite import SQLiteDriver

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
REPOSITORY = HERE.parent.parent
STARTUP_TIMEOUT = 30.0
"""Seconds a test waits for a new process to respond; generous for a loaded 2-core machine."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Uvicorn:
    """One `python -m uvicorn` process serving an application on a free loopback port."""

    def __init__(
        self,
        target: str,
        *,
        log: Path,
        env: Mapping[str, str],
        cwd: Path = APPS,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable, "-m", "uvicorn", target,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--timeout-graceful-shutdown", "2", *extra,
        ]  # fmt: skip
        environment = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        environment["PYTHONPATH"] = os.pathsep.join([str(cwd), str(REPOSITORY / "src")])
        self.started_at = time.monotonic()
        self.first_answer_at: float | None = None
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=environment, stdout=output, stderr=subprocess.STDOUT
            )
        self.client = httpx.Client(base_url=self.url, timeout=5.0)

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def first_answer(self, path: str = "/livez") -> tuple[httpx.Response, float]:
        """Poll `path` until the server responds; return the response and seconds since spawn."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"uvicorn exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                answer = self.client.get(path, timeout=1.0)
            except httpx.TransportError:
                time.sleep(0.005)
                continue
            self.first_answer_at = time.time()
            return answer, time.monotonic() - self.started_at
        raise AssertionError(f"uvicorn did not respond to {path} in time:\n{self.output()}")

    def wait_for(self, path: str, status: int, timeout: float = STARTUP_TIMEOUT) -> httpx.Response:
        """Poll `path` until it responds with `status`; return that response."""
        deadline = time.monotonic() + timeout
        answer: httpx.Response | None = None
        while time.monotonic() < deadline:
            try:
                answer = self.client.get(path, timeout=1.0)
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == status:
                return answer
            time.sleep(0.05)
        last = answer.text if answer is not None else "no response"
        raise AssertionError(f"{path} never responded {status} (last: {last}):\n{self.output()}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the process if it still runs; used by fixtures after each test."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(condition: Callable[[], bool], timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not become true in time")
        time.sleep(0.05)


def read_store(
    path: Path, lock_key: str = "flamingock"
) -> tuple[LockRecord | None, list[AuditEntry]]:
    """Return the lock record and the whole audit log of the SQLite store at `path`."""

    async def read() -> tuple[LockRecord | None, list[AuditEntry]]:
        driver = SQLiteDriver(path)
        async with driver:
            return await driver.read_lock(lock_key), await driver.read_history()

    return anyio.run(read)


def read_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return list(connection.execute(query))
