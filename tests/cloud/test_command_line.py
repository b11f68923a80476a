"""The `flamingock` command against the backend, as an operator would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from flamingock_async import AuditState, LockSettings
from flamingock_async._lock import LockManager

from .conftest import Backend, Service, cloud_driver
from .test_execution import audit


def flamingock(service: Service, *arguments: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "FLAMINGOCK_API_TOKEN": service.token}
    environ.pop("FLAMINGOCK_STORE", None)
    return subprocess.run(
        [sys.executable, "-m", "flamingock_async.cli", *arguments],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def store(backend: Backend, service: Service) -> str:
    return f"{backend.url}?environment={service.environment}&service={service.name}"


async def test_history_through_backend(backend: Backend, service: Service) -> None:
    driver = cloud_driver(backend.url, service)
    manager = LockManager(driver, LockSettings(lease=5))
    fence = await manager.acquire()
    await driver.append_audit(audit("add-index", AuditState.APPLIED, fence.epoch), fence)
    await manager.release()
    await driver.aclose()

    result = flamingock(service, "history", "--store", store(backend, service), "--json", "-vv")

    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["entries"]
    assert [entry["change_id"] for entry in entries] == ["add-index"]
    assert service.token not in result.stdout
    assert service.token not in result.stderr


async def test_force_release_through_backend(backend: Backend, service: Service) -> None:
    driver = cloud_driver(backend.url, service)
    holder = LockManager(driver, LockSettings(lease=30))
    await holder.acquire()

    result = flamingock(service, "lock", "release", "--force", "--store", store(backend, service))

    stored = await driver.read_lock("flamingock")
    await driver.aclose()
    assert result.returncode == 0, result.stderr
    assert stored is not None
    assert stored.owner is None


def test_bad_token_exit_code(backend: Backend, service: Service) -> None:
    wrong = Service(service.environment, service.name, service.token + "x", service.token_id)
    result = flamingock(wrong, "lock", "show", "--store", store(backend, service))
    assert result.returncode == 1
    assert "INVALID_TOKEN" in result.stderr
    assert wrong.token not in result.stderr
