"""Template changes: the registry and the `sql` template on a real aiosqlite connection."""

from __future__ import annotations

import importlib.metadata
import sqlite3
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from pydantic import BaseModel, ConfigDict

from flamingock_async import AsyncRunner, ChangeExecutionError, PipelineValidationError
from flamingock_async._changes import LoadedChange
from flamingock_async._discovery import load_pipeline
from flamingock_async._injection import resolve_arguments
from flamingock_async.drivers.sqlite import SQLiteDriver
from flamingock_async.templates import (
    ENTRY_POINT_GROUP,
    ChangeTemplate,
    get_template,
    register_template,
    template_names,
)
from flamingock_async.templates import _registered as registered
from flamingock_async.templates.sql import SqlConfig, SqlTemplate, split_statements


def write_pipeline(tmp_path: Path, entries: str) -> str:
    path = tmp_path / "pipeline.yaml"
    body = textwrap.indent(textwrap.dedent(entries).strip(), " " * 6)
    path.write_text(f"stages:\n  - name: sql\n    changes:\n{body}\n")
    return str(path)


def load_one(path: str) -> LoadedChange:
    pipeline = load_pipeline(path)
    [change] = list(pipeline)
    return pipeline.load([change.id])[change.id]


@pytest.fixture
async def connection(tmp_path: Path) -> Any:
    async with aiosqlite.connect(tmp_path / "target.db") as connection:
        yield connection


async def tables(connection: aiosqlite.Connection) -> list[str]:
    cursor = await connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return sorted(row[0] for row in await cursor.fetchall())


USERS = """
- template: sql
  id: create-users
  order: "1"
  author: data
  apply: |
    CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
    INSERT INTO users (email) VALUES ('a;b@example.com');
  rollback: DROP TABLE users
"""


# -- splitting -----------------------------------------------------------------------------------


def test_split_several_statements() -> None:
    assert split_statements("CREATE TABLE a (x);\n\nCREATE TABLE b (y);\n") == (
        "CREATE TABLE a (x)",
        "CREATE TABLE b (y)",
    )


def test_split_keeps_quoted_semicolon() -> None:
    assert split_statements("INSERT INTO t VALUES ('a;b'); SELECT 1") == (
        "INSERT INTO t VALUES ('a;b')",
        "SELECT 1",
    )


def test_split_keeps_trigger_whole() -> None:
    script = (
        "CREATE TRIGGER audit AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1); "
        "INSERT INTO log VALUES (2); END; SELECT 1;"
    )

    statements = split_statements(script)

    assert len(statements) == 2
    assert statements[0].endswith("VALUES (2); END")
    assert statements[1] == "SELECT 1"


def test_split_comment_with_semicolon() -> None:
    assert split_statements("-- note; more\nSELECT 1;") == ("-- note; more\nSELECT 1",)


# -- the config ----------------------------------------------------------------------------------


def test_config_accepts_list() -> None:
    config = SqlConfig.model_validate({"apply": ["SELECT 1", "SELECT 2;"]})

    assert config.apply == ("SELECT 1", "SELECT 2;")
    assert config.rollback is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "apply"),
        ({"apply": ""}, "at least one SQL statement"),
        ({"apply": []}, "at least one SQL statement"),
        ({"apply": ["SELECT 1; SELECT 2"]}, "several statements"),
        ({"apply": ["SELECT 'open"]}, "incomplete"),
        ({"apply": "SELECT 1", "rollback": 5}, "rollback"),
        ({"apply": "SELECT 1", "rolback": "SELECT 2"}, "rolback"),
    ],
)
def test_config_rejects(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqlConfig.model_validate(fields)


# -- running ---------------------------------------------------------------------------------------


async def test_apply_and_rollback(tmp_path: Path, connection: aiosqlite.Connection) -> None:
    loaded = load_one(write_pipeline(tmp_path, USERS))
    change = loaded.new_instance()

    await change.execute(connection)
    after_apply = await tables(connection)
    cursor = await connection.execute("SELECT email FROM users")
    emails = [row[0] for row in await cursor.fetchall()]
    await change.rollback(connection)

    assert loaded.has_rollback is True
    assert loaded.descriptor.template == "sql"
    assert after_apply == ["users"]
    assert emails == ["a;b@example.com"]
    assert await tables(connection) == []


async def test_apply_commits_own_connection(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, USERS)
    database = tmp_path / "commit.db"
    change = load_one(path).new_instance()

    async with aiosqlite.connect(database) as connection:
        await change.execute(connection)
    async with aiosqlite.connect(database) as reader:
        cursor = await reader.execute("SELECT count(*) FROM users")
        row = await cursor.fetchone()

    assert row is not None
    assert row[0] == 1


async def test_transaction_handle_left_open(
    tmp_path: Path, connection: aiosqlite.Connection
) -> None:
    """On the driver's transaction connection, the driver commits, not the template."""
    change = load_one(write_pipeline(tmp_path, USERS)).new_instance()

    await change.execute(connection, transaction=connection)

    assert connection.in_transaction is True
    await connection.rollback()
    assert await tables(connection) == ["users"]  # DDL outside the implicit transaction


async def test_no_rollback_field(tmp_path: Path) -> None:
    entry = """
    - template: sql
      id: only-apply
      order: "1"
      author: data
      apply: [CREATE TABLE t (x)]
    """

    assert load_one(write_pipeline(tmp_path, entry)).has_rollback is False


async def test_connection_injected_by_type(
    tmp_path: Path, connection: aiosqlite.Connection
) -> None:
    change = load_one(write_pipeline(tmp_path, USERS)).new_instance()

    arguments = resolve_arguments(change.execute, named={}, typed=[object(), connection])

    assert arguments == {"connection": connection}


async def test_connection_name_breaks_tie(tmp_path: Path) -> None:
    """Two connections fit the annotation; the one named `connection` is chosen."""
    change = load_one(write_pipeline(tmp_path, USERS)).new_instance()
    async with aiosqlite.connect(":memory:") as first, aiosqlite.connect(":memory:") as second:
        arguments = resolve_arguments(
            change.execute,
            named={"connection": second, "transaction": second},
            typed=[first, second],
        )

    assert arguments["connection"] is second
    assert arguments["transaction"] is second


# -- the registry ----------------------------------------------------------------------------------


class EchoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str


class EchoTemplate(ChangeTemplate):
    config_model = EchoConfig

    async def execute(self, sink: list[str]) -> None:
        sink.append(self.config.message)


ECHO = """
- template: {name}
  id: echo
  order: "1"
  author: team
  message: hello
"""


@pytest.fixture
def template_name() -> Iterator[str]:
    name = f"echo-{uuid.uuid4().hex[:8]}"
    yield name
    registered.pop(name, None)


async def test_registered_template_used(tmp_path: Path, template_name: str) -> None:
    register_template(template_name, EchoTemplate)
    loaded = load_one(write_pipeline(tmp_path, ECHO.format(name=template_name)))
    sink: list[str] = []

    await loaded.new_instance().execute(sink)

    assert sink == ["hello"]
    assert loaded.has_rollback is False
    assert template_name in template_names()


def test_template_names_argument(tmp_path: Path, template_name: str) -> None:
    path = write_pipeline(tmp_path, ECHO.format(name=template_name))

    pipeline = load_pipeline(path, template_names={template_name: EchoTemplate})

    assert pipeline.get("echo") is not None


def test_register_rejects_non_template() -> None:
    with pytest.raises(TypeError, match="ChangeTemplate subclass"):
        register_template("broken", object)  # type: ignore[arg-type]


def test_template_with_sync_execute(tmp_path: Path, template_name: str) -> None:
    class SyncTemplate(ChangeTemplate):
        config_model = EchoConfig

        def execute(self) -> None:
            pass

    register_template(template_name, SyncTemplate)

    with pytest.raises(PipelineValidationError, match="declares execute without async"):
        load_pipeline(write_pipeline(tmp_path, ECHO.format(name=template_name)))


def test_entry_point_template(
    tmp_path: Path, template_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = importlib.metadata.EntryPoint(
        name=template_name, value=f"{__name__}:EchoTemplate", group=ENTRY_POINT_GROUP
    )
    real = importlib.metadata.entry_points

    def entry_points(**selection: Any) -> Any:
        if selection.get("group") == ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints([entry])
        return real(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    assert get_template(template_name) is EchoTemplate
    assert template_name in template_names()


def test_builtin_sql_resolved_lazily() -> None:
    assert get_template("sql") is SqlTemplate


def test_unknown_template_lists_known() -> None:
    with pytest.raises(LookupError) as caught:
        get_template("no-such-template")

    assert "'no-such-template'" in str(caught.value)
    assert "sql" in str(caught.value)
    assert "register_template" in str(caught.value)


# -- with the runner and the SQLite driver ---------------------------------------------------------


def database_tables(database: Path) -> list[str]:
    with closing(sqlite3.connect(database)) as reader:
        rows = reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return sorted(row[0] for row in rows if not row[0].startswith("flamingock_"))


async def test_runner_applies_sql_template(tmp_path: Path) -> None:
    database = tmp_path / "store.db"
    path = write_pipeline(tmp_path, USERS)

    async with SQLiteDriver(database) as driver:
        first = await AsyncRunner(driver, path).run()
        second = await AsyncRunner(driver, path).run()

    assert list(first.applied) == ["create-users"]
    assert list(second.applied) == []
    assert database_tables(database) == ["users"]


async def test_failed_sql_template_commits_nothing(tmp_path: Path) -> None:
    """A transactional template change that fails halfway leaves no table behind."""
    database = tmp_path / "store.db"
    entry = """
    - template: sql
      id: half-done
      order: "1"
      author: data
      apply:
        - CREATE TABLE half (x)
        - INSERT INTO no_such_table VALUES (1)
    """
    path = write_pipeline(tmp_path, entry)

    async with SQLiteDriver(database) as driver:
        with pytest.raises(ChangeExecutionError):
            await AsyncRunner(driver, path).run()

    assert database_tables(database) == []
