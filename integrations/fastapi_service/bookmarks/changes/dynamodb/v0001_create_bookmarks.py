from __future__ import annotations

import contextlib
from typing import Any

from flamingock_async import Recovery, change_unit


@change_unit(
    id="create-bookmarks-table",
    order="0001",
    author="bookmarks",
    transactional=False,
    recovery=Recovery.ALWAYS_RETRY,
)
class CreateBookmarksTable:
    """Create the bookmarks table (partition key `id`) and wait until it is active."""

    async def execute(self, dynamodb: Any) -> None:
        # The table exists already when an earlier attempt was interrupted after creating it.
        with contextlib.suppress(dynamodb.exceptions.ResourceInUseException):
            await dynamodb.create_table(
                TableName="bookmarks",
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        waiter = dynamodb.get_waiter("table_exists")
        await waiter.wait(TableName="bookmarks", WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    async def rollback(self, dynamodb: Any) -> None:
        await dynamodb.delete_table(TableName="bookmarks")
