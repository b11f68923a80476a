"""A runner process for the multi-process SQLite tests; run as a script, not collected.

Usage: python process_worker.py MODE DATABASE INDEX [ROUNDS]

The process opens a driver, prints "ready", waits for a line on stdin (the start signal that
lets every process begin at the same moment), does the work of MODE and prints one JSON line
with its result. Modes:

* `setup`: set up the (possibly missing) database, then take lock `runner-INDEX` and append
  one audit entry under it.
* `insert`: try once to insert lock `shared` owned by `runner-INDEX`.
* `acquire`: ROUNDS times, acquire lock `shared` with a LockManager, append a fenced audit
  entry, increment a counter with a read, a pause and a write (a lost update shows that two
  processes held the lock at once), and release.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import anyio
import anyio.to_thread

from flamingock_async._lock import LockManager, LockRecord, LockSettings
from flamingock_async.drivers.sqlite import SQLiteDriver
from flamingock_async.testing import hold_lock, make_entry

COUNTER_TABLE = "process_counter"


async def wait_for_start() -> None:
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


async def run_setup(driver: SQLiteDriver, index: int) -> dict[str, object]:
    await wait_for_start()
    await driver.setup()
    fence = await hold_lock(driver, f"runner-{index}", f"runner-{index}")
    await driver.append_audit(make_entry(f"change-{index}", epoch=fence.epoch, sequence=1), fence)
    return {"index": index}


async def run_insert(driver: SQLiteDriver, index: int) -> dict[str, object]:
    record = LockRecord("shared", f"runner-{index}", 1, 1, 30_000, 0, 0)
    await wait_for_start()
    return {"index": index, "inserted": await driver.insert_lock(record)}


async def increment_counter(driver: SQLiteDriver) -> None:
    connection: Any = driver.target_dependencies()["connection"]
    rows = list(await connection.execute_fetchall(f"SELECT value FROM {COUNTER_TABLE}"))
    await anyio.sleep(0.01)
    await connection.execute(f"UPDATE {COUNTER_TABLE} SET value = ?", (rows[0][0] + 1,))


async def run_acquire(driver: SQLiteDriver, index: int, rounds: int) -> dict[str, object]:
    settings = LockSettings(key="shared", lease=10.0, wait_timeout=120.0, poll_interval=0.02)
    manager = LockManager(driver, settings, owner=f"runner-{index}")
    await wait_for_start()
    epochs = []
    for round_number in range(rounds):
        fence = await manager.acquire()
        entry = make_entry(f"change-{index}-{round_number}", epoch=fence.epoch, sequence=1)
        await driver.append_audit(entry, fence)
        await increment_counter(driver)
        epochs.append(fence.epoch)
        await manager.release()
    return {"index": index, "epochs": epochs}


async def main(mode: str, database: str, index: int, rounds: int) -> None:
    driver = SQLiteDriver(database, busy_timeout=60.0)
    async with driver:
        if mode == "setup":
            result = await run_setup(driver, index)
        elif mode == "insert":
            result = await run_insert(driver, index)
        else:
            result = await run_acquire(driver, index, rounds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    mode, database, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    asyncio.run(main(mode, database, index, rounds))
