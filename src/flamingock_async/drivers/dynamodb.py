"""The DynamoDB driver, on aioboto3 (extra `dynamodb`).

Tables
------
The driver keeps two tables, both created on demand by `setup()`:

* the **lock table** (default `flamingock_lock`), key `pk` (S): one item per lock key;
* the **audit table** (default `flamingock_audit`), key `pk` (S) + `sk` (S), holding two kinds
  of item:

  ============  =====================  ==========================================
  item          pk                     sk
  ============  =====================  ==========================================
  entry         ``entry#<change id>``  ``<epoch:020>#<sequence:020>#<entry id>``
  state         ``state``              ``<change id>``
  ============  =====================  ==========================================

Every append sends one `TransactWriteItems` with three actions. It writes the new **entry**
item, which is append-only: its condition `attribute_not_exists(pk)` makes a repeated
`entry_id` a no-op. It puts a copy of the same entry as the change's **state** item, and it
checks the lock item's owner and epoch.

The state Put is conditional on the stored state being older by `(epoch, sequence)`. When
only that condition fails, because an entry was appended out of order, the transaction is
sent again without the state Put. The state item is therefore always the newest entry of
its change.

Why this layout: the start-up path reads the current state of every change, and it must stay
cheap for thousands of changes. All state items share the partition `state`, so `read_states`
is one strongly consistent Query over exactly one item per change, paginated by
`LastEvaluatedKey`. A state item without an error trace is well under 1 KB, so 1,000 changes
take one or two requests. `read_state_summaries` sends the same Query with a projection of
the five attributes planning needs. Keying entries by change id instead would need a Scan of
the whole history, and a single log partition would need a Query over every entry ever
written. The history of one change is one
Query on its own partition, in `(epoch, sequence)` order thanks to the zero-padded sort key;
the full history is a paginated Scan, which only the CLI needs.

NOTE: all state items sit in one partition, and DynamoDB limits each partition to 3,000 read
units a second (Amazon DynamoDB Developer Guide, warm throughput scenarios). Many replicas
starting at the same moment against a very long history can therefore be throttled, and the
driver retries throttled requests with backoff until `retry_timeout`.

Transactions
------------
A transactional change receives a `DynamoTransaction` (by type, and by the names `transaction`
and `tx`), collects its writes there, and the driver sends them in one `TransactWriteItems`
with the APPLIED entry, the state item and a `ConditionCheck` on the lock's owner and epoch.
Before sending, the driver checks DynamoDB's limits (100 actions including its own three,
4 MB in total, 400 KB per item, no item twice) and raises `TransactionLimitError` with the
limit and the count. Cancelled transactions are reported per action. Conflicts and throttling
are retried with exponential backoff and full jitter until `retry_timeout`, resending the same
actions without running the change again.
"""

from __future__ import annotations

import contextlib
import decimal
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio

from .._audit import AuditEntry, AuditState, StateSummary
from .._errors import (
    ConfigurationError,
    CorruptAuditEntryError,
    DriverAuthError,
    DriverError,
    DriverUnavailableError,
    FlamingockError,
    LockLostError,
    MissingDependencyError,
    TransactionLimitError,
)
from .._lock import Fence, LockRecord, holder_of
from . import redact_url
from ._base import Driver, TransactionBody
from ._dynamodb_errors import (
    CLIENT_ERROR_CODES,
    EXCEPTION_CLASSES,
    HANDLED_ERROR_CODES,
    HANDLED_EXCEPTION_CLASSES,
    CancellationReason,
    TransactionCanceledError,
    error_code,
    error_message,
    is_retryable,
)
from ._dynamodb_items import (
    TABLE_NAME,
    DynamoTransaction,
    TransactionAction,
    is_attribute_value,
    item_size,
    to_low_level,
    to_plain,
)

__all__ = [
    "DynamoDriver",
    "DynamoTransaction",
    "TransactionAction",
    "TransactionCanceledError",
    "CancellationReason",
    "from_url",
    "to_low_level",
    "to_plain",
    "item_size",
    "HANDLED_ERROR_CODES",
    "HANDLED_EXCEPTION_CLASSES",
    "MAX_TRANSACTION_ACTIONS",
    "MAX_TRANSACTION_BYTES",
    "MAX_ITEM_BYTES",
    "DRIVER_ACTIONS",
]

logger = logging.getLogger(__name__)

MAX_TRANSACTION_ACTIONS = 100
"""The maximum number of actions in one `TransactWriteItems` request."""

MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
"""The maximum aggregate size of the items in one `TransactWriteItems` request."""

MAX_ITEM_BYTES = 400 * 1024
"""The maximum size of one DynamoDB item."""

DRIVER_ACTIONS = 3
"""Actions the driver adds to every transaction: the entry Put, the state Put, the lock check."""

BILLING_MODES = ("PAY_PER_REQUEST", "PROVISIONED")

_AUDIT_KEY_SCHEMA = (("pk", "HASH", "S"), ("sk", "RANGE", "S"))
_LOCK_KEY_SCHEMA = (("pk", "HASH", "S"),)
_STATE_PARTITION = "state"
_ENTRY_PREFIX = "entry#"
_USABLE_TABLE_STATES = ("ACTIVE", "UPDATING")
_URL_PARAMETERS = (
    "region",
    "endpoint_url",
    "lock_table",
    "billing_mode",
    "read_capacity",
    "write_capacity",
)


def _import_aioboto3() -> Any:
    try:
        import aioboto3
    except ImportError as error:
        raise MissingDependencyError("DynamoDB", "aioboto3", "dynamodb") from error
    return aioboto3


# -- the driver ------------------------------------------------------------------------------


class DynamoDriver(Driver):
    """Driver that keeps the audit log and the lock in two DynamoDB tables.

    Pass an aioboto3 `session` (the driver creates and closes its client), or a `client`
    you created and close yourself, or neither (a default session from the AWS credential
    chain). `region` and `endpoint_url` apply only to the client the driver creates.
    `billing_mode` and `provisioned_throughput` (read and write capacity units) apply only
    to tables that `setup()` creates. `retry_timeout` bounds, in seconds, how long throttled
    and conflicting requests are retried; `setup_timeout` how long `setup()` waits for a
    table to become active.
    """

    name: ClassVar[str] = "dynamodb"
    transaction_handle_names: ClassVar[tuple[str, ...]] = ("transaction", "tx")

    def __init__(
        self,
        *,
        session: Any = None,
        client: Any = None,
        audit_table: str = "flamingock_audit",
        lock_table: str = "flamingock_lock",
        region: str | None = None,
        endpoint_url: str | None = None,
        billing_mode: str = "PAY_PER_REQUEST",
        provisioned_throughput: tuple[int, int] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry_timeout: float = 10.0,
        setup_timeout: float = 120.0,
    ) -> None:
        super().__init__()
        _validate_options(
            session=session,
            client=client,
            audit_table=audit_table,
            lock_table=lock_table,
            region=region,
            endpoint_url=endpoint_url,
            billing_mode=billing_mode,
            provisioned_throughput=provisioned_throughput,
        )
        if client is None:
            _import_aioboto3()
        self.audit_table = audit_table
        self.lock_table = lock_table
        self.region = region
        self.endpoint_url = endpoint_url
        self.billing_mode = billing_mode
        self.provisioned_throughput = provisioned_throughput
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_timeout = retry_timeout
        self.setup_timeout = setup_timeout
        self.requests = 0
        """The number of requests sent to DynamoDB, retries included."""
        self._session = session
        self._client = client
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._open_lock = anyio.Lock()
        self._key_names: dict[str, tuple[str, ...]] = {
            audit_table: ("pk", "sk"),
            lock_table: ("pk",),
        }

    # -- description and injection ------------------------------------------------------

    @property
    def supports_transactions(self) -> bool:
        return True

    @property
    def client(self) -> Any:
        """The aioboto3 DynamoDB client, or None before `open()`."""
        return self._client

    def describe(self) -> str:
        where = f"endpoint {redact_url(self.endpoint_url)}" if self.endpoint_url else None
        if where is None and self.region:
            where = f"region {self.region}"
        suffix = f" at {where}" if where else ""
        return f"DynamoDB tables {self.audit_table!r} and {self.lock_table!r}{suffix}"

    def provided_dependencies(self) -> Mapping[str, type]:
        from aiobotocore.client import AioBaseClient

        return {
            "dynamodb": AioBaseClient,
            "transaction": DynamoTransaction,
            "tx": DynamoTransaction,
        }

    def target_dependencies(self) -> Mapping[str, object]:
        return {} if self._client is None else {"dynamodb": self._client}

    # -- lifecycle -----------------------------------------------------------------------

    async def _open(self) -> None:
        await self._require_client()

    async def _aclose(self) -> None:
        if self._exit_stack is None:
            return
        stack, self._exit_stack = self._exit_stack, None
        self._client = None
        await stack.aclose()

    async def _require_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._open_lock:
            if self._client is None:
                self._client = await self._create_client()
        return self._client

    async def _create_client(self) -> Any:
        from botocore.config import Config

        session = self._session or _import_aioboto3().Session()
        config = Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"mode": "standard", "max_attempts": 2},
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.client(
                "dynamodb",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=config,
            )
        )
        self._exit_stack = stack
        return client

    async def _setup(self) -> None:
        await self._ensure_table(self.lock_table, _LOCK_KEY_SCHEMA)
        await self._ensure_table(self.audit_table, _AUDIT_KEY_SCHEMA)

    async def _ensure_table(self, table: str, schema: tuple[tuple[str, str, str], ...]) -> None:
        """Create `table` unless it exists, then wait until it is usable; checks its key schema.

        Several runners may race here. A runner that loses the CreateTable race gets
        `ResourceInUseException` and then waits for the other runner's table.
        """
        deadline = time.monotonic() + self.setup_timeout
        while True:
            description = await self._describe_table(table)
            if description is None:
                description = await self._create_table(table, schema)
            if description is not None:
                self._check_key_schema(table, description, schema)
                if description.get("TableStatus") in _USABLE_TABLE_STATES:
                    return
            if time.monotonic() >= deadline:
                status = description.get("TableStatus") if description else "missing"
                raise DriverUnavailableError(
                    f"DynamoDB table {table!r} did not become ACTIVE within "
                    f"{self.setup_timeout:g} s (status {status}); check the table in the AWS "
                    "console or raise setup_timeout."
                )
            await anyio.sleep(random.uniform(0.25, 0.75))

    async def _describe_table(self, table: str) -> dict[str, Any] | None:
        try:
            response = await self._send("describe_table", TableName=table)
        except Exception as error:
            if error_code(error) == "ResourceNotFoundException":
                return None
            raise
        description: dict[str, Any] = response["Table"]
        return description

    async def _create_table(
        self, table: str, schema: tuple[tuple[str, str, str], ...]
    ) -> dict[str, Any] | None:
        """Send CreateTable and return the table's description (None if it vanished again)."""
        parameters: dict[str, Any] = {
            "TableName": table,
            "KeySchema": [{"AttributeName": name, "KeyType": kind} for name, kind, _ in schema],
            "AttributeDefinitions": [
                {"AttributeName": name, "AttributeType": type_} for name, _, type_ in schema
            ],
            "BillingMode": self.billing_mode,
        }
        if self.provisioned_throughput is not None:
            read, write = self.provisioned_throughput
            parameters["ProvisionedThroughput"] = {
                "ReadCapacityUnits": read,
                "WriteCapacityUnits": write,
            }
        try:
            response = await self._send("create_table", **parameters)
        except Exception as error:
            if error_code(error) != "ResourceInUseException":
                raise
            logger.debug("Table %r is already being created by another runner", table)
            return await self._describe_table(table)
        logger.info("Created DynamoDB table %r (%s)", table, self.billing_mode)
        description: dict[str, Any] = response["TableDescription"]
        return description

    def _check_key_schema(
        self,
        table: str,
        description: Mapping[str, Any],
        expected: tuple[tuple[str, str, str], ...],
    ) -> None:
        types = {
            definition["AttributeName"]: definition["AttributeType"]
            for definition in description.get("AttributeDefinitions", [])
        }
        found = tuple(
            (key["AttributeName"], key["KeyType"], types.get(key["AttributeName"], "?"))
            for key in description.get("KeySchema", [])
        )
        if found == expected:
            return
        raise DriverError(
            f"DynamoDB table {table!r} has the key schema {_format_schema(found)}, but the "
            f"driver needs {_format_schema(expected)}; point the driver at another table "
            "(audit_table=... or lock_table=...) or delete this one so that setup recreates it."
        )

    # -- requests ------------------------------------------------------------------------

    async def _send(self, operation: str, **parameters: Any) -> dict[str, Any]:
        """Send one request, retrying throttling and conflicts with backoff until the deadline.

        Only errors that prove the request changed nothing are retried, so a conditional
        write is never applied twice.
        """
        client = await self._require_client()
        method = getattr(client, operation)
        deadline = time.monotonic() + self.retry_timeout
        attempt = 0
        while True:
            self.requests += 1
            try:
                response: dict[str, Any] = await method(**parameters)
            except Exception as error:
                remaining = deadline - time.monotonic()
                if not is_retryable(error) or remaining <= 0:
                    raise
                attempt += 1
                pause = min(remaining, random.uniform(0, min(1.0, 0.025 * 2**attempt)))
                logger.info(
                    "DynamoDB %s was rejected with %s; retrying in %.3f s (attempt %d)",
                    operation,
                    error_code(error),
                    pause,
                    attempt,
                )
                await anyio.sleep(pause)
                continue
            return response

    async def _paginate(self, operation: str, **parameters: Any) -> list[dict[str, Any]]:
        """Return every item of a Query or Scan, following `LastEvaluatedKey` page by page."""
        items: list[dict[str, Any]] = []
        while True:
            page = await self._send(operation, ConsistentRead=True, **parameters)
            items.extend(page.get("Items", []))
            last_key = page.get("LastEvaluatedKey")
            if not last_key:
                return items
            parameters["ExclusiveStartKey"] = last_key

    # -- lock records --------------------------------------------------------------------

    async def _read_lock(self, key: str) -> LockRecord | None:
        try:
            response = await self._send(
                "get_item",
                TableName=self.lock_table,
                Key={"pk": {"S": key}},
                ConsistentRead=True,
            )
        except Exception as error:
            if error_code(error) == "ResourceNotFoundException":
                return None
            raise
        item = response.get("Item")
        return None if item is None else self._decode_lock(item)

    async def _insert_lock(self, record: LockRecord) -> bool:
        return await self._put_lock(record, "attribute_not_exists(pk)", {})

    async def _replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool:
        if record.key != key:
            raise DriverError(f"Lock record key {record.key!r} does not match {key!r}.")
        return await self._put_lock(
            record, "#version = :expected", {":expected": {"N": str(expected_version)}}
        )

    async def _put_lock(self, record: LockRecord, condition: str, values: dict[str, Any]) -> bool:
        """Put `record` if `condition` holds; return whether the stored record is `record`.

        botocore resends a request whose response timed out. When the first attempt was
        applied, the resent one fails its condition, and the stored item returned with the
        failure (`ALL_OLD`) is then exactly `record`, which counts as success.
        """
        parameters: dict[str, Any] = {
            "TableName": self.lock_table,
            "Item": _encode_lock(record),
            "ConditionExpression": condition,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if values:
            parameters["ExpressionAttributeNames"] = {"#version": "version"}
            parameters["ExpressionAttributeValues"] = values
        try:
            await self._send("put_item", **parameters)
        except Exception as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            stored = getattr(error, "response", {}).get("Item")
            return bool(stored) and stored == parameters["Item"]
        return True

    def _decode_lock(self, item: Mapping[str, Any]) -> LockRecord:
        key = _plain_string(item.get("pk"))
        try:
            return _decode_lock(item)
        except (KeyError, TypeError, ValueError) as error:
            raise DriverError(
                f"The lock item pk={key!r} in DynamoDB table {self.lock_table!r} cannot be read "
                f"({error}); delete the item so that the next runner recreates it."
            ) from error

    # -- audit log -----------------------------------------------------------------------

    async def _read_states(self) -> list[AuditEntry]:
        items = await self._query_state_items()
        return [self._decode_entry(item) for item in items]

    async def _read_state_summaries(self) -> list[StateSummary]:
        items = await self._query_state_items(
            ProjectionExpression="pk, sk, change_id, #state, transactional, lock_epoch",
            ExpressionAttributeNames={"#state": "state"},
        )
        return [self._decode_summary(item) for item in items]

    async def _query_state_items(self, **projection: Any) -> list[dict[str, Any]]:
        """Return every state item, or none when the audit table does not exist."""
        try:
            return await self._paginate(
                "query",
                TableName=self.audit_table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": _STATE_PARTITION}},
                **projection,
            )
        except Exception as error:
            if error_code(error) == "ResourceNotFoundException":
                return []
            raise

    async def _read_history(self, change_id: str | None) -> list[AuditEntry]:
        try:
            if change_id is None:
                items = await self._paginate(
                    "scan",
                    TableName=self.audit_table,
                    FilterExpression="begins_with(pk, :prefix)",
                    ExpressionAttributeValues={":prefix": {"S": _ENTRY_PREFIX}},
                )
            else:
                items = await self._paginate(
                    "query",
                    TableName=self.audit_table,
                    KeyConditionExpression="pk = :pk",
                    ExpressionAttributeValues={":pk": {"S": _ENTRY_PREFIX + change_id}},
                )
        except Exception as error:
            if error_code(error) == "ResourceNotFoundException":
                return []
            raise
        entries = [self._decode_entry(item) for item in items]
        return sorted(entries, key=lambda entry: entry.sort_key)

    async def _append_audit(self, entry: AuditEntry, fence: Fence) -> None:
        await self._write_transaction([], entry, fence)

    async def _run_in_transaction(
        self,
        fence: Fence,
        body: TransactionBody,
        audit: Callable[[], AuditEntry],
    ) -> None:
        transaction = DynamoTransaction()
        await body(transaction)
        await self._write_transaction(transaction.actions, audit(), fence)

    def _decode_entry(self, item: Mapping[str, Any]) -> AuditEntry:
        try:
            return _decode_entry(item)
        except (KeyError, TypeError, ValueError, decimal.InvalidOperation) as error:
            raise self._corrupt(item, error) from error

    def _decode_summary(self, item: Mapping[str, Any]) -> StateSummary:
        try:
            return _decode_summary(item)
        except (KeyError, TypeError, ValueError, decimal.InvalidOperation) as error:
            raise self._corrupt(item, error) from error

    def _corrupt(self, item: Mapping[str, Any], error: Exception) -> CorruptAuditEntryError:
        record_key = f"pk={_plain_string(item.get('pk'))!r}, sk={_plain_string(item.get('sk'))!r}"
        return CorruptAuditEntryError(
            f"The audit item {record_key} in DynamoDB table {self.audit_table!r} cannot be "
            f"read ({error}); restore its attributes from a backup or delete the item.",
            record_key=record_key,
        )

    # -- transactions --------------------------------------------------------------------

    async def _write_transaction(
        self, actions: Sequence[TransactionAction], entry: AuditEntry, fence: Fence
    ) -> None:
        """Send the change's actions, the entry, its state item and the fence check at once.

        Raises `TransactionLimitError` before sending when a limit would be exceeded,
        `LockLostError` when the fence check fails, and `TransactionCanceledError` when an
        action of the change is rejected. An entry that is already stored makes this a no-op.
        An entry older than its change's state item (appended out of order) is sent again
        without the state Put, so the state item keeps the newest entry.
        """
        entry_put, state_put, lock_check = self._driver_actions(entry, fence)
        every_action = [*actions, entry_put, state_put, lock_check]
        await self._check_limits(every_action, entry.change_id)
        if await self._send_transaction(every_action, entry, fence, with_state=True):
            return
        logger.debug("Entry %s is older than the state of its change", entry.entry_id)
        await self._send_transaction([*actions, entry_put, lock_check], entry, fence)

    async def _send_transaction(
        self,
        actions: Sequence[TransactionAction],
        entry: AuditEntry,
        fence: Fence,
        *,
        with_state: bool = False,
    ) -> bool:
        """Send one TransactWriteItems; return False if only the state item's condition failed."""
        try:
            await self._send(
                "transact_write_items", TransactItems=[action.request for action in actions]
            )
        except Exception as error:
            if error_code(error) != "TransactionCanceledException":
                raise
            return self._handle_cancellation(error, actions, entry, fence, with_state=with_state)
        return True

    def _driver_actions(self, entry: AuditEntry, fence: Fence) -> list[TransactionAction]:
        attributes = _encode_entry(entry)
        entry_key = {
            "pk": {"S": _ENTRY_PREFIX + entry.change_id},
            "sk": {"S": f"{entry.lock_epoch:020d}#{entry.sequence:020d}#{entry.entry_id}"},
        }
        state_key = {"pk": {"S": _STATE_PARTITION}, "sk": {"S": entry.change_id}}
        lock_key = {"pk": {"S": fence.key}}
        entry_put = {
            "TableName": self.audit_table,
            "Item": {**entry_key, "item_type": {"S": "entry"}, **attributes},
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        state_put = {
            "TableName": self.audit_table,
            "Item": {**state_key, "item_type": {"S": "state"}, **attributes},
            "ConditionExpression": (
                "attribute_not_exists(pk) OR lock_epoch < :epoch "
                "OR (lock_epoch = :epoch AND #sequence <= :sequence)"
            ),
            "ExpressionAttributeNames": {"#sequence": "sequence"},
            "ExpressionAttributeValues": {
                ":epoch": {"N": str(entry.lock_epoch)},
                ":sequence": {"N": str(entry.sequence)},
            },
        }
        lock_check = {
            "TableName": self.lock_table,
            "Key": lock_key,
            "ConditionExpression": "#owner = :owner AND #epoch = :epoch",
            "ExpressionAttributeNames": {"#owner": "owner", "#epoch": "epoch"},
            "ExpressionAttributeValues": {
                ":owner": {"S": fence.owner},
                ":epoch": {"N": str(fence.epoch)},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        return [
            TransactionAction("Put", self.audit_table, entry_key, entry_put),
            TransactionAction("Put", self.audit_table, state_key, state_put),
            TransactionAction("ConditionCheck", self.lock_table, lock_key, lock_check),
        ]

    async def _check_limits(self, actions: Sequence[TransactionAction], change_id: str) -> None:
        """Raise `TransactionLimitError` if DynamoDB would reject the transaction for its size."""
        if len(actions) > MAX_TRANSACTION_ACTIONS:
            raise TransactionLimitError(
                f"The transaction of change {change_id!r} has {len(actions)} actions "
                f"({len(actions) - DRIVER_ACTIONS} from the change and {DRIVER_ACTIONS} for the "
                f"audit entry and the lock check), but DynamoDB allows at most "
                f"{MAX_TRANSACTION_ACTIONS} in one TransactWriteItems; split the change so "
                f"that each writes at most {MAX_TRANSACTION_ACTIONS - DRIVER_ACTIONS} items."
            )
        for action in actions:
            item = action.body.get("Item")
            if item is not None and item_size(item) > MAX_ITEM_BYTES:
                raise TransactionLimitError(
                    f"The transaction of change {change_id!r} puts an item of "
                    f"{item_size(item)} bytes ({action.describe()}), but DynamoDB allows at "
                    f"most {MAX_ITEM_BYTES} bytes per item; store large values elsewhere."
                )
        total = sum(action.size() for action in actions)
        if total > MAX_TRANSACTION_BYTES:
            raise TransactionLimitError(
                f"The transaction of change {change_id!r} writes about {total} bytes, but "
                f"DynamoDB allows at most {MAX_TRANSACTION_BYTES} bytes in one "
                "TransactWriteItems; split the change into smaller changes."
            )
        await self._check_duplicates(actions, change_id)

    async def _check_duplicates(self, actions: Sequence[TransactionAction], change_id: str) -> None:
        seen: dict[tuple[str, str], int] = {}
        for index, action in enumerate(actions):
            key = action.key
            if key is None:
                names = await self._table_key_names(action.table)
                item = action.body["Item"]
                key = {name: item[name] for name in names if name in item}
            identity = (action.table, json.dumps(key, sort_keys=True, default=repr))
            if identity in seen:
                raise TransactionLimitError(
                    f"The transaction of change {change_id!r} writes the same item twice "
                    f"(actions {seen[identity] + 1} and {index + 1}: {action.describe()}), but "
                    "DynamoDB allows at most one action per item in one TransactWriteItems; "
                    "merge the two writes into one."
                )
            seen[identity] = index

    async def _table_key_names(self, table: str) -> tuple[str, ...]:
        names = self._key_names.get(table)
        if names is None:
            description = await self._describe_table(table)
            if description is None:
                raise DriverError(
                    f"DynamoDB table {table!r}, written by a transactional change, does not "
                    "exist; create it in an earlier change or fix the table name."
                )
            names = tuple(key["AttributeName"] for key in description["KeySchema"])
            self._key_names[table] = names
        return names

    def _handle_cancellation(
        self,
        error: Exception,
        actions: Sequence[TransactionAction],
        entry: AuditEntry,
        fence: Fence,
        *,
        with_state: bool,
    ) -> bool:
        """Decode a cancelled transaction; the driver's own actions are at the end of `actions`.

        Returns True when the entry was already stored (nothing to do) and False when only
        the state item's condition failed. Raises `LockLostError` when the fence check
        failed, and `TransactionCanceledError` listing every failed action of the change.
        """
        response: Mapping[str, Any] = getattr(error, "response", {})
        reasons = list(response.get("CancellationReasons", []))
        codes = [str(reason.get("Code", "None")) for reason in reasons]
        codes += ["None"] * (len(actions) - len(codes))
        lock_index = len(actions) - 1
        entry_index = len(actions) - (3 if with_state else 2)
        change_actions = range(entry_index)

        if codes[lock_index] == "ConditionalCheckFailed":
            holder = reasons[lock_index] if lock_index < len(reasons) else {}
            raise self._lock_lost(holder, fence) from error

        if codes[entry_index] == "ConditionalCheckFailed":
            # Entry ids are unique, so a stored entry means an earlier attempt of this same
            # request committed; any other failed condition fails against that commit.
            logger.debug("Audit entry %s is already stored; nothing to write", entry.entry_id)
            return True

        failed = [
            CancellationReason(
                index,
                actions[index].describe(),
                codes[index],
                str(reasons[index].get("Message", "")),
            )
            for index in change_actions
            if codes[index] != "None"
        ]
        if with_state and not failed and codes[entry_index + 1] == "ConditionalCheckFailed":
            return False
        raise self._cancelled(entry, failed, codes) from error

    def _cancelled(
        self, entry: AuditEntry, failed: Sequence[CancellationReason], codes: Sequence[str]
    ) -> TransactionCanceledError:
        details = "; ".join(
            f"action {reason.index + 1} ({reason.action}) failed with {reason.code}"
            + (f": {reason.message}" if reason.message else "")
            for reason in failed
        )
        if not details:
            details = "the driver's own actions failed with " + ", ".join(codes)
        return TransactionCanceledError(
            f"DynamoDB cancelled the transaction of change {entry.change_id!r}: {details}; "
            "nothing of it was written, so fix the change (or the data its conditions expect) "
            "and run again.",
            reasons=failed,
        )

    def _lock_lost(self, reason: Mapping[str, Any], fence: Fence) -> LockLostError:
        item = reason.get("Item")
        holder = holder_of(None)
        if item:
            holder = "its stored record cannot be read"
            with contextlib.suppress(KeyError, TypeError, ValueError):
                holder = holder_of(_decode_lock(item))
        return LockLostError(
            f"Audit write rejected: the lock {fence.key!r} is no longer held at epoch "
            f"{fence.epoch} by this runner; {holder}."
        )

    # -- errors --------------------------------------------------------------------------

    def translate_error(self, error: Exception) -> FlamingockError:
        """Map a botocore or aiobotocore exception to a flamingock-async error.

        Codes of `ClientError` come from `CLIENT_ERROR_CODES`, other botocore exceptions by
        class name from `EXCEPTION_CLASSES`; connection errors name the endpoint. Messages
        of authentication errors leave out the server's text, so nothing of a credential or
        signature is repeated.
        """
        code = error_code(error)
        if code is not None:
            return self._translate_client_error(error, code)
        for cls in type(error).__mro__:
            mapped = EXCEPTION_CLASSES.get(cls.__name__)
            if mapped is not None:
                kind, fix = mapped
                return kind(f"{self._failure_prefix(kind)}: {type(error).__name__}; {fix}.")
        if isinstance(error, (OSError, TimeoutError)):
            return DriverUnavailableError(
                f"{self._failure_prefix(DriverUnavailableError)}: {type(error).__name__}: "
                f"{error}; check that the endpoint is reachable."
            )
        return DriverError(f"{self.describe()}: {type(error).__name__}: {error}")

    def _translate_client_error(self, error: Exception, code: str) -> FlamingockError:
        kind, fix = CLIENT_ERROR_CODES.get(code, (DriverError, "see the AWS error message"))
        operation = getattr(error, "operation_name", None) or "request"
        if issubclass(kind, DriverAuthError):
            return kind(
                f"DynamoDB rejected the credentials for {operation} on {self.describe()} "
                f"({code}); {fix}."
            )
        return kind(
            f"DynamoDB {operation} failed on {self.describe()}: {code}: "
            f"{error_message(error)}; {fix}."
        )

    def _failure_prefix(self, kind: type[FlamingockError]) -> str:
        if issubclass(kind, DriverUnavailableError):
            endpoint = redact_url(self.endpoint_url) if self.endpoint_url else "the AWS endpoint"
            return f"DynamoDB at {endpoint} could not be reached ({self.describe()})"
        return f"DynamoDB request failed on {self.describe()}"


# -- encoding of stored items ----------------------------------------------------------------


def _encode_entry(entry: AuditEntry) -> dict[str, Any]:
    """Return the attributes of an audit entry; None fields are left out, metadata is JSON."""
    data = entry.to_dict()
    metadata = data.pop("metadata")
    attributes: dict[str, Any] = {}
    for name, value in data.items():
        if value is None:
            continue
        if isinstance(value, bool):
            attributes[name] = {"BOOL": value}
        elif isinstance(value, int):
            attributes[name] = {"N": str(value)}
        else:
            attributes[name] = {"S": str(value)}
    try:
        attributes["metadata"] = {"S": json.dumps(metadata, sort_keys=True)}
    except (TypeError, ValueError) as error:
        raise DriverError(
            f"The metadata of change {entry.change_id!r} cannot be stored as JSON ({error}); "
            "keep metadata to strings, numbers, booleans, lists and dicts."
        ) from error
    return attributes


def _decode_entry(item: Mapping[str, Any]) -> AuditEntry:
    data = {
        name: _plain_scalar(value)
        for name, value in item.items()
        if name not in ("pk", "sk", "item_type")
    }
    metadata = data.pop("metadata", None)
    data["metadata"] = json.loads(metadata) if isinstance(metadata, str) else {}
    return AuditEntry.from_dict(data)


def _decode_summary(item: Mapping[str, Any]) -> StateSummary:
    missing = [name for name in ("change_id", "state", "lock_epoch") if name not in item]
    if missing:
        raise KeyError(f"missing fields: {', '.join(missing)}")
    change_id = _plain_scalar(item["change_id"])
    epoch = _plain_scalar(item["lock_epoch"])
    transactional = _plain_scalar(item["transactional"]) if "transactional" in item else False
    if not isinstance(change_id, str) or not isinstance(epoch, int):
        raise TypeError("change_id must be a string and lock_epoch an integer")
    if not isinstance(transactional, bool):
        raise TypeError(f"field 'transactional' must be a boolean, got {transactional!r}")
    return StateSummary(change_id, AuditState(_plain_scalar(item["state"])), transactional, epoch)


def _encode_lock(record: LockRecord) -> dict[str, Any]:
    item: dict[str, Any] = {"pk": {"S": record.key}}
    for name, value in record.to_dict().items():
        if name == "key" or value is None:
            continue
        item[name] = {"N": str(value)} if isinstance(value, int) else {"S": str(value)}
    return item


def _decode_lock(item: Mapping[str, Any]) -> LockRecord:
    data = {name: _plain_scalar(value) for name, value in item.items()}
    data["key"] = data.pop("pk")
    data.setdefault("owner", None)
    for name in ("epoch", "version", "lease_ms", "acquired_at_ms", "renewed_at_ms"):
        if not isinstance(data[name], int):
            raise TypeError(f"field {name!r} must be a number, got {data[name]!r}")
    return LockRecord.from_dict(data)


def _plain_scalar(value: Any) -> Any:
    """Return the Python value of an S, N, BOOL or NULL attribute; numbers must be integers."""
    if not is_attribute_value(value):
        raise TypeError(f"invalid attribute value {value!r}")
    tag, content = next(iter(value.items()))
    if tag == "S":
        return content
    if tag == "N":
        number = decimal.Decimal(content)
        if number != number.to_integral_value():
            raise ValueError(f"expected an integer, got {content}")
        return int(number)
    if tag == "BOOL":
        return bool(content)
    if tag == "NULL":
        return None
    raise TypeError(f"unexpected attribute type {tag}")


def _plain_string(value: Any) -> str | None:
    if isinstance(value, Mapping) and isinstance(value.get("S"), str):
        return str(value["S"])
    return None


def _format_schema(schema: Sequence[tuple[str, str, str]]) -> str:
    if not schema:
        return "(none)"
    return "[" + ", ".join(f"{name} {kind} ({type_})" for name, kind, type_ in schema) + "]"


# -- options and URLs ------------------------------------------------------------------------


def _validate_options(
    *,
    session: Any,
    client: Any,
    audit_table: str,
    lock_table: str,
    region: str | None,
    endpoint_url: str | None,
    billing_mode: str,
    provisioned_throughput: tuple[int, int] | None,
) -> None:
    if session is not None and client is not None:
        raise ConfigurationError(
            "Pass either session= or client= to DynamoDriver, not both: the driver creates "
            "its client from a session, or uses the client you give it."
        )
    if client is not None and (region is not None or endpoint_url is not None):
        raise ConfigurationError(
            "region= and endpoint_url= have no effect with client=; configure them on the "
            "client you pass, or pass a session instead."
        )
    for option, table in (("audit_table", audit_table), ("lock_table", lock_table)):
        if not isinstance(table, str) or not TABLE_NAME.match(table):
            raise ConfigurationError(
                f"Invalid {option} {table!r}: a DynamoDB table name has 3 to 255 letters, "
                "digits, '_', '-' or '.'."
            )
    if audit_table == lock_table:
        raise ConfigurationError(
            f"audit_table and lock_table are both {audit_table!r}; the two tables have "
            "different key schemas, so give them different names."
        )
    if endpoint_url is not None:
        _validate_endpoint(endpoint_url)
    if billing_mode not in BILLING_MODES:
        raise ConfigurationError(
            f"Invalid billing_mode {billing_mode!r}: use 'PAY_PER_REQUEST' or 'PROVISIONED'."
        )
    _validate_throughput(billing_mode, provisioned_throughput)


def _validate_endpoint(endpoint_url: str) -> None:
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"Invalid endpoint_url {redact_url(endpoint_url)!r}: use an http:// or https:// URL."
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "endpoint_url must not contain credentials; configure them through the AWS "
            "credential chain (environment, profile or role)."
        )


def _validate_throughput(billing_mode: str, throughput: tuple[int, int] | None) -> None:
    if billing_mode == "PAY_PER_REQUEST" and throughput is not None:
        raise ConfigurationError(
            "provisioned_throughput is only used with billing_mode='PROVISIONED'; remove it "
            "or switch the billing mode."
        )
    if billing_mode != "PROVISIONED":
        return
    valid = (
        isinstance(throughput, tuple)
        and len(throughput) == 2
        and all(isinstance(units, int) and units >= 1 for units in throughput)
    )
    if not valid:
        raise ConfigurationError(
            f"billing_mode='PROVISIONED' needs provisioned_throughput=(read_units, "
            f"write_units) with two positive integers, got {throughput!r}."
        )


def from_url(url: str) -> DynamoDriver:
    """Build a driver from `dynamodb://AUDIT_TABLE?region=...&endpoint_url=...&lock_table=...`.

    Other parameters: `billing_mode`, `read_capacity` and `write_capacity`. Credentials are
    never taken from the URL; they come from the AWS credential chain.
    """
    parts = urlsplit(url)
    shown = redact_url(url)
    if parts.scheme.lower() != "dynamodb":
        raise ConfigurationError(
            f"Invalid DynamoDB store URL {shown!r}: it must start with dynamodb://."
        )
    if "@" in parts.netloc:
        raise ConfigurationError(
            "A DynamoDB store URL must not contain credentials; configure them through the "
            "AWS credential chain (environment, profile or role)."
        )
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            f"Invalid DynamoDB store URL {shown!r}: name the audit table as the host "
            "(dynamodb://TABLE?region=...), with no path."
        )
    options = _url_options(parts.query, shown)
    table = unquote(parts.netloc) or "flamingock_audit"
    return DynamoDriver(
        audit_table=table,
        lock_table=options.get("lock_table", "flamingock_lock"),
        region=options.get("region"),
        endpoint_url=options.get("endpoint_url"),
        billing_mode=options.get("billing_mode", "PAY_PER_REQUEST"),
        provisioned_throughput=_url_throughput(options, shown),
    )


def _url_options(query: str, shown: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _URL_PARAMETERS:
            accepted = ", ".join(_URL_PARAMETERS)
            raise ConfigurationError(
                f"Unknown parameter {name!r} in DynamoDB store URL {shown!r}; accepted: {accepted}."
            )
        if name in options:
            raise ConfigurationError(f"Parameter {name!r} appears twice in {shown!r}; keep one.")
        if not value:
            raise ConfigurationError(f"Parameter {name!r} in {shown!r} is empty; give it a value.")
        options[name] = value
    return options


def _url_throughput(options: Mapping[str, str], shown: str) -> tuple[int, int] | None:
    read = options.get("read_capacity")
    write = options.get("write_capacity")
    if read is None and write is None:
        return None
    try:
        return (int(read or ""), int(write or ""))
    except ValueError:
        raise ConfigurationError(
            f"read_capacity and write_capacity in {shown!r} must both be given as positive "
            "integers."
        ) from None
