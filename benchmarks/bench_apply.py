"""Benchmark applying 1,000 trivial changes on SQLite against a hand-written aiosqlite loop.

Usage: python benchmarks/bench_apply.py [--changes 1000] [--rounds 5] [--quick]

Both sides start from an empty database file and, in alternating rounds in this process,
make the same writes:

* create the same two tables and two indexes in one `BEGIN IMMEDIATE` transaction, in WAL
  journal mode;
* insert the lock row, renew it every third of a 3 s lease from a background task, and mark
  it free at the end;
* for each transactional change: `BEGIN IMMEDIATE`, the fenced audit `INSERT ... SELECT ...
  WHERE EXISTS (lock row of this owner and epoch)` with the same 21 columns, `COMMIT`;
* for each non-transactional change: a fenced `STARTED` insert and a fenced `APPLIED`
  insert, each committed on its own.

Everything else the runner does counts as its overhead. It validates the 1,000 classes
(new ones each round, so that nothing cached about them carries over), reads the states
before and under the lock, reads the lock before inserting it, and opens up to four
connections instead of one. It installs the SQLite authorizer that rejects `COMMIT` in a
change's code, builds audit entries, injects arguments, and sends events and progress.

The time per change is the whole run (connect to close) divided by the number of changes.
The script runs the comparison on a folder on disk (each commit waits for fsync) and, when
/dev/shm exists, on memory, where the Python work is all that remains.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosqlite
from _support import change_classes, interleave, machine, median, paired, table

from flamingock_async import AsyncRunner, LockSettings
from flamingock_async._version import __version__
from flamingock_async.drivers.sqlite import SQLiteDriver

LEASE = 3.0
COLUMNS = (
    "entry_id",
    "execution_id",
    "stage",
    "change_id",
    "author",
    "order",
    "state",
    "lock_epoch",
    "sequence",
    "created_at_ms",
    "started_at_ms",
    "finished_at_ms",
    "duration_ms",
    "transactional",
    "host",
    "pid",
    "error_type",
    "error_message",
    "error_trace",
    "library_version",
    "metadata",
)
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS flamingock_lock (
        key TEXT PRIMARY KEY, owner TEXT, epoch INTEGER NOT NULL, version INTEGER NOT NULL,
        lease_ms INTEGER NOT NULL, acquired_at_ms INTEGER NOT NULL,
        renewed_at_ms INTEGER NOT NULL, host TEXT NOT NULL DEFAULT '',
        pid INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS flamingock_audit (
        rowid INTEGER PRIMARY KEY, entry_id TEXT NOT NULL UNIQUE, execution_id TEXT,
        stage TEXT, change_id TEXT, author TEXT, "order" TEXT, state TEXT,
        lock_epoch INTEGER, sequence INTEGER, created_at_ms INTEGER, started_at_ms INTEGER,
        finished_at_ms INTEGER, duration_ms INTEGER, transactional INTEGER, host TEXT,
        pid INTEGER, error_type TEXT, error_message TEXT, error_trace TEXT,
        library_version TEXT, metadata TEXT)""",
    "CREATE INDEX IF NOT EXISTS flamingock_audit_change "
    "ON flamingock_audit (change_id, lock_epoch, sequence)",
    "CREATE INDEX IF NOT EXISTS flamingock_audit_order ON flamingock_audit (lock_epoch, sequence)",
]
FENCED_INSERT = (
    f"INSERT INTO flamingock_audit ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in COLUMNS)}) "
    f"SELECT {', '.join('?' for _ in COLUMNS)} "
    "WHERE EXISTS (SELECT 1 FROM flamingock_lock WHERE key = ? AND owner = ? AND epoch = ?) "
    "ON CONFLICT(entry_id) DO NOTHING"
)
HOST, PID = socket.gethostname(), os.getpid()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class HandWrittenLoop:
    """The same writes as the runner, with one connection and no framework around them."""

    def __init__(self, path: Path, count: int, *, transactional: bool) -> None:
        self.path = path
        self.count = count
        self.transactional = transactional
        self.owner = os.urandom(16).hex()
        self.version = 1
        self.renewals = 0

    async def run(self) -> None:
        connection = await aiosqlite.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                await connection.execute(statement)
            await connection.execute("COMMIT")
            stamp = now_ms()
            await connection.execute(
                "INSERT INTO flamingock_lock VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO NOTHING",
                ("flamingock", self.owner, 1, 1, int(LEASE * 1000), stamp, stamp, HOST, PID),
            )
            renewer = asyncio.create_task(self.renew(connection))
            try:
                await self.apply_all(connection)
            finally:
                renewer.cancel()
            self.version += 1
            await connection.execute(
                "UPDATE flamingock_lock SET owner = NULL, version = ?, renewed_at_ms = ? "
                "WHERE key = ? AND version = ?",
                (self.version, now_ms(), "flamingock", self.version - 1),
            )
        finally:
            await connection.close()

    async def renew(self, connection: aiosqlite.Connection) -> None:
        while True:
            await asyncio.sleep(LEASE / 3)
            self.version += 1
            await connection.execute(
                "UPDATE flamingock_lock SET version = ?, renewed_at_ms = ? "
                "WHERE key = ? AND version = ?",
                (self.version, now_ms(), "flamingock", self.version - 1),
            )
            self.renewals += 1

    async def apply_all(self, connection: aiosqlite.Connection) -> None:
        execution_id = os.urandom(16).hex()
        sequence = 0
        for number in range(self.count):
            change_id, started = f"change-{number:06d}", now_ms()
            if self.transactional:
                sequence += 1
                await connection.execute("BEGIN IMMEDIATE")
                entry = self.entry(execution_id, change_id, "APPLIED", sequence, started)
                await connection.execute(FENCED_INSERT, entry)
                await connection.execute("COMMIT")
                continue
            for state in ("STARTED", "APPLIED"):
                sequence += 1
                entry = self.entry(execution_id, change_id, state, sequence, started)
                await connection.execute(FENCED_INSERT, entry)

    def entry(
        self, execution_id: str, change_id: str, state: str, sequence: int, started: int
    ) -> tuple[Any, ...]:
        finished = now_ms()
        done = state != "STARTED"
        return (
            os.urandom(16).hex(),
            execution_id,
            "default",
            change_id,
            "bench",
            change_id[-6:],
            state,
            1,
            sequence,
            finished,
            started,
            finished if done else None,
            finished - started if done else None,
            int(self.transactional),
            HOST,
            PID,
            None,
            None,
            None,
            __version__,
            json.dumps({}, sort_keys=True),
            "flamingock",
            self.owner,
            1,
        )


def timed(make: Callable[[], Coroutine[Any, Any, object]]) -> tuple[float, float]:
    """Run `make()` on a new event loop; return its wall time and this process's CPU time.

    The CPU time includes aiosqlite's worker threads. It varies less than the wall time on
    a shared machine, but leaves out the time spent waiting for the disk.
    """
    gc.collect()  # so that neither side collects what was allocated before it
    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(make())
    return time.perf_counter() - started, time.process_time() - cpu_started


def compare(folder: Path, count: int, rounds: int, *, transactional: bool) -> dict[str, Any]:
    serial = iter(range(1_000_000))
    lock_operations: list[int] = []
    loop_renewals: list[int] = []

    def runner_side() -> tuple[float, float]:
        path = folder / f"runner-{next(serial)}.db"
        # New classes each round, as a new process would import, so that no round finds
        # what the round before it cached about them.
        classes = change_classes(count, transactional=transactional)
        driver = SQLiteDriver(path)
        lock = LockSettings(lease=LEASE, wait_timeout=10.0)

        async def run() -> None:
            async with driver:
                report = await AsyncRunner(driver, classes, lock=lock).run()
            if len(report.applied) != count:
                raise SystemExit(f"The runner applied {len(report.applied)} of {count} changes")

        seconds = timed(run)
        lock_operations.append(driver.stats.lock_operations)
        return seconds

    def loop_side() -> tuple[float, float]:
        loop = HandWrittenLoop(
            folder / f"loop-{next(serial)}.db", count, transactional=transactional
        )
        seconds = timed(loop.run)
        loop_renewals.append(loop.renewals)
        return seconds

    samples = interleave({"runner": runner_side, "loop": loop_side}, rounds)
    wall = {side: [sample[0] for sample in values] for side, values in samples.items()}
    cpu = {side: [sample[1] for sample in values] for side, values in samples.items()}
    return {
        "runner": median(wall["runner"]) / count,
        "loop": median(wall["loop"]) / count,
        "ratio": paired(wall["runner"], wall["loop"], "/"),
        "ratios": [a / b for a, b in zip(wall["runner"], wall["loop"], strict=True)],
        "cpu ratio": paired(cpu["runner"], cpu["loop"], "/"),
        "runner lock operations": median(lock_operations),
        "loop lock writes": 2 + median(loop_renewals),
    }


def ratio_range(ratios: list[float]) -> str:
    return f"{min(ratios):.2f} to {max(ratios):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000, help="changes per run (1000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, memory folder only")
    options = parser.parse_args()
    rounds = 3 if options.quick else options.rounds
    print(f"Machine: {machine()}")

    places = [] if options.quick else [("disk", None)]
    if Path("/dev/shm").is_dir():
        places.append(("memory (/dev/shm)", "/dev/shm"))
    rows = []
    for place, parent in places:
        for transactional in (True, False):
            kind = "transactional" if transactional else "non-transactional"
            print(f"{place}, {kind}:", flush=True)
            with tempfile.TemporaryDirectory(prefix="flamingock-apply-", dir=parent) as folder:
                result = compare(Path(folder), options.changes, rounds, transactional=transactional)
            rows.append(
                [
                    place,
                    kind,
                    f"{result['runner'] * 1e6:.0f} us",
                    f"{result['loop'] * 1e6:.0f} us",
                    f"{result['ratio']:.2f} ({ratio_range(result['ratios'])})",
                    f"{result['cpu ratio']:.2f}",
                    "met" if result["ratio"] <= 1.2 else "missed",
                    f"{result['runner lock operations']:.0f} / {result['loop lock writes']:.0f}",
                ]
            )

    print()
    print(f"Time per change, {options.changes:,} changes, median of {rounds} alternating rounds;")
    print("the ratio is the median of each round's runner / loop, by wall time and by the")
    print("process's CPU time (which leaves out waiting for the disk):")
    header = [
        "store folder",
        "changes",
        "runner",
        "hand-written loop",
        "ratio (range over rounds)",
        "CPU ratio",
        "target <= 1.2",
        "lock ops: runner / loop",
    ]
    print(table(header, rows))
    print()
    print("Runner lock operations include its reads of the lock; the loop only writes it.")


if __name__ == "__main__":
    main()
