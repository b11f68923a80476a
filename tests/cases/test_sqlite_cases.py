"""Failure scenarios reported against other migration tools, replayed on the SQLite store.

Each runner is a separate OS process (tests/cases/child.py) on one database file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from flamingock_async import (
    AsyncRunner,
    AuditState,
    ChangeExecutionError,
    LockSettings,
    PipelineValidationError,
    change_unit,
)
from flamingock_async.drivers.sqlite import SQLiteDriver

CHILD = Path(__file__).with_name("child.py")
ROOT = Path(__file__).parents[2]


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    return {"store": tmp_path / "store.db", "app": tmp_path / "app.db"}


def spawn(paths: dict[str, Path], scenario: str, **env: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "SCENARIO": scenario,
        "APP_DB": str(paths["app"]),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(CHILD), f"sqlite:///{paths['store']}"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    out, err = process.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"child printed no report (exit {process.returncode}): {err}")
    return process.returncode, json.loads(lines[-1])


def applied_log(paths: dict[str, Path]) -> list[str]:
    if not paths["app"].exists():
        return []
    with closing(sqlite3.connect(paths["app"])) as app:
        return [row[0] for row in app.execute("SELECT change_id FROM applied_log")]


def audit_states(paths: dict[str, Path], change_id: str) -> list[str]:
    """Return the states of one change, oldest first; [] before the store is set up."""
    with closing(sqlite3.connect(paths["store"])) as store:
        try:
            rows = store.execute(
                "SELECT state FROM flamingock_audit WHERE change_id = ? "
                "ORDER BY lock_epoch, sequence",
                (change_id,),
            )
            return [row[0] for row in rows]
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise
            return []


def lock_row(paths: dict[str, Path]) -> tuple[Any, ...]:
    with closing(sqlite3.connect(paths["store"])) as store:
        row = store.execute("SELECT owner, epoch FROM flamingock_lock WHERE key = 'cases'")
        return tuple(row.fetchone())


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.mark.slow
def test_ten_processes_on_empty_store_apply_once(paths: dict[str, Path]) -> None:
    """Ten runners start within milliseconds on an empty store with twenty pending changes."""
    start_at = str(time.time() + 2.0)
    processes = [spawn(paths, "many", START_AT=start_at) for _ in range(10)]

    results = [finish(process) for process in processes]

    assert [code for code, _ in results] == [0] * 10
    applied_per_process = sorted(len(report["applied"]) for _, report in results)
    assert sum(applied_per_process) == 20
    log = applied_log(paths)
    assert sorted(log) == sorted(f"change-{i:02d}" for i in range(1, 21))
    assert len(set(log)) == len(log)


@pytest.mark.slow
def test_killed_holder_leads_to_manual_intervention(paths: dict[str, Path]) -> None:
    """A holder killed with SIGKILL mid-change: the next runner takes over and stops."""
    holder = spawn(paths, "long", LEASE="1.5")
    wait_for(lambda: paths["store"].exists() and audit_states(paths, "long-backfill") != [])
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)
    killed_at = time.monotonic()

    code, report = finish(spawn(paths, "long", LEASE="1.5"))

    assert code == 3
    assert report["manual"] == "long-backfill"
    assert "flamingock mark long-backfill" in report["message"]
    # The waiter takes over once it has seen the same lock version for one lease (1.5 s)
    # on its own clock, so the second run takes a few seconds. 10 s allows for a loaded
    # machine and still catches a waiter that waits for its wait_timeout (60 s).
    assert time.monotonic() - killed_at < 10
    assert audit_states(paths, "long-backfill") == ["STARTED"]


@pytest.mark.slow
def test_killed_holder_retried_when_declared(paths: dict[str, Path]) -> None:
    """The same crash with recovery ALWAYS_RETRY: the next runner applies it again."""
    holder = spawn(paths, "long-retry", LEASE="1.5")
    wait_for(lambda: paths["store"].exists() and audit_states(paths, "long-backfill") != [])
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)

    code, report = finish(spawn(paths, "long-retry", LEASE="1.5", CHANGE_SECONDS="0.1"))

    assert code == 0
    assert report["applied"] == ["long-backfill"]
    assert audit_states(paths, "long-backfill") == ["STARTED", "STARTED", "APPLIED"]


@pytest.mark.slow
def test_waiter_does_not_reapply_after_holder(paths: dict[str, Path]) -> None:
    """B finds the change pending, waits for A that applies it, then re-reads and skips."""
    first = spawn(paths, "long", CHANGE_SECONDS="2")
    wait_for(lambda: paths["store"].exists() and audit_states(paths, "long-backfill") != [])
    second = spawn(paths, "long", CHANGE_SECONDS="2")

    results = [finish(first), finish(second)]

    assert [code for code, _ in results] == [0, 0]
    assert results[0][1]["applied"] == ["long-backfill"]
    assert results[1][1]["applied"] == []
    assert applied_log(paths) == ["long-backfill"]


@pytest.mark.slow
def test_impatient_waiter_leaves_holder_lock(paths: dict[str, Path]) -> None:
    """B gives up waiting and exits; A's lock stays in place."""
    holder = spawn(paths, "long", CHANGE_SECONDS="6")
    wait_for(lambda: paths["store"].exists() and audit_states(paths, "long-backfill") != [])
    owner_before = lock_row(paths)

    code, _ = finish(spawn(paths, "long", WAIT_TIMEOUT="0.5"))

    assert code == 4
    assert lock_row(paths) == owner_before
    assert owner_before[0] is not None
    holder.kill()
    holder.communicate(timeout=10)


@pytest.mark.slow
def test_crash_in_transaction_commits_nothing(paths: dict[str, Path]) -> None:
    """A process dies halfway through a transactional change; the next run applies it."""
    crashed = spawn(paths, "tx-crash", CRASH="1")
    crashed.communicate(timeout=60)
    assert crashed.returncode == 9
    with closing(sqlite3.connect(paths["store"])) as store:
        tables = {row[0] for row in store.execute("SELECT name FROM sqlite_master")}
    assert "imported" not in tables
    assert audit_states(paths, "tx-import") == []

    code, report = finish(spawn(paths, "tx-crash"))

    assert code == 0
    assert report["applied"] == ["tx-import"]
    with closing(sqlite3.connect(paths["store"])) as store:
        assert store.execute("SELECT count(*) FROM imported").fetchone()[0] == 100


@pytest.mark.slow
def test_waiter_times_out_during_long_transaction(paths: dict[str, Path]) -> None:
    """A holder inside a long transactional change looks silent to others, because SQLite
    shows its renewals only at commit. A waiter must still stop at its own wait timeout
    with "lock not acquired", not fail on the file's write lock."""
    holder = spawn(paths, "tx-long", LEASE="1", CHANGE_SECONDS="8")
    wait_for(lambda: lock_is_held(paths))
    started = time.monotonic()

    code, report = finish(spawn(paths, "tx-long", LEASE="1", WAIT_TIMEOUT="3"))

    assert code == 4
    assert "Could not acquire the lock" in report["lock"]
    assert time.monotonic() - started < 8
    holder_code, holder_report = finish(holder)
    assert holder_code == 0
    assert holder_report["applied"] == ["tx-long"]
    assert applied_log(paths) == ["tx-long"]


def lock_is_held(paths: dict[str, Path]) -> bool:
    if not paths["store"].exists():
        return False
    try:
        return lock_row(paths)[0] is not None
    except (sqlite3.OperationalError, TypeError):
        return False


# -- in-process cases on a real SQLite file ------------------------------------------------


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


QUICK_LOCK = LockSettings(key="cases", lease=2, wait_timeout=5, poll_interval=0.05)


@change_unit(id="orders-total", order="0001", author="cases", transactional=False)
class FailsThenRollsBack:
    fail = True

    async def execute(self, connection: Any) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS totals (n INTEGER)")
        await connection.execute("INSERT INTO totals VALUES (1)")
        if FailsThenRollsBack.fail:
            raise RuntimeError("upstream timed out")

    async def rollback(self, connection: Any) -> None:
        await connection.execute("DROP TABLE IF EXISTS totals")


async def test_rolled_back_change_applies_on_restart(store_url: str) -> None:
    FailsThenRollsBack.fail = True
    with pytest.raises(ChangeExecutionError):
        await AsyncRunner(store_url, [FailsThenRollsBack], lock=QUICK_LOCK).run()
    FailsThenRollsBack.fail = False

    report = await AsyncRunner(store_url, [FailsThenRollsBack], lock=QUICK_LOCK).run()

    assert report.applied == ("orders-total",)
    history = await AsyncRunner(store_url, [FailsThenRollsBack]).history("orders-total")
    assert [entry.state for entry in history] == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
        AuditState.STARTED,
        AuditState.APPLIED,
    ]


@change_unit(id="prices", order="0001", author="cases", transactional=False)
class RollbackFails:
    async def execute(self) -> None:
        raise ValueError("bad price")

    async def rollback(self) -> None:
        raise RuntimeError("cannot undo")


async def test_failing_rollback_then_manual_intervention(store_url: str) -> None:
    with pytest.raises(ChangeExecutionError) as raised:
        await AsyncRunner(store_url, [RollbackFails], lock=QUICK_LOCK).run()

    assert isinstance(raised.value.__cause__, ValueError)
    assert isinstance(raised.value.rollback_error, RuntimeError)
    history = await AsyncRunner(store_url, [RollbackFails]).history("prices")
    assert [e.state for e in history] == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLBACK_FAILED,
    ]


@change_unit(id="tx-fail", order="0001", author="cases")
class TransactionalFails:
    async def execute(self, connection: Any) -> None:
        await connection.execute("CREATE TABLE half (n INTEGER)")
        raise RuntimeError("constraint violated")


async def test_transactional_failure_aborts_and_raises(store_url: str) -> None:
    with pytest.raises(ChangeExecutionError):
        await AsyncRunner(store_url, [TransactionalFails], lock=QUICK_LOCK).run()

    driver = SQLiteDriver(store_url.removeprefix("sqlite:///"))
    async with driver:
        states = await driver.read_states()
    assert [(s.change_id, s.state, s.transactional) for s in states] == [
        ("tx-fail", AuditState.FAILED, True)
    ]
    with closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as store:
        tables = {row[0] for row in store.execute("SELECT name FROM sqlite_master")}
    assert "half" not in tables


@change_unit(id="dup", order="0001", author="alice")
class DuplicateA:
    async def execute(self) -> None: ...


@change_unit(id="dup", order="0002", author="bob")
class DuplicateB:
    async def execute(self) -> None: ...


async def test_duplicate_ids_rejected_before_store_touched(tmp_path: Path) -> None:
    store = tmp_path / "untouched.db"

    with pytest.raises(PipelineValidationError) as raised:
        await AsyncRunner(f"sqlite:///{store}", [DuplicateA, DuplicateB]).run()

    assert "DuplicateA" in str(raised.value)
    assert "DuplicateB" in str(raised.value)
    assert not store.exists()
