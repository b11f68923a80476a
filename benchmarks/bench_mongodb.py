"""Benchmark the MongoDB driver against an nx-27017 server that this script starts on 127.0.0.1.

Usage: python benchmarks/bench_mongodb.py [--changes 1000] [--applied 200] [--rounds 3]

It measures, in one run:

1. start-up with nothing pending: a new `AsyncRunner` and `MongoDriver` over a database where
   every one of `--changes` changes is applied. It prints the median wall time over `--rounds`
   runs and the number of commands one run sends (counted with a PyMongo `CommandListener`);
2. time per applied change, for transactional changes (each inserts one document through the
   injected session) and non-transactional ones (each inserts one document), as a ratio to a
   hand-written PyMongo loop that sends the same inserts and audit documents, without lock or
   fence. The two sides alternate round by round, each on a fresh database, and the ratio is
   the median of the per-round ratios. Both sides count their commands.

nx-27017 keeps its data in SQLite in memory, in one Python process on the same machine, so
absolute times say little about a real MongoDB; the ratios show what the runner, the lock and
the audit add on top of the writes a change needs anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from _support import machine, median, ms, paired, tool
from pymongo import AsyncMongoClient, monitoring

from flamingock_async import AsyncRunner, AuditEntry, AuditState, LockSettings, change_unit
from flamingock_async._audit import new_id, now_ms
from flamingock_async.drivers.mongodb import MongoDriver


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def nx_server() -> Iterator[str]:
    """Start nx-27017 in memory on a free loopback port and yield its URI."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        command = [
            tool("nx-27017"),
            *("--db", "memory", "--host", "127.0.0.1", "-p", str(port)),
            *("--log-file", f"{directory}/nx.log", "--pid-file", f"{directory}/nx.pid"),
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        uri = f"mongodb://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with MongoClient(uri, serverSelectionTimeoutMS=200) as client:
                        client.admin.command("ping")
                    break
                except PyMongoError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit("nx-27017 did not start; is it installed?") from None
                    time.sleep(0.05)
            yield uri
        finally:
            process.terminate()
            process.wait(timeout=10)


# -- changes ---------------------------------------------------------------------------------


def noop_changes(count: int) -> list[type]:
    def make(number: int) -> type:
        @change_unit(id=f"change-{number:06d}", order=f"{number:06d}", author="bench")
        class Noop:
            async def execute(self) -> None:
                return None

        return Noop

    return [make(number) for number in range(count)]


def insert_changes(count: int, *, transactional: bool) -> list[type]:
    def make(number: int) -> type:
        change_id = f"insert-{number:06d}"
        order = f"{number:06d}"
        if transactional:

            @change_unit(id=change_id, order=order, author="bench", transactional=True)
            class InSession:
                async def execute(self, db: Any, session: Any) -> None:
                    await db["target"].insert_one({"change": change_id}, session=session)

            return InSession

        @change_unit(id=change_id, order=order, author="bench", transactional=False)
        class Direct:
            async def execute(self, db: Any) -> None:
                await db["target"].insert_one({"change": change_id})

        return Direct

    return [make(number) for number in range(count)]


def audit_document(change_id: str, sequence: int, state: AuditState) -> dict[str, Any]:
    stamp = now_ms()
    return AuditEntry(
        entry_id=new_id(),
        execution_id="bench",
        stage="default",
        change_id=change_id,
        author="bench",
        order=change_id.rsplit("-", 1)[1],
        state=state,
        lock_epoch=1,
        sequence=sequence,
        created_at_ms=stamp,
        started_at_ms=stamp,
        finished_at_ms=stamp,
        duration_ms=0,
    ).to_dict()


# -- measurements ----------------------------------------------------------------------------


def new_database() -> str:
    return f"bench_{uuid.uuid4().hex[:12]}"


async def startup(uri: str, changes: int, rounds: int) -> tuple[list[float], int]:
    """Return the wall times of start-up runs with nothing pending, and commands per run."""
    database = new_database()
    seed = MongoDriver(uri, database, transactions=True)
    await seed.open()
    await seed.setup()
    documents = [
        audit_document(f"change-{number:06d}", number, AuditState.APPLIED)
        for number in range(changes)
    ]
    await seed.database["flamingock_audit"].insert_many(documents)
    await seed.aclose()

    classes = noop_changes(changes)
    times: list[float] = []
    commands = 0
    for _ in range(rounds):
        counter = CommandCounter()
        started = time.perf_counter()
        client: AsyncMongoClient[Any] = AsyncMongoClient(uri, event_listeners=[counter])
        driver = MongoDriver(client, database, transactions=True)
        report = await AsyncRunner(driver, classes, manifest_cache=False).run()
        times.append(time.perf_counter() - started)
        await driver.aclose()
        await client.close()
        if report.applied:
            raise SystemExit(f"start-up applied {len(report.applied)} changes; expected none")
        commands = counter.count
    return times, commands


async def runner_apply(uri: str, count: int, *, transactional: bool) -> tuple[float, int]:
    """Apply `count` changes with the runner on a fresh database; return seconds and commands."""
    classes = insert_changes(count, transactional=transactional)
    counter = CommandCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri, event_listeners=[counter])
    driver = MongoDriver(client, new_database(), transactions=transactional)
    lock = LockSettings(lease=30.0)
    started = time.perf_counter()
    report = await AsyncRunner(driver, classes, lock=lock, manifest_cache=False).run()
    elapsed = time.perf_counter() - started
    await driver.aclose()
    await client.close()
    if len(report.applied) != count:
        raise SystemExit(f"the runner applied {len(report.applied)} of {count} changes")
    return elapsed, counter.count


async def baseline_apply(uri: str, count: int, *, transactional: bool) -> tuple[float, int]:
    """Send the same inserts and audit documents by hand; return seconds and commands."""
    counter = CommandCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri, event_listeners=[counter])
    database = client[new_database()]
    await database.create_collection("flamingock_audit")
    await database.create_collection("target")
    audit, target = database["flamingock_audit"], database["target"]
    started = time.perf_counter()
    for number in range(count):
        change_id = f"insert-{number:06d}"
        if transactional:
            async with client.start_session() as session:
                await session.start_transaction()
                await target.insert_one({"change": change_id}, session=session)
                applied = audit_document(change_id, number, AuditState.APPLIED)
                await audit.insert_one(applied, session=session)
                await session.commit_transaction()
        else:
            await audit.insert_one(audit_document(change_id, 2 * number, AuditState.STARTED))
            await target.insert_one({"change": change_id})
            await audit.insert_one(audit_document(change_id, 2 * number + 1, AuditState.APPLIED))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed, counter.count


async def ratio(uri: str, count: int, rounds: int, *, transactional: bool) -> None:
    samples: dict[str, list[float]] = {"runner": [], "hand": []}
    commands: dict[str, int] = {}
    for round_number in range(rounds):
        sides = ["runner", "hand"] if round_number % 2 == 0 else ["hand", "runner"]
        for side in sides:
            apply = runner_apply if side == "runner" else baseline_apply
            elapsed, sent = await apply(uri, count, transactional=transactional)
            samples[side].append(elapsed / count)
            commands[side] = sent
    kind = "transactional" if transactional else "non-transactional"
    print(f"{count} {kind} changes, one insert each ({rounds} rounds):")
    print(
        f"  runner      {ms(median(samples['runner']))} per change, {commands['runner']} commands"
    )
    print(f"  hand loop   {ms(median(samples['hand']))} per change, {commands['hand']} commands")
    print(f"  ratio       {paired(samples['runner'], samples['hand'], '/'):.2f}\n")


async def main(changes: int, applied: int, rounds: int) -> None:
    print(machine())
    with nx_server() as uri:
        print(f"nx-27017 at {uri}\n")
        times, commands = await startup(uri, changes, rounds)
        print(f"start-up, nothing pending, {changes} applied changes ({rounds} runs):")
        print(f"  wall time   median {ms(median(times))}, min {ms(min(times))}")
        print(f"  commands    {commands} per run (round trips to the server)\n")
        for transactional in (True, False):
            await ratio(uri, applied, rounds, transactional=transactional)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000, help="applied changes at start-up")
    parser.add_argument("--applied", type=int, default=200, help="changes applied per side")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.changes, arguments.applied, arguments.rounds))
