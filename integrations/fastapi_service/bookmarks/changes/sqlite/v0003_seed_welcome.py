from __future__ import annotations

import aiosqlite

from flamingock_async import change_unit

WELCOME_ID = "welcome"


@change_unit(id="seed-welcome-bookmark", order="0003", author="bookmarks")
class SeedWelcomeBookmark:
    """Store the bookmark that every new installation starts with."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute(
            "INSERT INTO bookmarks (id, url, title, tags) VALUES (?, ?, ?, ?)",
            (WELCOME_ID, "https://docs.python.org/3/library/asyncio.html", "asyncio", '["python"]'),
        )

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("DELETE FROM bookmarks WHERE id = ?", (WELCOME_ID,))
