from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from flamingock_async import Recovery, change_unit


@change_unit(
    id="create-bookmarks-table",
    order="0001",
    author="bookmarks",
    transactional=False,
    recovery=Recovery.ALWAYS_RETRY,
)
class CreateBookmarksCollection:
    """Create the bookmarks collection with a unique index on the URL; safe to run again."""

    async def execute(self, db: AsyncDatabase[Any]) -> None:
        if "bookmarks" not in await db.list_collection_names():
            await db.create_collection("bookmarks")
        await db["bookmarks"].create_index("url", unique=True, name="url_unique")

    async def rollback(self, db: AsyncDatabase[Any]) -> None:
        await db.drop_collection("bookmarks")
