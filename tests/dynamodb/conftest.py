"""Fixtures for the DynamoDB driver: a `moto_server` on 127.0.0.1, reset before every test.

The server is started once per test session on a free port. Every test gets fake AWS
credentials and a region through the environment, and the EC2 instance metadata lookup is
switched off, so no request can leave the machine or reach a real AWS account.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flamingock_async.drivers.dynamodb import DynamoDriver

REGION = "us-east-1"

FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
REMOVED_AWS_VARIABLES = (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*program, "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited early: {log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1),
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {url} within 60 s")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `moto_server` on a free loopback port; return its endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(_moto_command(port), stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_until_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every test fake credentials that only moto accepts, and no other AWS source."""
    for name in REMOVED_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def endpoint(moto_endpoint: str) -> str:
    """The endpoint of a moto server emptied for this test."""
    reset_moto(moto_endpoint)
    return moto_endpoint


@pytest.fixture
async def driver(endpoint: str) -> AsyncIterator[DynamoDriver]:
    """An opened driver on the empty moto server; not set up."""
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as opened:
        yield opened
