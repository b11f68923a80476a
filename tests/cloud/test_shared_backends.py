"""Two backend processes as on two machines: separate data directories, one shared store.

Both the metadata (`--metadata-url`) and the audit logs and locks (`--store-url`) are in the
session's nx-27017 or moto_server. Neither process is given a signing secret, so they must
find the one they share in the metadata store. They start at the same moment and race to
create it. Tokens are created by the `flamingock serve token` command in a process of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dynamodb.conftest import FAKE_AWS_ENVIRONMENT, REMOVED_AWS_VARIABLES
from mongodb.conftest import MongoServer

from .conftest import ENVIRONMENT, Backend, Service, free_port, stop_backend
from .test_runners import applications, applied_entries, result_of, spawn, start, store_url
from .test_security import exchange, headers, lock_url

pytest.importorskip("pymongo")
pytest.importorskip("aioboto3")

COMMAND = (sys.executable, "-m", "flamingock_async.backend")


@dataclasses.dataclass(frozen=True)
class Shared:
    """Two backend processes on one metadata store and one store."""

    metadata_url: str
    environ: dict[str, str]
    backends: list[Backend]

    def cli(self, *arguments: str) -> str:
        """Run `flamingock serve --metadata-url URL ...` in a process of its own."""
        result = subprocess.run(
            [*COMMAND, "--metadata-url", self.metadata_url, *arguments],
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def create_service(self) -> Service:
        name = f"svc-{uuid.uuid4().hex[:12]}"
        arguments = ("--environment", ENVIRONMENT, "--service", name, "--json")
        created = json.loads(self.cli("token", "create", *arguments))
        return Service(ENVIRONMENT, name, created["token"], created["id"])


def environment(data_dir: Path) -> dict[str, str]:
    """Return the variables of a backend or command: fake AWS credentials, no signing secret."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in REMOVED_AWS_VARIABLES and not name.startswith("FLAMINGOCK_")
    }
    return {**environ, **FAKE_AWS_ENVIRONMENT, "FLAMINGOCK_SERVER_DATA_DIR": str(data_dir)}


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the backend exited with {process.returncode}:\n{log_file.read_text()}"
            )
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the backend did not start within 30 s:\n{log_file.read_text()}")


def start_machines(directory: Path, metadata_url: str, store: str) -> list[Backend]:
    """Start two backends at once, each with a data directory of its own."""
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    for index in (1, 2):
        data_dir = directory / f"machine-{index}"
        data_dir.mkdir()
        port = free_port()
        log_file = directory / f"backend-{index}.log"
        command = [*COMMAND, "--metadata-url", metadata_url, "--store-url", store]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment(data_dir)
            )
        started.append((f"http://127.0.0.1:{port}", process, log_file))
    for url, process, log_file in started:
        wait_until_healthy(url, process, log_file)
    return [Backend(url, process, log_file) for url, process, log_file in started]


def urls(request: pytest.FixtureRequest, suffix: str) -> tuple[str, str]:
    """Return the metadata URL and the store URL on the server this module runs against."""
    if request.param == "mongodb":
        server: MongoServer = request.getfixturevalue("mongo_server")
        database = f"shared_{suffix}"
        collections = {"auditCollection": "audit_{namespace}", "lockCollection": "lock_{namespace}"}
        return server.url(database), server.url(database, **collections)
    endpoint: str = request.getfixturevalue("moto_endpoint")
    where = f"region=us-east-1&endpoint_url={endpoint}"
    metadata = f"dynamodb://meta_{suffix}?{where}"
    store = (
        f"dynamodb://audit_{suffix}_{{namespace}}?lock_table=lock_{suffix}_{{namespace}}&{where}"
    )
    return metadata, store


@pytest.fixture(scope="module", params=["mongodb", "dynamodb"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp(f"shared-{request.param}")
    metadata_url, store = urls(request, uuid.uuid4().hex[:12])
    backends = start_machines(directory, metadata_url, store)
    environ = environment(directory / "operator")
    yield Shared(metadata_url, environ, backends)
    for backend in backends:
        stop_backend(backend)


@pytest.fixture
def service(shared: Shared) -> Service:
    return shared.create_service()


def bearer_from(backend: Backend, service: Service) -> str:
    response = exchange(backend, service.token, service)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def test_cli_token_exchanged_on_both(shared: Shared, service: Service) -> None:
    first, second = shared.backends
    assert exchange(first, service.token, service).status_code == 200
    assert exchange(second, service.token, service).status_code == 200


def test_no_sqlite_metadata_written(shared: Shared, service: Service) -> None:
    first, second = shared.backends
    assert exchange(first, service.token, service).status_code == 200
    assert exchange(second, service.token, service).status_code == 200
    directory = first.log_file.parent
    assert (directory / "machine-1").is_dir()
    assert not (directory / "machine-1" / "backend.db").exists()
    assert not (directory / "machine-2" / "backend.db").exists()


def test_bearer_accepted_by_other(shared: Shared, service: Service) -> None:
    first, second = shared.backends
    from_first = bearer_from(first, service)
    from_second = bearer_from(second, service)
    assert httpx.get(lock_url(second, service), headers=headers(from_first)).status_code == 200
    assert httpx.get(lock_url(first, service), headers=headers(from_second)).status_code == 200


def test_revoked_token_rejected_on_both(shared: Shared, service: Service) -> None:
    first, second = shared.backends
    issued = bearer_from(first, service)
    shared.cli("token", "revoke", service.token_id)
    assert exchange(first, service.token, service).json()["code"] == "TOKEN_REVOKED"
    assert exchange(second, service.token, service).json()["code"] == "TOKEN_REVOKED"
    assert httpx.get(lock_url(first, service), headers=headers(issued)).status_code == 401
    assert httpx.get(lock_url(second, service), headers=headers(issued)).status_code == 401


def test_token_absent_from_logs(shared: Shared, service: Service) -> None:
    for backend in shared.backends:
        bearer_from(backend, service)
    secret = service.token.rsplit("_", 1)[1]
    assert all(secret not in backend.log() for backend in shared.backends)


@pytest.mark.slow
async def test_runners_on_two_machines_apply_once(
    shared: Shared, service: Service, tmp_path: Path
) -> None:
    """Four runner processes, two on each backend process, start together on a new service."""
    output = tmp_path / "applied.txt"
    runner_urls = [store_url(backend, service) for backend in shared.backends]
    processes = [spawn("pipeline", runner_urls[index % 2], service, output) for index in range(4)]
    start(processes)
    results = [result_of(process) for process in processes]

    expected = {f"change-{number:02d}" for number in range(1, 21)}
    counted = applications(output)
    assert set(counted) == expected
    assert all(count == 1 for count in counted.values()), counted
    assert all("error" not in result for result in results), results
    audited = await applied_entries(shared.backends[1], service)
    assert set(audited) == expected
    assert all(count == 1 for count in audited.values()), audited
