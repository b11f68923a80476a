from __future__ import annotations

import aiosqlite

from flamingock_async import change_unit


@change_unit(id="create-bookmarks-table", order="0001", author="bookmarks")
class CreateBookmarksTable:
    """Create the bookmarks table; a URL is stored once."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute(
            "CREATE TABLE bookmarks (id TEXT PRIMARY KEY, url TEXT NOT NULL UNIQUE, "
            "title TEXT NOT NULL)"
        )

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("DROP TABLE bookmarks")
