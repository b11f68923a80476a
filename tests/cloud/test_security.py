"""Authentication, authorisation and body limits of the backend, seen through plain HTTP.

Every rejected request is followed by a check, with a valid token, that it changed nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from flamingock_async import DriverAuthError
from flamingock_async._audit import now_ms

from .conftest import JWT_SECRET, Backend, Service, cloud_driver, free_port

RUNNER = {"X-Flamingock-Runner-Id": "security-tests"}


def exchange(backend: Backend, token: str, service: Service) -> httpx.Response:
    body = {"token": token, "environment": service.environment, "service": service.name}
    return httpx.post(f"{backend.url}/api/v1/auth/exchange-token", json=body)


def bearer(backend: Backend, service: Service) -> str:
    response = exchange(backend, service.token, service)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def headers(token: str | None) -> dict[str, str]:
    if token is None:
        return dict(RUNNER)
    return {**RUNNER, "Authorization": f"Bearer {token}"}


def lock_url(backend: Backend, service: Service, key: str = "flamingock") -> str:
    return (
        f"{backend.url}/api/v1/environment/{service.environment}/service/{service.name}/lock/{key}"
    )


def insert_body(owner: str = "intruder") -> dict[str, Any]:
    stamp = now_ms()
    record = {
        "key": "flamingock",
        "owner": owner,
        "epoch": 1,
        "version": 1,
        "lease_ms": 30_000,
        "acquired_at_ms": stamp,
        "renewed_at_ms": stamp,
    }
    return {"expected_version": None, "record": record}


def put_lock(
    backend: Backend, service: Service, token: str | None, **options: Any
) -> httpx.Response:
    return httpx.put(lock_url(backend, service), headers=headers(token), **options)


def stored_lock(backend: Backend, service: Service) -> Any:
    response = httpx.get(lock_url(backend, service), headers=headers(bearer(backend, service)))
    response.raise_for_status()
    return response.json()["lock"]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["retryable"] is False
    assert body["message"]


# -- missing, wrong, expired and revoked tokens --------------------------------------------


def test_missing_bearer_rejected(backend: Backend, service: Service) -> None:
    response = put_lock(backend, service, None, json=insert_body())
    assert_error(response, 401, "UNAUTHENTICATED")
    assert stored_lock(backend, service) is None


def test_garbage_bearer_rejected(backend: Backend, service: Service) -> None:
    response = put_lock(backend, service, "not-a-jwt", json=insert_body())
    assert_error(response, 401, "INVALID_TOKEN")
    assert stored_lock(backend, service) is None


def test_wrong_signature_rejected(backend: Backend, service: Service) -> None:
    claims = jwt.decode(bearer(backend, service), options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-of-sufficient-length-here", algorithm="HS256")
    response = put_lock(backend, service, forged, json=insert_body())
    assert_error(response, 401, "INVALID_TOKEN")
    assert stored_lock(backend, service) is None


def test_unsigned_token_rejected(backend: Backend, service: Service) -> None:
    claims = jwt.decode(bearer(backend, service), options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none")
    response = put_lock(backend, service, unsigned, json=insert_body())
    assert_error(response, 401, "INVALID_TOKEN")
    assert stored_lock(backend, service) is None


def test_expired_bearer_rejected(backend: Backend, service: Service) -> None:
    claims = jwt.decode(bearer(backend, service), options={"verify_signature": False})
    claims["iat"] = int(time.time()) - 120
    claims["exp"] = int(time.time()) - 60
    expired = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    response = put_lock(backend, service, expired, json=insert_body())
    assert_error(response, 401, "TOKEN_EXPIRED")
    assert stored_lock(backend, service) is None


def test_wrong_api_token_rejected(backend: Backend, service: Service) -> None:
    token_id = service.token.split("_")[1]
    response = exchange(backend, f"flk_{token_id}_wrong-secret", service)
    assert_error(response, 401, "INVALID_TOKEN")


def test_unknown_api_token_rejected(backend: Backend, service: Service) -> None:
    response = exchange(backend, "flk_0123456789abcdef_secret", service)
    assert_error(response, 401, "INVALID_TOKEN")


def test_revoked_api_token_rejected(
    backend: Backend, service: Service, cli: Callable[..., str]
) -> None:
    cli("token", "revoke", service.token_id)
    response = exchange(backend, service.token, service)
    assert_error(response, 401, "TOKEN_REVOKED")


def test_revoked_bearer_rejected(
    backend: Backend, service: Service, cli: Callable[..., str]
) -> None:
    issued = bearer(backend, service)
    cli("token", "revoke", service.token_id)
    response = put_lock(backend, service, issued, json=insert_body())
    assert_error(response, 401, "TOKEN_REVOKED")
    output = cli("token", "create", "--environment", service.environment, "--service", service.name)
    replacement = Service(service.environment, service.name, output.split()[-1], "")
    assert stored_lock(backend, replacement) is None


async def test_driver_revoked_token_error(
    backend: Backend, service: Service, cli: Callable[..., str]
) -> None:
    cli("token", "revoke", service.token_id)
    driver = cloud_driver(backend.url, service)
    with pytest.raises(DriverAuthError, match="TOKEN_REVOKED") as raised:
        await driver.open()
    assert "Set an active API token" in str(raised.value)
    await driver.aclose()


# -- tokens of another environment or service ---------------------------------------------


def test_other_service_bearer_forbidden(
    backend: Backend, service: Service, make_service: Callable[..., Service]
) -> None:
    other = make_service()
    response = put_lock(backend, other, bearer(backend, service), json=insert_body())
    assert_error(response, 403, "FORBIDDEN")
    assert stored_lock(backend, other) is None


def test_other_environment_bearer_forbidden(
    backend: Backend, service: Service, make_service: Callable[..., Service]
) -> None:
    other = make_service("staging")
    same_name = Service("staging", service.name, "", "")
    response = put_lock(backend, same_name, bearer(backend, service), json=insert_body())
    assert_error(response, 403, "FORBIDDEN")
    response = put_lock(backend, other, bearer(backend, service), json=insert_body())
    assert_error(response, 403, "FORBIDDEN")
    assert stored_lock(backend, other) is None


def test_exchange_for_other_service_forbidden(
    backend: Backend, service: Service, make_service: Callable[..., Service]
) -> None:
    other = make_service()
    response = exchange(backend, service.token, other)
    assert_error(response, 403, "FORBIDDEN")


def test_forged_service_claim_rejected(
    backend: Backend, service: Service, make_service: Callable[..., Service]
) -> None:
    """A token re-signed with other claims is caught even if the signing secret leaked."""
    other = make_service()
    claims = jwt.decode(bearer(backend, service), options={"verify_signature": False})
    claims["svc_name"] = other.name
    forged = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    response = put_lock(backend, other, forged, json=insert_body())
    assert_error(response, 401, "INVALID_TOKEN")
    assert stored_lock(backend, other) is None


# -- oversized and malformed bodies -------------------------------------------------------


def test_oversized_body_rejected(backend: Backend, service: Service) -> None:
    body = insert_body()
    body["record"]["host"] = "x" * 2_000_000
    response = put_lock(backend, service, bearer(backend, service), json=body)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert stored_lock(backend, service) is None


def test_oversized_chunked_body_rejected(backend: Backend, service: Service) -> None:
    def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 65_536

    response = put_lock(backend, service, bearer(backend, service), content=chunks())
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert stored_lock(backend, service) is None


def test_invalid_json_rejected(backend: Backend, service: Service) -> None:
    response = httpx.put(
        lock_url(backend, service),
        content=b'{"expected_version": nul',
        headers={**headers(bearer(backend, service)), "Content-Type": "application/json"},
    )
    assert_error(response, 422, "INVALID_REQUEST")
    assert stored_lock(backend, service) is None


def test_wrong_field_type_rejected(backend: Backend, service: Service) -> None:
    body = insert_body()
    body["record"]["epoch"] = "one"
    response = put_lock(backend, service, bearer(backend, service), json=body)
    assert_error(response, 422, "INVALID_REQUEST")
    assert stored_lock(backend, service) is None


def test_unknown_field_rejected(backend: Backend, service: Service) -> None:
    body = insert_body()
    body["record"]["admin"] = True
    response = put_lock(backend, service, bearer(backend, service), json=body)
    assert_error(response, 422, "INVALID_REQUEST")
    assert stored_lock(backend, service) is None


def test_huge_integer_rejected(backend: Backend, service: Service) -> None:
    body = insert_body()
    body["record"]["epoch"] = 2**70
    response = put_lock(backend, service, bearer(backend, service), json=body)
    assert_error(response, 422, "INVALID_REQUEST")
    assert stored_lock(backend, service) is None


def test_key_mismatch_rejected(backend: Backend, service: Service) -> None:
    url = lock_url(backend, service, "other-key")
    response = httpx.put(url, headers=headers(bearer(backend, service)), json=insert_body())
    assert_error(response, 422, "INVALID_REQUEST")
    assert stored_lock(backend, service) is None


def test_missing_runner_id_rejected(backend: Backend, service: Service) -> None:
    token = bearer(backend, service)
    response = httpx.put(
        lock_url(backend, service),
        headers={"Authorization": f"Bearer {token}"},
        json=insert_body(),
    )
    assert_error(response, 422, "INVALID_REQUEST")
    assert stored_lock(backend, service) is None


def test_rejection_echoes_no_token(backend: Backend, service: Service) -> None:
    body = {"token": service.token, "environment": service.environment, "service": 7}
    response = httpx.post(f"{backend.url}/api/v1/auth/exchange-token", json=body)
    assert response.status_code == 422
    assert service.token not in response.text


# -- secrets in logs -----------------------------------------------------------------------


async def test_token_absent_from_logs(
    backend: Backend, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = cloud_driver(backend.url, service, max_attempts=2, backoff=0.01)
    await driver.open()
    access = driver._access_token
    assert access is not None
    await driver.read_states()
    await driver.read_lock("flamingock")
    await driver.aclose()
    nowhere = f"http://127.0.0.1:{free_port()}"
    failing = cloud_driver(nowhere, service, max_attempts=2, backoff=0.01)
    with pytest.raises(Exception, match="failed after 2 attempts"):
        await failing.open()
    await failing.aclose()
    assert caplog.records
    client_log = caplog.text
    server_log = backend.log()
    assert "exchange-token" in server_log
    assert service.token not in client_log
    assert service.token not in server_log
    assert access.reveal() not in client_log
    assert access.reveal() not in server_log
