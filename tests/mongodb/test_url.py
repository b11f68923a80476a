"""Store URLs for MongoDB: parsing, options for the driver, and credentials kept out of sight."""

from __future__ import annotations

import sys

import pytest

from flamingock_async import ConfigurationError, MissingDependencyError
from flamingock_async.drivers import driver_from_url
from flamingock_async.drivers.mongodb import MongoDriver, from_url

from .conftest import free_port, open_unreachable


def test_database_from_path() -> None:
    driver = from_url("mongodb://db.example:27017/orders")
    assert driver.describe() == "MongoDB at db.example:27017/orders"


def test_missing_pymongo_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymongo", None)
    with pytest.raises(MissingDependencyError) as caught:
        driver_from_url("mongodb://localhost/orders?auditCollection=history")
    assert caught.value.extra == "mongodb"
    assert "flamingock-async[mongodb]" in str(caught.value)


def test_driver_from_url_picks_mongodb() -> None:
    assert isinstance(driver_from_url("mongodb://localhost/orders"), MongoDriver)


def test_srv_scheme_accepted() -> None:
    driver = driver_from_url("mongodb+srv://cluster0.example.net/orders")
    assert isinstance(driver, MongoDriver)
    assert driver.describe() == "MongoDB at cluster0.example.net/orders"


def test_collection_names_from_query() -> None:
    driver = from_url("mongodb://localhost/orders?auditCollection=history&lockCollection=leases")
    assert driver._audit_name == "history"
    assert driver._lock_name == "leases"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("auto", None), ("FALSE", False)],
)
def test_transactions_from_query(value: str, expected: bool | None) -> None:
    driver = from_url(f"mongodb://localhost/orders?transactions={value}")
    assert driver._requested_transactions is expected


def test_transactions_invalid_value() -> None:
    with pytest.raises(ConfigurationError, match="transactions='maybe'"):
        from_url("mongodb://localhost/orders?transactions=maybe")


def test_unknown_parameter_rejected() -> None:
    with pytest.raises(ConfigurationError, match="'auditCollecton'"):
        from_url("mongodb://localhost/orders?auditCollecton=x")


def test_pymongo_options_kept() -> None:
    driver = from_url("mongodb://localhost/orders?replicaSet=rs0&transactions=false&w=majority")
    assert driver._url == "mongodb://localhost/orders?replicaSet=rs0&w=majority"


def test_timeout_from_query() -> None:
    driver = from_url("mongodb://localhost/orders?serverSelectionTimeoutMS=1500")
    assert driver._timeout == 1.5


def test_invalid_timeout_rejected() -> None:
    with pytest.raises(ConfigurationError, match="serverSelectionTimeoutMS='soon'"):
        from_url("mongodb://localhost/orders?serverSelectionTimeoutMS=soon")


def test_missing_database_rejected() -> None:
    with pytest.raises(ConfigurationError, match="names no database"):
        from_url("mongodb://localhost:27017")


def test_empty_database_name_rejected() -> None:
    with pytest.raises(ConfigurationError, match="database name"):
        MongoDriver("mongodb://localhost", "")


def test_invalid_collection_name_rejected() -> None:
    with pytest.raises(ConfigurationError, match="audit_collection"):
        MongoDriver("mongodb://localhost", "orders", audit_collection="bad$name")


def test_describe_hides_credentials() -> None:
    driver = from_url("mongodb://admin:s3cret-pass@db.example:27017/orders?authSource=admin")
    assert "s3cret-pass" not in driver.describe()
    assert "admin" not in driver.describe()


def test_url_error_hides_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url("mongodb://admin:s3cret-pass@db.example/orders?bogus=1")
    assert "s3cret-pass" not in str(caught.value)


def test_unreachable_error_hides_password() -> None:
    port = free_port()
    url = f"mongodb://admin:s3cret-pass@127.0.0.1:{port}/orders?serverSelectionTimeoutMS=200"
    error_type, message, logs = open_unreachable(url)
    assert error_type == "DriverUnavailableError"
    assert "s3cret-pass" not in message
    assert "s3cret-pass" not in logs


def test_url_without_scheme_rejected() -> None:
    with pytest.raises(ConfigurationError, match="mongodb://"):
        from_url("postgres://localhost/orders")


def test_client_of_wrong_type_rejected() -> None:
    with pytest.raises(ConfigurationError, match="got dict"):
        MongoDriver({"host": "localhost"}, "orders")
