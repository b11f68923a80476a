"""A runner process for the SQLite runner tests; run as a script, not collected.

Usage: python runner_worker.py DATABASE

The process prints "ready", waits for a line on stdin so that every process starts together,
runs the twenty changes of `runner_changes` with `AsyncRunner`, and prints one JSON line with
the ids of the changes it applied.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import anyio.to_thread

sys.path.insert(0, str(Path(__file__).parent))

from runner_changes import CHANGES

from flamingock_async import AsyncRunner, LockSettings
from flamingock_async.drivers.sqlite import SQLiteDriver


async def main(database: str) -> None:
    settings = LockSettings(lease=10.0, wait_timeout=120.0, poll_interval=0.05)
    async with SQLiteDriver(database, busy_timeout=60.0) as driver:
        runner = AsyncRunner(driver, CHANGES, lock=settings, manifest_cache=False)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        report = await runner.run()
    print(json.dumps({"applied": list(report.applied)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
