"""The self-hosted backend served by real uvicorn processes on 127.0.0.1, for the cloud tests.

One data directory (a temporary SQLite store) is shared by the whole session. `backend`
starts one server process; `second_backend` starts another on the same data directory, as
two processes behind a load balancer would be. Each test gets a service of its own, and so
an empty audit log and lock, from the `service` fixture, which creates its API token with
the `flamingock serve token create` command.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dynamodb.conftest import moto_endpoint
from flamingock_async.backend.cli import serve
from flamingock_async.drivers.cloud import CloudDriver
from mongodb.conftest import mongo_server

# The session fixtures that start nx-27017 and moto_server for the MongoDB and DynamoDB
# driver tests, here for the tests of the backend's metadata stores.
__all__ = ["moto_endpoint", "mongo_server"]

JWT_SECRET = "test-signing-secret-that-is-long-enough-for-hs256"
ENVIRONMENT = "test"


@dataclasses.dataclass(frozen=True)
class Backend:
    """One running backend process."""

    url: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@dataclasses.dataclass(frozen=True)
class Service:
    """A service with its own API token, hence its own audit log and lock."""

    environment: str
    name: str
    token: str
    token_id: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(data_dir: Path) -> dict[str, str]:
    environ = dict(os.environ)
    environ.pop("FLAMINGOCK_API_TOKEN", None)
    environ["FLAMINGOCK_SERVER_DATA_DIR"] = str(data_dir)
    environ["FLAMINGOCK_SERVER_JWT_SECRET"] = JWT_SECRET
    return environ


def start_backend(
    data_dir: Path,
    log_file: Path,
    *extra: str,
    environ: dict[str, str] | None = None,
    ca_file: Path | None = None,
) -> Backend:
    """Start `python -m flamingock_async.backend` and wait until /api/v1/health responds.

    `extra` are further command-line options; `environ` adds environment variables. With
    `ca_file`, the server is expected to serve HTTPS with a certificate signed by that CA.
    """
    port = free_port()
    command = [sys.executable, "-m", "flamingock_async.backend"]
    command += [*extra, "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**server_environment(data_dir), **(environ or {})},
        )
    scheme = "https" if ca_file is not None else "http"
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=str(ca_file))
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_file.read_text()
            raise RuntimeError(f"the backend exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1, verify=verify).status_code == 200:
                return Backend(url, process, log_file)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the backend did not start within 30 s:\n{log_file.read_text()}")


def stop_backend(backend: Backend) -> None:
    backend.process.terminate()
    try:
        backend.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        backend.process.kill()
        backend.process.wait()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-data")


@pytest.fixture(scope="session")
def backend(data_dir: Path) -> Iterator[Backend]:
    # The first token is created by the command as an operator would, in its own process.
    subprocess.run(
        [
            *(sys.executable, "-m", "flamingock_async.backend", "token", "create"),
            *("--environment", ENVIRONMENT, "--service", "bootstrap"),
        ],
        env=server_environment(data_dir),
        check=True,
        capture_output=True,
    )
    server = start_backend(data_dir, data_dir / "backend-1.log")
    yield server
    stop_backend(server)


@pytest.fixture(scope="session")
def second_backend(data_dir: Path, backend: Backend) -> Iterator[Backend]:
    server = start_backend(data_dir, data_dir / "backend-2.log")
    yield server
    stop_backend(server)


class CliFailed(RuntimeError):
    """A `flamingock serve` command exited with an error; `output` is what it printed."""

    def __init__(self, arguments: tuple[str, ...], output: str) -> None:
        super().__init__(f"flamingock serve {' '.join(arguments)} failed:\n{output}")
        self.output = output


def run_cli(data_dir: Path, *arguments: str) -> str:
    """Run a `flamingock serve` sub-command in process; return its output.

    It runs in a thread of its own because the command calls `asyncio.run`, which cannot
    start inside an async test's running event loop.
    """
    invoke = functools.partial(
        CliRunner().invoke, serve, list(arguments), env=server_environment(data_dir)
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(invoke).result()
    if result.exit_code != 0:
        raise CliFailed(arguments, result.output)
    return result.output


def create_service(data_dir: Path, environment: str = ENVIRONMENT) -> Service:
    name = f"svc-{uuid.uuid4().hex[:12]}"
    output = run_cli(
        data_dir, "token", "create", "--environment", environment, "--service", name, "--json"
    )
    created = json.loads(output)
    return Service(environment, name, created["token"], created["id"])


@pytest.fixture
def cli(data_dir: Path) -> Callable[..., str]:
    return lambda *arguments: run_cli(data_dir, *arguments)


@pytest.fixture
def service(data_dir: Path, backend: Backend) -> Service:
    return create_service(data_dir)


@pytest.fixture
def make_service(data_dir: Path, backend: Backend) -> Callable[..., Service]:
    return lambda environment=ENVIRONMENT: create_service(data_dir, environment)


def cloud_driver(url: str, service: Service, **options: object) -> CloudDriver:
    return CloudDriver(
        url,
        environment=service.environment,
        service=service.name,
        api_token=service.token,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def driver(backend: Backend, service: Service) -> AsyncIterator[CloudDriver]:
    opened = cloud_driver(backend.url, service)
    await opened.open()
    yield opened
    await opened.aclose()
