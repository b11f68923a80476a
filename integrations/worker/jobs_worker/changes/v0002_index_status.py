from __future__ import annotations

import aiosqlite

from flamingock_async import change_unit


@change_unit(id="index-jobs-by-status", order="0002", author="jobs")
class IndexJobsByStatus:
    """Index queued jobs in id order, which is how workers claim them."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("CREATE INDEX jobs_status ON jobs (status, id)")

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("DROP INDEX jobs_status")
