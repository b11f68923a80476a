from __future__ import annotations

import aiosqlite

from flamingock_async import change_unit


@change_unit(id="create-jobs-table", order="0001", author="jobs")
class CreateJobsTable:
    """Create the queue: each job has a text payload, a status and, once done, a result."""

    async def execute(self, connection: aiosqlite.Connection) -> None:
        await connection.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, "
            "status TEXT NOT NULL DEFAULT 'queued', result TEXT, worker TEXT)"
        )

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("DROP TABLE jobs")
