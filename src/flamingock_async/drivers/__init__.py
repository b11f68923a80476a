"""Drivers: stores of the audit log and the lock.

Each driver lives in its own module and imports its store library only when it is used, so
`import flamingock_async` imports none of them. `driver_from_url` picks one by URL scheme.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from .._errors import ConfigurationError
from ._base import ChangeBodyFailed, Driver, DriverStats, TransactionBody

__all__ = [
    "Driver",
    "DriverStats",
    "TransactionBody",
    "ChangeBodyFailed",
    "driver_from_url",
    "redact_url",
]

# URL scheme -> module whose `from_url(url)` builds the driver.
_SCHEMES = {
    "memory": "flamingock_async.drivers.memory_url",
    "sqlite": "flamingock_async.drivers.sqlite",
    "mongodb": "flamingock_async.drivers.mongodb",
    "mongodb+srv": "flamingock_async.drivers.mongodb",
    "dynamodb": "flamingock_async.drivers.dynamodb",
    "http": "flamingock_async.drivers.cloud",
    "https": "flamingock_async.drivers.cloud",
}


def driver_from_url(url: str) -> Driver:
    """Build a driver from a store URL such as `sqlite:///app.db` or `mongodb://host/db`.

    Raises `ConfigurationError` naming the URL (credentials removed) and the accepted forms.
    """
    try:
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    except ValueError as error:
        raise ConfigurationError(
            f"Invalid store URL {_mask_user_info(url)!r}: {error}. "
            "Write it as SCHEME://... (for example sqlite:///app.db)."
        ) from error
    module_name = _SCHEMES.get(scheme)
    if module_name is None:
        accepted = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
        raise ConfigurationError(
            f"Unsupported store URL {redact_url(url)!r}: the scheme must be one of {accepted} "
            "(for example sqlite:///app.db)."
        )
    module = importlib.import_module(module_name)
    driver: Driver = module.from_url(url)
    return driver


def redact_url(url: str) -> str:
    """Return `url` with any password or token in it replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None and "token=" not in parts.query.lower():
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}"
    query = "&".join(
        f"{name}=***" if name.lower().endswith("token") else f"{name}={value}"
        for name, _, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def _mask_user_info(url: str) -> str:
    """Return a URL that cannot be parsed with anything before its last `@` masked."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
