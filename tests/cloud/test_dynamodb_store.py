"""Two backend processes on one DynamoDB store, served by `moto_server` on 127.0.0.1.

The store URL carries `{namespace}` in its table names, so each service gets its own audit
and lock tables. The conformance suite through the backend runs on SQLite and MongoDB stores.
Here one runner test suffices, because the suite creates two moto tables per test. That took
about two seconds per test in one measured run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import (
    Backend,
    Service,
    create_service,
    free_port,
    start_backend,
    stop_backend,
)
from .test_runners import applications, applied_entries, result_of, spawn, start, store_url

pytest.importorskip("aioboto3")

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1"]
    command += ["-p", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def dynamo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-dynamodb")


@pytest.fixture(scope="module")
def dynamo_backends(moto_endpoint: str, dynamo_data_dir: Path) -> Iterator[list[Backend]]:
    store = (
        "dynamodb://audit_{namespace}?lock_table=lock_{namespace}"
        f"&region=us-east-1&endpoint_url={moto_endpoint}"
    )
    servers = [
        start_backend(
            dynamo_data_dir,
            dynamo_data_dir / f"backend-{index}.log",
            "--store-url",
            store,
            environ=FAKE_AWS,
        )
        for index in (1, 2)
    ]
    yield servers
    for server in servers:
        stop_backend(server)


@pytest.fixture
def dynamo_service(dynamo_data_dir: Path, dynamo_backends: list[Backend]) -> Service:
    return create_service(dynamo_data_dir)


@pytest.mark.slow
async def test_runners_on_dynamo_backends_apply_once(
    dynamo_backends: list[Backend], dynamo_service: Service, tmp_path: Path
) -> None:
    """Four runner processes, two on each backend process, share one DynamoDB store."""
    output = tmp_path / "applied.txt"
    urls = [store_url(server, dynamo_service) for server in dynamo_backends]
    processes = [spawn("pipeline", urls[index % 2], dynamo_service, output) for index in range(4)]
    start(processes)
    results = [result_of(process) for process in processes]

    expected = {f"change-{number:02d}" for number in range(1, 21)}
    counted = applications(output)
    assert set(counted) == expected
    assert all(count == 1 for count in counted.values()), counted
    assert all("error" not in result for result in results), results
    audited = await applied_entries(dynamo_backends[0], dynamo_service)
    assert set(audited) == expected
    assert all(count == 1 for count in audited.values()), audited
