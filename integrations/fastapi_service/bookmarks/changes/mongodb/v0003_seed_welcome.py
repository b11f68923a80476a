from __future__ import annotations

from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from flamingock_async import change_unit

WELCOME_ID = "welcome"


@change_unit(id="seed-welcome-bookmark", order="0003", author="bookmarks")
class SeedWelcomeBookmark:
    """Store the bookmark that every new installation starts with."""

    async def execute(
        self,
        db: AsyncDatabase[Any],
        session: AsyncClientSession | None = None,
    ) -> None:
        await db["bookmarks"].insert_one(
            {
                "_id": WELCOME_ID,
                "id": WELCOME_ID,
                "url": "https://docs.python.org/3/library/asyncio.html",
                "title": "asyncio",
                "tags": ["python"],
            },
            session=session,
        )

    async def rollback(
        self,
        db: AsyncDatabase[Any],
        session: AsyncClientSession | None = None,
    ) -> None:
        await db["bookmarks"].delete_one({"_id": WELCOME_ID}, session=session)
