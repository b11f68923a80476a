"""The cloud driver: the audit log and the lock kept by a Flamingock-compatible backend over HTTP.

The backend (`flamingock serve`, or a hosted one that speaks protocol version 1) owns the
store. This driver exchanges an API token for a short-lived bearer token, then maps each
operation of the driver contract onto one request:

| driver operation | request |
|---|---|
| `read_lock` | `GET .../lock/{key}` |
| `insert_lock`, `replace_lock` | `PUT .../lock/{key}` (compare-and-set on the version) |
| `read_states` | `GET .../audit/states` |
| `read_history` | `GET .../audit/history` |
| `append_audit` | `POST .../execution/{execution_id}/change/{change_id}/audit` (fenced) |

Every request is idempotent, so connection errors and responses marked `retryable` are retried
with exponential backoff and full jitter. The API token is kept out of `repr`, `describe()`
and every log line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import anyio

from .._audit import AuditEntry, new_id
from .._errors import (
    ConfigurationError,
    CorruptAuditEntryError,
    DriverAuthError,
    DriverError,
    DriverUnavailableError,
    FlamingockError,
    LockLostError,
    MissingDependencyError,
)
from .._lock import Fence, LockRecord
from . import redact_url
from ._base import Driver

if TYPE_CHECKING:
    import httpx

__all__ = ["CloudDriver", "from_url", "TOKEN_ENV", "RUNNER_ID_HEADER"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "FLAMINGOCK_API_TOKEN"
RUNNER_ID_HEADER = "X-Flamingock-Runner-Id"
API_PREFIX = "/api/v1"

# Seconds before the bearer token's expiry at which it is exchanged again.
_REFRESH_MARGIN = 30.0
_LOOPBACK_NAMES = {"localhost"}
# Field limits of protocol version 1, in characters (see the backend's AuditEntryModel).
_MAX_ERROR_MESSAGE = 20_000
_MAX_ERROR_TRACE = 200_000
_RUNNER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


class _Secret:
    """A string that never shows itself in `repr`, `str` or tracebacks of locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as error:
        raise MissingDependencyError("cloud", "httpx", "cloud") from error
    return httpx


class _ApiError(Exception):
    """An error response of the backend: `{code, message, retryable}` and the HTTP status."""

    def __init__(self, status: int, code: str, message: str, retryable: bool) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable


class CloudDriver(Driver):
    """Driver for a backend that speaks the Flamingock runner protocol, version 1.

    `base_url` is `https://HOST[:PORT][/PATH]`; plain `http://` is accepted only for loopback
    addresses. The API token comes from `api_token` or the `FLAMINGOCK_API_TOKEN`
    environment variable. `verify` is passed to httpx (a CA bundle path, an `SSLContext`,
    or False to switch verification off). `max_attempts` bounds the tries of one request,
    and the pause after failed try n is a random time up to `backoff * 2 ** n` seconds,
    capped at `max_backoff`. `runner_id` names this runner in the `X-Flamingock-Runner-Id`
    header (letters, digits, `.`, `_`, `:` or `-`). A `client` passed in is not closed.
    """

    name = "cloud"

    def __init__(
        self,
        base_url: str,
        *,
        environment: str,
        service: str,
        api_token: str | None = None,
        verify: Any = True,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        runner_id: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__()
        self.base_url = _check_base_url(base_url)

        if not environment or not service:
            raise ConfigurationError(
                f"The cloud driver for {self.base_url} needs an environment and a service; "
                "add ?environment=ENV&service=SERVICE to the URL."
            )
        token = api_token if api_token is not None else os.environ.get(TOKEN_ENV)
        if not token:
            raise ConfigurationError(
                f"No API token for the cloud driver at {redact_url(self.base_url)}; set the "
                f"{TOKEN_ENV} "
                "environment variable or pass api_token."
            )
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}.")
        if runner_id is not None and not _RUNNER_ID.match(runner_id):
            raise ConfigurationError(
                f"Invalid runner id {runner_id!r}: use 1 to 128 letters, digits, '.', '_', ':' "
                "or '-'."
            )

        self.environment = environment
        self.service = service
        self.runner_id = runner_id or new_id()
        self.verify = verify
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._api_token = _Secret(token)
        self._client = client
        self._owns_client = client is None
        self._access_token: _Secret | None = None
        self._access_expires_at = 0.0
        self.identity: dict[str, str] = {}
        """Ids of the organisation, project, environment and service, once authenticated."""

    def __repr__(self) -> str:
        return f"CloudDriver({self.describe()!r})"

    def describe(self) -> str:
        return (
            f"cloud {redact_url(self.base_url)} environment={self.environment} "
            f"service={self.service}"
        )

    @property
    def _service_path(self) -> str:
        environment = quote(self.environment, safe="")
        service = quote(self.service, safe="")
        return f"{API_PREFIX}/environment/{environment}/service/{service}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def _open(self) -> None:
        self._ensure_client()
        await self._bearer()

    async def _setup(self) -> None:
        # The backend creates its stores itself; checking the credentials is all there is.
        await self._open()

    async def _aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
        self._access_token = None

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            module = _import_httpx()
            self._client = module.AsyncClient(
                base_url=self.base_url, verify=self.verify, timeout=self.timeout
            )
        return self._client

    # -- lock records ------------------------------------------------------------------------

    async def _read_lock(self, key: str) -> LockRecord | None:
        body = await self._request("GET", self._lock_path(key))
        return _lock_from(body.get("lock"))

    async def _insert_lock(self, record: LockRecord) -> bool:
        payload = {"expected_version": None, "record": record.to_dict()}
        body = await self._request("PUT", self._lock_path(record.key), json=payload)
        return bool(body["applied"])

    async def _replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool:
        payload = {"expected_version": expected_version, "record": record.to_dict()}
        body = await self._request("PUT", self._lock_path(key), json=payload)
        return bool(body["applied"])

    def _lock_path(self, key: str) -> str:
        if "/" in key:
            raise ConfigurationError(
                f"The cloud driver cannot address the lock key {key!r}: a key sent in a URL "
                "path must not contain '/'; choose another LockSettings.key."
            )
        return f"{self._service_path}/lock/{quote(key, safe='')}"

    # -- audit log ---------------------------------------------------------------------------

    async def _read_states(self) -> list[AuditEntry]:
        body = await self._request("GET", f"{self._service_path}/audit/states")
        return _entries_from(body)

    async def _read_history(self, change_id: str | None) -> list[AuditEntry]:
        params = {"change_id": change_id} if change_id is not None else None
        body = await self._request("GET", f"{self._service_path}/audit/history", params=params)
        return _entries_from(body)

    async def _append_audit(self, entry: AuditEntry, fence: Fence) -> None:
        path = (
            f"{self._service_path}/execution/{quote(entry.execution_id, safe='')}"
            f"/change/{quote(entry.change_id, safe='')}/audit"
        )
        payload = {
            "entry": _fit_limits(entry.to_dict()),
            "fence": {"key": fence.key, "owner": fence.owner, "epoch": fence.epoch},
        }
        await self._request("POST", path, json=payload)

    # -- protocol operations beyond the driver contract --------------------------------------

    async def request_execution(
        self,
        stages: list[dict[str, Any]],
        *,
        lock_key: str = "flamingock",
        lease_ms: int = 30_000,
        last_acquisition_id: str | None = None,
        elapsed_ms: int | None = None,
    ) -> dict[str, Any]:
        """Ask the backend to plan an execution of `stages`; return its response.

        Each stage is `{"name": ..., "changes": [{"id", "order", "author", "transactional",
        "recovery", "run_always"}]}`. The response's `action` is `CONTINUE`, `EXECUTE` (with
        `execution_id`, the `lock` grant and an action per change), `AWAIT` (retry with
        `last_acquisition_id` and the time waited on this machine's clock) or `ABORT`.
        """
        payload = {
            "lock_key": lock_key,
            "lease_ms": lease_ms,
            "last_acquisition_id": last_acquisition_id,
            "elapsed_ms": elapsed_ms,
            "stages": stages,
        }
        return await self._request("POST", f"{self._service_path}/execution", json=payload)

    async def extend_lock(self, key: str, owner: str, acquisition_id: str) -> dict[str, Any]:
        """Extend the lease held by `owner`; return the grant with its new acquisition id."""
        payload = {"owner": owner, "acquisition_id": acquisition_id}
        return await self._request("POST", f"{self._lock_path(key)}/extend", json=payload)

    async def release_lock(self, key: str, owner: str, epoch: int) -> None:
        """Release the lock if `owner` holds it at `epoch`; raises `LockLostError` otherwise."""
        payload = {"owner": owner, "epoch": epoch}
        await self._request("POST", f"{self._lock_path(key)}/release", json=payload)

    # -- HTTP --------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one request with the bearer token, retrying what can be retried."""

        async def send_once() -> dict[str, Any]:
            try:
                return await self._send(
                    method, path, headers=await self._headers(), json=json, params=params
                )
            except _ApiError as error:
                if error.code != "TOKEN_EXPIRED":
                    raise
            # The bearer token expired early by our clock (the backend's clock runs ahead,
            # or the process was suspended): exchange the API token again, then resend once.
            self._access_token = None
            return await self._send(
                method, path, headers=await self._headers(), json=json, params=params
            )

        return await self._with_retries(method, path, send_once)

    async def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self._bearer()}", RUNNER_ID_HEADER: self.runner_id}

    async def _with_retries(
        self, method: str, path: str, send_once: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Call `send_once` until it succeeds, fails for good, or `max_attempts` is reached."""
        attempt = 1
        while True:
            try:
                return await send_once()
            except _ApiError as error:
                if not error.retryable or attempt >= self.max_attempts:
                    raise self._translate_api_error(error, method, path) from None
                reason = f"{error.status} {error.code}"
            except _TransportFailure as failure:
                if attempt >= self.max_attempts:
                    raise DriverUnavailableError(
                        f"{self.describe()}: {method} {path} failed after {attempt} attempts: "
                        f"{failure}; check that the backend is running and reachable."
                    ) from failure.__cause__
                reason = str(failure)
            await self._pause_before_retry(attempt, method, path, reason)
            attempt += 1

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        module = _import_httpx()
        client = self._ensure_client()
        try:
            response = await client.request(
                method, path, headers=dict(headers), json=json, params=params
            )
        except module.TransportError as error:
            if _caused_by(error, ssl.SSLCertVerificationError):
                raise DriverError(
                    f"{self.describe()}: the backend's TLS certificate failed verification "
                    f"({error}); give the CA that signed it with ?ca_file=PATH in the URL or "
                    "verify=ssl.create_default_context(cafile=PATH)."
                ) from error
            raise _TransportFailure(f"{type(error).__name__}: {error}") from error
        return _decode(response)

    async def _pause_before_retry(self, attempt: int, method: str, path: str, reason: str) -> None:
        pause = random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
        logger.warning(
            "%s %s failed (%s); retrying in %.2f s (attempt %d of %d)",
            method,
            path,
            reason,
            pause,
            attempt + 1,
            self.max_attempts,
        )
        await anyio.sleep(pause)

    async def _bearer(self) -> str:
        """Return a valid bearer token, exchanging the API token when needed."""
        if self._access_token is not None and time.monotonic() < self._access_expires_at:
            return self._access_token.reveal()
        path = f"{API_PREFIX}/auth/exchange-token"
        headers = {RUNNER_ID_HEADER: self.runner_id}

        async def send_once() -> dict[str, Any]:
            # Built per call, so the token is in `_send`'s arguments only while a request is
            # sent, and in no variable that outlives it.
            return await self._send("POST", path, headers=headers, json=self._exchange_body())

        body = await self._with_retries("POST", path, send_once)
        lifetime = float(body["expires_in"])
        self._access_token = _Secret(str(body["access_token"]))
        self._access_expires_at = time.monotonic() + max(lifetime - _REFRESH_MARGIN, lifetime / 2)
        self.identity = {
            name: str(body[name])
            for name in ("organization_id", "project_id", "environment_id", "service_id")
        }
        logger.debug("Authenticated to %s", self.describe())
        return self._access_token.reveal()

    def _exchange_body(self) -> dict[str, str]:
        return {
            "token": self._api_token.reveal(),
            "environment": self.environment,
            "service": self.service,
        }

    def _translate_api_error(self, error: _ApiError, method: str, path: str) -> FlamingockError:
        where = f"{self.describe()}: {method} {path}"
        if error.code in ("LOCK_LOST", "LOCK_NOT_HELD"):
            return LockLostError(error.message)
        if error.status in (401, 403):
            return DriverAuthError(
                f"{where} was rejected ({error.code}): {error.message} {self._auth_fix(error)}"
            )
        if error.retryable:
            return DriverUnavailableError(
                f"{where} failed after {self.max_attempts} attempts ({error.code}): {error.message}"
            )
        return DriverError(f"{where} failed ({error.status} {error.code}): {error.message}")

    def _auth_fix(self, error: _ApiError) -> str:
        """Return the advice for a rejected token: which token to set, and where."""
        scope = f"environment {self.environment!r} and service {self.service!r}"
        if error.code == "TOKEN_REVOKED":
            return f"Set an active API token for {scope} in {TOKEN_ENV}."
        return f"Check the API token in {TOKEN_ENV} and that it was created for {scope}."

    def translate_error(self, error: Exception) -> FlamingockError:
        return DriverError(f"{self.describe()}: {type(error).__name__}: {error}")


class _TransportFailure(Exception):
    """A request that got no response (connection refused, reset, timed out)."""


def _decode(response: httpx.Response) -> dict[str, Any]:
    """Return the JSON body of a success, or raise `_ApiError` for an error response."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return_error = _ApiError(
            response.status_code,
            body["code"],
            str(body.get("message", "")),
            bool(body.get("retryable", False)),
        )
    else:
        # A proxy or load balancer in front of the backend responded; 502 to 504 may pass.
        return_error = _ApiError(
            response.status_code,
            f"HTTP_{response.status_code}",
            f"unexpected response of {len(response.content)} bytes",
            response.status_code in (429, 502, 503, 504),
        )
    raise return_error


def _fit_limits(entry: dict[str, Any]) -> dict[str, Any]:
    """Shorten the error text of an audit entry to the backend's field limits.

    A failed change must still be audited when its traceback is huge, so the start of the
    message and the end of the trace (where the raising frame is) are kept.
    """
    message = entry.get("error_message")
    if isinstance(message, str) and len(message) > _MAX_ERROR_MESSAGE:
        entry["error_message"] = message[: _MAX_ERROR_MESSAGE - 20] + " ... (shortened)"
    trace = entry.get("error_trace")
    if isinstance(trace, str) and len(trace) > _MAX_ERROR_TRACE:
        entry["error_trace"] = "(shortened) ...\n" + trace[-(_MAX_ERROR_TRACE - 20) :]
    return entry


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, kind):
            return True
        current = current.__cause__ or current.__context__
    return False


def _lock_from(data: Any) -> LockRecord | None:
    if data is None:
        return None
    try:
        return LockRecord.from_dict(data)
    except TypeError as error:
        raise DriverError(f"The backend returned a malformed lock record: {error}") from error


def _entries_from(body: Mapping[str, Any]) -> list[AuditEntry]:
    entries = []
    for data in body.get("entries", []):
        try:
            entries.append(AuditEntry.from_dict(data))
        except (KeyError, TypeError, ValueError) as error:
            entry_id = data.get("entry_id", "?") if isinstance(data, dict) else "?"
            raise CorruptAuditEntryError(
                f"The backend returned audit entry {entry_id!r} that cannot be read: {error}",
                record_key=str(entry_id),
            ) from error
    return entries


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"Invalid cloud backend URL {url!r}: expected https://HOST[:PORT][/PATH]."
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"Plain http is accepted only for loopback addresses, not {parts.hostname!r}; "
            "use an https:// URL for the backend."
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def from_url(url: str) -> CloudDriver:
    """Build a driver from `https://HOST[:PORT][/PATH]?environment=ENV&service=SERVICE`.

    Optional query parameters: `timeout` (seconds per request), `max_attempts`, `ca_file`
    (a PEM file of the CA that signed the backend's certificate, for a private CA), and
    `verify=false` to switch TLS verification off (never do it in production).
    """
    parts = urlsplit(url)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    if any(name.lower().endswith("token") for name in query):
        raise ConfigurationError(
            "Do not put the API token in the store URL, where logs and shells record it; "
            f"set the {TOKEN_ENV} environment variable instead."
        )
    known = {"environment", "service", "timeout", "max_attempts", "verify", "ca_file"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ConfigurationError(
            f"Unknown cloud URL parameter {unknown[0]!r}; accepted: {', '.join(sorted(known))}."
        )
    base = parts._replace(query="", fragment="").geturl()
    return CloudDriver(
        base,
        environment=query.get("environment", ""),
        service=query.get("service", ""),
        timeout=_number(query, "timeout", 10.0),
        max_attempts=int(_number(query, "max_attempts", 5)),
        verify=_verify_option(query),
    )


def _verify_option(query: Mapping[str, str]) -> bool | ssl.SSLContext:
    if query.get("verify", "true").lower() in ("false", "0", "no"):
        return False
    if "ca_file" not in query:
        return True
    try:
        return ssl.create_default_context(cafile=query["ca_file"])
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(
            f"The cloud URL parameter ca_file={query['ca_file']!r} is not a readable PEM "
            f"CA file: {error}."
        ) from error


def _number(query: Mapping[str, str], name: str, default: float) -> float:
    if name not in query:
        return default
    try:
        return float(query[name])
    except ValueError:
        raise ConfigurationError(
            f"The cloud URL parameter {name}={query[name]!r} is not a number."
        ) from None
