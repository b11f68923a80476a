"""The runner on DynamoDB: racing OS processes, transactional failure, a killed runner."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.client import AioBaseClient

from flamingock_async import (
    AsyncRunner,
    AuditState,
    ChangeExecutionError,
    LockSettings,
    ManualInterventionRequiredError,
    change_unit,
)
from flamingock_async.drivers.dynamodb import DynamoDriver, DynamoTransaction

from .conftest import REGION

WORKER = Path(__file__).with_name("runner_worker.py")
RUNNERS = 8


def store_url(endpoint: str) -> str:
    return f"dynamodb://flamingock_audit?region={REGION}&endpoint_url={endpoint}"


def spawn(mode: str, url: str, output: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), mode, url, str(output)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = process.stdout.readline().strip()
    assert ready == "ready", ready
    return process


def start(processes: Sequence[subprocess.Popen[str]]) -> None:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def result_of(process: subprocess.Popen[str]) -> dict[str, Any]:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def applications(output: Path) -> collections.Counter[str]:
    if not output.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in output.read_text().splitlines())


async def target_counts(driver: DynamoDriver) -> dict[str, int]:
    response = await driver.client.scan(TableName="target", ConsistentRead=True)
    return {item["id"]["S"]: int(item["count"]["N"]) for item in response["Items"]}


@pytest.mark.slow
async def test_racing_processes_apply_once(endpoint: str, tmp_path: Path) -> None:
    """Eight runner processes start together on empty tables with twenty pending changes."""
    output = tmp_path / "applied.txt"
    processes = [spawn("pipeline", store_url(endpoint), output) for _ in range(RUNNERS)]
    start(processes)
    results = [result_of(process) for process in processes]

    expected = {f"change-{number:02d}" for number in range(1, 21)}
    counted = applications(output)
    assert set(counted) == expected
    assert all(count == 1 for count in counted.values()), counted
    assert all("error" not in result for result in results), results
    assert sum(len(result["applied"]) for result in results) == 20
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        history = await driver.read_history()
        counts = await target_counts(driver)
        states = await driver.read_states()
    applied = collections.Counter(e.change_id for e in history if e.state is AuditState.APPLIED)
    assert set(applied) == expected
    assert all(count == 1 for count in applied.values()), applied
    assert counts == {f"change-{number:02d}": 1 for number in range(2, 21)}
    assert {state.change_id: state.state for state in states} == dict.fromkeys(
        expected, AuditState.APPLIED
    )


@change_unit(id="fill-users", order="0001", author="tests", transactional=True)
class FailingFill:
    async def execute(self, tx: DynamoTransaction) -> None:
        for number in range(5):
            tx.put("users", {"id": f"u{number}"})
        raise RuntimeError("the change failed after collecting its writes")


@change_unit(id="fill-users", order="0001", author="tests", transactional=True)
class FixedFill:
    async def execute(self, transaction: DynamoTransaction) -> None:
        for number in range(5):
            transaction.put("users", {"id": f"u{number}"})


async def create_users(driver: DynamoDriver) -> None:
    await driver.client.create_table(
        TableName="users",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


async def user_ids(driver: DynamoDriver) -> list[str]:
    response = await driver.client.scan(TableName="users", ConsistentRead=True)
    return sorted(item["id"]["S"] for item in response["Items"])


async def test_failed_transaction_leaves_nothing(endpoint: str) -> None:
    """A transactional change that fails commits nothing; the next run applies it again."""
    lock = LockSettings(lease=5.0, wait_timeout=10.0, poll_interval=0.05)
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        await create_users(driver)
        failing = AsyncRunner(driver, [FailingFill], lock=lock, manifest_cache=False)
        with pytest.raises(ChangeExecutionError) as caught:
            await failing.run()
        assert caught.value.change_id == "fill-users"
        assert await user_ids(driver) == []
        first_states = await driver.read_states()
        assert [state.state for state in first_states] == [AuditState.FAILED]

        fixed = AsyncRunner(driver, [FixedFill], lock=lock, manifest_cache=False)
        report = await fixed.run()
        assert list(report.applied) == ["fill-users"]
        assert await user_ids(driver) == ["u0", "u1", "u2", "u3", "u4"]
        history = await driver.read_history("fill-users")
    assert [entry.state for entry in history] == [AuditState.FAILED, AuditState.APPLIED]


async def test_transaction_limit_fails_run(endpoint: str) -> None:
    """A change that collects 250 writes fails the run before anything is sent."""

    @change_unit(id="too-big", order="0001", author="tests", transactional=True)
    class TooBig:
        async def execute(self, tx: DynamoTransaction) -> None:
            for number in range(250):
                tx.put("users", {"id": f"u{number}"})

    lock = LockSettings(lease=5.0, wait_timeout=10.0, poll_interval=0.05)
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        await create_users(driver)
        runner = AsyncRunner(driver, [TooBig], lock=lock, manifest_cache=False)
        with pytest.raises(ChangeExecutionError) as caught:
            await runner.run()
        assert "253 actions" in str(caught.value)
        assert await user_ids(driver) == []


def wait_for_line(output: Path, change_id: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while change_id not in applications(output):
        assert process.poll() is None, "the runner exited before its change started"
        assert time.monotonic() < deadline, "the change never started"
        time.sleep(0.05)


@pytest.mark.slow
async def test_killed_runner_needs_manual_intervention(endpoint: str, tmp_path: Path) -> None:
    """A runner killed mid-change leaves it STARTED; the next one takes over and stops."""
    output = tmp_path / "applied.txt"
    url = store_url(endpoint)
    first = spawn("slow", url, output)
    start([first])
    wait_for_line(output, "slow-change", first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    second = spawn("slow", url, output)
    start([second])
    result = result_of(second)

    assert result["error"] == "ManualInterventionRequiredError"
    assert result["change_id"] == "slow-change"
    assert "flamingock mark slow-change" in result["message"]
    assert applications(output)["slow-change"] == 1
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        lock = await driver.read_lock("flamingock")
        history = await driver.read_history("slow-change")
    assert [entry.state for entry in history] == [AuditState.STARTED]
    assert lock is not None
    assert lock.owner is None
    assert lock.epoch == 2


ATTEMPTS: list[str] = []


@change_unit(id="flaky", order="0001", author="tests", transactional=False)
class FlakyWithRollback:
    async def execute(self, dynamodb: Any) -> None:
        ATTEMPTS.append("execute")
        await dynamodb.put_item(TableName="users", Item={"id": {"S": "half"}})
        raise RuntimeError("failed halfway")

    async def rollback(self, dynamodb: Any) -> None:
        ATTEMPTS.append("rollback")
        await dynamodb.delete_item(TableName="users", Key={"id": {"S": "half"}})


@change_unit(id="flaky", order="0001", author="tests", transactional=False)
class FlakyFixed:
    async def execute(self, dynamodb: Any) -> None:
        ATTEMPTS.append("execute")
        await dynamodb.put_item(TableName="users", Item={"id": {"S": "whole"}})


async def test_rolled_back_change_applied_next_run(endpoint: str) -> None:
    """A failed change whose rollback succeeded is ROLLED_BACK and applied by the next run."""
    ATTEMPTS.clear()
    lock = LockSettings(lease=5.0, wait_timeout=10.0, poll_interval=0.05)
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        await create_users(driver)
        with pytest.raises(ChangeExecutionError):
            await AsyncRunner(driver, [FlakyWithRollback], lock=lock, manifest_cache=False).run()
        assert await user_ids(driver) == []
        report = await AsyncRunner(driver, [FlakyFixed], lock=lock, manifest_cache=False).run()
        history = await driver.read_history("flaky")
        assert await user_ids(driver) == ["whole"]
    assert list(report.applied) == ["flaky"]
    assert ATTEMPTS == ["execute", "rollback", "execute"]
    assert [entry.state for entry in history] == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
        AuditState.STARTED,
        AuditState.APPLIED,
    ]


@change_unit(id="import-plans", order="0001", author="tests", transactional=False)
class BrokenRollback:
    async def execute(self) -> None:
        ATTEMPTS.append("execute")
        raise RuntimeError("the import file is truncated")

    async def rollback(self) -> None:
        ATTEMPTS.append("rollback")
        raise OSError("the backup is missing")


async def test_failed_rollback_blocks_next_run(endpoint: str) -> None:
    """The rollback's error is attached to the change's error, and the next run stops."""
    ATTEMPTS.clear()
    lock = LockSettings(lease=5.0, wait_timeout=10.0, poll_interval=0.05)
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        with pytest.raises(ChangeExecutionError) as raised:
            await AsyncRunner(driver, [BrokenRollback], lock=lock, manifest_cache=False).run()
        history = await driver.read_history("import-plans")
        with pytest.raises(ManualInterventionRequiredError, match="import-plans") as blocked:
            await AsyncRunner(driver, [BrokenRollback], lock=lock, manifest_cache=False).run()

    assert raised.value.change_id == "import-plans"
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert "the import file is truncated" in str(raised.value)
    assert isinstance(raised.value.rollback_error, OSError)
    assert [entry.state for entry in history] == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLBACK_FAILED,
    ]
    assert blocked.value.change_id == "import-plans"
    assert blocked.value.state == "ROLLBACK_FAILED"
    assert ATTEMPTS == ["execute", "rollback"]


async def test_client_injected_by_type(endpoint: str) -> None:
    seen: list[object] = []

    @change_unit(id="typed", order="0001", author="tests", transactional=False)
    class Typed:
        async def execute(self, client: AioBaseClient) -> None:
            seen.append(client)

    lock = LockSettings(lease=5.0, wait_timeout=10.0, poll_interval=0.05)
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        await AsyncRunner(driver, [Typed], lock=lock, manifest_cache=False).run()
        assert seen == [driver.client]
