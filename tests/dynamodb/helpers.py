"""Builders and fault injection shared by the DynamoDB tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from botocore.awsrequest import AWSResponse

from flamingock_async._audit import AuditEntry, AuditState, new_id, now_ms
from flamingock_async._lock import Fence, LockRecord
from flamingock_async.drivers.dynamodb import DynamoDriver


def lock_record(
    key: str = "flamingock", *, owner: str | None = "runner-a", **fields: Any
) -> LockRecord:
    values: dict[str, Any] = {
        "key": key,
        "owner": owner,
        "epoch": 1,
        "version": 1,
        "lease_ms": 30_000,
        "acquired_at_ms": now_ms(),
        "renewed_at_ms": now_ms(),
        "host": "test-host",
        "pid": 1234,
    }
    values.update(fields)
    return LockRecord(**values)


def bumped(record: LockRecord, **fields: Any) -> LockRecord:
    """Return `record` with the next version and the given fields changed."""
    return dataclasses.replace(record, version=record.version + 1, **fields)


def fence_of(record: LockRecord) -> Fence:
    if record.owner is None:
        raise ValueError("a free lock has no fence")
    return Fence(record.key, record.owner, record.epoch)


def entry(
    change_id: str,
    *,
    epoch: int = 1,
    sequence: int = 1,
    state: AuditState = AuditState.APPLIED,
    **fields: Any,
) -> AuditEntry:
    values: dict[str, Any] = {
        "entry_id": new_id(),
        "execution_id": f"execution-{epoch}",
        "stage": "default",
        "change_id": change_id,
        "author": "tests",
        "order": f"{sequence:04d}",
        "state": state,
        "lock_epoch": epoch,
        "sequence": sequence,
        "created_at_ms": now_ms(),
    }
    values.update(fields)
    return AuditEntry(**values)


async def held_lock(driver: DynamoDriver, owner: str = "runner-a", epoch: int = 1) -> Fence:
    """Set the driver's tables up and insert a lock held by `owner`; return its fence."""
    await driver.setup()
    record = lock_record(owner=owner, epoch=epoch)
    if not await driver.insert_lock(record):
        raise RuntimeError("the lock already existed")
    return fence_of(record)


def error_response(code: str, message: str = "injected", **extra: Any) -> dict[str, Any]:
    """Return a parsed DynamoDB error response, as botocore builds it from the wire."""
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": 400, "RetryAttempts": 0},
        **extra,
    }


class FaultInjector:
    """Return given responses to the next calls of one operation, then let calls through.

    It hooks into botocore's `before-call` event of the real client, the same hook that
    botocore's Stubber uses; every call is counted in `calls`. Responses are parsed
    bodies, sent with HTTP status `status` (400 makes botocore raise a ClientError).
    """

    def __init__(
        self, client: Any, operation: str, responses: list[dict[str, Any]], status: int = 400
    ) -> None:
        self.responses = list(responses)
        self.status = status
        self.calls = 0
        client.meta.events.register(f"before-call.dynamodb.{operation}", self._before_call)

    def _before_call(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        self.calls += 1
        if not self.responses:
            return None
        response = self.responses.pop(0)
        return AWSResponse("http://injected", self.status, {}, None), response


class RequestCounter:
    """Counts the requests a client sends, per operation, through botocore's event hooks."""

    def __init__(self, client: Any) -> None:
        self.counts: dict[str, int] = {}
        client.meta.events.register("before-call.dynamodb", self._before_call)

    def _before_call(self, model: Any, **_: Any) -> None:
        self.counts[model.name] = self.counts.get(model.name, 0) + 1

    def __getitem__(self, operation: str) -> int:
        return self.counts.get(operation, 0)


Callback = Callable[..., Any]
