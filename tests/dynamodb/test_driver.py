"""The DynamoDB driver against a moto server: tables, lock records, audit log."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from flamingock_async import (
    AuditState,
    CorruptAuditEntryError,
    DriverError,
    DriverUnavailableError,
    LockLostError,
)
from flamingock_async._audit import StateSummary
from flamingock_async.drivers.dynamodb import DynamoDriver

from .conftest import REGION
from .helpers import FaultInjector, RequestCounter, bumped, entry, fence_of, held_lock, lock_record


async def table_names(driver: DynamoDriver) -> list[str]:
    response = await driver.client.list_tables()
    names: list[str] = response["TableNames"]
    return sorted(names)


async def test_open_writes_nothing(driver: DynamoDriver) -> None:
    counter = RequestCounter(driver.client)
    await driver.open()
    assert counter.counts == {}
    assert await table_names(driver) == []


async def test_reads_on_missing_tables(driver: DynamoDriver) -> None:
    assert await driver.read_states() == []
    assert await driver.read_history() == []
    assert await driver.read_history("some-change") == []
    assert await driver.read_lock("flamingock") is None
    assert await table_names(driver) == []


async def test_setup_creates_tables(driver: DynamoDriver) -> None:
    await driver.setup()
    assert await table_names(driver) == ["flamingock_audit", "flamingock_lock"]
    audit = (await driver.client.describe_table(TableName="flamingock_audit"))["Table"]
    assert audit["TableStatus"] == "ACTIVE"
    assert audit["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [key["AttributeName"] for key in audit["KeySchema"]] == ["pk", "sk"]


async def test_setup_is_idempotent(driver: DynamoDriver) -> None:
    await driver.setup()
    await driver.setup()
    assert await table_names(driver) == ["flamingock_audit", "flamingock_lock"]


async def test_setup_provisioned(endpoint: str) -> None:
    async with DynamoDriver(
        region=REGION,
        endpoint_url=endpoint,
        audit_table="audit_p",
        lock_table="lock_p",
        billing_mode="PROVISIONED",
        provisioned_throughput=(3, 4),
    ) as driver:
        await driver.setup()
        table = (await driver.client.describe_table(TableName="audit_p"))["Table"]
    assert table["ProvisionedThroughput"]["ReadCapacityUnits"] == 3
    assert table["ProvisionedThroughput"]["WriteCapacityUnits"] == 4


async def test_setup_races_on_empty_store(endpoint: str) -> None:
    """Ten drivers set up the same empty tables at once; none fails on 'already exists'."""
    drivers = [DynamoDriver(region=REGION, endpoint_url=endpoint) for _ in range(10)]
    try:
        async with anyio.create_task_group() as group:
            for racer in drivers:
                group.start_soon(racer.setup)
        assert await table_names(drivers[0]) == ["flamingock_audit", "flamingock_lock"]
    finally:
        for racer in drivers:
            await racer.aclose()


async def test_setup_rejects_wrong_key_schema(driver: DynamoDriver) -> None:
    await driver.client.create_table(
        TableName="flamingock_audit",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(DriverError) as caught:
        await driver.setup()
    message = str(caught.value)
    assert "'flamingock_audit'" in message
    assert "[id HASH (S)]" in message
    assert "[pk HASH (S), sk RANGE (S)]" in message
    assert "audit_table=" in message


def creating(table: str) -> dict[str, Any]:
    """Return a DescribeTable response for a lock table that is still being created."""
    return {
        "Table": {
            "TableName": table,
            "TableStatus": "CREATING",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        }
    }


async def test_setup_waits_until_active(driver: DynamoDriver) -> None:
    injector = FaultInjector(
        driver.client,
        "DescribeTable",
        [creating("flamingock_lock"), creating("flamingock_lock")],
        status=200,
    )
    await driver.setup()
    assert injector.calls == 4
    assert await table_names(driver) == ["flamingock_audit", "flamingock_lock"]


async def test_setup_times_out_while_creating(endpoint: str) -> None:
    async with DynamoDriver(region=REGION, endpoint_url=endpoint, setup_timeout=0.5) as driver:
        FaultInjector(
            driver.client, "DescribeTable", [creating("flamingock_lock")] * 50, status=200
        )
        with pytest.raises(DriverUnavailableError) as caught:
            await driver.setup()
    assert "'flamingock_lock'" in str(caught.value)
    assert "status CREATING" in str(caught.value)
    assert "setup_timeout" in str(caught.value)


async def test_insert_lock_only_when_absent(driver: DynamoDriver) -> None:
    await driver.setup()
    first = lock_record(owner="runner-a")
    assert await driver.insert_lock(first) is True
    assert await driver.insert_lock(lock_record(owner="runner-b")) is False
    assert await driver.read_lock("flamingock") == first


async def test_replace_lock_compares_version(driver: DynamoDriver) -> None:
    await driver.setup()
    first = lock_record()
    await driver.insert_lock(first)
    renewed = bumped(first)
    assert await driver.replace_lock("flamingock", first.version, renewed) is True
    taken = bumped(first, owner="runner-b")
    assert await driver.replace_lock("flamingock", first.version, taken) is False
    assert await driver.read_lock("flamingock") == renewed


async def test_repeated_lock_write_counts_as_done(driver: DynamoDriver) -> None:
    """A resent put whose first attempt was applied finds its own record and succeeds."""
    await driver.setup()
    first = lock_record()
    await driver.insert_lock(first)
    renewed = bumped(first)
    assert await driver.replace_lock("flamingock", first.version, renewed) is True
    assert await driver.insert_lock(first) is False
    assert await driver.replace_lock("flamingock", first.version, renewed) is True
    later = bumped(first, renewed_at_ms=first.renewed_at_ms + 1)
    assert await driver.replace_lock("flamingock", first.version, later) is False


async def test_replace_missing_lock(driver: DynamoDriver) -> None:
    await driver.setup()
    assert await driver.replace_lock("flamingock", 1, lock_record()) is False


async def test_released_lock_round_trip(driver: DynamoDriver) -> None:
    await driver.setup()
    first = lock_record()
    await driver.insert_lock(first)
    freed = bumped(first, owner=None)
    assert await driver.replace_lock("flamingock", first.version, freed) is True
    stored = await driver.read_lock("flamingock")
    assert stored == freed
    assert stored is not None
    assert stored.is_free


async def test_append_and_read_states(driver: DynamoDriver) -> None:
    fence = await held_lock(driver)
    await driver.append_audit(entry("a", sequence=1, state=AuditState.STARTED), fence)
    await driver.append_audit(entry("a", sequence=2, state=AuditState.APPLIED), fence)
    await driver.append_audit(entry("b", sequence=3, state=AuditState.FAILED), fence)
    states = {state.change_id: state.state for state in await driver.read_states()}
    assert states == {"a": AuditState.APPLIED, "b": AuditState.FAILED}


async def test_entry_round_trip(driver: DynamoDriver) -> None:
    fence = await held_lock(driver)
    written = entry(
        "a",
        error_type="ValueError",
        error_message="bad value",
        duration_ms=12,
        transactional=True,
        metadata={"rows": 3, "ratio": 0.5, "tags": ["x"], "nested": {"ok": True}},
    )
    await driver.append_audit(written, fence)
    assert await driver.read_history("a") == [written]
    assert await driver.read_states() == [written]


async def test_history_in_epoch_sequence_order(driver: DynamoDriver) -> None:
    fence = await held_lock(driver, epoch=12)
    late = entry("a", epoch=12, sequence=2)
    early = entry("a", epoch=12, sequence=1)
    other = entry("b", epoch=12, sequence=10)
    for written in (late, other, early):
        await driver.append_audit(written, fence)
    assert await driver.read_history("a") == [early, late]
    assert await driver.read_history() == [early, late, other]


async def test_history_orders_epochs_numerically(driver: DynamoDriver) -> None:
    fence = await held_lock(driver, epoch=10)
    tenth = entry("a", epoch=10, sequence=1)
    ninth = entry("a", epoch=9, sequence=5)
    await driver.append_audit(tenth, fence)
    await driver.append_audit(ninth, fence)
    assert await driver.read_history("a") == [ninth, tenth]


async def test_repeated_append_is_noop(driver: DynamoDriver) -> None:
    fence = await held_lock(driver)
    written = entry("a")
    await driver.append_audit(written, fence)
    await driver.append_audit(written, fence)
    assert await driver.read_history() == [written]


async def test_append_rejected_without_lock(driver: DynamoDriver) -> None:
    await held_lock(driver, owner="runner-a", epoch=3)
    stale = fence_of(lock_record(owner="runner-b", epoch=2))
    with pytest.raises(LockLostError) as caught:
        await driver.append_audit(entry("a"), stale)
    assert "runner-a" in str(caught.value)
    assert "epoch 3" in str(caught.value)
    assert await driver.read_history() == []
    assert await driver.read_states() == []


async def test_append_rejected_at_old_epoch(driver: DynamoDriver) -> None:
    await held_lock(driver, owner="runner-a", epoch=3)
    old = fence_of(lock_record(owner="runner-a", epoch=2))
    with pytest.raises(LockLostError):
        await driver.append_audit(entry("a"), old)
    assert await driver.read_states() == []


async def test_reads_are_paginated(driver: DynamoDriver) -> None:
    """More than 1 MB of state items takes several pages; none of them is dropped."""
    fence = await held_lock(driver)
    padding = "x" * 12_000
    for number in range(100):
        await driver.append_audit(
            entry(f"change-{number:03d}", sequence=number, metadata={"padding": padding}), fence
        )
    counter = RequestCounter(driver.client)
    states = await driver.read_states()
    assert len(states) == 100
    assert counter["Query"] >= 2
    assert len(await driver.read_history()) == 100
    assert counter["Scan"] >= 2


async def test_read_states_is_one_query_when_small(driver: DynamoDriver) -> None:
    fence = await held_lock(driver)
    for number in range(50):
        await driver.append_audit(entry(f"change-{number}", sequence=number), fence)
    counter = RequestCounter(driver.client)
    assert len(await driver.read_states()) == 50
    assert counter.counts == {"Query": 1}


async def test_corrupt_state_item_names_key(driver: DynamoDriver) -> None:
    await driver.setup()
    await driver.client.put_item(
        TableName="flamingock_audit",
        Item={"pk": {"S": "state"}, "sk": {"S": "broken"}, "change_id": {"S": "broken"}},
    )
    with pytest.raises(CorruptAuditEntryError) as caught:
        await driver.read_states()
    assert caught.value.record_key == "pk='state', sk='broken'"
    assert "missing fields" in str(caught.value)
    assert "flamingock_audit" in str(caught.value)


async def test_state_summaries_match_states(driver: DynamoDriver) -> None:
    fence = await held_lock(driver, epoch=4)
    await driver.append_audit(entry("a", epoch=4, sequence=1, transactional=True), fence)
    await driver.append_audit(entry("b", epoch=4, sequence=2, state=AuditState.FAILED), fence)
    expected = sorted(StateSummary.of(state) for state in await driver.read_states())
    counter = RequestCounter(driver.client)
    summaries = sorted(await driver.read_state_summaries())
    assert summaries == expected
    assert summaries[0] == StateSummary("a", AuditState.APPLIED, True, 4)
    assert counter.counts == {"Query": 1}


async def test_state_summaries_on_missing_table(driver: DynamoDriver) -> None:
    assert await driver.read_state_summaries() == []


async def test_corrupt_summary_names_key(driver: DynamoDriver) -> None:
    await driver.setup()
    await driver.client.put_item(
        TableName="flamingock_audit",
        Item={"pk": {"S": "state"}, "sk": {"S": "odd"}, "change_id": {"S": "odd"}},
    )
    with pytest.raises(CorruptAuditEntryError) as caught:
        await driver.read_state_summaries()
    assert caught.value.record_key == "pk='state', sk='odd'"
    assert "state, lock_epoch" in str(caught.value)


async def test_corrupt_entry_item_names_key(driver: DynamoDriver) -> None:
    fence = await held_lock(driver)
    await driver.append_audit(entry("a"), fence)
    await driver.client.put_item(
        TableName="flamingock_audit",
        Item={"pk": {"S": "entry#a"}, "sk": {"S": "zzz"}, "lock_epoch": {"S": "one"}},
    )
    with pytest.raises(CorruptAuditEntryError) as caught:
        await driver.read_history("a")
    assert caught.value.record_key == "pk='entry#a', sk='zzz'"


async def test_target_dependencies(driver: DynamoDriver) -> None:
    from aiobotocore.client import AioBaseClient

    from flamingock_async.drivers.dynamodb import DynamoTransaction

    assert driver.target_dependencies() == {"dynamodb": driver.client}
    provided = driver.provided_dependencies()
    assert isinstance(driver.client, provided["dynamodb"])
    assert provided["dynamodb"] is AioBaseClient
    assert provided["transaction"] is DynamoTransaction
    assert provided["tx"] is DynamoTransaction


async def test_passed_client_stays_open(endpoint: str) -> None:
    import aioboto3

    session = aioboto3.Session()
    async with session.client("dynamodb", region_name=REGION, endpoint_url=endpoint) as client:
        async with DynamoDriver(client=client) as driver:
            await driver.setup()
        response = await client.list_tables()
    assert sorted(response["TableNames"]) == ["flamingock_audit", "flamingock_lock"]


async def test_session_is_used(endpoint: str) -> None:
    import aioboto3

    session = aioboto3.Session(region_name=REGION)
    async with DynamoDriver(session=session, endpoint_url=endpoint) as driver:
        await driver.setup()
        assert driver.target_dependencies()["dynamodb"] is driver.client
    assert driver.client is None


def test_describe_names_tables_and_endpoint() -> None:
    driver = DynamoDriver(region=REGION, endpoint_url="http://127.0.0.1:9")
    assert driver.describe() == (
        "DynamoDB tables 'flamingock_audit' and 'flamingock_lock' at endpoint http://127.0.0.1:9"
    )
