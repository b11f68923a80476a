from __future__ import annotations

from flamingock_async import change_unit
from flamingock_async.drivers.dynamodb import DynamoTransaction

WELCOME_ID = "welcome"


@change_unit(id="seed-welcome-bookmark", order="0003", author="bookmarks")
class SeedWelcomeBookmark:
    """Store the bookmark that every new installation starts with, atomically with its audit."""

    async def execute(self, tx: DynamoTransaction) -> None:
        tx.put(
            "bookmarks",
            {
                "id": WELCOME_ID,
                "url": "https://docs.python.org/3/library/asyncio.html",
                "title": "asyncio",
                "tags": ["python"],
            },
        )

    async def rollback(self, tx: DynamoTransaction) -> None:
        tx.delete("bookmarks", {"id": WELCOME_ID})
