from __future__ import annotations

from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from flamingock_async import change_unit


@change_unit(id="add-bookmark-tags", order="0002", author="bookmarks")
class AddBookmarkTags:
    """Give every bookmark stored before tags existed an empty tag list."""

    async def execute(
        self,
        db: AsyncDatabase[Any],
        session: AsyncClientSession | None = None,
    ) -> None:
        await db["bookmarks"].update_many(
            {"tags": {"$exists": False}}, {"$set": {"tags": []}}, session=session
        )

    async def rollback(
        self,
        db: AsyncDatabase[Any],
        session: AsyncClientSession | None = None,
    ) -> None:
        await db["bookmarks"].update_many({}, {"$unset": {"tags": ""}}, session=session)
