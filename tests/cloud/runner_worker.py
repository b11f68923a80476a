"""A runner process for the cloud tests; run as a script, not collected.

Usage: python runner_worker.py MODE STORE_URL OUTPUT_FILE

The API token comes from FLAMINGOCK_API_TOKEN, as in production. The process prints
"ready" and waits for a line on stdin, the start signal that lets every process begin at
the same moment. Then it runs an `AsyncRunner` on the cloud store URL and prints one JSON
line: the run's report, or the type, change id and message of the error it raised. Every change
appends "CHANGE_ID PID" to OUTPUT_FILE when it runs, so the test can count applications.
Modes:

* `pipeline`: twenty quick non-transactional changes.
* `slow`: one non-transactional change that writes its line and then sleeps for five
  minutes, for a test that kills the process while the change runs.
* `retry`: the same change id declared with `Recovery.ALWAYS_RETRY`, finishing at once.
* `impatient`: the `slow` pipeline, giving up after waiting half a second for the lock.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import anyio
import anyio.to_thread

from flamingock_async import AsyncRunner, FlamingockError, LockSettings, Recovery, change_unit

OUTPUT = sys.argv[3] if len(sys.argv) > 3 else os.devnull


def record(change_id: str) -> None:
    with open(OUTPUT, "a") as output:
        output.write(f"{change_id} {os.getpid()}\n")


def quick_change(number: int) -> type:
    change_id = f"change-{number:02d}"

    @change_unit(id=change_id, order=f"{number:04d}", author="tests", transactional=False)
    class Quick:
        async def execute(self) -> None:
            record(change_id)
            await anyio.sleep(0.01)

    Quick.__name__ = Quick.__qualname__ = f"Change{number:02d}"
    return Quick


PIPELINE = [quick_change(number) for number in range(1, 21)]


@change_unit(id="slow-change", order="0001", author="tests", transactional=False)
class SlowChange:
    async def execute(self) -> None:
        record("slow-change")
        await anyio.sleep(300)


@change_unit(
    id="slow-change",
    order="0001",
    author="tests",
    transactional=False,
    recovery=Recovery.ALWAYS_RETRY,
)
class RetriedChange:
    async def execute(self) -> None:
        record("slow-change")


CHANGES: dict[str, list[type]] = {
    "pipeline": PIPELINE,
    "slow": [SlowChange],
    "retry": [RetriedChange],
    "impatient": [SlowChange],
}


async def main(mode: str, url: str) -> None:
    wait_timeout = 0.5 if mode == "impatient" else 120.0
    lock = LockSettings(key="flamingock", lease=2.0, wait_timeout=wait_timeout, poll_interval=0.05)
    runner = AsyncRunner(url, CHANGES[mode], lock=lock, manifest_cache=False)
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    result: dict[str, Any]
    try:
        result = (await runner.run()).as_dict()
    except FlamingockError as error:
        result = {
            "error": type(error).__name__,
            "change_id": getattr(error, "change_id", None),
            "message": str(error),
        }
    finally:
        await runner.driver.aclose()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
