"""AsyncRunner on MongoDriver: exactly once across processes, failures, standalone servers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from flamingock_async import (
    AsyncRunner,
    AuditState,
    ChangeExecutionError,
    LockSettings,
    ManualInterventionRequiredError,
    PipelineValidationError,
    change_unit,
)
from flamingock_async.drivers.mongodb import MongoDriver

from .conftest import MongoServer
from .processes.race_changes import SlowChange

PROCESS_SCRIPT = Path(__file__).parent / "processes" / "runner_process.py"
FAST_LOCK = LockSettings(lease=2.0, wait_timeout=30.0, poll_interval=0.1)


@change_unit(id="create-accounts", order="0001", author="tests", transactional=True)
class CreateAccounts:
    async def execute(self, db: AsyncDatabase[Any], session: AsyncClientSession) -> None:
        await db["accounts"].insert_many([{"_id": "alice"}, {"_id": "bob"}], session=session)


@change_unit(id="add-emails", order="0002", author="tests", transactional=True)
class AddEmailsThenFail:
    async def execute(self, db: AsyncDatabase[Any], session: AsyncClientSession) -> None:
        await db["accounts"].update_many({}, {"$set": {"email": "x@example.com"}}, session=session)
        await db["emails"].insert_one({"_id": "alice"}, session=session)
        raise RuntimeError("the mail service is down")


@change_unit(id="add-emails", order="0002", author="tests", transactional=True)
class AddEmails:
    async def execute(self, db: AsyncDatabase[Any], session: AsyncClientSession) -> None:
        await db["accounts"].update_many({}, {"$set": {"email": "x@example.com"}}, session=session)


@change_unit(id="seed-plans", order="0003", author="tests", transactional=False)
class SeedPlans:
    async def execute(self, db: AsyncDatabase[Any]) -> None:
        await db["plans"].insert_one({"_id": "free"})


def runner_for(driver: MongoDriver, changes: list[type]) -> AsyncRunner:
    return AsyncRunner(driver, changes, lock=FAST_LOCK, manifest_cache=False)


async def test_applies_each_change_once(driver: MongoDriver, raw_database: Any) -> None:
    changes = [CreateAccounts, AddEmails, SeedPlans]
    first = await runner_for(driver, changes).run()
    second = await runner_for(driver, changes).run()
    assert first.applied == ("create-accounts", "add-emails", "seed-plans")
    assert second.applied == ()
    assert await raw_database["accounts"].count_documents({"email": "x@example.com"}) == 2
    assert await raw_database["plans"].count_documents({}) == 1


async def test_failed_transaction_leaves_nothing(driver: MongoDriver, raw_database: Any) -> None:
    """A transactional change that raises halfway commits none of its writes."""
    await raw_database.create_collection("emails")
    await runner_for(driver, [CreateAccounts]).run()
    with pytest.raises(ChangeExecutionError) as caught:
        await runner_for(driver, [CreateAccounts, AddEmailsThenFail]).run()
    assert caught.value.change_id == "add-emails"
    assert await raw_database["accounts"].count_documents({"email": {"$exists": True}}) == 0
    assert await raw_database["emails"].count_documents({}) == 0
    states = {entry.change_id: entry.state for entry in await driver.read_states()}
    assert states["add-emails"] is AuditState.FAILED


async def test_failed_transaction_applied_next_run(driver: MongoDriver, raw_database: Any) -> None:
    await raw_database.create_collection("emails")
    with pytest.raises(ChangeExecutionError):
        await runner_for(driver, [CreateAccounts, AddEmailsThenFail]).run()
    report = await runner_for(driver, [CreateAccounts, AddEmails]).run()
    assert report.applied == ("add-emails",)
    assert await raw_database["accounts"].count_documents({"email": "x@example.com"}) == 2
    history = [entry.state for entry in await driver.read_history("add-emails")]
    assert history == [AuditState.FAILED, AuditState.APPLIED]


@change_unit(id="import-plans", order="0004", author="tests", transactional=False)
class ImportPlansRollbackFails:
    async def execute(self, db: AsyncDatabase[Any]) -> None:
        await db["plans"].insert_one({"_id": "imported"})
        raise ValueError("the import file is truncated")

    async def rollback(self, db: AsyncDatabase[Any]) -> None:
        raise OSError("the backup is missing")


@change_unit(id="import-plans", order="0004", author="tests", transactional=False)
class ImportPlansRollbackWorks:
    async def execute(self, db: AsyncDatabase[Any]) -> None:
        await db["plans"].insert_one({"_id": "imported"})
        raise ValueError("the import file is truncated")

    async def rollback(self, db: AsyncDatabase[Any]) -> None:
        await db["plans"].delete_one({"_id": "imported"})


@change_unit(id="import-plans", order="0004", author="tests", transactional=False)
class ImportPlans:
    async def execute(self, db: AsyncDatabase[Any]) -> None:
        await db["plans"].insert_one({"_id": "imported"})


@change_unit(id="create-accounts", order="0009", author="someone-else", transactional=False)
class CreateAccountsAgain:
    async def execute(self, db: AsyncDatabase[Any]) -> None:
        return None


async def test_failed_rollback_needs_intervention(driver: MongoDriver) -> None:
    """A failing rollback is attached to the change's error and blocks the next run."""
    with pytest.raises(ChangeExecutionError) as caught:
        await runner_for(driver, [ImportPlansRollbackFails]).run()
    assert isinstance(caught.value.__cause__, ValueError)
    assert isinstance(caught.value.rollback_error, OSError)
    history = [entry.state for entry in await driver.read_history("import-plans")]
    assert history == [AuditState.STARTED, AuditState.FAILED, AuditState.ROLLBACK_FAILED]
    with pytest.raises(ManualInterventionRequiredError, match="import-plans"):
        await runner_for(driver, [ImportPlans]).run()


async def test_rolled_back_change_reapplied(driver: MongoDriver, raw_database: Any) -> None:
    """After a failure whose rollback worked, the next run applies the change again."""
    with pytest.raises(ChangeExecutionError):
        await runner_for(driver, [ImportPlansRollbackWorks]).run()
    assert await raw_database["plans"].count_documents({}) == 0
    report = await runner_for(driver, [ImportPlans]).run()
    assert report.applied == ("import-plans",)
    history = [entry.state for entry in await driver.read_history("import-plans")]
    assert history == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
        AuditState.STARTED,
        AuditState.APPLIED,
    ]


async def test_duplicate_ids_touch_nothing(
    make_driver: Callable[..., MongoDriver], raw_database: Any
) -> None:
    """Two changes with one id fail validation before the database is written."""
    driver = make_driver()
    with pytest.raises(PipelineValidationError) as caught:
        await runner_for(driver, [CreateAccounts, CreateAccountsAgain]).run()
    assert "CreateAccounts" in str(caught.value)
    assert "CreateAccountsAgain" in str(caught.value)
    assert await raw_database.list_collection_names() == []


class CommandRecorder(monitoring.CommandListener):
    """Records every command sent, to prove what the driver never sends."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@change_unit(id="create-accounts", order="0001", author="tests", transactional=True)
class CreateAccountsAnywhere:
    async def execute(self, db: AsyncDatabase[Any]) -> None:
        await db["accounts"].insert_many([{"_id": "alice"}, {"_id": "bob"}])


async def test_standalone_never_opens_transaction(
    mongo_server: MongoServer, database_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With transactions off, no command starts a transaction, setup included."""
    recorder = CommandRecorder()
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_server.uri, event_listeners=[recorder])
    driver = MongoDriver(client, database_name, transactions=False)
    caplog.set_level(logging.INFO, logger="flamingock_async")
    try:
        report = await runner_for(driver, [CreateAccountsAnywhere, SeedPlans]).run()
        await runner_for(driver, [CreateAccountsAnywhere, SeedPlans]).run()
    finally:
        await driver.aclose()
        await client.close()
    assert report.applied == ("create-accounts", "seed-plans")
    assert [command for command in recorder.commands if "startTransaction" in command] == []
    assert [command for command in recorder.commands if "autocommit" in command] == []
    assert [command for command in recorder.commands if "commitTransaction" in command] == []
    warnings = [record for record in caplog.records if "without a transaction" in record.message]
    assert len(warnings) == 1


async def test_standalone_writes_started_first(make_driver: Callable[..., MongoDriver]) -> None:
    driver = make_driver(transactions=False)
    await runner_for(driver, [CreateAccountsAnywhere]).run()
    history = [entry.state for entry in await driver.read_history("create-accounts")]
    assert history == [AuditState.STARTED, AuditState.APPLIED]


def start_runner(pipeline: str, server: MongoServer, database: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROCESS_SCRIPT), pipeline, server.uri, database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str], expected: str) -> None:
    if process.stdout is None or process.stderr is None:
        raise RuntimeError("the runner process has no output pipes")
    line = process.stdout.readline()
    if line.strip() != expected:
        raise RuntimeError(
            f"expected {expected!r} from the runner, got {line!r}: {process.stderr.read()!r}"
        )


def stop(process: subprocess.Popen[str]) -> None:
    """Kill `process` if it still runs, then close its pipes."""
    if process.poll() is None:
        process.kill()
    process.communicate()


def start_together(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        read_line(process, "ready")
    for process in processes:
        if process.stdin is None:
            raise RuntimeError("the runner process has no stdin pipe")
        process.stdin.write("go\n")
        process.stdin.flush()


@pytest.mark.slow
async def test_ten_processes_apply_once(
    mongo_server: MongoServer, database_name: str, raw_database: Any
) -> None:
    """Ten runner processes start together on an empty database with twenty changes."""
    processes = [start_runner("race", mongo_server, database_name) for _ in range(10)]
    try:
        start_together(processes)
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            stop(process)
    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [process.returncode for process in processes] == [0] * 10, outputs
    assert len({process.pid for process in processes}) == 10
    applied = [change for report in reports for change in report["applied"]]
    assert sorted(applied) == [f"race-{index:02d}" for index in range(1, 21)]
    effects = raw_database["effects"].aggregate(
        [{"$group": {"_id": "$change", "count": {"$sum": 1}}}]
    )
    counts = {group["_id"]: group["count"] async for group in await effects}
    assert counts == {f"race-{index:02d}": 1 for index in range(1, 21)}


@pytest.mark.slow
async def test_killed_runner_needs_manual_intervention(
    mongo_server: MongoServer, database_name: str, raw_database: Any
) -> None:
    """A runner killed mid-change leaves it STARTED; the next runner stops and names it."""
    process = start_runner("slow", mongo_server, database_name)
    try:
        start_together([process])
        read_line(process, "started")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)
    driver = MongoDriver(mongo_server.uri, database_name, transactions=False)
    try:
        with pytest.raises(ManualInterventionRequiredError, match="slow-import") as caught:
            await runner_for(driver, [SlowChange]).run()
    finally:
        await driver.aclose()
    assert caught.value.change_id == "slow-import"
    assert caught.value.state == "STARTED"
    assert await raw_database["effects"].count_documents({}) == 1
