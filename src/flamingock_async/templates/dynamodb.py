"""The `dynamodb` template: table, time-to-live and item operations on DynamoDB.

```yaml
- template: dynamodb
  id: create-users
  order: "0001"
  author: platform
  transactional: false
  apply:
    - create_table:
        table: users
        partition_key: {name: id, type: S}
        sort_key: {name: created, type: N}       # optional
    - update_time_to_live: {table: users, attribute: expires_at}
    - put_items:
        table: users
        items: [{id: admin, created: 0, role: admin}]
  rollback:                                      # optional
    - delete_table: users
```

Operations, each a mapping with one key:

- `create_table`: `table`, `partition_key` and optional `sort_key` (each `{name, type}` with
  type `S`, `N` or `B`), `billing_mode` (`PAY_PER_REQUEST` by default, or `PROVISIONED`
  with `provisioned_throughput: {read, write}`). Waits until the table is active. Undone by
  deleting the table.
- `delete_table`: `table` (or the name alone), `missing_ok`; waits until the table is gone.
  No default undo, because the items are lost.
- `update_time_to_live`: `table`, `attribute`, `enabled` (true by default). Undone by the
  opposite setting. DynamoDB accepts only one change of this setting per table per hour.
- `put_items`: `table`, `items`, `overwrite` (false by default, so a put of an existing
  item fails instead of replacing it). Undone by deleting the items, unless `overwrite`
  is true, because a replaced item cannot be restored.
- `update_item`: `table`, `key`, `update` (an update expression), `condition`, `names`,
  `values`. No default undo.
- `delete_items`: `table`, `keys`, `missing_ok` (true by default). No default undo.

Without a `rollback` list, rolling back runs the default undo of each `apply` operation in
reverse order, and the change has a rollback only if every operation has one. Items, keys
and expression values are plain YAML values (numbers become DynamoDB numbers) or
DynamoDB's low-level form (`{id: {S: admin}}`).

The client is injected by the name `dynamodb` (the DynamoDB driver's own client, or a user
dependency of that name). In a transactional change the item operations go into the
injected `transaction` (a `DynamoTransaction`) and commit with the change's audit entry.
DynamoDB has no transactions over table operations, so a transactional change with
`create_table`, `delete_table` or `update_time_to_live` fails before doing anything:
declare such changes `transactional: false`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import ChangeTemplate
from ._operations import tag_operations, undo_operations

__all__ = ["DynamoConfig", "DynamoTemplate", "TEMPLATE"]

_TABLE_NAME_PATTERN = r"^[A-Za-z0-9_.-]{3,255}$"
_WAITER = {"Delay": 1, "MaxAttempts": 300}


class KeyAttribute(BaseModel):
    """One attribute of a table's primary key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: Literal["S", "N", "B"]


class Throughput(BaseModel):
    """Provisioned read and write capacity units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read: int = Field(ge=1)
    write: int = Field(ge=1)


class _Operation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    changes_table: ClassVar[bool] = False
    """True for table operations, which DynamoDB cannot run inside a transaction."""

    table: str = Field(pattern=_TABLE_NAME_PATTERN)

    def inverse(self) -> _Operation | None:
        """Return the operation that undoes this one, or None when there is none."""
        return None

    async def run(self, client: Any, transaction: Any) -> None:
        raise NotImplementedError


class CreateTable(_Operation):
    op: Literal["create_table"]
    partition_key: KeyAttribute
    sort_key: KeyAttribute | None = None
    billing_mode: Literal["PAY_PER_REQUEST", "PROVISIONED"] = "PAY_PER_REQUEST"
    provisioned_throughput: Throughput | None = None
    changes_table: ClassVar[bool] = True

    @model_validator(mode="after")
    def _throughput_matches_billing(self) -> CreateTable:
        provisioned = self.billing_mode == "PROVISIONED"
        if provisioned != (self.provisioned_throughput is not None):
            raise ValueError(
                "give provisioned_throughput: {read, write} exactly when billing_mode is "
                "PROVISIONED"
            )
        if self.sort_key is not None and self.sort_key.name == self.partition_key.name:
            raise ValueError("the sort key must differ from the partition key")
        return self

    def inverse(self) -> _Operation:
        return DeleteTable(op="delete_table", table=self.table, missing_ok=True)

    async def run(self, client: Any, transaction: Any) -> None:
        keys = [(self.partition_key, "HASH")]
        if self.sort_key is not None:
            keys.append((self.sort_key, "RANGE"))
        parameters: dict[str, Any] = {
            "TableName": self.table,
            "KeySchema": [{"AttributeName": key.name, "KeyType": kind} for key, kind in keys],
            "AttributeDefinitions": [
                {"AttributeName": key.name, "AttributeType": key.type} for key, _ in keys
            ],
            "BillingMode": self.billing_mode,
        }
        if self.provisioned_throughput is not None:
            parameters["ProvisionedThroughput"] = {
                "ReadCapacityUnits": self.provisioned_throughput.read,
                "WriteCapacityUnits": self.provisioned_throughput.write,
            }
        await client.create_table(**parameters)
        await client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig=_WAITER)


class DeleteTable(_Operation):
    op: Literal["delete_table"]
    missing_ok: bool = False
    changes_table: ClassVar[bool] = True

    async def run(self, client: Any, transaction: Any) -> None:
        try:
            await client.delete_table(TableName=self.table)
        except client.exceptions.ResourceNotFoundException:
            if not self.missing_ok:
                raise
            return
        await client.get_waiter("table_not_exists").wait(TableName=self.table, WaiterConfig=_WAITER)


class UpdateTimeToLive(_Operation):
    op: Literal["update_time_to_live"]
    attribute: str = Field(min_length=1)
    enabled: bool = True
    changes_table: ClassVar[bool] = True

    def inverse(self) -> _Operation:
        return UpdateTimeToLive(
            op="update_time_to_live",
            table=self.table,
            attribute=self.attribute,
            enabled=not self.enabled,
        )

    async def run(self, client: Any, transaction: Any) -> None:
        await client.update_time_to_live(
            TableName=self.table,
            TimeToLiveSpecification={"Enabled": self.enabled, "AttributeName": self.attribute},
        )


class PutItems(_Operation):
    op: Literal["put_items"]
    items: list[dict[str, Any]] = Field(min_length=1)
    overwrite: bool = False

    @field_validator("items")
    @classmethod
    def _items_not_empty(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not all(value):
            raise ValueError("every item needs at least its key attributes")
        return value

    def inverse(self) -> _Operation | None:
        if self.overwrite:
            return None
        return DeleteItems(op="delete_items", table=self.table, keys=self.items, missing_ok=True)

    async def run(self, client: Any, transaction: Any) -> None:
        from ..drivers.dynamodb import to_low_level

        options: dict[str, Any] = {}
        if not self.overwrite:
            partition_key = (await _key_names(client, self.table))[0]
            options = {
                "condition": "attribute_not_exists(#key)",
                "names": {"#key": partition_key},
            }
        for item in self.items:
            low_level = to_low_level(item)
            if transaction is not None:
                transaction.put(self.table, low_level, **options)
                continue
            parameters: dict[str, Any] = {"TableName": self.table, "Item": low_level}
            if options:
                parameters["ConditionExpression"] = options["condition"]
                parameters["ExpressionAttributeNames"] = options["names"]
            await client.put_item(**parameters)


class UpdateItem(_Operation):
    op: Literal["update_item"]
    key: dict[str, Any] = Field(min_length=1)
    update: str = Field(min_length=1)
    condition: str | None = None
    names: dict[str, str] | None = None
    values: dict[str, Any] | None = None

    async def run(self, client: Any, transaction: Any) -> None:
        from ..drivers.dynamodb import to_low_level

        if transaction is not None:
            transaction.update(
                self.table,
                to_low_level(self.key),
                self.update,
                condition=self.condition,
                names=self.names,
                values=to_low_level(self.values),
            )
            return
        parameters: dict[str, Any] = {
            "TableName": self.table,
            "Key": to_low_level(self.key),
            "UpdateExpression": self.update,
        }
        if self.condition:
            parameters["ConditionExpression"] = self.condition
        if self.names:
            parameters["ExpressionAttributeNames"] = self.names
        if self.values:
            parameters["ExpressionAttributeValues"] = to_low_level(self.values)
        await client.update_item(**parameters)


class DeleteItems(_Operation):
    op: Literal["delete_items"]
    keys: list[dict[str, Any]] = Field(min_length=1)
    """The keys of the items; whole items are accepted too, only their key attributes count."""
    missing_ok: bool = True

    async def run(self, client: Any, transaction: Any) -> None:
        from ..drivers.dynamodb import to_low_level

        key_names = await _key_names(client, self.table)
        options: dict[str, Any] = {}
        if not self.missing_ok:
            options = {
                "condition": "attribute_exists(#key)",
                "names": {"#key": key_names[0]},
            }
        for item_or_key in self.keys:
            key = _key_of(to_low_level(item_or_key) or {}, key_names, self.table)
            if transaction is not None:
                transaction.delete(self.table, key, **options)
                continue
            parameters: dict[str, Any] = {"TableName": self.table, "Key": key}
            if options:
                parameters["ConditionExpression"] = options["condition"]
                parameters["ExpressionAttributeNames"] = options["names"]
            await client.delete_item(**parameters)


async def _key_names(client: Any, table: str) -> tuple[str, ...]:
    """Return the key attribute names of `table`, partition key first."""
    response = await client.describe_table(TableName=table)
    schema = sorted(response["Table"]["KeySchema"], key=lambda key: key["KeyType"] != "HASH")
    return tuple(key["AttributeName"] for key in schema)


def _key_of(item: Mapping[str, Any], key_names: tuple[str, ...], table: str) -> dict[str, Any]:
    missing = [name for name in key_names if name not in item]
    if missing:
        raise ValueError(
            f"an item for table {table!r} lacks the key attribute(s) {', '.join(missing)}; "
            "give every key attribute"
        )
    return {name: item[name] for name in key_names}


Operation = Annotated[
    CreateTable | DeleteTable | UpdateTimeToLive | PutItems | UpdateItem | DeleteItems,
    Field(discriminator="op"),
]

_OPERATION_NAMES = (
    "create_table",
    "delete_table",
    "update_time_to_live",
    "put_items",
    "update_item",
    "delete_items",
)


_SHORTHAND = {"delete_table": "table"}


class DynamoConfig(BaseModel):
    """The fields of a `dynamodb` template change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apply: tuple[Operation, ...] = Field(min_length=1)
    rollback: tuple[Operation, ...] | None = None

    @field_validator("apply", "rollback", mode="before")
    @classmethod
    def _tag(cls, value: object) -> object:
        return tag_operations(value, _OPERATION_NAMES, _SHORTHAND)

    def undo_operations(self) -> tuple[_Operation, ...] | None:
        """Return the operations that undo `apply`, or None when some cannot be undone."""
        return undo_operations(self.apply, self.rollback)


class DynamoTemplate(ChangeTemplate):
    """Runs the `apply` operations in order, and their undo operations on rollback."""

    config_model = DynamoConfig
    config: DynamoConfig

    def has_rollback(self) -> bool:
        return self.config.undo_operations() is not None

    async def execute(self, dynamodb: Any, transaction: Any = None) -> None:
        await self._run(self.config.apply, dynamodb, transaction)

    async def rollback(self, dynamodb: Any, transaction: Any = None) -> None:
        await self._run(self.config.undo_operations() or (), dynamodb, transaction)

    async def _run(self, operations: tuple[_Operation, ...], client: Any, transaction: Any) -> None:
        if transaction is not None:
            table_operations = [op for op in operations if op.changes_table]
            if table_operations:
                names = ", ".join(sorted({getattr(op, "op", "?") for op in table_operations}))
                raise ValueError(
                    f"Change {self.descriptor.id!r} runs table operations ({names}) in a "
                    "transaction, which DynamoDB does not support; declare it "
                    "'transactional: false' in the pipeline file."
                )
        for operation in operations:
            await operation.run(client, transaction)


TEMPLATE = DynamoTemplate
