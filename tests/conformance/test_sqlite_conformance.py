"""The driver conformance suite run against the SQLite driver, on a file and in memory."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from flamingock_async.drivers._base import Driver
from flamingock_async.drivers.sqlite import SQLiteDriver
from flamingock_async.testing import DriverConformance, DriverFactory

TARGET_TABLE = "conformance_target"


async def write_target(connection: aiosqlite.Connection, key: str, value: str) -> None:
    await connection.execute(
        f"CREATE TABLE IF NOT EXISTS {TARGET_TABLE} (key TEXT PRIMARY KEY, value TEXT)"
    )
    await connection.execute(
        f"INSERT OR REPLACE INTO {TARGET_TABLE} (key, value) VALUES (?, ?)", (key, value)
    )


async def read_target(connection: aiosqlite.Connection, key: str) -> str | None:
    try:
        rows = list(
            await connection.execute_fetchall(
                f"SELECT value FROM {TARGET_TABLE} WHERE key = ?", (key,)
            )
        )
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return None
        raise
    return str(rows[0][0]) if rows else None


class TestSQLiteFileConformance(DriverConformance):
    transactions_lock_store = True

    @pytest.fixture
    def driver_factory(self, tmp_path: Path) -> DriverFactory:
        path = tmp_path / "store.db"

        async def make_driver() -> Driver:
            driver = SQLiteDriver(path, busy_timeout=10.0)
            await driver.open()
            return driver

        return make_driver

    async def write_in_transaction(self, handle: Any, key: str, value: str) -> None:
        await write_target(handle, key, value)

    async def read_target(self, driver: Driver, key: str) -> str | None:
        connection = driver.target_dependencies()["connection"]
        if not isinstance(connection, aiosqlite.Connection):
            raise TypeError(f"expected an aiosqlite connection, got {connection!r}")
        return await read_target(connection, key)


class TestSQLiteSharedConnectionConformance(DriverConformance):
    """Several drivers on one in-memory connection, the way one process uses `:memory:`."""

    transactions_lock_store = True

    @pytest.fixture
    async def driver_factory(self) -> AsyncIterator[DriverFactory]:
        connection = await aiosqlite.connect(":memory:", isolation_level=None)

        async def make_driver() -> Driver:
            driver = SQLiteDriver(connection)
            await driver.open()
            return driver

        yield make_driver
        await connection.close()

    async def write_in_transaction(self, handle: Any, key: str, value: str) -> None:
        await write_target(handle, key, value)

    async def read_target(self, driver: Driver, key: str) -> str | None:
        connection = driver.target_dependencies()["connection"]
        if not isinstance(connection, aiosqlite.Connection):
            raise TypeError(f"expected an aiosqlite connection, got {connection!r}")
        return await read_target(connection, key)
