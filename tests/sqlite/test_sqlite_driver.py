"""Tests of the SQLite driver beyond the conformance suite: URLs, files, corrupt rows, processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest

from flamingock_async import (
    ConfigurationError,
    CorruptAuditEntryError,
    DriverError,
    DriverUnavailableError,
    LockLostError,
    MissingDependencyError,
)
from flamingock_async._lock import LockRecord
from flamingock_async.drivers import driver_from_url
from flamingock_async.drivers.sqlite import SQLiteDriver, from_url
from flamingock_async.testing import hold_lock, make_entry

from .processes import run_together

WORKER = Path(__file__).with_name("process_worker.py")
PROCESSES = 8


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def driver(database: Path) -> AsyncIterator[SQLiteDriver]:
    async with SQLiteDriver(database) as opened:
        await opened.setup()
        yield opened


def raw_connection(path: Path) -> closing[sqlite3.Connection]:
    """Open an autocommit connection that the `with` block closes."""
    return closing(sqlite3.connect(path, isolation_level=None))


# -- URLs ------------------------------------------------------------------------------------


def test_url_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    driver = from_url("sqlite:///app.db")

    assert driver.path == str(tmp_path / "app.db")


def test_url_absolute_path(tmp_path: Path) -> None:
    driver = from_url(f"sqlite:///{tmp_path}/app.db")

    assert driver.path == f"{tmp_path}/app.db"
    assert str(tmp_path).startswith("/")


def test_url_percent_encoded_path(tmp_path: Path) -> None:
    (tmp_path / "my dir").mkdir()

    driver = from_url(f"sqlite:///{tmp_path}/my%20dir/app.db")

    assert driver.path == f"{tmp_path}/my dir/app.db"


def test_url_memory() -> None:
    driver = from_url("sqlite:///:memory:")

    assert driver.path == ":memory:"


def test_url_options(tmp_path: Path) -> None:
    driver = from_url(f"sqlite:///{tmp_path}/app.db?table_prefix=app_&busy_timeout=2.5")

    assert driver.table_prefix == "app_"
    assert driver.busy_timeout == 2.5


def test_url_through_driver_from_url(tmp_path: Path) -> None:
    driver = driver_from_url(f"sqlite:///{tmp_path}/app.db")

    assert isinstance(driver, SQLiteDriver)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", "path is missing"),
        ("sqlite:///", "path is missing"),
        ("sqlite://host/app.db", "host 'host' is not allowed"),
        ("sqlite:///app.db?mode=ro", "unknown option 'mode'"),
        ("sqlite:///app.db?busy_timeout=soon", "busy_timeout must be a number"),
        ("sqlite:///app.db?busy_timeout=-1", "busy_timeout"),
        ("sqlite:///app.db?table_prefix=drop;table", "table_prefix"),
        ("sqlite:///app.db#top", "fragment"),
    ],
)
def test_url_invalid(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        from_url(url)

    assert expected in str(raised.value)


def test_url_error_names_url() -> None:
    with pytest.raises(ConfigurationError) as raised:
        from_url("sqlite:///app.db?mode=ro")

    assert "sqlite:///app.db?mode=ro" in str(raised.value)
    assert "table_prefix, busy_timeout" in str(raised.value)


def test_url_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        from_url(f"sqlite:///{tmp_path}")

    assert "is a directory" in str(raised.value)
    assert "flamingock.db" in str(raised.value)


def test_url_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        from_url(f"sqlite:///{tmp_path}/missing/app.db")

    assert "does not exist" in str(raised.value)
    assert str(tmp_path / "missing") in str(raised.value)


async def test_open_missing_folder(tmp_path: Path) -> None:
    driver = SQLiteDriver(tmp_path / "missing" / "app.db")

    with pytest.raises(ConfigurationError):
        await driver.open()


def test_invalid_table_prefix(database: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        SQLiteDriver(database, table_prefix="x-y")

    assert "'x-y'" in str(raised.value)


# -- opening writes nothing ------------------------------------------------------------------


async def test_open_missing_file_creates_nothing(database: Path) -> None:
    async with SQLiteDriver(database) as driver:
        states = await driver.read_states()
        history = await driver.read_history()
        lock = await driver.read_lock("flamingock")

    assert states == []
    assert history == []
    assert lock is None
    assert not await anyio.Path(database).exists()


async def test_open_empty_file_creates_no_tables(database: Path) -> None:
    await anyio.Path(database).touch()

    async with SQLiteDriver(database) as driver:
        states = await driver.read_states()
        lock = await driver.read_lock("flamingock")

    assert states == []
    assert lock is None
    assert (await anyio.Path(database).stat()).st_size == 0


async def test_setup_creates_missing_file(database: Path) -> None:
    async with SQLiteDriver(database) as driver:
        await driver.setup()

    assert await anyio.Path(database).exists()


async def test_setup_enables_wal(driver: SQLiteDriver, database: Path) -> None:
    with raw_connection(database) as connection:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]

    assert mode == "wal"


async def test_connections_set_busy_timeout(database: Path) -> None:
    async with SQLiteDriver(database, busy_timeout=2.5) as driver:
        await driver.setup()
        connection: Any = driver.target_dependencies()["connection"]
        rows = list(await connection.execute_fetchall("PRAGMA busy_timeout"))

    assert rows[0][0] == 2500


async def test_table_prefixes_independent(database: Path) -> None:
    async with SQLiteDriver(database, table_prefix="one_") as one:
        await one.setup()
        fence = await hold_lock(one, "k", "runner-a")
        await one.append_audit(make_entry("a", epoch=fence.epoch, sequence=1), fence)
        async with SQLiteDriver(database, table_prefix="two_") as two:
            await two.setup()
            states = await two.read_states()
            lock = await two.read_lock("k")

    assert states == []
    assert lock is None


async def test_read_states_one_query(driver: SQLiteDriver) -> None:
    fence = await hold_lock(driver, "k", "runner-a")
    for sequence in range(1, 6):
        entry = make_entry(f"change-{sequence % 3}", epoch=fence.epoch, sequence=sequence)
        await driver.append_audit(entry, fence)
    statements: list[str] = []
    main: Any = driver._main  # the connection used for reads
    await main.set_trace_callback(statements.append)

    states = await driver.read_states()
    await main.set_trace_callback(None)

    assert len(states) == 3
    assert len(statements) == 1


# -- dependencies ----------------------------------------------------------------------------


def test_provided_dependencies(database: Path) -> None:
    provided = SQLiteDriver(database).provided_dependencies()

    assert set(provided) == {"connection", "conn", "db", "transaction"}
    assert all(kind is aiosqlite.Connection for kind in provided.values())


def test_missing_aiosqlite(database: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiosqlite", None)

    with pytest.raises(MissingDependencyError) as raised:
        SQLiteDriver(database).provided_dependencies()

    assert "aiosqlite" in str(raised.value)


def test_core_import_skips_aiosqlite() -> None:
    code = "import sys, flamingock_async; print('aiosqlite' in sys.modules)"

    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert output.strip() == "False"


async def test_target_dependencies_before_setup(database: Path) -> None:
    async with SQLiteDriver(database) as driver:
        with pytest.raises(DriverError) as raised:
            driver.target_dependencies()

    assert "setup()" in str(raised.value)


async def test_target_dependencies_after_open(database: Path) -> None:
    """An application uses the change connection after a run that had nothing to apply."""
    async with SQLiteDriver(database) as driver:
        await driver.setup()
    async with SQLiteDriver(database) as driver:
        connection: Any = driver.target_dependencies()["connection"]
        rows = list(await connection.execute_fetchall("SELECT 1"))

    assert rows == [(1,)]


async def test_target_connection_autocommits(driver: SQLiteDriver, database: Path) -> None:
    connection: Any = driver.target_dependencies()["db"]

    await connection.execute("CREATE TABLE things (name TEXT)")
    await connection.execute("INSERT INTO things VALUES ('x')")

    with raw_connection(database) as other:
        assert other.execute("SELECT name FROM things").fetchall() == [("x",)]


async def test_user_connection_stays_open(database: Path) -> None:
    async with aiosqlite.connect(database, isolation_level=None) as connection:
        async with SQLiteDriver(connection) as driver:
            await driver.setup()
            assert driver.target_dependencies()["connection"] is connection

        rows = list(await connection.execute_fetchall("SELECT 1"))

    assert rows == [(1,)]


async def test_user_connection_needs_autocommit(database: Path) -> None:
    async with aiosqlite.connect(database) as connection:
        driver = SQLiteDriver(connection)
        with pytest.raises(ConfigurationError) as raised:
            await driver.open()

    assert "isolation_level=None" in str(raised.value)


# -- corrupt rows ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("state", "HALF_DONE", "HALF_DONE"),
        ("metadata", "{not json", "Expecting property name"),
        ("metadata", "[1, 2]", "JSON object"),
        ("author", None, "'author'"),
        ("lock_epoch", "seven", "'lock_epoch'"),
        ("sequence", None, "'sequence'"),
        ("transactional", 5, "transactional"),
        ("started_at_ms", "soon", "'started_at_ms'"),
    ],
)
async def test_corrupt_row_raises(
    driver: SQLiteDriver, database: Path, column: str, value: object, expected: str
) -> None:
    fence = await hold_lock(driver, "k", "runner-a")
    await driver.append_audit(make_entry("a", epoch=fence.epoch, sequence=1, entry_id="e-1"), fence)
    with raw_connection(database) as connection:
        connection.execute(f'UPDATE flamingock_audit SET "{column}" = ?', (value,))

    with pytest.raises(CorruptAuditEntryError) as from_states:
        await driver.read_states()
    with pytest.raises(CorruptAuditEntryError) as from_history:
        await driver.read_history()

    assert "rowid 1" in str(from_states.value)
    assert "'e-1'" in str(from_states.value)
    assert expected in str(from_states.value)
    assert from_states.value.record_key == "rowid=1"
    assert "rowid 1" in str(from_history.value)


async def test_corrupt_row_not_skipped(driver: SQLiteDriver, database: Path) -> None:
    """A damaged row of one change fails the read even when other rows are fine."""
    fence = await hold_lock(driver, "k", "runner-a")
    await driver.append_audit(make_entry("a", epoch=fence.epoch, sequence=1), fence)
    await driver.append_audit(make_entry("b", epoch=fence.epoch, sequence=2), fence)
    with raw_connection(database) as connection:
        connection.execute("UPDATE flamingock_audit SET state = 'BOGUS' WHERE change_id = 'b'")

    with pytest.raises(CorruptAuditEntryError):
        await driver.read_states()


# -- errors ----------------------------------------------------------------------------------


async def test_locked_database_unavailable(database: Path) -> None:
    async with SQLiteDriver(database, busy_timeout=0.05) as driver:
        await driver.setup()
        with raw_connection(database) as blocker:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(DriverUnavailableError) as raised:
                await driver.insert_lock(LockRecord("k", "runner-a", 1, 1, 1000, 0, 0))
            blocker.execute("ROLLBACK")

    assert "busy_timeout" in str(raised.value)
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


async def test_write_before_setup_names_setup(database: Path) -> None:
    await anyio.Path(database).touch()

    async with SQLiteDriver(database) as driver:
        with pytest.raises(DriverError) as raised:
            await driver.insert_lock(LockRecord("k", "runner-a", 1, 1, 1000, 0, 0))

    assert "setup()" in str(raised.value)


async def test_file_not_a_database(database: Path) -> None:
    await anyio.Path(database).write_text("name,value\n" * 200)

    async with SQLiteDriver(database) as driver:
        with pytest.raises(DriverError) as raised:
            await driver.read_states()

    assert "is not an SQLite database" in str(raised.value)
    assert str(database) in str(raised.value)


async def test_append_duplicate_with_stale_fence(driver: SQLiteDriver) -> None:
    old = await hold_lock(driver, "k", "runner-a")
    entry = make_entry("a", epoch=old.epoch, sequence=1)
    await driver.append_audit(entry, old)
    await hold_lock(driver, "k", "runner-b")

    with pytest.raises(LockLostError) as raised:
        await driver.append_audit(entry, old)

    assert "runner-b" in str(raised.value)


# -- transactions ----------------------------------------------------------------------------


async def test_transaction_handle_is_connection(driver: SQLiteDriver) -> None:
    fence = await hold_lock(driver, "k", "runner-a")
    handles: list[object] = []

    async def body(handle: object) -> None:
        handles.append(handle)

    await driver.run_in_transaction(fence, body, lambda: make_entry("a", epoch=1, sequence=1))

    assert isinstance(handles[0], aiosqlite.Connection)
    assert handles[0] is not driver.target_dependencies()["connection"]


async def test_transaction_rolls_back_ddl(driver: SQLiteDriver, database: Path) -> None:
    fence = await hold_lock(driver, "k", "runner-a")

    async def body(connection: Any) -> None:
        await connection.execute("CREATE TABLE created_in_change (x INTEGER)")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        await driver.run_in_transaction(fence, body, lambda: make_entry("a", epoch=1, sequence=1))

    with raw_connection(database) as connection:
        names = connection.execute("SELECT name FROM sqlite_master").fetchall()
    assert ("created_in_change",) not in names


@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK", "BEGIN"])
async def test_transaction_control_in_body_rejected(
    driver: SQLiteDriver, database: Path, statement: str
) -> None:
    fence = await hold_lock(driver, "k", "runner-a")

    async def body(connection: Any) -> None:
        await connection.execute("CREATE TABLE partial (x INTEGER)")
        await connection.execute(statement)

    with pytest.raises(DriverError) as raised:
        await driver.run_in_transaction(fence, body, lambda: make_entry("a", epoch=1, sequence=1))

    assert statement in str(raised.value)
    assert "transactional=False" in str(raised.value)
    assert await driver.read_history() == []
    with raw_connection(database) as connection:
        names = connection.execute("SELECT name FROM sqlite_master").fetchall()
    assert ("partial",) not in names


async def test_transaction_commit_method_rejected(driver: SQLiteDriver) -> None:
    fence = await hold_lock(driver, "k", "runner-a")

    async def body(connection: Any) -> None:
        await connection.commit()

    with pytest.raises(DriverError) as raised:
        await driver.run_in_transaction(fence, body, lambda: make_entry("a", epoch=1, sequence=1))

    assert "COMMIT" in str(raised.value)


async def test_transaction_executescript_rejected(driver: SQLiteDriver, database: Path) -> None:
    """executescript() commits an open transaction before it runs, so it is rejected."""
    fence = await hold_lock(driver, "k", "runner-a")

    async def body(connection: Any) -> None:
        await connection.execute("CREATE TABLE before_script (x INTEGER)")
        await connection.executescript("CREATE TABLE scripted (x INTEGER);")

    with pytest.raises(DriverError) as raised:
        await driver.run_in_transaction(fence, body, lambda: make_entry("a", epoch=1, sequence=1))

    assert "executescript()" in str(raised.value)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    with raw_connection(database) as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "before_script" not in names
    assert "scripted" not in names


async def test_transaction_savepoint_allowed(driver: SQLiteDriver) -> None:
    fence = await hold_lock(driver, "k", "runner-a")
    entry = make_entry("a", epoch=fence.epoch, sequence=1)

    async def body(connection: Any) -> None:
        await connection.execute("SAVEPOINT inner_step")
        await connection.execute("CREATE TABLE kept (x INTEGER)")
        await connection.execute("RELEASE inner_step")

    await driver.run_in_transaction(fence, body, lambda: entry)

    assert await driver.read_history() == [entry]


async def test_transaction_cancelled_rolls_back(driver: SQLiteDriver, database: Path) -> None:
    fence = await hold_lock(driver, "k", "runner-a")
    started = anyio.Event()

    async def hanging(connection: Any) -> None:
        await connection.execute("CREATE TABLE abandoned (x INTEGER)")
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(
            driver.run_in_transaction, fence, hanging, lambda: make_entry("a", epoch=1, sequence=1)
        )
        await started.wait()
        group.cancel_scope.cancel()

    entry = make_entry("b", epoch=fence.epoch, sequence=2)

    async def quick(connection: Any) -> None:
        await connection.execute("CREATE TABLE finished (x INTEGER)")

    await driver.run_in_transaction(fence, quick, lambda: entry)
    with raw_connection(database) as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "abandoned" not in names
    assert "finished" in names
    assert await driver.read_history() == [entry]


async def test_transaction_blocks_other_writers(database: Path) -> None:
    """While a change's transaction is open, another process cannot write the lock."""
    async with SQLiteDriver(database) as driver:
        await driver.setup()
        fence = await hold_lock(driver, "k", "runner-a")
        outcome: list[str] = []

        async def body(connection: Any) -> None:
            with raw_connection(database) as other:
                other.execute("PRAGMA busy_timeout = 50")
                try:
                    other.execute("UPDATE flamingock_lock SET owner = 'runner-b'")
                except sqlite3.OperationalError as error:
                    outcome.append(str(error))

        await driver.run_in_transaction(fence, body, lambda: make_entry("a", epoch=1, sequence=1))

    assert outcome == ["database is locked"]


# -- several processes -----------------------------------------------------------------------


def run_processes(mode: str, database: Path, count: int, rounds: int = 0) -> list[dict[str, Any]]:
    """Run `count` copies of the process worker in `mode`, started together."""
    commands = [
        [str(WORKER), mode, str(database), str(index), str(rounds)] for index in range(count)
    ]
    return run_together(commands)


@pytest.mark.slow
async def test_processes_race_setup_on_missing_file(database: Path) -> None:
    results = run_processes("setup", database, PROCESSES)

    assert sorted(result["index"] for result in results) == list(range(PROCESSES))
    async with SQLiteDriver(database) as driver:
        states = await driver.read_states()
    assert sorted(entry.change_id for entry in states) == [f"change-{i}" for i in range(PROCESSES)]


@pytest.mark.slow
async def test_processes_race_insert_lock(database: Path) -> None:
    async with SQLiteDriver(database) as driver:
        await driver.setup()

    results = run_processes("insert", database, PROCESSES)

    winners = [result["index"] for result in results if result["inserted"]]
    assert len(winners) == 1
    async with SQLiteDriver(database) as driver:
        stored = await driver.read_lock("shared")
    assert stored is not None
    assert stored.owner == f"runner-{winners[0]}"


@pytest.mark.slow
async def test_processes_hold_lock_one_at_a_time(database: Path) -> None:
    """Eight processes take the lock three times each; a lost counter update shows overlap."""
    rounds = 3
    async with SQLiteDriver(database) as driver:
        await driver.setup()
        connection: Any = driver.target_dependencies()["connection"]
        await connection.execute("CREATE TABLE process_counter (value INTEGER)")
        await connection.execute("INSERT INTO process_counter VALUES (0)")

    results = run_processes("acquire", database, PROCESSES, rounds)

    epochs = [epoch for result in results for epoch in result["epochs"]]
    assert len(epochs) == PROCESSES * rounds
    assert len(set(epochs)) == len(epochs)
    with raw_connection(database) as connection:
        counter = connection.execute("SELECT value FROM process_counter").fetchone()[0]
    assert counter == PROCESSES * rounds
    async with SQLiteDriver(database) as driver:
        history = await driver.read_history()
    assert [entry.lock_epoch for entry in history] == sorted(epochs)


async def test_commit_in_body_rejected_after_driver_commits(
    driver: SQLiteDriver, database: Path
) -> None:
    """The driver's own COMMIT, cached by sqlite3, must not let a change's COMMIT through."""
    fence = await hold_lock(driver, "k", "runner-a")

    async def harmless(connection: Any) -> None:
        await connection.execute("SELECT 1")

    for sequence in (1, 2):
        entry = make_entry(f"ok-{sequence}", epoch=fence.epoch, sequence=sequence)
        await driver.run_in_transaction(fence, harmless, lambda entry=entry: entry)

    async def commits(connection: Any) -> None:
        await connection.execute("CREATE TABLE partial (x INTEGER)")
        await connection.execute("COMMIT")

    with pytest.raises(DriverError) as raised:
        await driver.run_in_transaction(
            fence, commits, lambda: make_entry("bad", epoch=fence.epoch, sequence=3)
        )

    assert "COMMIT" in str(raised.value)
    with raw_connection(database) as connection:
        names = connection.execute("SELECT name FROM sqlite_master").fetchall()
    assert ("partial",) not in names
