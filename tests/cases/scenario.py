"""Change units for the multi-process failure cases, chosen by the SCENARIO variable.

Each change records its execution in the `applied_log` table of the application database
named by APP_DB, outside any transaction, so a change that ran twice is visible.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from typing import Any

import anyio

from flamingock_async import Recovery, change_unit


def record(change_id: str) -> None:
    """Append one row to the application database's log, in its own transaction."""
    with closing(sqlite3.connect(os.environ["APP_DB"], timeout=30)) as app, app:
        app.execute("CREATE TABLE IF NOT EXISTS applied_log (change_id TEXT, pid INTEGER)")
        app.execute("INSERT INTO applied_log VALUES (?, ?)", (change_id, os.getpid()))


def make_simple(index: int, *, transactional: bool) -> type:
    change_id = f"change-{index:02d}"

    @change_unit(id=change_id, order=f"{index:04d}", author="cases", transactional=transactional)
    class Simple:
        async def execute(self, connection: Any = None) -> None:
            record(change_id)
            if connection is not None:
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS touched (change_id TEXT PRIMARY KEY)"
                )
                await connection.execute("INSERT INTO touched VALUES (?)", (change_id,))
            await anyio.sleep(0.01)

    Simple.__name__ = Simple.__qualname__ = f"Simple{index:02d}"
    return Simple


def many() -> list[type]:
    """Twenty changes, alternating transactional and not."""
    return [make_simple(i, transactional=i % 2 == 0) for i in range(1, 21)]


@change_unit(id="long-backfill", order="0001", author="cases", transactional=False)
class LongBackfill:
    async def execute(self) -> None:
        record("long-backfill")
        await anyio.sleep(float(os.environ.get("CHANGE_SECONDS", "30")))


@change_unit(
    id="long-backfill", order="0001", author="cases", transactional=False,
    recovery=Recovery.ALWAYS_RETRY,
)  # fmt: skip
class RetriedLongBackfill:
    async def execute(self) -> None:
        record("long-backfill")
        await anyio.sleep(float(os.environ.get("CHANGE_SECONDS", "30")))


@change_unit(id="tx-import", order="0001", author="cases")
class CrashingImport:
    """Writes half of its rows in the store's transaction, then the process dies."""

    async def execute(self, connection: Any) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS imported (n INTEGER)")
        await connection.executemany("INSERT INTO imported VALUES (?)", [(n,) for n in range(50)])
        if os.environ.get("CRASH") == "1":
            os._exit(9)
        await connection.executemany(
            "INSERT INTO imported VALUES (?)", [(n,) for n in range(50, 100)]
        )
        record("tx-import")


@change_unit(id="tx-long", order="0001", author="cases")
class LongTransactionalChange:
    """Holds SQLite's write lock for CHANGE_SECONDS inside the store's transaction."""

    async def execute(self, connection: Any) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS long_tx (n INTEGER)")
        await anyio.sleep(float(os.environ.get("CHANGE_SECONDS", "30")))
        record("tx-long")


SCENARIOS = {
    "many": many,
    "long": lambda: [LongBackfill],
    "long-retry": lambda: [RetriedLongBackfill],
    "tx-crash": lambda: [CrashingImport],
    "tx-long": lambda: [LongTransactionalChange],
}


def changes() -> list[type]:
    return SCENARIOS[os.environ["SCENARIO"]]()
