"""The driver conformance suite run against the in-process memory driver."""

from __future__ import annotations

from typing import Any

import pytest

from flamingock_async.drivers._base import Driver
from flamingock_async.drivers.memory import MemoryDriver, MemoryStore, MemoryTransaction
from flamingock_async.testing import DriverConformance, DriverFactory


class TestMemoryConformance(DriverConformance):
    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        store = MemoryStore()

        async def make_driver() -> Driver:
            driver = MemoryDriver(store)
            await driver.open()
            return driver

        return make_driver

    async def write_in_transaction(self, handle: Any, key: str, value: str) -> None:
        transaction: MemoryTransaction = handle
        transaction.data[key] = value

    async def read_target(self, driver: Driver, key: str) -> str | None:
        if not isinstance(driver, MemoryDriver):
            raise TypeError(f"expected a MemoryDriver, got {driver!r}")
        value = driver.store.data.get(key)
        return None if value is None else str(value)


class TestMemoryWithoutTransactionsConformance(DriverConformance):
    """The memory driver with transactions switched off skips the transaction tests."""

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        store = MemoryStore()

        async def make_driver() -> Driver:
            driver = MemoryDriver(store, transactions=False)
            await driver.open()
            return driver

        return make_driver
