"""DynamoDB values and items, and the transaction collector of transactional changes.

Private to the DynamoDB driver; `flamingock_async.drivers.dynamodb` re-exports the public
names.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DynamoTransaction",
    "TransactionAction",
    "to_low_level",
    "to_plain",
    "item_size",
    "is_attribute_value",
    "describe_key",
]

TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_TYPE_TAGS = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})


# -- values ----------------------------------------------------------------------------------


def _serialize(value: Any) -> dict[str, Any]:
    """Return the low-level attribute value of a plain Python value; floats become Decimals."""
    from boto3.dynamodb.types import TypeSerializer

    serialized: dict[str, Any] = TypeSerializer().serialize(_floats_to_decimals(value))
    return serialized


def _floats_to_decimals(value: Any) -> Any:
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, Mapping):
        return {key: _floats_to_decimals(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_floats_to_decimals(item) for item in value]
    return value


def _deserialize(value: Mapping[str, Any]) -> Any:
    """Return the plain Python value of a low-level attribute value (numbers as Decimal)."""
    from boto3.dynamodb.types import TypeDeserializer

    return TypeDeserializer().deserialize(value)


def is_attribute_value(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in _TYPE_TAGS


def to_low_level(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return an item, key or expression-value mapping in DynamoDB's low-level form.

    A mapping whose values are all one-key dicts tagged with a DynamoDB type (`{"S": "x"}`)
    is taken as already low-level. Anything else is serialized from plain Python values.
    A valid item or key is never ambiguous, because key attributes are strings, numbers or
    bytes in plain form.
    """
    if values is None:
        return None
    if values and all(is_attribute_value(value) for value in values.values()):
        return {name: dict(value) for name, value in values.items()}
    return {name: _serialize(value) for name, value in values.items()}


def to_plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """Return a low-level item as plain Python values (numbers as `decimal.Decimal`)."""
    return {name: _deserialize(value) for name, value in item.items()}


def _attribute_size(value: Mapping[str, Any]) -> int:
    """Return the stored size of a low-level attribute value, by DynamoDB's sizing rules."""
    tag, content = next(iter(value.items()))
    if tag == "S":
        return len(str(content).encode())
    if tag == "N":
        return len(str(content).lstrip("-").replace(".", "")) // 2 + 2
    if tag == "B":
        return len(content)
    if tag in ("BOOL", "NULL"):
        return 1
    if tag in ("SS", "NS", "BS"):
        return sum(_attribute_size({tag[0]: member}) for member in content)
    if tag == "M":
        return 3 + sum(
            len(name.encode()) + _attribute_size(member) + 1 for name, member in content.items()
        )
    if tag == "L":
        return 3 + sum(_attribute_size(member) + 1 for member in content)
    return 0


def item_size(item: Mapping[str, Any]) -> int:
    """Return the size of a low-level item in bytes, as DynamoDB counts it (an estimate)."""
    return sum(len(name.encode()) + _attribute_size(value) for name, value in item.items())


# -- the transaction collector ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionAction:
    """One collected write: its kind, table, key (None for a Put) and low-level request body."""

    kind: str
    table: str
    key: dict[str, Any] | None
    body: dict[str, Any]

    @property
    def request(self) -> dict[str, Any]:
        """The action as one element of `TransactItems`."""
        return {self.kind: self.body}

    def size(self) -> int:
        """Return the bytes this action counts towards the transaction's 4 MB."""
        counted = [self.body.get("Item") or self.key or {}]
        counted.append(self.body.get("ExpressionAttributeValues") or {})
        return sum(item_size(part) for part in counted)

    def describe(self) -> str:
        shown = self.key if self.key is not None else self.body.get("Item")
        return f"{self.kind} on table {self.table!r} ({describe_key(shown)})"


def describe_key(key: Mapping[str, Any] | None) -> str:
    if not key:
        return "no key"
    parts = []
    for name, value in key.items():
        shown = _deserialize(value) if is_attribute_value(value) else value
        parts.append(f"{name}={shown!r}")
    return ", ".join(parts)


class DynamoTransaction:
    """The writes a transactional change collects, committed with its audit entry.

    Items, keys and expression values may be plain Python values (`{"id": "u1", "n": 2}`)
    or DynamoDB's low-level form (`{"id": {"S": "u1"}}`). Nothing is sent until the change
    returns. Then the driver sends every action, the APPLIED audit entry and a check of the
    lock in one `TransactWriteItems`, which commits all of them or none.
    """

    def __init__(self) -> None:
        self._actions: list[TransactionAction] = []

    def __len__(self) -> int:
        return len(self._actions)

    @property
    def actions(self) -> list[TransactionAction]:
        return list(self._actions)

    def put(
        self,
        table: str,
        item: Mapping[str, Any],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a Put of `item` into `table`, optionally with a condition expression."""
        body = {"TableName": _table_argument(table), "Item": _item_argument(item, "item")}
        self._add("Put", None, body, condition, names, values)

    def update(
        self,
        table: str,
        key: Mapping[str, Any],
        update: str,
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        """Add an Update of the item `key` in `table` with the update expression `update`."""
        low_key = _item_argument(key, "key")
        if not isinstance(update, str) or not update.strip():
            raise ValueError(f"the update expression must be a non-empty string, got {update!r}")
        body = {"TableName": _table_argument(table), "Key": low_key, "UpdateExpression": update}
        self._add("Update", low_key, body, condition, names, values)

    def delete(
        self,
        table: str,
        key: Mapping[str, Any],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a Delete of the item `key` from `table`."""
        low_key = _item_argument(key, "key")
        body = {"TableName": _table_argument(table), "Key": low_key}
        self._add("Delete", low_key, body, condition, names, values)

    def condition_check(
        self,
        table: str,
        key: Mapping[str, Any],
        condition: str,
        *,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a check that the item `key` satisfies `condition`; the commit fails otherwise."""
        if not isinstance(condition, str) or not condition.strip():
            raise ValueError(f"the condition must be a non-empty string, got {condition!r}")
        low_key = _item_argument(key, "key")
        body = {"TableName": _table_argument(table), "Key": low_key}
        self._add("ConditionCheck", low_key, body, condition, names, values)

    def _add(
        self,
        kind: str,
        key: dict[str, Any] | None,
        body: dict[str, Any],
        condition: str | None,
        names: Mapping[str, str] | None,
        values: Mapping[str, Any] | None,
    ) -> None:
        if condition is not None:
            body["ConditionExpression"] = condition
        if names:
            body["ExpressionAttributeNames"] = dict(names)
        if values:
            body["ExpressionAttributeValues"] = to_low_level(values)
        self._actions.append(TransactionAction(kind, body["TableName"], key, body))


def _table_argument(table: object) -> str:
    if not isinstance(table, str) or not TABLE_NAME.match(table):
        raise ValueError(
            f"invalid DynamoDB table name {table!r}: use 3 to 255 letters, digits, '_', '-' or '.'"
        )
    return table


def _item_argument(item: object, what: str) -> dict[str, Any]:
    if not isinstance(item, Mapping) or not item:
        raise ValueError(f"the {what} must be a non-empty mapping of attribute names, got {item!r}")
    low_level = to_low_level(item)
    if low_level is None:  # unreachable for a mapping; keeps the type narrow
        raise ValueError(f"the {what} is missing")
    return low_level
