"""A Motor `AsyncIOMotorClient` passed by the user works like a PyMongo client.

Motor is not a dependency of flamingock-async; these tests run only where it is installed.
"""

from __future__ import annotations

from typing import Any

import pytest

from flamingock_async import AsyncRunner, LockSettings, change_unit
from flamingock_async.drivers.mongodb import MongoDriver

from .conftest import MongoServer, transactions_setting
from .helpers import entry, fence_of, lock_record

motor_asyncio = pytest.importorskip(
    "motor.motor_asyncio", reason="Motor is not installed; MongoDriver works without it"
)


@change_unit(id="motor-seed", order="0001", author="tests", transactional=False)
class Seed:
    async def execute(self, db: Any) -> None:
        await db["seeded"].insert_one({"_id": "motor"})


@pytest.fixture
async def motor_driver(mongo_server: MongoServer, database_name: str) -> Any:
    client = motor_asyncio.AsyncIOMotorClient(mongo_server.uri)
    driver = MongoDriver(client, database_name, transactions=transactions_setting(mongo_server))
    await driver.open()
    await driver.setup()
    yield driver
    await driver.aclose()
    client.close()


async def test_motor_lock_and_audit(motor_driver: MongoDriver) -> None:
    record = lock_record()
    assert await motor_driver.insert_lock(record) is True
    written = entry()
    await motor_driver.append_audit(written, fence_of(record))
    assert await motor_driver.read_states() == [written]
    assert await motor_driver.read_history() == [written]


async def test_motor_transaction(motor_driver: MongoDriver) -> None:
    record = lock_record()
    await motor_driver.insert_lock(record)
    written = entry()

    async def body(session: Any) -> None:
        await motor_driver.database["seeded"].insert_one({"_id": "tx"}, session=session)

    await motor_driver.run_in_transaction(fence_of(record), body, lambda: written)
    assert await motor_driver.read_history() == [written]


async def test_motor_runner(motor_driver: MongoDriver) -> None:
    lock = LockSettings(lease=2.0, wait_timeout=30.0, poll_interval=0.1)
    report = await AsyncRunner(motor_driver, [Seed], lock=lock, manifest_cache=False).run()
    assert report.applied == ("motor-seed",)


def test_motor_dependency_types(mongo_server: MongoServer) -> None:
    client = motor_asyncio.AsyncIOMotorClient(mongo_server.uri, connect=False)
    provided = MongoDriver(client, "orders").provided_dependencies()
    assert provided["db"] is motor_asyncio.AsyncIOMotorDatabase
    assert provided["session"] is motor_asyncio.AsyncIOMotorClientSession
    client.close()
