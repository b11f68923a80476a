"""One runner in its own OS process: `python runner_process.py PIPELINE URI DATABASE`.

PIPELINE is `race` (the twenty race changes) or `slow` (one change that sleeps). The process
prints `ready` once it has imported everything, waits for a line on stdin so that all
runners start together, runs, and prints its report as JSON (or the error's type).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from race_changes import CHANGES, SlowChange

from flamingock_async import AsyncRunner, FlamingockError, LockSettings
from flamingock_async.drivers.mongodb import MongoDriver


async def run(runner: AsyncRunner, driver: MongoDriver) -> int:
    try:
        report = await runner.run()
    except FlamingockError as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}), flush=True)
        return 1
    finally:
        await driver.aclose()
    print(json.dumps(report.as_dict()), flush=True)
    return 0


def main(pipeline: str, uri: str, database: str) -> int:
    transactions = None if os.environ.get("FLAMINGOCK_TEST_MONGODB_URI") else True
    driver = MongoDriver(uri, database, transactions=transactions, server_selection_timeout=10)
    runner = AsyncRunner(
        driver,
        CHANGES if pipeline == "race" else [SlowChange],
        lock=LockSettings(lease=2.0, wait_timeout=120.0, poll_interval=0.1),
        manifest_cache=False,
    )
    print("ready", flush=True)
    sys.stdin.readline()
    return asyncio.run(run(runner, driver))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
