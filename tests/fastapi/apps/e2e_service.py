"""A service for the end-to-end tests, served by real uvicorn processes on the SQLite store.

Environment variables choose the scenario:

* `E2E_STORE`: the store URL (required);
* `E2E_CHANGES`: `slow` (a slow change, then a quick transactional one), `failing` (a
  transactional change that raises) or `quick`;
* `E2E_SLOW_SECONDS`: how long the slow change sleeps (default 3);
* `E2E_MODE`, `E2E_ON_FAILURE`, `E2E_EXIT_CODE`: passed to `flamingock_lifespan`;
* `E2E_SHUTDOWN_GRACE`: the runner's shutdown grace, in seconds (default 5).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import aiosqlite
import anyio
from fastapi import FastAPI

from flamingock_async import AsyncRunner, LockSettings, change_unit
from flamingock_async.fastapi import Mode, OnFailure, ReadinessGuard, flamingock_lifespan

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

SLOW_SECONDS = float(os.environ.get("E2E_SLOW_SECONDS", "3"))


@change_unit(id="slow-backfill", order="0001", author="e2e", transactional=False)
class SlowBackfill:
    """Record that it started, sleep, record that it finished; the rollback records itself."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS marks (name TEXT, pid INTEGER)")
        await connection.execute("INSERT INTO marks VALUES ('started', ?)", (os.getpid(),))
        await anyio.sleep(SLOW_SECONDS)
        await connection.execute("INSERT INTO marks VALUES ('finished', ?)", (os.getpid(),))

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("INSERT INTO marks VALUES ('rolled back', ?)", (os.getpid(),))


@change_unit(id="create-items", order="0002", author="e2e")
class CreateItems:
    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")


@change_unit(id="broken-index", order="0001", author="e2e")
class BrokenIndex:
    """A transactional change whose second statement fails, so the first must not stay."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("CREATE TABLE half_done (id INTEGER)")
        await connection.execute("CREATE INDEX broken ON no_such_table (id)")


SCENARIOS: dict[str, list[type]] = {
    "slow": [SlowBackfill, CreateItems],
    "failing": [BrokenIndex],
    "quick": [CreateItems],
}

runner = AsyncRunner(
    os.environ["E2E_STORE"],
    SCENARIOS[os.environ.get("E2E_CHANGES", "slow")],
    lock=LockSettings(lease=3.0, poll_interval=0.2),
    shutdown_grace=float(os.environ.get("E2E_SHUTDOWN_GRACE", "5")),
)


@contextlib.asynccontextmanager
async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The wall-clock time lets a test measure how soon the first probe got a response.
    logging.getLogger("e2e").info("lifespan entered at %.6f", time.time())
    yield


flamingock = flamingock_lifespan(
    runner,
    lifespan=own_lifespan,
    mode=cast(Mode, os.environ.get("E2E_MODE", "background")),
    on_failure=cast(OnFailure, os.environ.get("E2E_ON_FAILURE", "stay_unready")),
    exit_code=int(os.environ.get("E2E_EXIT_CODE", "1")),
)
app = FastAPI(lifespan=flamingock)
app.include_router(flamingock.api_router())
app.add_middleware(ReadinessGuard, flamingock=flamingock)


@app.get("/items")
async def items() -> dict[str, Any]:
    return {"pid": os.getpid()}
