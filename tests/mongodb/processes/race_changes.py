"""Change units for the runner-process tests: each records its effect in `effects`.

Even-numbered changes are transactional and write through the injected session; the others
write directly. `SlowChange` records its effect, prints `started` and sleeps for a minute, for
tests that kill its runner in the middle.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from flamingock_async import change_unit

CHANGE_COUNT = 20


def _make_change(index: int) -> type:
    change_id = f"race-{index:02d}"
    if index % 2 == 0:

        @change_unit(id=change_id, order=f"{index:04d}", author="tests", transactional=True)
        class Transactional:
            async def execute(self, db: AsyncDatabase[Any], session: AsyncClientSession) -> None:
                effect = {"change": change_id, "pid": os.getpid()}
                await db["effects"].insert_one(effect, session=session)

        change: type = Transactional
    else:

        @change_unit(id=change_id, order=f"{index:04d}", author="tests", transactional=False)
        class Direct:
            async def execute(self, db: AsyncDatabase[Any]) -> None:
                await db["effects"].insert_one({"change": change_id, "pid": os.getpid()})

        change = Direct
    change.__name__ = change.__qualname__ = f"Race{index:02d}"
    return change


CHANGES = [_make_change(index) for index in range(1, CHANGE_COUNT + 1)]


@change_unit(id="slow-import", order="0001", author="tests", transactional=False)
class SlowChange:
    async def execute(self, db: AsyncDatabase[Any]) -> None:
        await db["effects"].insert_one({"change": "slow-import", "pid": os.getpid()})
        print("started", flush=True)
        await anyio.sleep(60)
