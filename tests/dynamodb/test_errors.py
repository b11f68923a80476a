"""Translation of botocore errors, and the driver facing bad endpoints and credentials."""

from __future__ import annotations

import logging

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from flamingock_async import (
    ConfigurationError,
    DriverAuthError,
    DriverError,
    DriverUnavailableError,
    FlamingockError,
)
from flamingock_async.drivers.dynamodb import (
    HANDLED_ERROR_CODES,
    HANDLED_EXCEPTION_CLASSES,
    DynamoDriver,
)

from .conftest import REGION, free_port
from .helpers import entry, error_response, held_lock

EXPECTED_CODES: dict[str, type[FlamingockError]] = {
    "ResourceNotFoundException": DriverError,
    "ResourceInUseException": DriverError,
    "ValidationException": DriverError,
    "ConditionalCheckFailedException": DriverError,
    "TransactionCanceledException": DriverError,
    "TransactionConflictException": DriverError,
    "TransactionInProgressException": DriverUnavailableError,
    "IdempotentParameterMismatchException": DriverError,
    "ItemCollectionSizeLimitExceededException": DriverError,
    "ProvisionedThroughputExceededException": DriverUnavailableError,
    "ThrottlingException": DriverUnavailableError,
    "RequestLimitExceeded": DriverUnavailableError,
    "LimitExceededException": DriverError,
    "InternalServerError": DriverUnavailableError,
    "ServiceUnavailable": DriverUnavailableError,
    "UnrecognizedClientException": DriverAuthError,
    "InvalidSignatureException": DriverAuthError,
    "MissingAuthenticationTokenException": DriverAuthError,
    "IncompleteSignatureException": DriverAuthError,
    "ExpiredTokenException": DriverAuthError,
    "AccessDeniedException": DriverAuthError,
}

ENDPOINT = "http://127.0.0.1:9"

EXPECTED_EXCEPTIONS: list[tuple[Exception, type[FlamingockError]]] = [
    (EndpointConnectionError(endpoint_url=ENDPOINT), DriverUnavailableError),
    (ConnectTimeoutError(endpoint_url=ENDPOINT), DriverUnavailableError),
    (ReadTimeoutError(endpoint_url=ENDPOINT), DriverUnavailableError),
    (ConnectionClosedError(endpoint_url=ENDPOINT), DriverUnavailableError),
    (NoCredentialsError(), DriverAuthError),
    (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), DriverAuthError),
    (CredentialRetrievalError(provider="sso", error_msg="expired"), DriverAuthError),
    (NoRegionError(), ConfigurationError),
    (ParamValidationError(report="missing TableName"), DriverError),
]


def offline_driver() -> DynamoDriver:
    return DynamoDriver(region=REGION, endpoint_url=ENDPOINT)


def test_every_handled_code_is_listed() -> None:
    assert set(HANDLED_ERROR_CODES) == set(EXPECTED_CODES)


@pytest.mark.parametrize("code", sorted(EXPECTED_CODES))
def test_client_error_code_mapped(code: str) -> None:
    error = ClientError(error_response(code, "server text"), "PutItem")
    translated = offline_driver().translate_error(error)
    assert type(translated) is EXPECTED_CODES[code]
    assert code in str(translated)
    assert "PutItem" in str(translated)


def test_every_handled_exception_is_listed() -> None:
    names = {type(error).__name__ for error, _ in EXPECTED_EXCEPTIONS}
    assert names == set(HANDLED_EXCEPTION_CLASSES)


@pytest.mark.parametrize(
    ("error", "expected"), EXPECTED_EXCEPTIONS, ids=lambda value: type(value).__name__
)
def test_exception_class_mapped(error: Exception, expected: type[FlamingockError]) -> None:
    translated = offline_driver().translate_error(error)
    assert type(translated) is expected


def test_unknown_code_is_driver_error() -> None:
    error = ClientError(error_response("SomethingNew", "new text"), "GetItem")
    translated = offline_driver().translate_error(error)
    assert type(translated) is DriverError
    assert "SomethingNew" in str(translated)


def test_auth_error_leaves_out_server_text() -> None:
    error = ClientError(error_response("InvalidSignatureException", "canonical AKIA123"), "Query")
    translated = offline_driver().translate_error(error)
    assert "AKIA123" not in str(translated)
    assert "secret access key" in str(translated)


async def test_unreachable_endpoint_named() -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    async with DynamoDriver(region=REGION, endpoint_url=endpoint, connect_timeout=1) as driver:
        with pytest.raises(DriverUnavailableError) as caught:
            await driver.setup()
    assert endpoint in str(caught.value)
    assert "could not be reached" in str(caught.value)


def test_endpoint_with_password_rejected() -> None:
    with pytest.raises(ConfigurationError) as caught:
        DynamoDriver(region=REGION, endpoint_url="http://user:hunter2@127.0.0.1:8000")
    assert "hunter2" not in str(caught.value)
    assert "credential chain" in str(caught.value)


async def test_missing_credentials(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        with pytest.raises(DriverAuthError) as caught:
            await driver.read_states()
    assert "AWS_ACCESS_KEY_ID" in str(caught.value)
    assert "NoCredentialsError" in str(caught.value)


async def test_missing_region(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    driver = DynamoDriver(endpoint_url=endpoint)
    with pytest.raises(ConfigurationError, match="region="):
        await driver.open()
    await driver.aclose()


async def test_no_secret_in_logs(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG)
    async with DynamoDriver(region=REGION, endpoint_url=endpoint) as driver:
        fence = await held_lock(driver)
        await driver.append_audit(entry("a"), fence)
        assert secret not in driver.describe()
    ours = [record for record in caplog.records if record.name.startswith("flamingock_async")]
    assert ours
    assert all(secret not in record.getMessage() for record in ours)
