"""Benchmark `import flamingock_async` over `python -c "import asyncio"`.

Usage: python benchmarks/bench_import.py [--rounds 30] [--quick]

Two child processes alternate: one imports asyncio, the other asyncio and flamingock_async.
The script prints the median wall and CPU time of each and the median over rounds of their
difference. Target: at most 30 ms.

Two more children compare what `flamingock run` imports with nothing pending (click, the
core, the SQLite driver and the pipeline loader) with what the floor process of
`bench_startup.py` imports (asyncio and aiosqlite). Their difference is part of the start-up
cost that `bench_startup.py` measures, so it is printed for reference, with no target.

One more child imports flamingock_async and lists the third-party and driver modules it
loaded: none of the store libraries (aiosqlite, sqlite3, pymongo, motor, aioboto3, boto3,
botocore, httpx) may be among them.
"""

from __future__ import annotations

import argparse
import json
import sys

from _support import interleave, machine, median, ms, paired, run_process, table

TARGET = 0.030
DRIVER_LIBRARIES = (
    "aiosqlite",
    "sqlite3",
    "_sqlite3",
    "pymongo",
    "motor",
    "aioboto3",
    "boto3",
    "botocore",
    "aiobotocore",
    "httpx",
)
THIRD_PARTY = (
    *DRIVER_LIBRARIES,
    "anyio",
    "click",
    "rich",
    "pydantic",
    "yaml",
    "starlette",
    "fastapi",
    "typing_extensions",
)

CLI_IMPORTS = (
    "import asyncio, aiosqlite, flamingock_async.cli, flamingock_async.drivers.sqlite, "
    "flamingock_async._discovery"
)

LIST_MODULES = f"""
import json, sys
import flamingock_async
names = {{name.split(".")[0] for name in sys.modules}}
print(json.dumps(sorted(names & set({list(THIRD_PARTY)!r}))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds (30)")
    parser.add_argument("--quick", action="store_true", help="10 rounds")
    options = parser.parse_args()
    rounds = 10 if options.quick else options.rounds
    print(f"Machine: {machine()}")

    sides = {
        "asyncio": lambda: run_process([sys.executable, "-c", "import asyncio"]),
        "flamingock_async": lambda: run_process(
            [sys.executable, "-c", "import asyncio, flamingock_async"]
        ),
        "floor": lambda: run_process([sys.executable, "-c", "import asyncio, aiosqlite"]),
        "cli": lambda: run_process([sys.executable, "-c", CLI_IMPORTS]),
    }
    for side in sides.values():  # compile and cache the bytecode first
        side()
    samples = interleave(sides, rounds)
    loaded = json.loads(run_process([sys.executable, "-c", LIST_MODULES]).stdout)

    wall = {name: [result.wall for result in results] for name, results in samples.items()}
    cpu = {name: [result.cpu for result in results] for name, results in samples.items()}
    extra_wall = paired(wall["flamingock_async"], wall["asyncio"], "-")
    extra_cpu = paired(cpu["flamingock_async"], cpu["asyncio"], "-")
    drivers = [name for name in loaded if name in DRIVER_LIBRARIES]

    print()
    print(f"Median of {rounds} alternating rounds:")
    rows = [
        ['python -c "import asyncio"', ms(median(wall["asyncio"])), ms(median(cpu["asyncio"]))],
        [
            'python -c "import asyncio, flamingock_async"',
            ms(median(wall["flamingock_async"])),
            ms(median(cpu["flamingock_async"])),
        ],
        ["difference (paired median)", ms(extra_wall), ms(extra_cpu)],
        [
            'python -c "import asyncio, aiosqlite"',
            ms(median(wall["floor"])),
            ms(median(cpu["floor"])),
        ],
        [
            "the same and what 'flamingock run' imports",
            ms(median(wall["cli"])),
            ms(median(cpu["cli"])),
        ],
        [
            "difference (paired median)",
            ms(paired(wall["cli"], wall["floor"], "-")),
            ms(paired(cpu["cli"], cpu["floor"], "-")),
        ],
    ]
    print(table(["process", "wall", "CPU"], rows))
    print()
    verdict = "met" if extra_wall <= TARGET else "missed"
    print(f"Import cost over asyncio: {ms(extra_wall)} wall (target <= {ms(TARGET)}: {verdict}).")
    print(f"Third-party modules loaded by the import: {', '.join(loaded) or 'none'}.")
    print(f"Driver libraries loaded: {', '.join(drivers) or 'none'}.")


if __name__ == "__main__":
    main()
