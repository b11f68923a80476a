"""AsyncRunner on the SQLite driver: transactional changes, a long change, several processes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from flamingock_async import (
    AsyncRunner,
    AuditState,
    ChangeExecutionError,
    LockSettings,
    PipelineValidationError,
    change_unit,
)
from flamingock_async.drivers.sqlite import SQLiteDriver, from_url

from .processes import run_together
from .runner_changes import CHANGE_COUNT, CHANGES

WORKER = Path(__file__).with_name("runner_worker.py")
PROCESSES = 8


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def driver(database: Path) -> AsyncIterator[SQLiteDriver]:
    async with SQLiteDriver(database) as opened:
        yield opened


def applied_rows(database: Path) -> list[str]:
    with closing(sqlite3.connect(database)) as connection:
        try:
            rows = connection.execute("SELECT change_id FROM applied ORDER BY rowid").fetchall()
        except sqlite3.OperationalError:
            return []
    return [row[0] for row in rows]


@change_unit(id="flaky-insert", order="0001", author="tests", transactional=True)
class FlakyInsert:
    fail: ClassVar[bool] = True

    async def execute(self, connection: Any) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS applied (change_id TEXT)")
        await connection.execute("INSERT INTO applied VALUES ('flaky-insert')")
        if FlakyInsert.fail:
            raise RuntimeError("the change failed after its first insert")


@change_unit(id="slow-transaction", order="0001", author="tests", transactional=True)
class SlowTransaction:
    async def execute(self, connection: Any) -> None:
        await connection.execute("CREATE TABLE applied (change_id TEXT)")
        await anyio.sleep(1.5)
        await connection.execute("INSERT INTO applied VALUES ('slow-transaction')")


async def test_runner_applies_changes_once(driver: SQLiteDriver, database: Path) -> None:
    first = await AsyncRunner(driver, CHANGES, manifest_cache=False).run()
    second = await AsyncRunner(driver, CHANGES, manifest_cache=False).run()

    assert len(first.applied) == CHANGE_COUNT
    assert second.applied == ()
    assert sorted(applied_rows(database)) == [f"change-{i:02d}" for i in range(CHANGE_COUNT)]


async def test_memory_database_runs_changes() -> None:
    async with from_url("sqlite:///:memory:") as driver:
        report = await AsyncRunner(driver, CHANGES, manifest_cache=False).run()
        connection: Any = driver.target_dependencies()["connection"]
        rows = list(await connection.execute_fetchall("SELECT count(*) FROM applied"))

    assert len(report.applied) == CHANGE_COUNT
    assert rows[0][0] == CHANGE_COUNT


async def test_failed_transaction_commits_nothing(
    driver: SQLiteDriver, database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FlakyInsert, "fail", True)

    with pytest.raises(ChangeExecutionError):
        await AsyncRunner(driver, [FlakyInsert], manifest_cache=False).run()

    assert applied_rows(database) == []
    states = await driver.read_states()
    assert [entry.state for entry in states] == [AuditState.FAILED]


async def test_failed_transaction_retried_next_run(
    driver: SQLiteDriver, database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FlakyInsert, "fail", True)
    with pytest.raises(ChangeExecutionError):
        await AsyncRunner(driver, [FlakyInsert], manifest_cache=False).run()
    monkeypatch.setattr(FlakyInsert, "fail", False)

    report = await AsyncRunner(driver, [FlakyInsert], manifest_cache=False).run()

    assert report.applied == ("flaky-insert",)
    assert applied_rows(database) == ["flaky-insert"]


async def test_long_transaction_keeps_lease(database: Path) -> None:
    """A transactional change longer than the lease keeps the lock: renewals join its
    transaction instead of waiting for the write lock it holds."""
    settings = LockSettings(lease=0.9, wait_timeout=5.0, poll_interval=0.05)
    async with SQLiteDriver(database, busy_timeout=0.2) as driver:
        runner = AsyncRunner(driver, [SlowTransaction], lock=settings, manifest_cache=False)

        report = await runner.run()
        lock = await driver.read_lock(settings.key)

    assert report.applied == ("slow-transaction",)
    assert applied_rows(database) == ["slow-transaction"]
    assert lock is not None
    assert lock.is_free


@pytest.mark.slow
async def test_processes_apply_each_change_once(database: Path) -> None:
    """Eight runner processes start together on a missing database file with 20 changes."""
    reports = run_together([[str(WORKER), str(database)] for _ in range(PROCESSES)])

    applied = [change_id for report in reports for change_id in report["applied"]]
    expected = [f"change-{index:02d}" for index in range(CHANGE_COUNT)]
    assert sorted(applied) == expected
    assert sorted(applied_rows(database)) == expected
    async with SQLiteDriver(database) as driver:
        states = await driver.read_states()
    assert all(entry.state is AuditState.APPLIED for entry in states)
    assert len(states) == CHANGE_COUNT


@change_unit(id="second-connection", order="0001", author="tests")
class WritesThroughDb:
    async def execute(self, db: Any) -> None:
        # A write would wait for the transaction's own write lock until busy_timeout.
        await db.execute("SELECT 1")


async def test_db_in_transactional_change_warned(
    driver: SQLiteDriver, caplog: pytest.LogCaptureFixture
) -> None:
    """`db` is the autocommit connection, so its writes are outside the change's transaction."""
    with caplog.at_level("WARNING", logger="flamingock_async"):
        await AsyncRunner(driver, [WritesThroughDb], manifest_cache=False).run()

    messages = [r.getMessage() for r in caplog.records if "transaction handle" in r.getMessage()]
    assert len(messages) == 1
    assert (
        "receives db and not its transaction handle (connection, conn, transaction)"
        in (messages[0])
    )


async def test_rollback_past_template_names_field(driver: SQLiteDriver, tmp_path: Path) -> None:
    """A sql change without `rollback:` blocks a rollback, and the advice names that field."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "stages:\n"
        "  - name: main\n"
        "    changes:\n"
        "      - {template: sql, id: make-t, order: '1', author: tests,\n"
        "         apply: 'CREATE TABLE t (id INTEGER)', rollback: 'DROP TABLE t'}\n"
        "      - {template: sql, id: fill-t, order: '2', author: tests,\n"
        "         apply: 'INSERT INTO t VALUES (1)'}\n"
    )
    await AsyncRunner(driver, pipeline, manifest_cache=False).run()

    with pytest.raises(PipelineValidationError) as raised:
        await AsyncRunner(driver, pipeline, manifest_cache=False).rollback(to="make-t")

    message = str(raised.value)
    assert "add a 'rollback:' entry to it in the pipeline file" in message
    assert f"({pipeline}#fill-t)" in message
