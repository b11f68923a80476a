"""MongoDB test server: nx-27017 started once per session, or the server in an environment variable.

With `FLAMINGOCK_TEST_MONGODB_URI` set (for example `mongodb://localhost:27017`), every test runs
against that server instead, each in a database of its own, and the tests marked `real_mongodb`
run too. Without it they are skipped, because nx-27017 does not isolate transactions.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from flamingock_async.drivers.mongodb import MongoDriver

URI_VARIABLE = "FLAMINGOCK_TEST_MONGODB_URI"
REAL_ONLY_REASON = (
    f"needs a real MongoDB server: set {URI_VARIABLE}; nx-27017 does not isolate transactions "
    "or check credentials"
)

# Opens a driver on a URL whose server is unreachable and prints the error's type and message.
# It runs in a child process because PyMongo 4.20's async pool leaves the socket of a refused
# connection to the garbage collector, whose ResourceWarning would fail a later test.
_OPEN_UNREACHABLE = """
import asyncio, logging, sys
from flamingock_async.drivers import driver_from_url

async def main():
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    driver = driver_from_url(sys.argv[1])
    try:
        await driver.open()
    except Exception as error:
        print(type(error).__name__)
        print(error)
    finally:
        await driver.aclose()

asyncio.run(main())
"""


def open_unreachable(url: str) -> tuple[str, str, str]:
    """Open a driver on `url` in a child process; return the error type, message and logs."""
    result = subprocess.run(
        [sys.executable, "-c", _OPEN_UNREACHABLE, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    error_type, _, message = result.stdout.partition("\n")
    return error_type, message.strip(), result.stderr


@dataclasses.dataclass(frozen=True)
class MongoServer:
    """A running server: `uri` has no database; `is_real` is False for nx-27017."""

    uri: str
    is_real: bool
    log_file: Path | None = None

    def url(self, database: str, **query: str) -> str:
        """Return a store URL for `database`, keeping the server URI's own options."""
        base, _, options = self.uri.partition("?")
        pairs = [options] if options else []
        pairs += [f"{name}={value}" for name, value in query.items()]
        suffix = f"?{'&'.join(pairs)}" if pairs else ""
        return f"{base.rstrip('/')}/{database}{suffix}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_nx(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start nx-27017 in memory on a free loopback port; return the process and its URI."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("nx-27017")),
        "--db",
        "memory",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--log-file",
        str(directory / "nx-27017.log"),
        "--pid-file",
        str(directory / "nx-27017.pid"),
    ]
    with (directory / "nx-27017.err").open("wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
    uri = f"mongodb://127.0.0.1:{port}"
    wait_until_ready(process, uri)
    return process, uri


def wait_until_ready(process: subprocess.Popen[bytes], uri: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nx-27017 exited with status {process.returncode} at start-up")
        try:
            with MongoClient(uri, serverSelectionTimeoutMS=200) as client:
                client.admin.command("ping")
            return
        except PyMongoError as error:
            if time.monotonic() > deadline:
                process.kill()
                message = f"nx-27017 did not answer ping at {uri} within {timeout} s"
                raise RuntimeError(message) from error
            time.sleep(0.05)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    configured = os.environ.get(URI_VARIABLE)
    if configured:
        yield MongoServer(configured, is_real=True)
        return
    directory = tmp_path_factory.mktemp("nx-27017")
    process, uri = start_nx(directory)
    try:
        yield MongoServer(uri, is_real=False, log_file=directory / "nx-27017.log")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def _skip_real_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("real_mongodb") and not os.environ.get(URI_VARIABLE):
        pytest.skip(REAL_ONLY_REASON)


@pytest.fixture
def database_name() -> str:
    """A database of this test's own, so tests never see each other's documents."""
    return f"flamingock_test_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def store_url(mongo_server: MongoServer, database_name: str) -> str:
    return mongo_server.url(database_name)


def transactions_setting(server: MongoServer) -> bool | None:
    """Detect transactions on a real server; nx-27017 reports a standalone server but has them."""
    return None if server.is_real else True


@pytest.fixture
async def make_driver(
    mongo_server: MongoServer, database_name: str
) -> AsyncIterator[Callable[..., MongoDriver]]:
    """Build `MongoDriver`s on this test's database; they are closed after the test."""
    drivers: list[MongoDriver] = []

    def build(**options: Any) -> MongoDriver:
        options.setdefault("transactions", transactions_setting(mongo_server))
        options.setdefault("server_selection_timeout", 10.0)
        driver = MongoDriver(mongo_server.uri, options.pop("database", database_name), **options)
        drivers.append(driver)
        return driver

    yield build
    for driver in drivers:
        await driver.aclose()
    if mongo_server.is_real:
        await drop_database(mongo_server, database_name)


async def drop_database(server: MongoServer, name: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(server.uri)
    await client.drop_database(name)
    await client.close()


@pytest.fixture
async def driver(make_driver: Callable[..., MongoDriver]) -> MongoDriver:
    """An open driver whose collections exist."""
    built = make_driver()
    await built.open()
    await built.setup()
    return built


@pytest.fixture
async def raw_database(mongo_server: MongoServer, database_name: str) -> AsyncIterator[Any]:
    """This test's database through a plain `AsyncMongoClient`, to inspect or corrupt it."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_server.uri, serverSelectionTimeoutMS=10_000
    )
    yield client[database_name]
    if mongo_server.is_real:
        await client.drop_database(database_name)
    await client.close()
