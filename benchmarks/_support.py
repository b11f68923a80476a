"""Helpers shared by the benchmark scripts in this folder.

Each script measures the things it compares side by side in one run: the runs alternate
(A, B, A, B, ...; the order rotates every round), so that load from other processes on the
machine falls on every side alike. Results are medians; differences and ratios are taken
round by round and their median reported.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """Return the path of a console script installed next to this interpreter."""
    path = VENV_BIN / name
    if not path.exists():
        raise SystemExit(f"{name} is not installed next to {sys.executable}; install it first.")
    return str(path)


# -- generated change packages ---------------------------------------------------------------


def write_change_package(
    root: Path,
    name: str,
    *,
    modules: int,
    per_module: int,
    transactional: bool = True,
) -> int:
    """Write package `name` under `root` with `modules` x `per_module` trivial change units.

    Every change has an empty `execute`; ids and orders follow one global counter, so the
    pipeline order is the file order. Returns the number of changes written.
    """
    package = root / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    number = 0
    for module in range(modules):
        lines = ["from flamingock_async import change_unit", ""]
        for _ in range(per_module):
            lines += [
                f'@change_unit(id="change-{number:06d}", order="{number:06d}", author="bench",'
                f" transactional={transactional})",
                f"class Change{number:06d}:",
                "    async def execute(self) -> None:",
                "        pass",
                "",
                "",
            ]
            number += 1
        (package / f"m{module:04d}.py").write_text("\n".join(lines))
    return number


def change_classes(count: int, *, transactional: bool = True) -> list[type]:
    """Return `count` trivial change unit classes, defined in memory."""
    from flamingock_async import change_unit

    classes: list[type] = []
    for number in range(count):

        async def execute(self: object) -> None:
            return None

        cls = type(f"Change{number:06d}", (), {"execute": execute, "__module__": __name__})
        decorate = change_unit(
            id=f"change-{number:06d}",
            order=f"{number:06d}",
            author="bench",
            transactional=transactional,
        )
        classes.append(decorate(cls))
    return classes


# -- child processes -------------------------------------------------------------------------


@dataclasses.dataclass
class ProcessResult:
    """Measurements of one child process: wall and CPU time in seconds, peak RSS in KiB.

    `cpu` is user plus system time. On a shared machine it varies less than `wall`,
    because time spent waiting for a CPU is not counted.
    """

    wall: float
    cpu: float
    max_rss_kib: int
    returncode: int
    stdout: str
    stderr: str


def run_process(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> ProcessResult:
    """Run a child process; time it from spawn to exit and read its peak RSS with wait4.

    Output goes to files rather than pipes, so that reading it never slows the child down.
    """
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}.out"
    err_path = out_path.with_suffix(".err")
    with out_path.open("w+b") as out, err_path.open("w+b") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=child_env() if env is None else dict(env),
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = ProcessResult(
            wall=wall,
            cpu=usage.ru_utime + usage.ru_stime,
            max_rss_kib=int(usage.ru_maxrss),  # KiB on Linux
            returncode=process.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    if check and result.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} exited with {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return result


PYCACHE = Path(tempfile.gettempdir()) / f"flamingock-bench-pycache-{os.getuid()}"


def child_env(**extra: str) -> dict[str, str]:
    """Return the environment for child processes: this one's, with `extra` set.

    Bytecode caching is switched on, with the cache under the temporary folder, because an
    installed package has its bytecode compiled: a process that compiled every module of
    the package from source on each start would measure the compiler. Settings that slow
    Python down (import timing, tracemalloc, development mode) are removed.
    """
    env = dict(os.environ)
    for name in (
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPROFILEIMPORTTIME",
        "PYTHONTRACEMALLOC",
        "PYTHONDEVMODE",
    ):
        env.pop(name, None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra)
    return env


# -- measuring side by side -----------------------------------------------------------------


def interleave(
    sides: Mapping[str, Callable[[], T]], rounds: int, *, progress: bool = True
) -> dict[str, list[T]]:
    """Call every side once per round, rotating the order; return each side's results."""
    names = list(sides)
    samples: dict[str, list[T]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(sides[name]())
        if progress:
            print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def paired(side: Sequence[float], base: Sequence[float], operation: str) -> float:
    """Return the median, over rounds, of `side - base` (operation "-") or `side / base`."""
    pairs = list(zip(side, base, strict=True))
    if operation == "-":
        return statistics.median(a - b for a, b in pairs)
    return statistics.median(a / b for a, b in pairs)


# -- reporting --------------------------------------------------------------------------------


def machine() -> str:
    """Return one line describing this machine, its load and the Python that runs the script."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{today}; {os.cpu_count()} CPUs ({model}); load average {load}; "
        f"Python {platform.python_version()} on {platform.system()} {platform.release()}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format rows as a Markdown table, so that the output can go into the README as is."""
    cells = [[str(value) for value in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
