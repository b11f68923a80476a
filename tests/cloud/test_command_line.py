"""The `flamingock` command against the backend, as an operator would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from flamingock_async import AuditState, LockSettings
from flamingock_async._lock import LockManager
from flamingock_async.backend.cli import serve

from .conftest import Backend, Service, cloud_driver, start_backend, stop_backend
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


# -- `flamingock serve` options ---------------------------------------------------------------


def serve_command(*arguments: str, environ: dict[str, str] | None = None) -> Result:
    """Run `flamingock serve` in process with options that stop it before it listens."""
    return CliRunner().invoke(serve, list(arguments), env=environ)


def test_serve_creates_missing_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "missing" / "data"
    server = start_backend(data_dir, tmp_path / "backend.log", "--data-dir", str(data_dir))
    try:
        health = httpx.get(f"{server.url}/api/v1/health", timeout=5)
    finally:
        stop_backend(server)
    assert health.status_code == 200
    assert (data_dir / "backend.db").is_file()


def test_serve_names_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    result = serve_command("--data-dir", str(blocker / "data"))

    assert result.exit_code == 2
    assert "'--data-dir'" in result.output
    assert str(blocker / "data") in result.output
    assert "sqlite://" not in result.output


@pytest.mark.parametrize(
    ("option", "value", "variable", "allowed"),
    [
        ("--token-ttl", "2", "FLAMINGOCK_SERVER_TOKEN_TTL_SECONDS", "10<=x<=86400"),
        ("--max-body-bytes", "5", "FLAMINGOCK_SERVER_MAX_BODY_BYTES", "x>=1024"),
        ("--port", "70000", "FLAMINGOCK_SERVER_PORT", "1<=x<=65535"),
    ],
)
def test_serve_number_out_of_range(option: str, value: str, variable: str, allowed: str) -> None:
    from_option = serve_command(option, value)
    from_variable = serve_command(environ={variable: value})

    for result in (from_option, from_variable):
        assert result.exit_code == 2
        assert f"'{option}' (env var: '{variable}')" in result.output
        assert allowed in result.output
        assert "_seconds" not in result.output


def test_serve_help_shows_ranges() -> None:
    result = serve_command("--help")

    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert "10<=x<=86400" in help_text
    assert "x>=1024" in help_text
    assert "FLAMINGOCK_SERVER_TOKEN_TTL_SECONDS" in help_text


def test_serve_names_store_url_option(tmp_path: Path) -> None:
    result = serve_command("--data-dir", str(tmp_path), "--store-url", "sqlite:///audit.db")

    assert result.exit_code == 2
    assert "'--store-url' (env var: 'FLAMINGOCK_SERVER_STORE_URL')" in result.output
    assert "{namespace}" in result.output
    assert "store_url" not in result.output
