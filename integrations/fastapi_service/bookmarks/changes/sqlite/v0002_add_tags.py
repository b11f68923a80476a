from __future__ import annotations

import aiosqlite

from flamingock_async import change_unit


@change_unit(id="add-bookmark-tags", order="0002", author="bookmarks")
class AddBookmarkTags:
    """Add the tags column, a JSON list, empty for the bookmarks stored before it."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("ALTER TABLE bookmarks ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("ALTER TABLE bookmarks DROP COLUMN tags")
