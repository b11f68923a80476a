from __future__ import annotations

import aiosqlite

from flamingock_async import change_unit


@change_unit(id="count-job-attempts", order="0003", author="jobs")
class CountJobAttempts:
    """Count how many times each job was claimed, so that a retried job shows."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("ALTER TABLE jobs DROP COLUMN attempts")
