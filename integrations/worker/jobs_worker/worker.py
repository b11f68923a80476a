"""The worker: apply the pipeline, then claim and process jobs until SIGTERM or SIGINT.

A signal during the run cancels it, so the runner audits the running change and releases
the lock within its shutdown grace. A signal while consuming lets the current job finish
and then stops. Several workers may share one database: claiming a job is one atomic
UPDATE, so no job is taken twice.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

import anyio
import anyio.abc

from flamingock_async import AsyncRunner, FlamingockError, LockSettings
from flamingock_async.drivers import driver_from_url

logger = logging.getLogger("jobs_worker")

DEFAULT_STORE = "sqlite:///jobs.db"
CLAIM = (
    "UPDATE jobs SET status = 'running', worker = ?, attempts = attempts + 1 "
    "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1) "
    "RETURNING id, payload"
)


def build_runner(store_url: str) -> AsyncRunner:
    if not store_url.startswith("sqlite:"):
        scheme = store_url.partition(":")[0]
        raise ValueError(
            f"The jobs worker keeps its queue in SQLite, got a {scheme!r} store URL; "
            "set JOBS_STORE to a sqlite:/// URL."
        )
    # A driver passed in stays open after the run, so the worker can consume jobs through it.
    return AsyncRunner(
        driver_from_url(store_url),
        "jobs_worker.changes",
        lock=LockSettings(key="jobs", poll_interval=0.5),
        shutdown_grace=float(os.environ.get("FLAMINGOCK_SHUTDOWN_GRACE", "10")),
    )


def process(payload: str) -> str:
    """Do the work of one job: here, count the words of its payload."""
    return str(len(payload.split()))


class Worker:
    """Applies the pipeline once, then consumes jobs until it is asked to stop."""

    def __init__(self, runner: AsyncRunner, *, poll_interval: float = 0.5) -> None:
        self.runner = runner
        self.poll_interval = poll_interval
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.processed = 0
        self._stopping = anyio.Event()
        self._run_scope = anyio.CancelScope()

    async def serve(self) -> int:
        """Return the process exit status: 0 after a clean stop, 1 if the run failed."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch_signals)
            try:
                status = await self._migrate_then_consume()
            finally:
                tasks.cancel_scope.cancel()
        return status

    async def _migrate_then_consume(self) -> int:
        with self._run_scope:
            try:
                report = await self.runner.run()
            except FlamingockError:
                logger.exception("The run failed; no job is taken")
                return 1
            logger.info("Changes applied: %d; consuming jobs as %s", len(report.applied), self.name)
        if self._run_scope.cancelled_caught:
            logger.info("Stopped during the run; the next start resumes it")
            return 0
        await self._consume()
        logger.info("Stopped after %d jobs", self.processed)
        return 0

    async def _consume(self) -> None:
        connection: Any = self.runner.driver.target_dependencies()["connection"]
        while not self._stopping.is_set():
            rows = list(await connection.execute_fetchall(CLAIM, (self.name,)))
            if not rows:
                with anyio.move_on_after(self.poll_interval):
                    await self._stopping.wait()
                continue
            job_id, payload = rows[0]
            result = process(payload)
            await connection.execute(
                "UPDATE jobs SET status = 'done', result = ? WHERE id = ?", (result, job_id)
            )
            self.processed += 1

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for received in signals:
                logger.info("Received %s; stopping", signal.Signals(received).name)
                self._run_scope.cancel()
                self._stopping.set()


async def main() -> int:
    runner = build_runner(os.environ.get("JOBS_STORE", DEFAULT_STORE))
    worker = Worker(runner, poll_interval=float(os.environ.get("JOBS_POLL_INTERVAL", "0.5")))
    try:
        return await worker.serve()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.driver.aclose()
