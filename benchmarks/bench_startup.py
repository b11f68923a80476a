"""Benchmark `flamingock run` with nothing pending, as a whole CLI process, on SQLite.

Usage: python benchmarks/bench_startup.py [--rounds 15] [--quick]

The script writes two packages of trivial change units into a temporary folder (100 modules
of 10 changes, and 100 modules of 100 changes), applies each once with `flamingock run`, and
then times, in alternating rounds:

* a floor process: Python imports asyncio and aiosqlite, opens the store and runs one query
  (`SELECT count(*)` on the audit table);
* `flamingock run --store sqlite:///... --changes PACKAGE` over 1,000 applied changes;
* the same over 10,000 applied changes.

It prints the median wall time of each, the median over rounds of each run's excess over the
floor of the same round, and checks from one more run per size, made with
`python -X importtime` and `FLAMINGOCK_STATS=1`:

* the driver's store round trips (reads, writes and lock operations) and the SQL statements
  sent (counted by a trace callback on every sqlite3 connection);
* whether the lock was touched: no lock operation counted, and the lock row unchanged;
* how many change modules were imported (the manifest cache should make it zero).

Targets: at most 2 round trips and no lock at any history length; within 50 ms (1,000) and
150 ms (10,000) of the floor.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from _support import (
    ProcessResult,
    child_env,
    interleave,
    machine,
    median,
    ms,
    paired,
    run_process,
    table,
    tool,
    write_change_package,
)

SIZES = {1_000: (100, 10), 10_000: (100, 100)}
TARGETS = {1_000: 0.050, 10_000: 0.150}
MAX_ROUND_TRIPS = 2

FLOOR = """
import asyncio, aiosqlite, sys

async def main():
    async with aiosqlite.connect(sys.argv[1]) as connection:
        await connection.execute_fetchall("SELECT count(*) FROM flamingock_audit")

asyncio.run(main())
"""

# Runs the CLI in this process after counting SQL statements on every sqlite3 connection.
COUNTING_CLI = """
import atexit, sqlite3, sys

statements = []
connect = sqlite3.connect

def counting_connect(*args, **kwargs):
    connection = connect(*args, **kwargs)
    connection.set_trace_callback(statements.append)
    return connection

sqlite3.connect = counting_connect
atexit.register(lambda: print(f"sql statements: {len(statements)}", file=sys.stderr))
from flamingock_async.cli import main
sys.argv[0] = "flamingock"
main()
"""


def lock_rows(database: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT * FROM flamingock_lock ORDER BY key").fetchall()


def check_run(workdir: Path, database: Path, package: str) -> dict[str, object]:
    """Run the CLI once under -X importtime with FLAMINGOCK_STATS=1 and parse what it reports."""
    before = lock_rows(database)
    argv = [sys.executable, "-X", "importtime", "-c", COUNTING_CLI, "run"]
    argv += ["--store", f"sqlite:///{database.name}", "--changes", package]
    result = run_process(argv, cwd=workdir, env=child_env(FLAMINGOCK_STATS="1"))
    stats = re.search(
        r"reads=(\d+) writes=(\d+) lock_operations=(\d+) round_trips=(\d+)", result.stderr
    )
    statements = re.search(r"sql statements: (\d+)", result.stderr)
    if stats is None or statements is None:
        raise SystemExit(f"The CLI printed no statistics:\n{result.stderr[-2000:]}")
    imported = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and f" {package}." in line
    ]
    return {
        "reads": int(stats[1]),
        "writes": int(stats[2]),
        "lock_operations": int(stats[3]),
        "round_trips": int(stats[4]),
        "statements": int(statements[1]),
        "lock_row_unchanged": lock_rows(database) == before,
        "change_modules_imported": len(imported),
        "output": result.stdout.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument(
        "--quick", action="store_true", help="5 rounds and only 1,000 changes (for a smoke run)"
    )
    options = parser.parse_args()
    rounds = 5 if options.quick else options.rounds
    sizes = [1_000] if options.quick else list(SIZES)
    flamingock = tool("flamingock")
    print(f"Machine: {machine()}")

    with tempfile.TemporaryDirectory(prefix="flamingock-bench-") as folder:
        workdir = Path(folder)
        databases: dict[int, Path] = {}
        packages: dict[int, str] = {}
        for size in sizes:
            modules, per_module = SIZES[size]
            packages[size] = f"bench_changes_{size}"
            databases[size] = workdir / f"store_{size}.db"
            write_change_package(workdir, packages[size], modules=modules, per_module=per_module)
            started = time.perf_counter()
            run_process(
                [
                    flamingock,
                    "run",
                    "--store",
                    f"sqlite:///{databases[size].name}",
                    "--changes",
                    packages[size],
                ],
                cwd=workdir,
            )
            print(f"Applied {size:,} changes once in {time.perf_counter() - started:.1f} s")

        def floor() -> ProcessResult:
            database = databases[sizes[-1]]
            argv = [sys.executable, "-c", FLOOR, str(database)]
            return run_process(argv, cwd=workdir)

        def cli(size: int) -> ProcessResult:
            argv = [flamingock, "run", "--store", f"sqlite:///{databases[size].name}"]
            argv += ["--changes", packages[size]]
            result = run_process(argv, cwd=workdir)
            if "Nothing to apply" not in result.stdout:
                raise SystemExit(f"Expected nothing to apply, got: {result.stdout}")
            return result

        sides: dict[str, Callable[[], ProcessResult]] = {"floor": floor}
        for size in sizes:
            sides[f"cli {size:,}"] = lambda size=size: cli(size)
        for side in sides.values():  # warm the page cache and the manifest caches
            side()
        samples = interleave(sides, rounds)
        checks = {size: check_run(workdir, databases[size], packages[size]) for size in sizes}

    print()
    print(f"Median of {rounds} alternating rounds. 'Over floor' is the median of each round's")
    print("difference to the floor process of the same round; 'best over floor' is the")
    print("fastest run minus the fastest floor, closer to what an idle machine shows:")
    wall = {name: [result.wall for result in results] for name, results in samples.items()}
    cpu = {name: [result.cpu for result in results] for name, results in samples.items()}
    rows: list[list[object]] = [
        ["floor", ms(median(wall["floor"])), "", "", ms(median(cpu["floor"])), "", "", ""]
    ]
    for size in sizes:
        side = f"cli {size:,}"
        excess = paired(wall[side], wall["floor"], "-")
        best = min(wall[side]) - min(wall["floor"])
        target = TARGETS[size]
        rows.append(
            [
                f"flamingock run, {size:,} applied",
                ms(median(wall[side])),
                ms(excess),
                ms(best),
                ms(median(cpu[side])),
                ms(paired(cpu[side], cpu["floor"], "-")),
                f"<= {ms(target)}",
                "met" if excess <= target else "missed",
            ]
        )
    header = [
        "process",
        "wall",
        "over floor",
        "best over floor",
        "CPU",
        "CPU over floor",
        "target",
        "over floor",
    ]
    print(table(header, rows))
    print()
    print("Store access of one run with nothing pending:")
    check_rows = []
    for size in sizes:
        check = checks[size]
        lock_touched = check["lock_operations"] != 0 or not check["lock_row_unchanged"]
        within = check["round_trips"] <= MAX_ROUND_TRIPS and not lock_touched
        check_rows.append(
            [
                f"{size:,}",
                check["round_trips"],
                f"{check['reads']}/{check['writes']}/{check['lock_operations']}",
                check["statements"],
                "yes" if lock_touched else "no",
                check["change_modules_imported"],
                "met" if within else "missed",
            ]
        )
    print(
        table(
            [
                "applied",
                "round trips",
                "reads/writes/lock ops",
                "SQL statements",
                "lock touched",
                "change modules imported",
                f"<= {MAX_ROUND_TRIPS}, no lock",
            ],
            check_rows,
        )
    )
    print()
    print("SQL statements include the connection set-up; the floor sends 1.")


if __name__ == "__main__":
    main()
