"""MongoDriver against a real wire-protocol server: setup, lock records, audit log."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from flamingock_async import AuditState, CorruptAuditEntryError, DriverError, LockLostError
from flamingock_async.drivers.mongodb import MongoDriver

from .helpers import bumped, entry, fence_of, lock_record


async def test_open_writes_nothing(
    make_driver: Callable[..., MongoDriver], raw_database: Any
) -> None:
    driver = make_driver()
    await driver.open()
    assert await raw_database.list_collection_names() == []


async def test_read_states_on_empty_store(
    make_driver: Callable[..., MongoDriver], raw_database: Any
) -> None:
    driver = make_driver()
    await driver.open()
    assert await driver.read_states() == []
    assert await driver.read_history() == []
    assert await driver.read_lock("flamingock") is None


@pytest.mark.real_mongodb
async def test_reads_create_nothing(
    make_driver: Callable[..., MongoDriver], raw_database: Any
) -> None:
    """Reading an empty store creates no collection (nx-27017 creates one on a read)."""
    driver = make_driver()
    await driver.open()
    await driver.read_states()
    await driver.read_history()
    await driver.read_lock("flamingock")
    assert await raw_database.list_collection_names() == []


async def test_setup_creates_collections(driver: MongoDriver, raw_database: Any) -> None:
    names = await raw_database.list_collection_names()
    assert "flamingock_audit" in names
    assert "flamingock_lock" in names


async def test_setup_creates_indexes(driver: MongoDriver, raw_database: Any) -> None:
    indexes = await raw_database["flamingock_audit"].index_information()
    by_keys = {tuple(index["key"]): index for index in indexes.values()}
    unique = by_keys[(("entry_id", 1),)]
    assert unique.get("unique") is True
    assert (("change_id", 1), ("lock_epoch", 1), ("sequence", 1)) in by_keys


async def test_setup_twice_by_two_drivers(make_driver: Callable[..., MongoDriver]) -> None:
    first, second = make_driver(), make_driver()
    await first.open()
    await second.open()
    await first.setup()
    await second.setup()
    await second.setup()
    assert await second.read_states() == []


async def test_custom_collection_names(
    make_driver: Callable[..., MongoDriver], raw_database: Any
) -> None:
    driver = make_driver(audit_collection="my_audit", lock_collection="my_lock")
    await driver.open()
    await driver.setup()
    await driver.insert_lock(lock_record())
    assert sorted(await raw_database.list_collection_names()) == ["my_audit", "my_lock"]


async def test_insert_lock_when_absent(driver: MongoDriver) -> None:
    record = lock_record()
    assert await driver.insert_lock(record) is True
    assert await driver.read_lock("flamingock") == record


async def test_insert_lock_when_present(driver: MongoDriver) -> None:
    await driver.insert_lock(lock_record(owner="runner-a"))
    assert await driver.insert_lock(lock_record(owner="runner-b")) is False
    stored = await driver.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == "runner-a"


async def test_lock_stored_with_key_as_id(driver: MongoDriver, raw_database: Any) -> None:
    await driver.insert_lock(lock_record(key="orders"))
    document = await raw_database["flamingock_lock"].find_one({"_id": "orders"})
    assert document is not None
    assert isinstance(document["renewed_at_ms"], int)
    assert isinstance(document["acquired_at_ms"], int)


async def test_replace_lock_matching_version(driver: MongoDriver) -> None:
    record = lock_record()
    await driver.insert_lock(record)
    renewed = bumped(record, renewed_at_ms=record.renewed_at_ms + 10)
    assert await driver.replace_lock("flamingock", 1, renewed) is True
    assert await driver.read_lock("flamingock") == renewed


async def test_replace_lock_stale_version(driver: MongoDriver) -> None:
    record = lock_record()
    await driver.insert_lock(record)
    await driver.replace_lock("flamingock", 1, bumped(record))
    stale = bumped(record, owner="runner-b")
    assert await driver.replace_lock("flamingock", 1, stale) is False
    stored = await driver.read_lock("flamingock")
    assert stored is not None
    assert stored.owner == "runner-a"
    assert stored.version == 2


async def test_replace_lock_absent(driver: MongoDriver) -> None:
    assert await driver.replace_lock("flamingock", 1, lock_record()) is False
    assert await driver.read_lock("flamingock") is None


async def test_release_keeps_record(driver: MongoDriver) -> None:
    record = lock_record(epoch=4)
    await driver.insert_lock(record)
    assert await driver.replace_lock("flamingock", 1, bumped(record, owner=None)) is True
    stored = await driver.read_lock("flamingock")
    assert stored is not None
    assert stored.is_free
    assert stored.epoch == 4


async def test_append_under_fence(driver: MongoDriver) -> None:
    record = lock_record()
    await driver.insert_lock(record)
    written = entry()
    await driver.append_audit(written, fence_of(record))
    assert await driver.read_history() == [written]


async def test_append_after_takeover_rejected(driver: MongoDriver) -> None:
    record = lock_record(owner="runner-a", epoch=1)
    await driver.insert_lock(record)
    await driver.replace_lock("flamingock", 1, bumped(record, owner="runner-b", epoch=2))
    with pytest.raises(LockLostError, match="runner-b"):
        await driver.append_audit(entry(), fence_of(record))
    assert await driver.read_history() == []


async def test_append_without_lock_rejected(driver: MongoDriver) -> None:
    with pytest.raises(LockLostError, match="no lock record exists"):
        await driver.append_audit(entry(), fence_of(lock_record()))
    assert await driver.read_history() == []


async def test_append_same_entry_twice(driver: MongoDriver) -> None:
    record = lock_record()
    await driver.insert_lock(record)
    written = entry()
    await driver.append_audit(written, fence_of(record))
    await driver.append_audit(written, fence_of(record))
    assert await driver.read_history() == [written]


async def test_append_same_entry_without_transactions(
    make_driver: Callable[..., MongoDriver],
) -> None:
    driver = make_driver(transactions=False)
    await driver.open()
    await driver.setup()
    record = lock_record()
    await driver.insert_lock(record)
    written = entry()
    await driver.append_audit(written, fence_of(record))
    await driver.append_audit(written, fence_of(record))
    assert await driver.read_history() == [written]


async def test_entry_round_trip(driver: MongoDriver) -> None:
    record = lock_record()
    await driver.insert_lock(record)
    written = entry(
        state=AuditState.FAILED,
        error_type="ValueError",
        error_message="bad value",
        metadata={"rows": 3, "tags": ["a", "b"]},
        transactional=True,
        duration_ms=12,
    )
    await driver.append_audit(written, fence_of(record))
    assert await driver.read_history("change-1") == [written]


async def test_read_states_newest_by_epoch(driver: MongoDriver) -> None:
    first = lock_record(epoch=1)
    await driver.insert_lock(first)
    fence = fence_of(first)
    await driver.append_audit(entry("a", state=AuditState.STARTED, sequence=1), fence)
    await driver.append_audit(entry("a", state=AuditState.APPLIED, sequence=2), fence)
    await driver.append_audit(entry("b", state=AuditState.APPLIED, sequence=3), fence)
    second = bumped(first, epoch=2)
    await driver.replace_lock("flamingock", 1, second)
    await driver.append_audit(
        entry("a", state=AuditState.ROLLED_BACK, lock_epoch=2), fence_of(second)
    )
    states = {state.change_id: state.state for state in await driver.read_states()}
    assert states == {"a": AuditState.ROLLED_BACK, "b": AuditState.APPLIED}


async def test_read_history_order(driver: MongoDriver) -> None:
    record = lock_record(epoch=3)
    await driver.insert_lock(record)
    fence = fence_of(record)
    await driver.append_audit(entry("x", lock_epoch=3, sequence=2), fence)
    await driver.append_audit(entry("y", lock_epoch=3, sequence=1), fence)
    await driver.append_audit(entry("x", lock_epoch=2, sequence=9), fence)
    history = await driver.read_history()
    assert [(item.lock_epoch, item.sequence) for item in history] == [(2, 9), (3, 1), (3, 2)]
    assert [item.change_id for item in await driver.read_history("x")] == ["x", "x"]


async def test_corrupt_entry_names_id(driver: MongoDriver, raw_database: Any) -> None:
    result = await raw_database["flamingock_audit"].insert_one(
        {"change_id": "broken", "state": "NOT_A_STATE", "lock_epoch": 1}
    )
    with pytest.raises(CorruptAuditEntryError, match=str(result.inserted_id)) as caught:
        await driver.read_history()
    assert caught.value.record_key == str(result.inserted_id)


async def test_corrupt_entry_in_states(driver: MongoDriver, raw_database: Any) -> None:
    good = entry().to_dict()
    good["lock_epoch"] = "one"
    result = await raw_database["flamingock_audit"].insert_one(good)
    with pytest.raises(CorruptAuditEntryError) as caught:
        await driver.read_states()
    assert caught.value.record_key == str(result.inserted_id)


async def test_target_dependencies(driver: MongoDriver, database_name: str) -> None:
    targets = driver.target_dependencies()
    assert isinstance(targets["db"], AsyncDatabase)
    assert targets["db"].name == database_name
    assert targets["database"] is targets["db"]


async def test_provided_dependency_types(make_driver: Callable[..., MongoDriver]) -> None:
    provided = make_driver().provided_dependencies()
    assert provided["db"] is AsyncDatabase
    assert provided["database"] is AsyncDatabase
    assert provided["session"] is AsyncClientSession
    assert provided["transaction"] is AsyncClientSession


async def test_transaction_handle_names(make_driver: Callable[..., MongoDriver]) -> None:
    assert make_driver().transaction_handle_names == ("session", "transaction")


async def test_user_client_stays_open(mongo_server: Any, database_name: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_server.uri)
    driver = MongoDriver(client, database_name, transactions=False)
    await driver.open()
    await driver.aclose()
    assert (await client.admin.command("ping"))["ok"] == 1
    await client.close()


async def test_sync_client_rejected(mongo_server: Any, database_name: str) -> None:
    from pymongo import MongoClient

    from flamingock_async import ConfigurationError

    with MongoClient(mongo_server.uri, connect=False) as client:
        driver = MongoDriver(client, database_name)
        with pytest.raises(ConfigurationError, match="AsyncMongoClient"):
            await driver.open()


async def test_stats_count_operations(driver: MongoDriver) -> None:
    before = dataclasses.replace(driver.stats)
    await driver.read_lock("flamingock")
    await driver.read_states()
    assert driver.stats.lock_operations == before.lock_operations + 1
    assert driver.stats.reads == before.reads + 1


async def test_detects_standalone_server(
    make_driver: Callable[..., MongoDriver], mongo_server: Any
) -> None:
    driver = make_driver(transactions=None)
    await driver.open()
    hello = await driver.database.client.admin.command("hello")
    capable = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
    assert driver.supports_transactions is capable


async def test_transactions_switched_off(make_driver: Callable[..., MongoDriver]) -> None:
    driver = make_driver(transactions=False)
    await driver.open()
    assert driver.supports_transactions is False


async def test_open_retried_after_failure(
    make_driver: Callable[..., MongoDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open that failed at the server's handshake runs the handshake again next time."""
    driver = make_driver(transactions=None)
    calls: list[int] = []
    original = MongoDriver._hello

    async def failing_once(self: MongoDriver) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("the handshake was interrupted")
        return await original(self)

    monkeypatch.setattr(MongoDriver, "_hello", failing_once)
    with pytest.raises(DriverError):
        await driver.open()
    await driver.open()
    assert len(calls) == 2
