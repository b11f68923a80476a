"""The cloud driver's URL, retries and token handling, with faults injected in its transport."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import jwt
import pytest

from flamingock_async import ConfigurationError, DriverError, DriverUnavailableError
from flamingock_async.drivers import driver_from_url
from flamingock_async.drivers.cloud import CloudDriver

from .conftest import JWT_SECRET, Backend, CliFailed, Service, cloud_driver, free_port


class FlakyTransport(httpx.AsyncBaseTransport):
    """Forwards to the real backend after injecting faults into the first requests.

    `faults` lists, in order, what each of the first requests gets instead of a real response.
    "connect" raises `httpx.ConnectError`. An int is the status of a JSON error response,
    whose `retryable` is True for 503.
    """

    def __init__(self, faults: list[str | int]) -> None:
        self.faults = list(faults)
        self.requests = 0
        self.real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.faults:
            fault = self.faults.pop(0)
            if fault == "connect":
                raise httpx.ConnectError("connection refused (injected)", request=request)
            body = {"code": f"INJECTED_{fault}", "message": "injected", "retryable": fault == 503}
            return httpx.Response(int(fault), json=body, request=request)
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


def flaky_driver(backend: Backend, service: Service, faults: list[str | int]) -> CloudDriver:
    transport = FlakyTransport(faults)
    client = httpx.AsyncClient(base_url=backend.url, transport=transport)
    return cloud_driver(backend.url, service, client=client, backoff=0.01, max_attempts=4)


# -- retries --------------------------------------------------------------------------------


async def test_connection_errors_retried(backend: Backend, service: Service) -> None:
    driver = flaky_driver(backend, service, ["connect", "connect"])
    await driver.open()
    assert await driver.read_lock("flamingock") is None
    assert driver._client is not None
    await driver._client.aclose()


async def test_retryable_answer_retried(backend: Backend, service: Service) -> None:
    driver = flaky_driver(backend, service, [503, "connect", 503])
    assert await driver.read_states() == []
    assert driver._client is not None
    await driver._client.aclose()


async def test_final_answer_not_retried(backend: Backend, service: Service) -> None:
    driver = flaky_driver(backend, service, [500, 503])
    with pytest.raises(DriverError, match="INJECTED_500") as raised:
        await driver.open()
    assert not isinstance(raised.value, DriverUnavailableError)
    assert driver._client is not None
    transport = driver._client._transport
    assert isinstance(transport, FlakyTransport)
    assert transport.requests == 1
    await driver._client.aclose()


async def test_attempts_bounded(backend: Backend, service: Service) -> None:
    driver = flaky_driver(backend, service, ["connect"] * 10)
    with pytest.raises(DriverUnavailableError, match="after 4 attempts"):
        await driver.open()
    assert driver._client is not None
    await driver._client.aclose()


async def test_unreachable_backend_unavailable(service: Service) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    driver = cloud_driver(url, service, max_attempts=2, backoff=0.01)
    with pytest.raises(DriverUnavailableError, match=re.escape(url)):
        await driver.read_states()
    await driver.aclose()


async def test_expired_bearer_exchanged_again(driver: CloudDriver) -> None:
    assert driver._access_token is not None
    claims = jwt.decode(driver._access_token.reveal(), options={"verify_signature": False})
    claims["iat"] = int(time.time()) - 120
    claims["exp"] = int(time.time()) - 60
    expired = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    driver._access_token = type(driver._access_token)(expired)
    assert await driver.read_lock("flamingock") is None
    assert driver._access_token.reveal() != expired


async def test_identity_after_open(driver: CloudDriver) -> None:
    assert set(driver.identity) == {
        "organization_id",
        "project_id",
        "environment_id",
        "service_id",
    }
    assert all(driver.identity.values())


# -- URLs --------------------------------------------------------------------------------


def test_url_builds_cloud_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAMINGOCK_API_TOKEN", "flk_0123456789abcdef_secret")
    driver = driver_from_url("https://flamingock.example:8443/base/?environment=prod&service=api")
    assert isinstance(driver, CloudDriver)
    assert driver.base_url == "https://flamingock.example:8443/base"
    assert driver.environment == "prod"
    assert driver.service == "api"
    assert driver.verify is True


def test_url_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAMINGOCK_API_TOKEN", "flk_0123456789abcdef_secret")
    driver = driver_from_url(
        "https://h?environment=e&service=s&timeout=2.5&max_attempts=7&verify=false"
    )
    assert isinstance(driver, CloudDriver)
    assert driver.timeout == 2.5
    assert driver.max_attempts == 7
    assert driver.verify is False


def test_url_without_token_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLAMINGOCK_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="FLAMINGOCK_API_TOKEN"):
        driver_from_url("https://h?environment=e&service=s")


def test_url_token_parameter_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAMINGOCK_API_TOKEN", "flk_0123456789abcdef_secret")
    with pytest.raises(ConfigurationError, match="FLAMINGOCK_API_TOKEN") as raised:
        driver_from_url("https://h?environment=e&service=s&api_token=flk_leaked")
    assert "flk_leaked" not in str(raised.value)


def test_url_without_service_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAMINGOCK_API_TOKEN", "flk_0123456789abcdef_secret")
    with pytest.raises(ConfigurationError, match="service"):
        driver_from_url("https://h?environment=e")


def test_url_unknown_option_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAMINGOCK_API_TOKEN", "flk_0123456789abcdef_secret")
    with pytest.raises(ConfigurationError, match="retries"):
        driver_from_url("https://h?environment=e&service=s&retries=3")


@pytest.mark.parametrize("host", ["flamingock.example", "10.0.0.5", "0.0.0.0"])
def test_plain_http_remote_rejected(host: str) -> None:
    with pytest.raises(ConfigurationError, match="https"):
        CloudDriver(f"http://{host}:8080", environment="e", service="s", api_token="t")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_plain_http_loopback_accepted(host: str) -> None:
    driver = CloudDriver(f"http://{host}:8080", environment="e", service="s", api_token="t")
    assert driver.base_url == f"http://{host}:8080"


async def test_lock_key_with_slash_rejected(driver: CloudDriver) -> None:
    with pytest.raises(ConfigurationError, match="'/'"):
        await driver.read_lock("team/flamingock")


# -- the token commands and storage --------------------------------------------------------


def test_tokens_stored_hashed(data_dir: Path, service: Service) -> None:
    secret = service.token.split("_", 2)[2]
    with closing(sqlite3.connect(data_dir / "backend.db")) as database:
        rows = database.execute("SELECT * FROM api_tokens").fetchall()
    dump = repr(rows)
    assert service.token_id in dump
    assert secret not in dump


def test_token_list_hides_secrets(cli: Callable[..., str], service: Service) -> None:
    output = cli("token", "list")
    assert service.token_id in output
    assert service.name in output
    assert service.token not in output


def test_revoke_unknown_token_fails(cli: Callable[..., str]) -> None:
    with pytest.raises(RuntimeError, match="No active API token"):
        cli("token", "revoke", "0000000000000000")


def test_create_invalid_name_fails(cli: Callable[..., str]) -> None:
    with pytest.raises(RuntimeError, match="Invalid service name"):
        cli("token", "create", "--environment", "prod", "--service", "bad name")


def test_invalid_runner_id_rejected() -> None:
    with pytest.raises(ConfigurationError, match="runner id"):
        CloudDriver("https://h", environment="e", service="s", api_token="t", runner_id="two words")


def test_store_url_needs_namespace(cli: Callable[..., str]) -> None:
    with pytest.raises(CliFailed, match="namespace") as raised:
        cli("--store-url", "mongodb://admin:hunter2@127.0.0.1:1/db", "token", "list")
    assert "hunter2" not in raised.value.output


def test_unknown_store_scheme_rejected(cli: Callable[..., str]) -> None:
    with pytest.raises(RuntimeError, match="Unsupported store URL"):
        cli("--store-url", "nosuch://{namespace}", "--port", str(free_port()))
