"""Compare flamingock-async with alembic and yoyo-migrations on SQLite, in one run.

Usage: python benchmarks/bench_vs_others.py [--rounds 5] [--apply-rounds 3] [--quick]

Every tool runs as a whole command-line process on a database file in a temporary folder:

1. start with nothing pending over 1,000 and 10,000 applied no-op migrations:
   * `flamingock run --store sqlite:///... --changes PACKAGE` (100 modules of 10 or 100
     change units; applied once before timing);
   * `alembic upgrade head` over a script folder of one revision file per migration, each
     with an empty `upgrade()`, in one linear chain (stamped `head` before timing);
   * `yoyo apply --batch` over a folder of one migration file per migration, each with no
     step (marked applied before timing);
2. applying 1,000 no-op migrations to an empty database, one transaction per migration for
   every tool. The generated alembic env.py sets `transaction_per_migration=True`, and
   yoyo and flamingock-async commit each migration on its own by design.

Runs alternate between the tools (the order rotates every round), and each ratio is the
median over rounds of flamingock-async's time divided by the other tool's in the same round.
A ratio below 1 means flamingock-async is faster.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from _support import (
    ProcessResult,
    child_env,
    interleave,
    machine,
    median,
    run_process,
    table,
    tool,
    write_change_package,
)

SIZES = {1_000: (100, 10), 10_000: (100, 100)}

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/{name}
sqlalchemy.url = sqlite:///%(here)s/{name}.db
"""

ALEMBIC_ENV = """\
import os

from alembic import context
from sqlalchemy import create_engine

url = os.environ.get("BENCH_DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""

ALEMBIC_REVISION = """\
revision = "r{number:05d}"
down_revision = {previous}
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
"""

YOYO_MIGRATION = "steps = []\n"


def write_alembic(root: Path, name: str, count: int) -> Path:
    """Write an alembic script folder of `count` empty revisions; return its ini file."""
    versions = root / name / "versions"
    versions.mkdir(parents=True)
    (root / name / "env.py").write_text(ALEMBIC_ENV)
    for number in range(1, count + 1):
        previous = "None" if number == 1 else f'"r{number - 1:05d}"'
        revision = ALEMBIC_REVISION.format(number=number, previous=previous)
        (versions / f"r{number:05d}_noop.py").write_text(revision)
    ini = root / f"{name}.ini"
    ini.write_text(ALEMBIC_INI.format(name=name))
    return ini


def write_yoyo(root: Path, name: str, count: int) -> Path:
    folder = root / name
    folder.mkdir()
    for number in range(1, count + 1):
        (folder / f"m{number:05d}_noop.py").write_text(YOYO_MIGRATION)
    return folder


def count_rows(database: Path, statement: str) -> int:
    with closing(sqlite3.connect(database)) as connection:
        return int(connection.execute(statement).fetchone()[0])


class Tools:
    """The command lines of the three tools over the generated folders in `root`."""

    def __init__(self, root: Path, sizes: list[int]) -> None:
        self.root = root
        self.flamingock = tool("flamingock")
        self.alembic = tool("alembic")
        self.yoyo = tool("yoyo")
        self.alembic_ini: dict[int, Path] = {}
        self.yoyo_folder: dict[int, Path] = {}
        self.serial = iter(range(1_000_000))
        for size in sizes:
            modules, per_module = SIZES[size]
            write_change_package(root, f"bench_{size}", modules=modules, per_module=per_module)
            self.alembic_ini[size] = write_alembic(root, f"alembic_{size}", size)
            self.yoyo_folder[size] = write_yoyo(root, f"yoyo_{size}", size)

    # -- nothing pending

    def prepare_history(self, size: int) -> None:
        """Apply (flamingock-async), stamp (alembic) or mark (yoyo) every migration."""
        self.flamingock_run(f"history_{size}.db", size)
        self.alembic_command(size, None, "stamp", "head")
        self.yoyo_command("mark", size, f"yoyo_history_{size}.db")

    def flamingock_run(self, database: str, size: int) -> ProcessResult:
        argv = [self.flamingock, "run", "--store", f"sqlite:///{database}"]
        return run_process([*argv, "--changes", f"bench_{size}"], cwd=self.root)

    def alembic_command(self, size: int, database: str | None, *command: str) -> ProcessResult:
        env = child_env()
        if database is not None:
            env["BENCH_DATABASE_URL"] = f"sqlite:///{self.root / database}"
        argv = [self.alembic, "-c", str(self.alembic_ini[size]), *command]
        return run_process(argv, cwd=self.root, env=env)

    def yoyo_command(self, command: str, size: int, database: str) -> ProcessResult:
        argv = [self.yoyo, command, "--batch", "--no-config-file"]
        argv += ["--database", f"sqlite:///{self.root / database}", str(self.yoyo_folder[size])]
        return run_process(argv, cwd=self.root)

    def start_sides(self, size: int) -> dict[str, Callable[[], ProcessResult]]:
        return {
            f"flamingock-async {size:,}": lambda: self.flamingock_run(f"history_{size}.db", size),
            f"alembic {size:,}": lambda: self.alembic_command(size, None, "upgrade", "head"),
            f"yoyo {size:,}": lambda: self.yoyo_command("apply", size, f"yoyo_history_{size}.db"),
        }

    # -- applying

    def apply_sides(self, size: int) -> dict[str, Callable[[], ProcessResult]]:
        def flamingock() -> ProcessResult:
            database = f"fresh_{next(self.serial)}.db"
            result = self.flamingock_run(database, size)
            self.expect(database, "SELECT count(*) FROM flamingock_audit", size)
            return result

        def alembic() -> ProcessResult:
            database = f"fresh_{next(self.serial)}.db"
            result = self.alembic_command(size, database, "upgrade", "head")
            self.expect(database, "SELECT count(*) FROM alembic_version", 1)
            return result

        def yoyo() -> ProcessResult:
            database = f"fresh_{next(self.serial)}.db"
            result = self.yoyo_command("apply", size, database)
            self.expect(database, "SELECT count(*) FROM _yoyo_migration", size)
            return result

        return {"flamingock-async": flamingock, "alembic": alembic, "yoyo": yoyo}

    def expect(self, database: str, statement: str, expected: int) -> None:
        found = count_rows(self.root / database, statement)
        if found != expected:
            raise SystemExit(f"{database}: {statement} returned {found}, expected {expected}")


def ratio_cells(wall: dict[str, list[float]], ours: str, others: list[str]) -> list[str]:
    cells = []
    for other in others:
        pairs = zip(wall[ours], wall[other], strict=True)
        cells.append(f"{median(a / b for a, b in pairs):.2f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of starts (5)")
    parser.add_argument("--apply-rounds", type=int, default=3, help="rounds of applying (3)")
    parser.add_argument("--quick", action="store_true", help="1,000 only, 3 and 1 rounds")
    options = parser.parse_args()
    sizes = [1_000] if options.quick else list(SIZES)
    rounds = 3 if options.quick else options.rounds
    apply_rounds = 1 if options.quick else options.apply_rounds
    print(f"Machine: {machine()}")

    with tempfile.TemporaryDirectory(prefix="flamingock-vs-") as folder:
        tools = Tools(Path(folder), sizes)
        for size in sizes:
            tools.prepare_history(size)
        starts: dict[str, Callable[[], ProcessResult]] = {}
        for size in sizes:
            starts.update(tools.start_sides(size))
        for side in starts.values():  # compile bytecode and warm the caches
            side()
        print("Starts with nothing pending:", file=sys.stderr)
        start_samples = interleave(starts, rounds)
        print("Applying 1,000:", file=sys.stderr)
        apply_samples = interleave(tools.apply_sides(1_000), apply_rounds)

    print()
    print(f"Start with nothing pending, whole process, median of {rounds} alternating rounds:")
    wall = {name: [result.wall for result in results] for name, results in start_samples.items()}
    rows = []
    for size in sizes:
        names = [f"{tool_name} {size:,}" for tool_name in ("flamingock-async", "alembic", "yoyo")]
        rows.append(
            [
                f"{size:,}",
                *(f"{median(wall[name]) * 1000:.0f} ms" for name in names),
                *ratio_cells(wall, names[0], names[1:]),
            ]
        )
    header = ["applied", "flamingock-async", "alembic", "yoyo", "ours / alembic", "ours / yoyo"]
    print(table(header, rows))
    print()
    print(f"Applying 1,000 no-op migrations, whole process, median of {apply_rounds} rounds:")
    wall = {name: [result.wall for result in results] for name, results in apply_samples.items()}
    rows = [
        [
            "1,000",
            *(f"{median(wall[name]) * 1000:.0f} ms" for name in wall),
            *ratio_cells(wall, "flamingock-async", ["alembic", "yoyo"]),
        ]
    ]
    print(table(header, rows))


if __name__ == "__main__":
    main()
