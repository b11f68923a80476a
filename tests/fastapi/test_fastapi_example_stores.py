"""The bookmarks example on its other stores: MongoDB (nx-27017) and DynamoDB (moto_server).

Each server is started on a free loopback port for this module. The service runs in process
through its lifespan, so what is tested here is its change packages and its storage classes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi_helpers import serving, until
from uvicorn_helpers import REPOSITORY

pytestmark = pytest.mark.slow

SERVICE = REPOSITORY / "integrations" / "fastapi_service"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
AWS_REMOVED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(command: list[str], log: Path, ready_url: str) -> subprocess.Popen[bytes]:
    """Start a server process and wait until `ready_url` responds, for up to 60 s."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited early: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(ready_url, timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{command[0]} did not respond at {ready_url} within 60 s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("nx")
    port = free_port()
    program = str(Path(sys.executable).with_name("nx-27017"))
    command = [
        program, "--db", "memory", "--host", "127.0.0.1", "-p", str(port),
        "--log-file", str(directory / "nx.log"), "--pid-file", str(directory / "nx.pid"),
    ]  # fmt: skip
    process = _start_nx(command, directory / "nx.out", port)
    yield f"mongodb://127.0.0.1:{port}"
    stop_server(process)


def _start_nx(command: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """Start nx-27017 and wait until it accepts connections (it speaks no HTTP)."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nx-27017 exited early: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("nx-27017 did not accept connections within 60 s")


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    program = Path(sys.executable).with_name("moto_server")
    command = [str(program), "-H", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = start_server(command, log, f"{url}/moto-api/")
    yield url
    stop_server(process)


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the test fake credentials that only moto accepts, and no other AWS source."""
    for name in AWS_REMOVED:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def create_app() -> Iterator[Any]:
    sys.path.insert(0, str(SERVICE))
    try:
        from bookmarks.app import create_app as factory

        yield factory
    finally:
        sys.path.remove(str(SERVICE))


async def exercise(app: Any) -> dict[str, Any]:
    """Serve `app` until ready, add a bookmark and read everything back."""
    flamingock = app.state.flamingock
    async with serving(app) as client:
        await until(lambda: flamingock.is_ready() or flamingock.failed, limit=60)
        readiness = await client.get("/readyz")
        created = await client.post(
            "/bookmarks", json={"url": "https://example.org/", "title": "Ex", "tags": ["a"]}
        )
        listed = await client.get("/bookmarks")
        tagged = await client.get("/bookmarks?tag=a")
        welcome = await client.get("/bookmarks/welcome")
    return {
        "readiness": readiness,
        "created": created,
        "listed": listed,
        "tagged": tagged,
        "welcome": welcome,
    }


async def test_bookmarks_on_mongodb(create_app: Any, mongodb_uri: str) -> None:
    app = create_app(f"{mongodb_uri}/bookmarks_example")
    results = await exercise(app)

    assert results["readiness"].status_code == 200, results["readiness"].text
    assert results["readiness"].json()["applied"] == 3
    assert results["created"].status_code == 201
    assert len(results["listed"].json()) == 2
    assert [item["url"] for item in results["tagged"].json()] == ["https://example.org/"]
    assert results["welcome"].json()["tags"] == ["python"]


async def test_bookmarks_on_dynamodb(create_app: Any, moto_endpoint: str, fake_aws: None) -> None:
    url = f"dynamodb://bookmarks_audit?region=us-east-1&endpoint_url={moto_endpoint}"
    app = create_app(url)
    results = await exercise(app)

    assert results["readiness"].status_code == 200, results["readiness"].text
    assert results["readiness"].json()["applied"] == 3
    assert results["created"].status_code == 201
    assert len(results["listed"].json()) == 2
    assert [item["url"] for item in results["tagged"].json()] == ["https://example.org/"]
    assert results["welcome"].json()["tags"] == ["python"]
