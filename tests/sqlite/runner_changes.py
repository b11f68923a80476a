"""Twenty change units for the SQLite runner tests, alternately transactional or not.

Each one records its id in the table `applied`, through the transaction's connection when
transactional and through the target connection otherwise, so a test can count how many
times each change ran.
"""

from __future__ import annotations

from typing import Any

from flamingock_async import change_unit

CHANGE_COUNT = 20


async def record(connection: Any, change_id: str) -> None:
    await connection.execute("CREATE TABLE IF NOT EXISTS applied (change_id TEXT)")
    await connection.execute("INSERT INTO applied (change_id) VALUES (?)", (change_id,))


def _make_change(index: int) -> type:
    change_id = f"change-{index:02d}"

    async def execute(self: object, connection: Any) -> None:
        await record(connection, change_id)

    cls = type(f"Change{index:02d}", (), {"execute": execute, "__module__": __name__})
    decorate = change_unit(
        id=change_id, order=f"{index:04d}", author="tests", transactional=index % 2 == 0
    )
    return decorate(cls)


CHANGES = [_make_change(index) for index in range(CHANGE_COUNT)]
