"""A runner process for the DynamoDB runner tests; run as a script, not collected.

Usage: python runner_worker.py MODE STORE_URL OUTPUT_FILE

Credentials and the region come from the environment that the test process set. The process
prints "ready", waits for a line on stdin (the start signal that lets every process begin at
the same moment), runs an `AsyncRunner` on the `dynamodb://` store URL and prints one JSON
line: the run's report, or the type, change id and message of the error it raised. Every
change appends "CHANGE_ID PID" to OUTPUT_FILE when it runs. Modes:

* `pipeline`: twenty changes. The first creates the `target` table through the injected
  client. The next nine add 1 to a counter item through the client. The last ten are
  transactional and add 1 to their counter through the transaction collector.
* `slow`: one non-transactional change that writes its line and then sleeps for five
  minutes, for a test that kills the process while the change runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import anyio
import anyio.to_thread

from flamingock_async import AsyncRunner, FlamingockError, LockSettings, change_unit
from flamingock_async.drivers.dynamodb import DynamoTransaction

OUTPUT = sys.argv[3] if len(sys.argv) > 3 else os.devnull
TARGET_TABLE = "target"


def record(change_id: str) -> None:
    with open(OUTPUT, "a") as output:
        output.write(f"{change_id} {os.getpid()}\n")


@change_unit(id="change-01", order="0001", author="tests", transactional=False)
class CreateTarget:
    async def execute(self, dynamodb: Any) -> None:
        record("change-01")
        await dynamodb.create_table(
            TableName=TARGET_TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )


def direct_change(number: int) -> type:
    change_id = f"change-{number:02d}"

    @change_unit(id=change_id, order=f"{number:04d}", author="tests", transactional=False)
    class Direct:
        async def execute(self, dynamodb: Any) -> None:
            record(change_id)
            await dynamodb.update_item(
                TableName=TARGET_TABLE,
                Key={"id": {"S": change_id}},
                UpdateExpression="ADD #count :one",
                ExpressionAttributeNames={"#count": "count"},
                ExpressionAttributeValues={":one": {"N": "1"}},
            )

    Direct.__name__ = Direct.__qualname__ = f"Direct{number:02d}"
    return Direct


def transactional_change(number: int) -> type:
    change_id = f"change-{number:02d}"

    @change_unit(id=change_id, order=f"{number:04d}", author="tests", transactional=True)
    class Transactional:
        async def execute(self, tx: DynamoTransaction) -> None:
            record(change_id)
            tx.update(
                TARGET_TABLE,
                {"id": change_id},
                "ADD #count :one",
                names={"#count": "count"},
                values={":one": 1},
            )

    Transactional.__name__ = Transactional.__qualname__ = f"Transactional{number:02d}"
    return Transactional


PIPELINE = [
    CreateTarget,
    *(direct_change(number) for number in range(2, 11)),
    *(transactional_change(number) for number in range(11, 21)),
]


@change_unit(id="slow-change", order="0001", author="tests", transactional=False)
class SlowChange:
    async def execute(self) -> None:
        record("slow-change")
        await anyio.sleep(300)


CHANGES: dict[str, list[type]] = {"pipeline": PIPELINE, "slow": [SlowChange]}


async def main(mode: str, url: str) -> None:
    lock = LockSettings(key="flamingock", lease=2.0, wait_timeout=120.0, poll_interval=0.05)
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
