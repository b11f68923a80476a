"""The driver conformance suite on MongoDriver, with transactions and with them switched off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from flamingock_async.drivers import Driver
from flamingock_async.drivers.mongodb import MongoDriver
from flamingock_async.testing import DriverConformance, DriverPool

from .conftest import MongoServer, drop_database, transactions_setting

TARGET_COLLECTION = "conformance_target"


class TestMongoDriver(DriverConformance):
    transactions: bool | None = None

    @pytest.fixture
    async def driver_factory(
        self, mongo_server: MongoServer, database_name: str
    ) -> AsyncIterator[Callable[[], Awaitable[Driver]]]:
        transactions = (
            transactions_setting(mongo_server) if self.transactions is None else self.transactions
        )

        async def make_driver() -> Driver:
            driver = MongoDriver(
                mongo_server.uri,
                database_name,
                transactions=transactions,
                server_selection_timeout=10,
            )
            await driver.open()
            return driver

        yield make_driver
        if mongo_server.is_real:
            await drop_database(mongo_server, database_name)

    async def write_in_transaction(self, handle: Any, key: str, value: str) -> None:
        # The handle is the transaction's session; the collection comes from the test's store.
        database = handle.client[self._database_name]
        await database[TARGET_COLLECTION].replace_one(
            {"_id": key}, {"_id": key, "value": value}, upsert=True, session=handle
        )

    async def read_target(self, driver: Driver, key: str) -> str | None:
        if not isinstance(driver, MongoDriver):
            raise TypeError(f"expected a MongoDriver, got {driver!r}")
        self._database_name = driver.database.name
        document = await driver.database[TARGET_COLLECTION].find_one({"_id": key})
        return None if document is None else str(document["value"])

    @pytest.fixture(autouse=True)
    def _remember_database(self, database_name: str) -> None:
        self._database_name = database_name

    @pytest.mark.real_mongodb
    async def test_renewal_during_transaction_abort(self, drivers: DriverPool) -> None:
        """Real MongoDB only: nx-27017's abort also undoes the renewal another client wrote."""
        await super().test_renewal_during_transaction_abort(drivers)

    @pytest.mark.real_mongodb
    async def test_concurrent_append_same_entry_once(self, drivers: DriverPool) -> None:
        """Real MongoDB only: with transactions on, each append is a transaction, and
        nx-27017 fails concurrent transactions of several clients now and then ("no such
        savepoint"), because it does not isolate them."""
        await super().test_concurrent_append_same_entry_once(drivers)


class TestMongoDriverWithoutTransactions(TestMongoDriver):
    transactions = False

    async def test_concurrent_append_same_entry_once(self, drivers: DriverPool) -> None:
        await DriverConformance.test_concurrent_append_same_entry_once(self, drivers)
