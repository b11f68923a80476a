"""Native PyMongo errors become flamingock-async errors in one place; bad input is reported."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pymongo.errors
import pytest
from bson.errors import InvalidDocument

from flamingock_async import (
    ConfigurationError,
    DriverAuthError,
    DriverError,
    DriverUnavailableError,
    FlamingockError,
)
from flamingock_async.drivers.mongodb import MongoDriver

from .conftest import MongoServer, free_port, open_unreachable


def _operation_failure(cls: type[Any], code: int, message: str = "failed") -> Any:
    return cls(message, code, {"ok": 0, "errmsg": message, "code": code})


# Every exception class PyMongo 4 defines, with an instance and the error it must become.
EXPECTED: dict[str, tuple[Callable[[], Exception], type[FlamingockError]]] = {
    "PyMongoError": (lambda: pymongo.errors.PyMongoError("boom"), DriverError),
    "ProtocolError": (lambda: pymongo.errors.ProtocolError("bad reply"), DriverError),
    "ConnectionFailure": (
        lambda: pymongo.errors.ConnectionFailure("refused"),
        DriverUnavailableError,
    ),
    "AutoReconnect": (lambda: pymongo.errors.AutoReconnect("reset"), DriverUnavailableError),
    "NetworkTimeout": (lambda: pymongo.errors.NetworkTimeout("timed out"), DriverUnavailableError),
    "NotPrimaryError": (
        lambda: pymongo.errors.NotPrimaryError("stepped down"),
        DriverUnavailableError,
    ),
    "ServerSelectionTimeoutError": (
        lambda: pymongo.errors.ServerSelectionTimeoutError("no servers"),
        DriverUnavailableError,
    ),
    "WaitQueueTimeoutError": (
        lambda: pymongo.errors.WaitQueueTimeoutError("pool full"),
        DriverUnavailableError,
    ),
    "_OperationCancelled": (
        lambda: pymongo.errors._OperationCancelled("cancelled"),
        DriverUnavailableError,
    ),
    "ConfigurationError": (
        lambda: pymongo.errors.ConfigurationError("bad option"),
        ConfigurationError,
    ),
    "InvalidURI": (lambda: pymongo.errors.InvalidURI("bad uri"), ConfigurationError),
    "InvalidName": (lambda: pymongo.errors.InvalidName("bad name"), ConfigurationError),
    "OperationFailure": (
        lambda: _operation_failure(pymongo.errors.OperationFailure, 2),
        DriverError,
    ),
    "ExecutionTimeout": (
        lambda: _operation_failure(pymongo.errors.ExecutionTimeout, 50),
        DriverUnavailableError,
    ),
    "CursorNotFound": (
        lambda: _operation_failure(pymongo.errors.CursorNotFound, 43),
        DriverError,
    ),
    "WriteError": (lambda: _operation_failure(pymongo.errors.WriteError, 121), DriverError),
    "DuplicateKeyError": (
        lambda: _operation_failure(pymongo.errors.DuplicateKeyError, 11000),
        DriverError,
    ),
    "WriteConcernError": (
        lambda: _operation_failure(pymongo.errors.WriteConcernError, 100),
        DriverError,
    ),
    "WTimeoutError": (lambda: _operation_failure(pymongo.errors.WTimeoutError, 64), DriverError),
    "BulkWriteError": (
        lambda: pymongo.errors.BulkWriteError({"writeErrors": [], "nInserted": 0}),
        DriverError,
    ),
    "ClientBulkWriteException": (
        lambda: pymongo.errors.ClientBulkWriteException({"writeErrors": []}, True),
        DriverError,
    ),
    "CollectionInvalid": (lambda: pymongo.errors.CollectionInvalid("exists"), DriverError),
    "InvalidOperation": (lambda: pymongo.errors.InvalidOperation("closed"), DriverError),
    "EncryptionError": (
        lambda: pymongo.errors.EncryptionError(ValueError("no key")),
        DriverError,
    ),
    "EncryptedCollectionError": (
        lambda: pymongo.errors.EncryptedCollectionError(ValueError("no key"), {}),
        DriverError,
    ),
    "InvalidDocument": (lambda: InvalidDocument("cannot encode object"), DriverError),
    "DocumentTooLarge": (lambda: pymongo.errors.DocumentTooLarge("too large"), DriverError),
}


def _pymongo_error_classes() -> set[str]:
    return {
        name
        for name, cls in inspect.getmembers(pymongo.errors, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ in ("pymongo.errors", "bson.errors")
    }


def test_every_pymongo_error_listed() -> None:
    assert _pymongo_error_classes() - set(EXPECTED) == set()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pymongo_error_translated(name: str) -> None:
    build, expected = EXPECTED[name]
    driver = MongoDriver("mongodb://db.example/orders", "orders")
    translated = driver.translate_error(build())
    assert type(translated) is expected
    assert "db.example" in str(translated)


@pytest.mark.parametrize("code", [13, 18])
def test_auth_codes_translated(code: int) -> None:
    driver = MongoDriver("mongodb://db.example/orders", "orders")
    error = _operation_failure(pymongo.errors.OperationFailure, code, "Authentication failed.")
    assert type(driver.translate_error(error)) is DriverAuthError


def test_invalid_namespace_translated() -> None:
    driver = MongoDriver("mongodb://db.example/orders", "orders")
    error = _operation_failure(pymongo.errors.OperationFailure, 73, "db name is too long")
    assert type(driver.translate_error(error)) is ConfigurationError


def test_standalone_transaction_translated() -> None:
    driver = MongoDriver("mongodb://db.example/orders", "orders")
    message = "Transaction numbers are only allowed on a replica set member or mongos"
    error = _operation_failure(pymongo.errors.OperationFailure, 20, message)
    translated = driver.translate_error(error)
    assert type(translated) is ConfigurationError
    assert "transactions=False" in str(translated)


def test_other_exception_translated() -> None:
    driver = MongoDriver("mongodb://db.example/orders", "orders")
    assert type(driver.translate_error(RuntimeError("odd"))) is DriverError


def test_unreachable_server_reported() -> None:
    port = free_port()
    url = f"mongodb://127.0.0.1:{port}/orders?serverSelectionTimeoutMS=300"
    error_type, message, _ = open_unreachable(url)
    assert error_type == "DriverUnavailableError"
    assert f"127.0.0.1:{port}" in message
    assert "0.3 s" in message
    assert "raise serverSelectionTimeoutMS in the store URL" in message


async def test_invalid_database_name(mongo_server: MongoServer) -> None:
    driver = MongoDriver(mongo_server.uri, "bad$name", transactions=False)
    with pytest.raises(ConfigurationError, match="'bad\\$name'"):
        await driver.open()
    await driver.aclose()


async def test_database_with_dot_rejected(mongo_server: MongoServer) -> None:
    driver = MongoDriver(mongo_server.uri, "orders.v2", transactions=False)
    with pytest.raises(ConfigurationError, match=r"'orders\.v2'"):
        await driver.open()
    await driver.aclose()


@pytest.mark.real_mongodb
async def test_too_long_database_name(mongo_server: MongoServer) -> None:
    """MongoDB rejects database names of 64 bytes or more on the first write."""
    driver = MongoDriver(mongo_server.uri, "d" * 70, transactions=False)
    await driver.open()
    with pytest.raises(ConfigurationError):
        await driver.setup()
    await driver.aclose()


@pytest.mark.real_mongodb
async def test_wrong_credentials(mongo_server: MongoServer, database_name: str) -> None:
    """Against a server that enforces authentication, a wrong password is an auth error."""
    host = mongo_server.uri.split("://", 1)[1].rpartition("@")[2].split("/", 1)[0]
    url = f"mongodb://flamingock-nobody:wrong-password@{host}/{database_name}"
    driver = MongoDriver(url, database_name, server_selection_timeout=5)
    with pytest.raises(DriverAuthError) as caught:
        await driver.open()
    await driver.aclose()
    assert "wrong-password" not in str(caught.value)


def test_lock_write_timeout_translated() -> None:
    driver = MongoDriver("mongodb://db.example/orders", "orders")
    translated = driver.translate_error(TimeoutError())
    assert type(translated) is DriverUnavailableError
    assert "db.example" in str(translated)
