"""Benchmark the DynamoDB driver against a moto_server that this script starts on 127.0.0.1.

Usage: python benchmarks/bench_dynamodb.py [--changes 1000] [--applied 100] [--repeat 3]

It measures, in one run, each time for the runner and for a hand-written aioboto3 loop
that sends the same requests:

1. start-up with nothing pending: a new `AsyncRunner` over a store where all `--changes`
   changes are applied, against a paginated Query of the state items by hand;
2. time per applied change, for transactional changes (each puts one item through the
   transaction collector) and non-transactional ones (each puts one item with the client),
   against the same requests sent in a loop with request bodies built in advance.

Each line shows the wall time, the CPU time of this process (the client side: moto runs in
its own process) and the number of DynamoDB requests, counted on the client through
botocore's `before-call` event. moto is far slower than DynamoDB: it deep-copies a table
on every TransactWriteItems and handles each item in Python, so the absolute times tell
little about AWS. The ratios show what the runner, the lock and the audit add on top of
the requests. The two sides alternate, the first of them changing every round. Every time is
the median of `--repeat` rounds, and every ratio the median of the ratios of each round.
Fake credentials are set for this process only, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from flamingock_async import AsyncRunner, AuditEntry, AuditState, LockSettings, change_unit
from flamingock_async._audit import new_id, now_ms
from flamingock_async._lock import Fence
from flamingock_async.drivers.dynamodb import DynamoDriver, DynamoTransaction

REGION = "us-east-1"
LOCK = LockSettings(key="flamingock", lease=30.0, wait_timeout=30.0, poll_interval=0.05)


# -- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto_server on a free loopback port and yield its endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    script = Path(sys.executable).with_name("moto_server")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    process = subprocess.Popen(
        [*program, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def use_fake_credentials() -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )


class RequestCounter:
    """Counts the requests a client sends, through botocore's `before-call` event."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-call.dynamodb", self._count)

    def _count(self, **_: Any) -> None:
        self.count += 1


# -- change units ----------------------------------------------------------------------------


def noop_changes(count: int) -> list[type]:
    """Return `count` transactional changes that write nothing."""

    def make(number: int) -> type:
        @change_unit(id=f"noop-{number:05d}", order=f"{number:05d}", author="bench")
        class Noop:
            async def execute(self) -> None:
                return None

        Noop.__name__ = Noop.__qualname__ = f"Noop{number:05d}"
        return Noop

    return [make(number) for number in range(1, count + 1)]


def put_changes(count: int, *, transactional: bool) -> list[type]:
    """Return `count` changes that each put one item into the `target` table."""

    def make(number: int) -> type:
        change_id = f"put-{number:05d}"
        if transactional:

            @change_unit(id=change_id, order=f"{number:05d}", author="bench")
            class Put:
                async def execute(self, tx: DynamoTransaction) -> None:
                    tx.put("target", {"id": change_id, "value": number})

        else:

            @change_unit(id=change_id, order=f"{number:05d}", author="bench", transactional=False)
            class Put:  # type: ignore[no-redef]
                async def execute(self, dynamodb: Any) -> None:
                    await dynamodb.put_item(
                        TableName="target",
                        Item={"id": {"S": change_id}, "value": {"N": str(number)}},
                    )

        Put.__name__ = Put.__qualname__ = f"Put{number:05d}"
        return Put

    return [make(number) for number in range(1, count + 1)]


# -- scenarios -------------------------------------------------------------------------------


async def reset(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)


async def create_target(driver: DynamoDriver) -> None:
    await driver.client.create_table(
        TableName="target",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


async def write_history(driver: DynamoDriver, changes: int) -> None:
    """Store an APPLIED entry and its state item for each change, with BatchWriteItem.

    The items are the ones the driver writes. They are not sent as transactions because
    moto 5 deep-copies every table a TransactWriteItems touches, which makes building a
    long history that way quadratic.
    """
    await driver.setup()
    fence = Fence("flamingock", "bench-history", 1)
    items = []
    for number in range(1, changes + 1):
        entry = AuditEntry(
            entry_id=new_id(),
            execution_id="bench-history",
            stage="default",
            change_id=f"noop-{number:05d}",
            author="bench",
            order=f"{number:05d}",
            state=AuditState.APPLIED,
            lock_epoch=1,
            sequence=number,
            created_at_ms=now_ms(),
            transactional=True,
        )
        entry_put, state_put, _ = driver._driver_actions(entry, fence)
        items += [entry_put.body["Item"], state_put.body["Item"]]
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        await driver.client.batch_write_item(RequestItems={"flamingock_audit": batch})


@dataclasses.dataclass
class Measurement:
    """Wall time and this process's CPU time, in seconds, and the requests sent."""

    wall: float
    cpu: float
    requests: int


@contextlib.asynccontextmanager
async def measured(client: Any, into: list[Measurement]) -> AsyncIterator[None]:
    counter = RequestCounter(client)
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into.append(Measurement(time.perf_counter() - wall, time.process_time() - cpu, counter.count))


def median(measurements: list[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(m.wall for m in measurements),
        statistics.median(m.cpu for m in measurements),
        measurements[-1].requests,
    )


async def startup(
    endpoint: str, changes: int, repeat: int
) -> tuple[list[Measurement], list[Measurement]]:
    """Measure runs with nothing pending over `changes` applied changes, and the bare reads.

    The two sides alternate, and which one goes first changes every round.
    """
    await reset(endpoint)
    pipeline = noop_changes(changes)
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        await write_history(driver, changes)
    ours: list[Measurement] = []
    hand: list[Measurement] = []
    for round_number in range(repeat):
        async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
            if round_number % 2:
                async with measured(driver.client, hand):
                    await query_states(driver.client)
            runner = AsyncRunner(driver, pipeline, lock=LOCK, manifest_cache=False)
            async with measured(driver.client, ours):
                report = await runner.run()
            if report.applied:
                raise RuntimeError(f"expected nothing pending, applied {len(report.applied)}")
            if not round_number % 2:
                async with measured(driver.client, hand):
                    await query_states(driver.client)
    return ours, hand


async def query_states(client: Any) -> list[dict[str, Any]]:
    """Read the planning attributes of every state item by hand, page by page.

    These are the requests of the runner's check for pending changes.
    """
    parameters: dict[str, Any] = {
        "TableName": "flamingock_audit",
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": "state"}},
        "ProjectionExpression": "pk, sk, change_id, #state, transactional, lock_epoch",
        "ExpressionAttributeNames": {"#state": "state"},
        "ConsistentRead": True,
    }
    items: list[dict[str, Any]] = []
    while True:
        page = await client.query(**parameters)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        parameters["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def runner_apply(endpoint: str, count: int, *, transactional: bool) -> Measurement:
    """Apply `count` put changes with the runner."""
    await reset(endpoint)
    pipeline = put_changes(count, transactional=transactional)
    result: list[Measurement] = []
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        await create_target(driver)
        await driver.setup()
        runner = AsyncRunner(driver, pipeline, lock=LOCK, manifest_cache=False)
        async with measured(driver.client, result):
            report = await runner.run()
    if len(report.applied) != count:
        raise RuntimeError(f"expected {count} applied changes, got {len(report.applied)}")
    return result[0]


async def baseline_apply(endpoint: str, count: int, *, transactional: bool) -> Measurement:
    """Send by hand the requests that a run of `count` put changes sends.

    The request bodies are built before timing, with the driver's own audit items. They are,
    in order:

    - a DescribeTable of each table (setup, and the key schema of the target table);
    - the state Query, the lock GetItem and PutItem, and the Query again under the lock;
    - per transactional change, one TransactWriteItems with the put, the entry, the state
      item and the lock check;
    - per non-transactional change, a STARTED transaction, the PutItem and an APPLIED
      transaction;
    - the PutItem that releases the lock.
    """
    await reset(endpoint)
    result: list[Measurement] = []
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        await create_target(driver)
        await driver.setup()
        requests = baseline_requests(driver, count, transactional=transactional)
        client = driver.client
        async with measured(client, result):
            for operation, parameters in requests:
                await getattr(client, operation)(**parameters)
    return result[0]


def baseline_requests(
    driver: DynamoDriver, count: int, *, transactional: bool
) -> list[tuple[str, dict[str, Any]]]:
    fence = Fence("flamingock", "bench-hand", 1)
    lock_key = {"pk": {"S": "flamingock"}}
    held = {**lock_key, "owner": {"S": fence.owner}, "epoch": {"N": "1"}, "version": {"N": "1"}}
    released = {**lock_key, "epoch": {"N": "1"}, "version": {"N": "2"}}
    state_query = {
        "TableName": "flamingock_audit",
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": "state"}},
        "ConsistentRead": True,
    }
    tables = ["flamingock_lock", "flamingock_audit"] + (["target"] if transactional else [])
    requests: list[tuple[str, dict[str, Any]]] = [
        *(("describe_table", {"TableName": table}) for table in tables),
        ("query", state_query),
        ("get_item", {"TableName": "flamingock_lock", "Key": lock_key, "ConsistentRead": True}),
        ("put_item", {"TableName": "flamingock_lock", "Item": held}),
        ("query", state_query),
    ]
    sequence = 0
    for number in range(1, count + 1):
        change_id = f"put-{number:05d}"
        target = {"id": {"S": change_id}, "value": {"N": str(number)}}
        target_put = {"Put": {"TableName": "target", "Item": target}}
        states = [AuditState.APPLIED] if transactional else [AuditState.STARTED, AuditState.APPLIED]
        for state in states:
            sequence += 1
            entry = AuditEntry(
                entry_id=new_id(),
                execution_id="bench-hand",
                stage="default",
                change_id=change_id,
                author="bench",
                order=f"{number:05d}",
                state=state,
                lock_epoch=1,
                sequence=sequence,
                created_at_ms=now_ms(),
                transactional=transactional,
            )
            actions = [action.request for action in driver._driver_actions(entry, fence)]
            if transactional:
                actions.insert(0, target_put)
            elif state is AuditState.APPLIED:
                requests.append(("put_item", {"TableName": "target", "Item": target}))
            requests.append(("transact_write_items", {"TransactItems": actions}))
    requests.append(("put_item", {"TableName": "flamingock_lock", "Item": released}))
    return requests


# -- report ----------------------------------------------------------------------------------


def show(label: str, measurement: Measurement, per: int = 1) -> None:
    print(
        f"  {label:<10}  wall {measurement.wall / per * 1000:8.2f} ms   "
        f"client CPU {measurement.cpu / per * 1000:8.2f} ms   "
        f"{measurement.requests} requests"
    )


async def main(changes: int, applied: int, repeat: int) -> None:
    use_fake_credentials()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    with moto_server() as endpoint:
        print(f"moto_server at {endpoint}\n")

        ours, hand = await startup(endpoint, changes, repeat)
        print(f"start-up with nothing pending over {changes} applied changes (median of {repeat}):")
        show("runner", median(ours))
        show("hand loop", median(hand))
        print(f"  ratio       wall {median_ratio(ours, hand):.2f}\n")

        for transactional in (True, False):
            kind = "transactional" if transactional else "non-transactional"
            runs: list[Measurement] = []
            hand_runs: list[Measurement] = []
            for round_number in range(repeat):
                sides = [(runner_apply, runs), (baseline_apply, hand_runs)]
                for measure, into in sides[:: -1 if round_number % 2 else 1]:
                    into.append(await measure(endpoint, applied, transactional=transactional))
            print(f"{applied} {kind} changes, one put each (per change, median of {repeat}):")
            show("runner", median(runs), applied)
            show("hand loop", median(hand_runs), applied)
            print(f"  ratio       wall {median_ratio(runs, hand_runs):.2f}\n")


def median_ratio(ours: list[Measurement], hand: list[Measurement]) -> float:
    """Return the median over rounds of the runner's wall time over the hand loop's."""
    return statistics.median(a.wall / b.wall for a, b in zip(ours, hand, strict=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000, help="applied changes at start-up")
    parser.add_argument("--applied", type=int, default=100, help="changes applied per ratio")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.changes, arguments.applied, arguments.repeat))
