"""`dynamodb://` store URLs and the driver's options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flamingock_async import ConfigurationError, MissingDependencyError
from flamingock_async.drivers import driver_from_url
from flamingock_async.drivers.dynamodb import DynamoDriver, from_url


def test_url_sets_every_option() -> None:
    driver = from_url(
        "dynamodb://audit_x?region=eu-west-1&endpoint_url=http://127.0.0.1:8000&lock_table=lock_x"
    )
    assert driver.audit_table == "audit_x"
    assert driver.lock_table == "lock_x"
    assert driver.region == "eu-west-1"
    assert driver.endpoint_url == "http://127.0.0.1:8000"
    assert driver.billing_mode == "PAY_PER_REQUEST"


def test_url_defaults() -> None:
    driver = from_url("dynamodb://")
    assert driver.audit_table == "flamingock_audit"
    assert driver.lock_table == "flamingock_lock"
    assert driver.region is None
    assert driver.endpoint_url is None


def test_url_provisioned() -> None:
    driver = from_url("dynamodb://audit?billing_mode=PROVISIONED&read_capacity=5&write_capacity=2")
    assert driver.billing_mode == "PROVISIONED"
    assert driver.provisioned_throughput == (5, 2)


def test_driver_from_url_picks_dynamodb() -> None:
    assert isinstance(driver_from_url("dynamodb://audit?region=us-east-1"), DynamoDriver)


def test_url_unknown_parameter() -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url("dynamodb://audit?regoin=us-east-1")
    assert "'regoin'" in str(caught.value)
    assert "region" in str(caught.value)


def test_url_credentials_rejected() -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url("dynamodb://AKIA:topsecret@audit?region=us-east-1")
    assert "topsecret" not in str(caught.value)
    assert "credential chain" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "dynamodb://audit/extra",
        "dynamodb://audit?region=a&region=b",
        "dynamodb://audit?region=",
        "dynamodb://a?region=us-east-1",
        "dynamodb://audit?billing_mode=FREE",
        "dynamodb://audit?billing_mode=PROVISIONED&read_capacity=x&write_capacity=1",
        "dynamodb://audit?billing_mode=PROVISIONED",
        "dynamodb://audit?read_capacity=1&write_capacity=1",
        "dynamodb://audit?endpoint_url=ftp://127.0.0.1",
        "dynamodb://audit?lock_table=audit",
    ],
)
def test_url_invalid(url: str) -> None:
    with pytest.raises(ConfigurationError):
        from_url(url)


def test_session_and_client_exclusive() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        DynamoDriver(session=object(), client=object())


def test_client_with_endpoint_rejected() -> None:
    with pytest.raises(ConfigurationError, match="no effect with client="):
        DynamoDriver(client=object(), endpoint_url="http://127.0.0.1:8000")


def test_missing_aioboto3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aioboto3", None)
    with pytest.raises(MissingDependencyError) as caught:
        DynamoDriver(region="us-east-1")
    assert caught.value.extra == "dynamodb"
    assert "flamingock-async[dynamodb]" in str(caught.value)


def test_module_import_skips_aioboto3() -> None:
    code = (
        "import sys, flamingock_async, flamingock_async.drivers.dynamodb; "
        "print(sorted(name for name in ('aioboto3', 'boto3', 'botocore') if name in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
