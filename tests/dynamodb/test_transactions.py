"""Transactional changes on DynamoDB: one TransactWriteItems, its limits, conflicts, retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flamingock_async import AuditState, DriverError, LockLostError, TransactionLimitError
from flamingock_async._audit import AuditEntry
from flamingock_async._lock import Fence
from flamingock_async.drivers.dynamodb import (
    DynamoDriver,
    DynamoTransaction,
    TransactionCanceledError,
)

from .helpers import (
    FaultInjector,
    RequestCounter,
    entry,
    error_response,
    fence_of,
    held_lock,
    lock_record,
)


async def create_users(driver: DynamoDriver) -> None:
    await driver.client.create_table(
        TableName="users",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


async def users(driver: DynamoDriver) -> dict[str, dict[str, Any]]:
    response = await driver.client.scan(TableName="users", ConsistentRead=True)
    return {item["id"]["S"]: item for item in response["Items"]}


async def prepared(driver: DynamoDriver) -> Fence:
    fence = await held_lock(driver)
    await create_users(driver)
    return fence


def applied(change_id: str = "add-users") -> Callable[[], AuditEntry]:
    written = entry(change_id, transactional=True)
    return lambda: written


async def states(driver: DynamoDriver) -> dict[str, AuditState]:
    return {state.change_id: state.state for state in await driver.read_states()}


def conflict_cancellation(actions: int) -> dict[str, Any]:
    reasons = [{"Code": "None"}] * (actions - 1) + [{"Code": "TransactionConflict"}]
    return error_response(
        "TransactionCanceledException",
        "Transaction cancelled, please refer cancellation reasons for specific reasons",
        CancellationReasons=reasons,
    )


async def test_writes_commit_with_entry(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "u1", "name": "Ada"})
        tx.put("users", {"id": "u2", "name": "Bob", "age": 36})

    counter = RequestCounter(driver.client)
    await driver.run_in_transaction(fence, body, applied())
    stored = await users(driver)
    assert sorted(stored) == ["u1", "u2"]
    assert stored["u2"]["age"] == {"N": "36"}
    assert await states(driver) == {"add-users": AuditState.APPLIED}
    assert counter["TransactWriteItems"] == 1


async def test_every_action_kind(driver: DynamoDriver) -> None:
    fence = await prepared(driver)
    await driver.client.put_item(TableName="users", Item={"id": {"S": "old"}})
    await driver.client.put_item(
        TableName="users", Item={"id": {"S": "counted"}, "visits": {"N": "1"}}
    )
    await driver.client.put_item(TableName="users", Item={"id": {"S": "guard"}})

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": {"S": "raw"}, "name": {"S": "low-level"}})
        tx.update(
            "users",
            {"id": "counted"},
            "SET #visits = #visits + :one",
            names={"#visits": "visits"},
            values={":one": 1},
        )
        tx.delete("users", {"id": "old"}, condition="attribute_exists(id)")
        tx.condition_check("users", {"id": "guard"}, "attribute_exists(id)")

    await driver.run_in_transaction(fence, body, applied())
    stored = await users(driver)
    assert sorted(stored) == ["counted", "guard", "raw"]
    assert stored["counted"]["visits"] == {"N": "2"}
    assert stored["raw"]["name"] == {"S": "low-level"}


async def test_handle_injected_as_tx_name(driver: DynamoDriver) -> None:
    assert driver.transaction_handle_names == ("transaction", "tx")
    assert driver.supports_transactions is True


async def test_body_error_writes_nothing(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "u1"})
        raise ValueError("the change failed")

    counter = RequestCounter(driver.client)
    with pytest.raises(ValueError, match="the change failed"):
        await driver.run_in_transaction(fence, body, applied())
    assert counter["TransactWriteItems"] == 0
    assert await users(driver) == {}
    assert await driver.read_states() == []


async def test_250_writes_rejected_before_sending(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        for number in range(250):
            tx.put("users", {"id": f"u{number}"})

    counter = RequestCounter(driver.client)
    with pytest.raises(TransactionLimitError) as caught:
        await driver.run_in_transaction(fence, body, applied())
    message = str(caught.value)
    assert "253 actions" in message
    assert "250 from the change" in message
    assert "at most 100" in message
    assert "'add-users'" in message
    assert counter["TransactWriteItems"] == 0
    assert await users(driver) == {}
    assert await driver.read_states() == []


async def test_97_writes_fit(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        for number in range(97):
            tx.put("users", {"id": f"u{number}"})

    await driver.run_in_transaction(fence, body, applied())
    assert len(await users(driver)) == 97


async def test_98_writes_rejected(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        for number in range(98):
            tx.put("users", {"id": f"u{number}"})

    with pytest.raises(TransactionLimitError, match="101 actions"):
        await driver.run_in_transaction(fence, body, applied())


async def test_empty_change_writes_entry_alone(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        return None

    counter = RequestCounter(driver.client)
    await driver.run_in_transaction(fence, body, applied("nothing-to-do"))
    assert counter["TransactWriteItems"] == 1
    assert await states(driver) == {"nothing-to-do": AuditState.APPLIED}
    assert await users(driver) == {}


async def test_same_item_twice_rejected(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "u1", "name": "first"})
        tx.update("users", {"id": "u1"}, "SET #n = :n", names={"#n": "name"}, values={":n": "x"})

    counter = RequestCounter(driver.client)
    with pytest.raises(TransactionLimitError) as caught:
        await driver.run_in_transaction(fence, body, applied())
    assert "same item twice" in str(caught.value)
    assert "actions 1 and 2" in str(caught.value)
    assert "id='u1'" in str(caught.value)
    assert counter["TransactWriteItems"] == 0
    assert await users(driver) == {}


async def test_same_key_other_tables_allowed(driver: DynamoDriver) -> None:
    fence = await prepared(driver)
    await driver.client.create_table(
        TableName="accounts",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "u1"})
        tx.put("accounts", {"id": "u1"})

    await driver.run_in_transaction(fence, body, applied())
    assert sorted(await users(driver)) == ["u1"]


async def test_item_over_400kb_rejected(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "big", "blob": "x" * 410_000})

    with pytest.raises(TransactionLimitError, match="at most 409600 bytes per item"):
        await driver.run_in_transaction(fence, body, applied())
    assert await users(driver) == {}


async def test_over_4mb_rejected(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        for number in range(12):
            tx.put("users", {"id": f"u{number}", "blob": "x" * 380_000})

    counter = RequestCounter(driver.client)
    with pytest.raises(TransactionLimitError, match="at most 4194304 bytes"):
        await driver.run_in_transaction(fence, body, applied())
    assert counter["TransactWriteItems"] == 0


async def test_failed_condition_reported_per_action(driver: DynamoDriver) -> None:
    fence = await prepared(driver)

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "u1"})
        tx.condition_check("users", {"id": "missing"}, "attribute_exists(id)")

    with pytest.raises(TransactionCanceledError) as caught:
        await driver.run_in_transaction(fence, body, applied())
    reasons = caught.value.reasons
    assert [reason.index for reason in reasons] == [1]
    assert reasons[0].code == "ConditionalCheckFailed"
    assert "ConditionCheck on table 'users' (id='missing')" in str(caught.value)
    assert "action 2" in str(caught.value)
    assert await users(driver) == {}
    assert await driver.read_states() == []


async def test_lost_lock_commits_nothing(driver: DynamoDriver) -> None:
    await prepared(driver)
    stale = fence_of(lock_record(owner="runner-b", epoch=1))

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "u1"})

    with pytest.raises(LockLostError, match="runner-a"):
        await driver.run_in_transaction(stale, body, applied())
    assert await users(driver) == {}
    assert await driver.read_states() == []


async def test_missing_table_in_put(driver: DynamoDriver) -> None:
    fence = await held_lock(driver)

    async def body(tx: DynamoTransaction) -> None:
        tx.put("nowhere", {"id": "u1"})

    with pytest.raises(DriverError, match="'nowhere'"):
        await driver.run_in_transaction(fence, body, applied())


async def test_cancelled_conflict_is_retried(driver: DynamoDriver) -> None:
    fence = await prepared(driver)
    injector = FaultInjector(
        driver.client, "TransactWriteItems", [conflict_cancellation(4), conflict_cancellation(4)]
    )

    async def body(tx: DynamoTransaction) -> None:
        tx.put("users", {"id": "u1"})

    await driver.run_in_transaction(fence, body, applied())
    assert injector.calls == 3
    assert sorted(await users(driver)) == ["u1"]
    assert await states(driver) == {"add-users": AuditState.APPLIED}


async def test_conflict_exception_is_retried(driver: DynamoDriver) -> None:
    fence = await prepared(driver)
    injector = FaultInjector(
        driver.client,
        "TransactWriteItems",
        [error_response("TransactionConflictException", "conflict")],
    )
    await driver.append_audit(entry("a"), fence)
    assert injector.calls == 2
    assert await states(driver) == {"a": AuditState.APPLIED}


async def test_throttling_is_retried(driver: DynamoDriver) -> None:
    fence = await prepared(driver)
    await driver.append_audit(entry("a"), fence)
    injector = FaultInjector(
        driver.client,
        "Query",
        [
            error_response("ProvisionedThroughputExceededException", "slow down"),
            error_response("ThrottlingException", "slow down"),
        ],
    )
    assert await states(driver) == {"a": AuditState.APPLIED}
    assert injector.calls == 3


async def test_conflict_gives_up_at_deadline(endpoint: str) -> None:
    async with DynamoDriver(region="us-east-1", endpoint_url=endpoint, retry_timeout=0.3) as driver:
        fence = await prepared(driver)
        injector = FaultInjector(
            driver.client,
            "TransactWriteItems",
            [error_response("TransactionConflictException", "conflict")] * 1000,
        )
        with pytest.raises(DriverError) as caught:
            await driver.append_audit(entry("a"), fence)
        assert "TransactionConflictException" in str(caught.value)
        assert injector.calls > 1
        assert injector.calls < 1000
        assert await driver.read_states() == []


async def test_validation_error_not_retried(driver: DynamoDriver) -> None:
    fence = await prepared(driver)
    injector = FaultInjector(
        driver.client,
        "TransactWriteItems",
        [error_response("ValidationException", "bad request")] * 5,
    )
    with pytest.raises(DriverError, match="ValidationException"):
        await driver.append_audit(entry("a"), fence)
    assert injector.calls == 1


async def test_conditional_lock_write_not_retried(driver: DynamoDriver) -> None:
    await driver.setup()
    injector = FaultInjector(
        driver.client,
        "PutItem",
        [error_response("ConditionalCheckFailedException", "The conditional request failed")],
    )
    assert await driver.insert_lock(lock_record()) is False
    assert injector.calls == 1


def test_collector_rejects_bad_arguments() -> None:
    tx = DynamoTransaction()
    with pytest.raises(ValueError, match="table name"):
        tx.put("", {"id": "u1"})
    with pytest.raises(ValueError, match="non-empty mapping"):
        tx.put("users", {})
    with pytest.raises(ValueError, match="update expression"):
        tx.update("users", {"id": "u1"}, "")
    with pytest.raises(ValueError, match="condition"):
        tx.condition_check("users", {"id": "u1"}, " ")
    assert len(tx) == 0


def test_collector_converts_plain_values() -> None:
    tx = DynamoTransaction()
    tx.put("users", {"id": "u1", "score": 1.5, "tags": ["a"], "active": True})
    request = tx.actions[0].request
    assert request == {
        "Put": {
            "TableName": "users",
            "Item": {
                "id": {"S": "u1"},
                "score": {"N": "1.5"},
                "tags": {"L": [{"S": "a"}]},
                "active": {"BOOL": True},
            },
        }
    }
