"""Benchmark peak memory for a pipeline of 10,000 changes on SQLite.

Usage: python benchmarks/bench_memory.py [--changes 10000] [--rounds 3] [--quick]

The script writes a package of trivial change units (100 modules) into a temporary folder
(on /dev/shm when it exists, so that applying is quick) and measures child processes:

* floor: Python imports asyncio and aiosqlite, opens the store and runs one query;
* apply: `flamingock run` on an empty store: load, validate and import every change, plan,
  apply them all;
* start with nothing pending: `flamingock run` again, over the applied history (the manifest
  cache spares the imports);
* load and plan without the cache: a script that imports and validates every change module
  (`use_cache=False`), reads the full audit states and plans.

For each it reports the peak resident set size (max RSS, read with wait4) and, from a second
run under `python -X tracemalloc`, the peak of memory allocated by Python.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from _support import (
    child_env,
    machine,
    median,
    run_process,
    table,
    tool,
    write_change_package,
)

FLOOR = """
import asyncio, aiosqlite, sys

async def main():
    async with aiosqlite.connect(sys.argv[1]) as connection:
        await connection.execute_fetchall("SELECT count(*) FROM flamingock_audit")

asyncio.run(main())
"""

LOAD_AND_PLAN = """
import asyncio, sys
sys.path.insert(0, ".")
from flamingock_async._discovery import load_pipeline
from flamingock_async._planning import plan_run
from flamingock_async.drivers.sqlite import SQLiteDriver

async def main():
    pipeline = load_pipeline(sys.argv[2], use_cache=False)
    async with SQLiteDriver(sys.argv[1]) as driver:
        plan = plan_run(pipeline, await driver.read_states())
    if plan.needs_lock:
        raise SystemExit("expected every change to be applied")

asyncio.run(main())
"""

CLI = """
import sys
from flamingock_async.cli import main
sys.argv[0] = "flamingock"
main()
"""

# Prints the tracemalloc peak at exit; the child runs with -X tracemalloc from its start.
PEAK = """
import atexit, sys, tracemalloc
atexit.register(lambda: print(f"tracemalloc peak: {tracemalloc.get_traced_memory()[1]}",
                              file=sys.stderr))
"""


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10_000, help="changes (10000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per process (3)")
    parser.add_argument("--quick", action="store_true", help="1,000 changes, 1 run")
    options = parser.parse_args()
    count = 1_000 if options.quick else options.changes
    rounds = 1 if options.quick else options.rounds
    flamingock = tool("flamingock")
    print(f"Machine: {machine()}")
    parent = "/dev/shm" if Path("/dev/shm").is_dir() else None

    with tempfile.TemporaryDirectory(prefix="flamingock-memory-", dir=parent) as folder:
        workdir = Path(folder)
        write_change_package(workdir, "bench_memory", modules=100, per_module=count // 100)
        history = workdir / "history.db"
        run_process(
            [
                flamingock,
                "run",
                "--store",
                f"sqlite:///{history.name}",
                "--changes",
                "bench_memory",
            ],
            cwd=workdir,
        )
        serial = iter(range(1_000_000))

        def apply_argv() -> list[str]:
            fresh = f"sqlite:///fresh-{next(serial)}.db"
            return ["run", "--store", fresh, "--changes", "bench_memory"]

        processes = {
            "floor": lambda: ["-c", FLOOR, str(history)],
            f"apply {count:,} changes (CLI)": lambda: ["-c", CLI, *apply_argv()],
            f"start, {count:,} applied, nothing pending (CLI)": lambda: [
                "-c",
                CLI,
                "run",
                "--store",
                f"sqlite:///{history.name}",
                "--changes",
                "bench_memory",
            ],
            f"load {count:,} without cache, read states, plan": lambda: [
                "-c",
                LOAD_AND_PLAN,
                str(history),
                "bench_memory",
            ],
        }
        rss: dict[str, list[int]] = {name: [] for name in processes}
        peaks: dict[str, int] = {}
        for _ in range(rounds):
            for name, argv in processes.items():
                result = run_process([sys.executable, *argv()], cwd=workdir)
                rss[name].append(result.max_rss_kib)
        for name, argv in processes.items():
            arguments = argv()
            traced = ["-X", "tracemalloc", "-c", PEAK + arguments[1], *arguments[2:]]
            result = run_process([sys.executable, *traced], cwd=workdir, env=child_env())
            found = re.search(r"tracemalloc peak: (\d+)", result.stderr)
            peaks[name] = int(found[1]) if found else -1

    floor = median(rss["floor"])
    rows = []
    for name in processes:
        peak_rss = median(rss[name])
        rows.append(
            [
                name,
                mib(peak_rss),
                f"+{mib(peak_rss - floor)}",
                f"{peak_rss / floor:.2f}",
                mib(peaks[name] / 1024),
            ]
        )
    print()
    print(f"Peak memory, median of {rounds} runs of each process:")
    header = ["process", "max RSS", "over floor", "ratio to floor", "tracemalloc peak"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
