"""Parsing of `mongodb://` and `mongodb+srv://` store URLs for `MongoDriver`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from .._errors import ConfigurationError
from . import redact_url

__all__ = ["parse_store_url", "DEFAULT_AUDIT_COLLECTION", "DEFAULT_LOCK_COLLECTION"]

DEFAULT_AUDIT_COLLECTION = "flamingock_audit"
DEFAULT_LOCK_COLLECTION = "flamingock_lock"

# Query parameters that the driver reads and removes before PyMongo receives the URL.
_URL_PARAMETERS = {
    "auditcollection": "auditCollection",
    "lockcollection": "lockCollection",
    "transactions": "transactions",
}


def parse_store_url(url: str) -> tuple[str, str, dict[str, Any]]:
    """Return the URL for PyMongo, the database name and the driver's keyword options.

    Raises `ConfigurationError`, with any password removed from the URL, when the scheme is
    not MongoDB's, the database is missing, or a query parameter is unknown or invalid.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("mongodb", "mongodb+srv"):
        raise ConfigurationError(
            f"The URL {redact_url(url)!r} is not a MongoDB URL; it must start with mongodb:// "
            "or mongodb+srv://."
        )
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigurationError(
            f"The MongoDB URL {redact_url(url)!r} names no database; add it as the path, as in "
            "mongodb://localhost:27017/myapp."
        )

    ours, theirs = _split_query(url, parts.query)
    driver_url = parts._replace(query=urlencode(theirs)).geturl()
    options: dict[str, Any] = {
        "audit_collection": ours.get("auditCollection", DEFAULT_AUDIT_COLLECTION),
        "lock_collection": ours.get("lockCollection", DEFAULT_LOCK_COLLECTION),
        "transactions": _parse_transactions(url, ours.get("transactions", "auto")),
    }
    timeout = next((v for k, v in theirs if k.lower() == "serverselectiontimeoutms"), None)
    if timeout is not None:
        options["server_selection_timeout"] = _parse_timeout(url, timeout)
    return driver_url, database, options


def _split_query(url: str, query: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Split the query into this driver's parameters and PyMongo's; reject unknown ones."""
    import pymongo.common

    known = set(pymongo.common.URI_OPTIONS_VALIDATOR_MAP) | set(
        pymongo.common.URI_OPTIONS_ALIAS_MAP
    )
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        canonical = _URL_PARAMETERS.get(name.lower())
        if canonical is not None:
            ours[canonical] = value
        elif name.lower() in known:
            theirs.append((name, value))
        else:
            accepted = ", ".join(sorted(_URL_PARAMETERS.values()))
            raise ConfigurationError(
                f"Unknown query parameter {name!r} in the MongoDB URL {redact_url(url)!r}; use "
                f"{accepted} or a PyMongo connection option."
            )
    return ours, theirs


def _parse_transactions(url: str, value: str) -> bool | None:
    choices: dict[str, bool | None] = {"true": True, "false": False, "auto": None}
    if value.lower() not in choices:
        raise ConfigurationError(
            f"transactions={value!r} in the MongoDB URL {redact_url(url)!r} is invalid; use "
            "true, false or auto."
        )
    return choices[value.lower()]


def _parse_timeout(url: str, value: str) -> float:
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = -1.0
    if milliseconds <= 0:
        raise ConfigurationError(
            f"serverSelectionTimeoutMS={value!r} in the MongoDB URL {redact_url(url)!r} is "
            "invalid; use a positive number of milliseconds."
        )
    return milliseconds / 1000
