"""Choosing a driver by store URL, and keeping credentials out of messages."""

from __future__ import annotations

import pytest

from flamingock_async import ConfigurationError
from flamingock_async.drivers import driver_from_url, redact_url


def test_unknown_scheme_names_accepted_forms() -> None:
    with pytest.raises(ConfigurationError) as raised:
        driver_from_url("postgres://app:secret@db/app")

    message = str(raised.value)
    assert "sqlite://" in message
    assert "secret" not in message


def test_unparsable_url_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        driver_from_url("mongodb://admin:hunter2@[::1/app")

    assert "hunter2" not in str(raised.value)


def test_url_without_scheme_rejected() -> None:
    with pytest.raises(ConfigurationError):
        driver_from_url("app.db")


def test_redact_url_hides_password_and_tokens() -> None:
    redacted = redact_url("https://ci:pw@backend:8443/?service=api&api_token=abc")

    assert "pw" not in redacted.split("@")[0].split(":", 2)[-1]
    assert "abc" not in redacted
    assert "service=api" in redacted


def test_redact_url_keeps_url_without_secrets() -> None:
    assert redact_url("sqlite:///app.db") == "sqlite:///app.db"
