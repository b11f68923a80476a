"""Helpers of the command-line tests: change packages written to a temporary folder, SQLite
stores in it, and a snapshot of a store's content to prove a command left it unchanged.
"""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import uuid
from pathlib import Path

from click.testing import CliRunner, Result

from flamingock_async.cli import cli

REPOSITORY = Path(__file__).resolve().parents[2]
FLAMINGOCK = str(Path(sys.executable).with_name("flamingock"))

BASIC_CHANGES = """
from flamingock_async import change_unit


@change_unit(id="create-items", order="0001", author="tests")
class CreateItems:
    async def execute(self, connection) -> None:
        await connection.execute("CREATE TABLE items (name TEXT)")

    async def rollback(self, connection) -> None:
        await connection.execute("DROP TABLE items")


@change_unit(id="insert-apple", order="0002", author="tests")
class InsertApple:
    async def execute(self, connection) -> None:
        await connection.execute("INSERT INTO items VALUES ('apple')")

    async def rollback(self, connection) -> None:
        await connection.execute("DELETE FROM items WHERE name = 'apple'")


@change_unit(id="insert-pear", order="0003", author="tests")
class InsertPear:
    async def execute(self, connection) -> None:
        await connection.execute("INSERT INTO items VALUES ('pear')")

    async def rollback(self, connection) -> None:
        await connection.execute("DELETE FROM items WHERE name = 'pear'")
"""


class Workspace:
    """A temporary folder with a store URL and helpers to write change packages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store_file = path / "store.db"
        self.store = f"sqlite:///{self.store_file}"

    def package(self, source: str) -> str:
        """Write a package with one module `changes` holding `source`; return its name."""
        name = f"cli_changes_{uuid.uuid4().hex[:10]}"
        folder = self.path / name
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        (folder / "changes.py").write_text(textwrap.dedent(source))
        return name

    def invoke(self, *args: str, input: str | None = None, **env: str) -> Result:
        """Run the CLI in this process, as `flamingock ARGS`."""
        return CliRunner().invoke(cli, list(args), input=input, env=env or None)


def snapshot(path: Path) -> list[str] | None:
    """Return every schema item and row of an SQLite file, or None when it does not exist."""
    if not path.exists():
        return None
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def table_rows(path: Path, query: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()
