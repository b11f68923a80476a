"""Two backend processes on one MongoDB store (nx-27017, or FLAMINGOCK_TEST_MONGODB_URI).

The store URL carries `{namespace}` in its collection names, so each service keeps its own
audit log and lock collections in one database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flamingock_async import DriverUnavailableError
from flamingock_async.drivers._base import Driver
from flamingock_async.testing import DriverConformance, DriverFactory

from .conftest import (
    Backend,
    Service,
    cloud_driver,
    create_service,
    free_port,
    start_backend,
    stop_backend,
)
from .test_runners import applications, applied_entries, result_of, spawn, start, store_url

pymongo = pytest.importorskip("pymongo")


def start_nx(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("nx-27017")), "--db", "memory"]
    command += ["--host", "127.0.0.1", "-p", str(port)]
    command += ["--log-file", str(directory / "nx.log"), "--pid-file", str(directory / "nx.pid")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"mongodb://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=200) as client:
                client.admin.command("ping")
            return process, uri
        except pymongo.errors.PyMongoError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"nx-27017 did not answer ping at {uri}") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("FLAMINGOCK_TEST_MONGODB_URI")
    if configured:
        yield configured
        return
    process, uri = start_nx(tmp_path_factory.mktemp("nx"))
    yield uri
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def mongo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-mongo")


@pytest.fixture(scope="module")
def mongo_backends(mongo_uri: str, mongo_data_dir: Path) -> Iterator[list[Backend]]:
    base, _, options = mongo_uri.partition("?")
    database = f"flamingock_backend_{uuid.uuid4().hex[:12]}"
    query = "auditCollection=audit_{namespace}&lockCollection=lock_{namespace}"
    if options:
        query = f"{options}&{query}"
    store = f"{base.rstrip('/')}/{database}?{query}"
    servers = [
        start_backend(mongo_data_dir, mongo_data_dir / f"backend-{index}.log", "--store-url", store)
        for index in (1, 2)
    ]
    yield servers
    for server in servers:
        stop_backend(server)


@pytest.fixture
def mongo_service(mongo_data_dir: Path, mongo_backends: list[Backend]) -> Service:
    return create_service(mongo_data_dir)


class TestCloudOnMongoConformance(DriverConformance):
    """Drivers created one after the other alternate between the two backend processes."""

    contenders = 6
    concurrent_attempts = 10

    @pytest.fixture
    def driver_factory(
        self, mongo_backends: list[Backend], mongo_service: Service
    ) -> DriverFactory:
        created = 0

        async def make_driver() -> Driver:
            nonlocal created
            driver = cloud_driver(mongo_backends[created % 2].url, mongo_service)
            created += 1
            await driver.open()
            return driver

        return make_driver


@pytest.mark.slow
async def test_runners_on_mongo_backends_apply_once(
    mongo_backends: list[Backend], mongo_service: Service, tmp_path: Path
) -> None:
    """Four runner processes, two on each backend process, share one MongoDB store."""
    output = tmp_path / "applied.txt"
    urls = [store_url(server, mongo_service) for server in mongo_backends]
    processes = [spawn("pipeline", urls[index % 2], mongo_service, output) for index in range(4)]
    start(processes)
    results = [result_of(process) for process in processes]

    expected = {f"change-{number:02d}" for number in range(1, 21)}
    counted = applications(output)
    assert set(counted) == expected
    assert all(count == 1 for count in counted.values()), counted
    assert all("error" not in result for result in results), results
    audited = await applied_entries(mongo_backends[0], mongo_service)
    assert set(audited) == expected
    assert all(count == 1 for count in audited.values()), audited


async def test_store_down_is_retryable(tmp_path: Path) -> None:
    """A backend whose store cannot be reached responds 503 retryable; the driver retries."""
    nowhere = f"mongodb://127.0.0.1:{free_port()}/db?serverSelectionTimeoutMS=300"
    store = f"{nowhere}&auditCollection=audit_{{namespace}}&lockCollection=lock_{{namespace}}"
    server = start_backend(tmp_path, tmp_path / "backend.log", "--store-url", store)
    try:
        service = create_service(tmp_path)
        driver = cloud_driver(server.url, service, max_attempts=2, backoff=0.01)
        with pytest.raises(DriverUnavailableError, match=r"after 2 attempts \(STORE_UNAVAILABLE\)"):
            await driver.read_states()
        await driver.aclose()
    finally:
        stop_backend(server)
    assert server.log().count("Store error") == 2
