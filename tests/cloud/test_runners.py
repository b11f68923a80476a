"""Runner processes against the backend: exactly once, takeover after a crash, recovery.

Each runner is its own OS process with its own cloud driver, started together on a signal.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flamingock_async import AuditState

from .conftest import Backend, Service, cloud_driver

WORKER = Path(__file__).with_name("runner_worker.py")


def store_url(backend: Backend, service: Service) -> str:
    return f"{backend.url}?environment={service.environment}&service={service.name}"


def spawn(mode: str, url: str, service: Service, output: Path) -> subprocess.Popen[str]:
    environ = {**os.environ, "FLAMINGOCK_API_TOKEN": service.token}
    process = subprocess.Popen(
        [sys.executable, str(WORKER), mode, url, str(output)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environ,
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


async def applied_entries(backend: Backend, service: Service) -> collections.Counter[str]:
    driver = cloud_driver(backend.url, service)
    try:
        history = await driver.read_history()
    finally:
        await driver.aclose()
    return collections.Counter(e.change_id for e in history if e.state is AuditState.APPLIED)


@pytest.mark.slow
async def test_runners_across_two_backends_apply_once(
    backend: Backend, second_backend: Backend, service: Service, tmp_path: Path
) -> None:
    """Ten runner processes, half on each backend process, start together on a new service."""
    output = tmp_path / "applied.txt"
    urls = [store_url(backend, service), store_url(second_backend, service)]
    processes = [spawn("pipeline", urls[index % 2], service, output) for index in range(10)]
    start(processes)
    results = [result_of(process) for process in processes]

    expected = {f"change-{number:02d}" for number in range(1, 21)}
    counted = applications(output)
    assert set(counted) == expected
    assert all(count == 1 for count in counted.values()), counted
    assert all("error" not in result for result in results), results
    assert sum(len(result["applied"]) for result in results) == 20
    audited = await applied_entries(backend, service)
    assert set(audited) == expected
    assert all(count == 1 for count in audited.values()), audited


def wait_for_line(output: Path, change_id: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while change_id not in applications(output):
        assert process.poll() is None, "the runner exited before its change started"
        assert time.monotonic() < deadline, "the change never started"
        time.sleep(0.05)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)


@pytest.mark.slow
async def test_killed_runner_needs_manual_intervention(
    backend: Backend, service: Service, tmp_path: Path
) -> None:
    """A runner killed mid-change leaves it STARTED; the next one takes over and stops."""
    output = tmp_path / "applied.txt"
    url = store_url(backend, service)
    first = spawn("slow", url, service, output)
    start([first])
    wait_for_line(output, "slow-change", first)
    kill(first)
    assert first.returncode == -signal.SIGKILL

    second = spawn("slow", url, service, output)
    start([second])
    result = result_of(second)

    assert result["error"] == "ManualInterventionRequiredError"
    assert result["change_id"] == "slow-change"
    assert "flamingock mark slow-change" in result["message"]
    assert applications(output)["slow-change"] == 1
    driver = cloud_driver(backend.url, service)
    lock = await driver.read_lock("flamingock")
    history = await driver.read_history("slow-change")
    await driver.aclose()
    assert [entry.state for entry in history] == [AuditState.STARTED]
    assert lock is not None
    assert lock.owner is None
    assert lock.epoch == 2


@pytest.mark.slow
async def test_killed_runner_always_retry_applies(
    backend: Backend, service: Service, tmp_path: Path
) -> None:
    """After the crash, a change declared ALWAYS_RETRY is applied by the next runner."""
    output = tmp_path / "applied.txt"
    url = store_url(backend, service)
    first = spawn("slow", url, service, output)
    start([first])
    wait_for_line(output, "slow-change", first)
    kill(first)

    second = spawn("retry", url, service, output)
    start([second])
    result = result_of(second)

    assert result.get("error") is None, result
    assert result["applied"] == ["slow-change"]
    assert applications(output)["slow-change"] == 2
    audited = await applied_entries(backend, service)
    assert audited["slow-change"] == 1


@pytest.mark.slow
async def test_impatient_runner_keeps_holder_lock(
    backend: Backend, service: Service, tmp_path: Path
) -> None:
    """A runner process that gives up waiting leaves the lock of the process holding it."""
    output = tmp_path / "applied.txt"
    url = store_url(backend, service)
    holder = spawn("slow", url, service, output)
    start([holder])
    wait_for_line(output, "slow-change", holder)
    driver = cloud_driver(backend.url, service)
    before = await driver.read_lock("flamingock")

    impatient = spawn("impatient", url, service, output)
    start([impatient])
    result = result_of(impatient)
    after = await driver.read_lock("flamingock")
    kill(holder)
    await driver.aclose()

    assert result["error"] == "LockNotAcquiredError"
    assert before is not None
    assert after is not None
    assert after.owner == before.owner
    assert after.epoch == before.epoch
    assert applications(output)["slow-change"] == 1
