"""Backend metadata in one DynamoDB table, through aioboto3 (imported when opened).

The URL is `dynamodb://TABLE?region=REGION&endpoint_url=URL`; credentials come from the AWS
credential chain, never from the URL. The table has one string key, `pk`:

- `setting#NAME`: a backend setting, such as the signing secret of bearer tokens;
- `organization#NAME`, `project#PARENT_ID#NAME`, `environment#...`, `service#...`: the id of
  one level of the hierarchy under its parent;
- `token#ID`: an API token, with the names and ids of its service, which never change.

Items are created with a put conditioned on `attribute_not_exists(pk)` and then read back
with a strongly consistent read, so concurrent writers agree on the first one's values. The
table is created on first use; a process that loses that race waits for the other's table.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio

from .._audit import new_id, now_ms
from .._errors import ConfigurationError, DriverUnavailableError, MissingDependencyError
from ..drivers import redact_url
from ..drivers._dynamodb_errors import error_code
from ._meta import MetadataStore, TokenInfo, token_fields, token_from_fields

__all__ = ["DynamoMetadataStore"]

logger = logging.getLogger(__name__)

_PARAMETERS = ("region", "endpoint_url")
_NUMBERS = ("created_at_ms", "revoked_at_ms")
_TOKEN = "token#"
_SETUP_TIMEOUT = 60.0


def _import_aioboto3() -> Any:
    try:
        import aioboto3
    except ImportError as error:
        raise MissingDependencyError("DynamoDB", "aioboto3", "dynamodb") from error
    return aioboto3


def _parse(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    redacted = redact_url(url)
    if "@" in parts.netloc:
        raise ConfigurationError(
            "A DynamoDB metadata URL must not contain credentials; configure them through the "
            "AWS credential chain (environment, profile or role)."
        )
    table = unquote(parts.netloc)
    if parts.scheme.lower() != "dynamodb" or not table or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"Invalid DynamoDB metadata URL {redacted!r}: name the table as the host, as in "
            "dynamodb://flamingock_backend?region=eu-west-1."
        )
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _PARAMETERS:
            raise ConfigurationError(
                f"Unknown parameter {name!r} in DynamoDB metadata URL {redacted!r}; accepted: "
                f"{', '.join(_PARAMETERS)}."
            )
        options[name] = value
    return table, options


def _encode(fields: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {"N": str(value)} if name in _NUMBERS else {"S": str(value)}
        for name, value in fields.items()
        if value is not None
    }


def _decode(item: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        name: int(value["N"]) if "N" in value else value.get("S") for name, value in item.items()
    }


class DynamoMetadataStore(MetadataStore):
    """Metadata in one DynamoDB table keyed by `pk`."""

    def __init__(self, url: str) -> None:
        self.table, options = _parse(url)
        self.region = options.get("region")
        self.endpoint_url = options.get("endpoint_url")
        self.location = f"DynamoDB table {self.table!r}"
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def open(self) -> None:
        if self._client is not None:
            return
        from botocore.config import Config

        session = _import_aioboto3().Session()
        stack = contextlib.AsyncExitStack()
        config = Config(retries={"mode": "standard", "max_attempts": 3})
        client = await stack.enter_async_context(
            session.client(
                "dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        )
        try:
            await self._ensure_table(client)
        except Exception as error:
            await stack.aclose()
            if isinstance(error, DriverUnavailableError):
                raise
            raise DriverUnavailableError(
                f"The metadata store in {self.location} cannot be reached "
                f"({error_code(error) or type(error).__name__}); check the region, the "
                "endpoint and the AWS credentials."
            ) from None
        self._client = client
        self._stack = stack

    async def aclose(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("The metadata store is not open; call open() first.")
        return self._client

    async def _ensure_table(self, client: Any) -> None:
        deadline = time.monotonic() + _SETUP_TIMEOUT
        while True:
            status = await self._table_status(client)
            if status is None:
                try:
                    response = await client.create_table(
                        TableName=self.table,
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST",
                    )
                    status = response["TableDescription"].get("TableStatus")
                    logger.info("Created DynamoDB metadata table %r", self.table)
                except Exception as error:
                    if error_code(error) != "ResourceInUseException":
                        raise
                    logger.debug("Table %r is being created by another process", self.table)
            if status == "ACTIVE":
                return
            if time.monotonic() >= deadline:
                raise DriverUnavailableError(
                    f"The DynamoDB metadata table {self.table!r} did not become ACTIVE within "
                    f"{_SETUP_TIMEOUT:g} s (status {status or 'missing'}); check it in the AWS "
                    "console."
                )
            await anyio.sleep(random.uniform(0.1, 0.3))

    async def _table_status(self, client: Any) -> str | None:
        try:
            response = await client.describe_table(TableName=self.table)
        except Exception as error:
            if error_code(error) == "ResourceNotFoundException":
                return None
            raise
        status: str = response["Table"].get("TableStatus", "")
        return status

    async def _get(self, key: str) -> dict[str, Any] | None:
        response = await self.client.get_item(
            TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else _decode(item)

    async def _put_if_absent(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Put the item unless `key` exists; return the stored item (ours or the first one)."""
        found = await self._get(key)
        if found is not None:
            return found
        try:
            await self.client.put_item(
                TableName=self.table,
                Item={"pk": {"S": key}, **_encode(fields)},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except Exception as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            logger.debug("Another writer created the metadata item first")
        found = await self._get(key)
        if found is None:
            raise RuntimeError("A metadata item vanished right after its creation.")
        return found

    async def _setting(self, name: str, value: str) -> str:
        item = await self._put_if_absent(f"setting#{name}", {"value": value})
        return str(item["value"])

    async def _ensure(self, level: str, parent_id: str | None, name: str) -> str:
        key = f"{level}#{name}" if parent_id is None else f"{level}#{parent_id}#{name}"
        item = await self._put_if_absent(key, {"id": new_id(), "created_at_ms": now_ms()})
        return str(item["id"])

    async def _insert_token(self, info: TokenInfo) -> None:
        await self.client.put_item(
            TableName=self.table,
            Item={"pk": {"S": f"{_TOKEN}{info.token_id}"}, **_encode(token_fields(info))},
            ConditionExpression="attribute_not_exists(pk)",
        )

    async def revoke_token(self, token_id: str) -> bool:
        try:
            await self.client.update_item(
                TableName=self.table,
                Key={"pk": {"S": f"{_TOKEN}{token_id}"}},
                UpdateExpression="SET revoked_at_ms = :now",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(revoked_at_ms)",
                ExpressionAttributeValues={":now": {"N": str(now_ms())}},
            )
        except Exception as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def list_tokens(self) -> list[TokenInfo]:
        tokens: list[TokenInfo] = []
        parameters: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(pk, :prefix)",
            "ExpressionAttributeValues": {":prefix": {"S": _TOKEN}},
        }
        while True:
            response = await self.client.scan(**parameters)
            for item in response.get("Items", []):
                fields = _decode(item)
                tokens.append(token_from_fields(str(fields["pk"])[len(_TOKEN) :], fields))
            last = response.get("LastEvaluatedKey")
            if not last:
                break
            parameters["ExclusiveStartKey"] = last
        tokens.sort(key=lambda info: (info.created_at_ms, info.token_id))
        return tokens

    async def get_token(self, token_id: str) -> TokenInfo | None:
        fields = await self._get(f"{_TOKEN}{token_id}")
        return None if fields is None else token_from_fields(token_id, fields)
