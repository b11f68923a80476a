"""The `dynamodb` template: pipeline files run by the runner, undo operations, validation."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from flamingock_async import (
    AsyncRunner,
    AuditState,
    ChangeDescriptor,
    LockSettings,
    PipelineValidationError,
    Recovery,
)
from flamingock_async._discovery import load_pipeline
from flamingock_async.drivers.dynamodb import DynamoDriver, DynamoTransaction
from flamingock_async.templates.dynamodb import DynamoConfig, DynamoTemplate

from .helpers import entry, held_lock

FAST_LOCK = LockSettings(lease=2.0, wait_timeout=30.0, poll_interval=0.1)

USERS = """
- template: dynamodb
  id: create-users
  order: "0001"
  author: platform
  transactional: false
  apply:
    - create_table:
        table: users
        partition_key: {name: id, type: S}
    - update_time_to_live: {table: users, attribute: expires_at}
    - put_items:
        table: users
        items:
          - {id: admin, plan: free, visits: 0, score: 1.5}
          - {id: ops, plan: free, visits: 0}
- template: dynamodb
  id: upgrade-admin
  order: "0002"
  author: platform
  apply:
    - update_item:
        table: users
        key: {id: admin}
        update: "SET #plan = :pro ADD visits :one"
        names: {"#plan": plan}
        values: {":pro": pro, ":one": 1}
    - delete_items: {table: users, keys: [{id: ops}]}
  rollback:
    - update_item:
        table: users
        key: {id: admin}
        update: "SET #plan = :free"
        names: {"#plan": plan}
        values: {":free": free}
"""


def write_pipeline(tmp_path: Path, entries: str) -> str:
    path = tmp_path / "pipeline.yaml"
    body = textwrap.indent(textwrap.dedent(entries).strip(), " " * 6)
    path.write_text(f"stages:\n  - name: dynamo\n    changes:\n{body}\n")
    return str(path)


DESCRIPTOR = ChangeDescriptor(
    id="plans-change",
    order="0001",
    author="tests",
    stage="default",
    transactional=True,
    recovery=Recovery.MANUAL_INTERVENTION,
    run_always=False,
    source="pipeline.yaml#plans-change",
)


def template_for(fields: dict[str, Any]) -> DynamoTemplate:
    config = DynamoConfig.model_validate(fields)
    return DynamoTemplate(config, DESCRIPTOR)


async def items_of(driver: DynamoDriver, table: str) -> dict[str, dict[str, Any]]:
    response = await driver.client.scan(TableName=table, ConsistentRead=True)
    return {item["id"]["S"]: item for item in response["Items"]}


async def table_names(driver: DynamoDriver) -> list[str]:
    response = await driver.client.list_tables()
    return sorted(response["TableNames"])


async def test_pipeline_file_applied(driver: DynamoDriver, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, USERS)
    report = await AsyncRunner(driver, path, lock=FAST_LOCK, manifest_cache=False).run()
    assert report.applied == ("create-users", "upgrade-admin")
    users = await items_of(driver, "users")
    assert sorted(users) == ["admin"]
    assert users["admin"]["plan"] == {"S": "pro"}
    assert users["admin"]["visits"] == {"N": "1"}
    assert users["admin"]["score"] == {"N": "1.5"}
    ttl = await driver.client.describe_time_to_live(TableName="users")
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"


async def test_pipeline_file_applied_once(driver: DynamoDriver, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, USERS)
    await AsyncRunner(driver, path, lock=FAST_LOCK, manifest_cache=False).run()
    second = await AsyncRunner(driver, path, lock=FAST_LOCK, manifest_cache=False).run()
    assert second.applied == ()


async def test_runner_rollback_to_first(driver: DynamoDriver, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, USERS)
    runner = AsyncRunner(driver, path, lock=FAST_LOCK, manifest_cache=False)
    await runner.run()
    await runner.rollback(to="create-users")
    users = await items_of(driver, "users")
    assert users["admin"]["plan"] == {"S": "free"}
    states = {state.change_id: state.state for state in await driver.read_states()}
    assert states["upgrade-admin"] is AuditState.ROLLED_BACK
    assert states["create-users"] is AuditState.APPLIED


async def test_default_undo_reverses(driver: DynamoDriver) -> None:
    template = template_for(
        {
            "apply": [
                {
                    "create_table": {
                        "table": "plans",
                        "partition_key": {"name": "id", "type": "S"},
                        "sort_key": {"name": "version", "type": "N"},
                    }
                },
                {"put_items": {"table": "plans", "items": [{"id": "free", "version": 1}]}},
            ]
        }
    )
    await template.execute(driver.client)
    assert await table_names(driver) == ["plans"]
    assert template.has_rollback() is True
    await template.rollback(driver.client)
    assert await table_names(driver) == []


async def test_put_undo_deletes_only_its_items(driver: DynamoDriver) -> None:
    await create_plans(driver)
    await driver.client.put_item(TableName="plans", Item={"id": {"S": "pro"}})
    template = template_for(
        {"apply": [{"put_items": {"table": "plans", "items": [{"id": "free", "price": 0}]}}]}
    )
    await template.execute(driver.client)
    assert sorted(await items_of(driver, "plans")) == ["free", "pro"]
    await template.rollback(driver.client)
    assert sorted(await items_of(driver, "plans")) == ["pro"]


async def test_put_rejects_existing_item(driver: DynamoDriver) -> None:
    await create_plans(driver)
    await driver.client.put_item(TableName="plans", Item={"id": {"S": "free"}, "price": {"N": "9"}})
    template = template_for(
        {"apply": [{"put_items": {"table": "plans", "items": [{"id": "free"}]}}]}
    )
    with pytest.raises(driver.client.exceptions.ConditionalCheckFailedException):
        await template.execute(driver.client)
    assert (await items_of(driver, "plans"))["free"]["price"] == {"N": "9"}


async def test_put_with_overwrite(driver: DynamoDriver) -> None:
    await create_plans(driver)
    await driver.client.put_item(TableName="plans", Item={"id": {"S": "free"}, "price": {"N": "9"}})
    template = template_for(
        {"apply": [{"put_items": {"table": "plans", "items": [{"id": "free"}], "overwrite": True}}]}
    )
    await template.execute(driver.client)
    assert "price" not in (await items_of(driver, "plans"))["free"]
    assert template.has_rollback() is False


async def test_ttl_undo_disables(driver: DynamoDriver) -> None:
    await create_plans(driver)
    template = template_for(
        {"apply": [{"update_time_to_live": {"table": "plans", "attribute": "expires"}}]}
    )
    await template.execute(driver.client)
    await template.rollback(driver.client)
    ttl = await driver.client.describe_time_to_live(TableName="plans")
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"


async def test_delete_table_missing_ok(driver: DynamoDriver) -> None:
    template = template_for({"apply": [{"delete_table": {"table": "ghost", "missing_ok": True}}]})
    await template.execute(driver.client)
    strict = template_for({"apply": [{"delete_table": "ghost"}]})
    with pytest.raises(driver.client.exceptions.ResourceNotFoundException):
        await strict.execute(driver.client)


async def test_items_through_transaction(driver: DynamoDriver) -> None:
    """A transactional template change collects its item writes in the transaction."""
    fence = await held_lock(driver)
    await create_plans(driver)
    template = template_for(
        {
            "apply": [
                {"put_items": {"table": "plans", "items": [{"id": "free"}, {"id": "pro"}]}},
                {
                    "update_item": {
                        "table": "plans",
                        "key": {"id": "team"},
                        "update": "SET price = :p",
                        "values": {":p": 20},
                    }
                },
            ]
        }
    )
    collected: list[int] = []

    async def body(tx: DynamoTransaction) -> None:
        await template.execute(driver.client, tx)
        collected.append(len(tx))

    await driver.run_in_transaction(fence, body, lambda: entry("plans"))
    assert collected == [3]
    assert sorted(await items_of(driver, "plans")) == ["free", "pro", "team"]


async def test_table_operation_in_transaction_rejected(driver: DynamoDriver) -> None:
    template = template_for({"apply": [{"delete_table": "plans"}]})
    with pytest.raises(ValueError, match="transactional: false") as caught:
        await template.execute(driver.client, DynamoTransaction())
    assert "'plans-change'" in str(caught.value)
    assert "delete_table" in str(caught.value)


async def create_plans(driver: DynamoDriver) -> None:
    await driver.client.create_table(
        TableName="plans",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def test_no_undo_for_update() -> None:
    template = template_for(
        {"apply": [{"update_item": {"table": "plans", "key": {"id": "a"}, "update": "SET a = b"}}]}
    )
    assert template.has_rollback() is False


def test_no_undo_for_delete_table() -> None:
    assert template_for({"apply": [{"delete_table": "plans"}]}).has_rollback() is False


def test_explicit_rollback_wins() -> None:
    template = template_for(
        {
            "apply": [{"delete_items": {"table": "plans", "keys": [{"id": "a"}]}}],
            "rollback": [{"put_items": {"table": "plans", "items": [{"id": "a"}]}}],
        }
    )
    assert template.has_rollback() is True


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("apply: [{rename_table: users}]", "unknown operation 'rename_table'"),
        ("apply: [{create_table: {table: users}}]", "partition_key"),
        (
            "apply: [{create_table: {table: users, partition_key: {name: id, type: X}}}]",
            "type",
        ),
        (
            "apply: [{create_table: {table: users, partition_key: {name: id, type: S}, "
            "billing_mode: PROVISIONED}}]",
            "provisioned_throughput",
        ),
        ("apply: [{put_items: {table: users, items: []}}]", "items"),
        ("apply: [{put_items: {table: users, items: [{}]}}]", "key attributes"),
        ("apply: [{update_item: {table: users, key: {id: a}}}]", "update"),
        ("apply: [{delete_items: {table: users}}]", "keys"),
        ("apply: [{delete_table: x}]", "table"),
        ("apply: [{update_time_to_live: {table: users}}]", "attribute"),
        ("apply: [{delete_table: {table: users, force: true}}]", "force"),
        ("apply: []", "apply"),
        ("aply: [{delete_table: users}]", "aply"),
    ],
)
def test_invalid_entry_rejected(tmp_path: Path, entry: str, message: str) -> None:
    path = write_pipeline(
        tmp_path,
        f"""
        - template: dynamodb
          id: broken
          order: "0001"
          author: platform
          {entry}
        """,
    )
    with pytest.raises(PipelineValidationError, match=message) as caught:
        load_pipeline(path)
    assert "broken" in str(caught.value)


def test_valid_file_loads(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path, USERS))
    assert [change.id for change in pipeline] == ["create-users", "upgrade-admin"]
