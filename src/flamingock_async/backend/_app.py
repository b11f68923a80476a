"""The FastAPI application of the self-hosted backend (protocol version 1)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._audit import AuditEntry
from .._errors import CorruptAuditEntryError, DriverError, DriverUnavailableError, LockLostError
from .._lock import Fence, LockRecord
from .._version import __version__
from ..drivers import Driver, driver_from_url
from . import _service
from ._meta import NAME_PATTERN, metadata_store_from_url
from ._models import (
    AppendRequest,
    AppendResponse,
    CompareAndSetRequest,
    CompareAndSetResponse,
    EntriesResponse,
    ErrorBody,
    ExchangeRequest,
    ExchangeResponse,
    ExecutionRequest,
    ExecutionResponse,
    ExtendRequest,
    HealthResponse,
    LockGrant,
    LockModel,
    LockView,
    ReleaseRequest,
    ReleaseResponse,
)
from ._settings import ServerSettings
from ._tokens import Claims, TokenExpired, TokenInvalid, decode_jwt, issue_jwt

__all__ = ["create_app", "ApiError"]

logger = logging.getLogger(__name__)

RUNNER_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

PROTOCOL_DESCRIPTION = """
A runner exchanges its API token at `POST /api/v1/auth/exchange-token` for a short-lived
bearer token limited to one environment and service. Every other request sends
`Authorization: Bearer TOKEN` and an `X-Flamingock-Runner-Id` header.

**Planning.** `POST .../execution` returns `CONTINUE` (nothing to do), `EXECUTE` (an
execution id, a lock grant, and `APPLY`, `SKIP` or `MANUAL_INTERVENTION` per change), `AWAIT`
(another runner holds the lock) or `ABORT` (the pipeline is invalid). After `AWAIT`, the
runner sends the request again with the acquisition id it was shown and the milliseconds it
has waited on its own clock. It takes over only when that acquisition id is still current and the
wait is longer than the lease, so the backend never compares clocks of two machines.

**Lock.** Every write to a lock increments its version and changes its acquisition id. Each
acquisition increments its epoch. `PUT .../lock/{key}` is a compare-and-set on the version
(insert when `expected_version` is null). Extend and release succeed only for the owner.

**Audit.** `POST .../execution/{execution_id}/change/{change_id}/audit` appends an entry only
while the fence (lock key, owner, epoch) still holds the lock, and responds 409 `LOCK_LOST`
otherwise. Sending the same `entry_id` again stores nothing new.

**Errors** are JSON `{code, message, retryable}`. Requests may be repeated safely: a
compare-and-set that finds its own record already stored reports `applied: true`.
"""


class ApiError(Exception):
    """An error response: HTTP status, a stable code, a message and whether to retry."""

    def __init__(self, status: int, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable


def _error_response(status: int, code: str, message: str, retryable: bool = False) -> JSONResponse:
    body = ErrorBody(code=code, message=message, retryable=retryable)
    return JSONResponse(body.model_dump(), status_code=status)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


_AUTH_ERRORS = _errors(401, 403, 404, 413, 422, 503)


# -- per-process resources ----------------------------------------------------------------


class _Backend:
    """Connections this process keeps open: the metadata database and one driver per service.

    They are caches of connections only; every fact lives in the stores.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.meta = metadata_store_from_url(settings.metadata_location)
        self.signing_secret = ""
        self._drivers: dict[str, tuple[Driver, anyio.Lock]] = {}
        self._opening = anyio.Lock()

    async def start(self) -> None:
        self.settings.create_data_dir()
        # Building a driver checks the store URL now rather than at the first request.
        driver_from_url(self.settings.store_url_for("startup_check"))
        await self.meta.open()
        configured = self.settings.jwt_secret
        self.signing_secret = (
            configured.get_secret_value() if configured else await self.meta.signing_secret()
        )

    async def stop(self) -> None:
        for driver, _ in self._drivers.values():
            await driver.aclose()
        self._drivers.clear()
        await self.meta.aclose()

    @contextlib.asynccontextmanager
    async def driver(self, claims: Claims) -> AsyncIterator[Driver]:
        """Yield the service's driver; requests of one service take turns within a process."""
        namespace = f"{claims.environment_id}_{claims.service_id}"
        entry = self._drivers.get(namespace)
        if entry is None:
            async with self._opening:
                entry = self._drivers.get(namespace)
                if entry is None:
                    entry = (await self._open_driver(namespace), anyio.Lock())
                    self._drivers[namespace] = entry
        driver, lock = entry
        async with lock:
            yield driver

    async def _open_driver(self, namespace: str) -> Driver:
        driver = driver_from_url(self.settings.store_url_for(namespace))
        try:
            await driver.open()
            await driver.setup()
        except BaseException:
            # Not cached, so the next request tries again; close what this attempt opened.
            with anyio.CancelScope(shield=True):
                await driver.aclose()
            raise
        return driver


# -- request size limit -------------------------------------------------------------------


class BodySizeLimit:
    """Respond 413 to any request whose body exceeds `max_bytes`, before the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error_response(
            413,
            "PAYLOAD_TOO_LARGE",
            f"The request body exceeds the limit of {self.max_bytes} bytes.",
        )
        await response(scope, receive, send)


# -- the application ----------------------------------------------------------------------


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the backend application; its lifespan opens and closes the stores."""
    backend = _Backend(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        logger.info(
            "Backend started on data directory %s with metadata in %s",
            settings.data_dir,
            backend.meta.location,
        )
        try:
            yield
        finally:
            await backend.stop()
            logger.info("Backend stopped")

    app = FastAPI(
        title="Flamingock runner API",
        version=__version__,
        summary="Planning, lease locks and audit logs for flamingock-async runners, protocol 1.",
        description=PROTOCOL_DESCRIPTION,
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    app.state.backend = backend
    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        if error.status in (401, 403):
            client = request.client.host if request.client else "unknown"
            logger.warning(
                "Rejected %s %s from %s: %s", request.method, request.url.path, client, error.code
            )
        return _error_response(error.status, error.code, error.message, error.retryable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette logs the traceback after this handler; the client gets the error format.
        return _error_response(500, "INTERNAL_ERROR", "The backend failed unexpectedly.")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # Only locations and reasons: the rejected values may contain a token.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()[:5]
        )
        return _error_response(422, "INVALID_REQUEST", f"The request is invalid: {problems}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400:
            # Starlette responds 400 to a body it cannot decode, which is one more invalid request.
            return _error_response(
                422, "INVALID_REQUEST", f"The request is invalid: {error.detail}."
            )
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "HTTP_ERROR")
        response = _error_response(error.status_code, code, str(error.detail))
        response.headers.update(error.headers or {})
        if error.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(LockLostError)
    async def lock_lost(request: Request, error: LockLostError) -> JSONResponse:
        return _error_response(409, "LOCK_LOST", str(error))

    @app.exception_handler(_service.LockNotHeld)
    async def lock_not_held(request: Request, error: _service.LockNotHeld) -> JSONResponse:
        return _error_response(409, "LOCK_NOT_HELD", str(error))

    @app.exception_handler(CorruptAuditEntryError)
    async def corrupt(request: Request, error: CorruptAuditEntryError) -> JSONResponse:
        logger.error("Corrupt audit record %s: %s", error.record_key, error)
        return _error_response(500, "CORRUPT_AUDIT_ENTRY", str(error))

    @app.exception_handler(DriverError)
    async def store_error(request: Request, error: DriverError) -> JSONResponse:
        logger.error("Store error on %s %s: %s", request.method, request.url.path, error)
        code = "STORE_UNAVAILABLE" if isinstance(error, DriverUnavailableError) else "STORE_ERROR"
        return _error_response(503, code, "The backend's store failed; retry later.", True)

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, error: RecursionError) -> JSONResponse:
        return _error_response(422, "INVALID_REQUEST", "The request body is nested too deeply.")


def _allowed_methods(request: Request) -> list[str]:
    """Return every method some route accepts on the request's path.

    Starlette's own `Allow` header names only the first route that matches the path, but
    GET and PUT of a lock are two routes.
    """
    allowed: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            allowed.update(getattr(route, "methods", None) or ())
    return sorted(allowed)


# -- authentication -----------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="The access token of exchange-token.")

EnvironmentName = Annotated[str, Path(pattern=NAME_PATTERN)]
ServiceName = Annotated[str, Path(pattern=NAME_PATTERN)]
RunnerId = Annotated[str, Header(alias="X-Flamingock-Runner-Id", pattern=RUNNER_ID_PATTERN)]


@dataclasses.dataclass(frozen=True, slots=True)
class _Caller:
    """The backend, the verified token claims and the runner id of one request."""

    backend: _Backend
    claims: Claims
    runner_id: str


LockKey = Annotated[str, Path(min_length=1, max_length=200)]
router = APIRouter()


def _backend_of(request: Request) -> _Backend:
    backend: _Backend = request.app.state.backend
    return backend


async def authenticate(
    request: Request,
    environment: EnvironmentName,
    service: ServiceName,
    runner_id: RunnerId,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> _Caller:
    backend = _backend_of(request)
    if credentials is None:
        raise ApiError(401, "UNAUTHENTICATED", "Send 'Authorization: Bearer TOKEN'.")
    try:
        claims = decode_jwt(credentials.credentials, backend.signing_secret)
    except TokenExpired:
        raise ApiError(
            401, "TOKEN_EXPIRED", "The bearer token expired; exchange the API token again."
        ) from None
    except TokenInvalid:
        raise ApiError(401, "INVALID_TOKEN", "The bearer token is invalid.") from None
    stored = await backend.meta.get_token(claims.token_id)
    if stored is None or stored.claims != claims:
        raise ApiError(401, "INVALID_TOKEN", "The bearer token is invalid.")
    if stored.revoked:
        raise ApiError(401, "TOKEN_REVOKED", f"API token {claims.token_id} was revoked.")
    if (claims.environment, claims.service) != (environment, service):
        raise ApiError(
            403,
            "FORBIDDEN",
            f"API token {claims.token_id} is limited to environment {claims.environment!r} "
            f"and service {claims.service!r}.",
        )
    return _Caller(backend, claims, runner_id)


Caller = Annotated[_Caller, Depends(authenticate)]
base = "/api/v1/environment/{environment}/service/{service}"


@router.get("/api/v1/health", response_model=HealthResponse, tags=["health"])
async def health() -> HealthResponse:
    """Report that the backend is up; needs no token."""
    return HealthResponse()


@router.post(
    "/api/v1/auth/exchange-token",
    response_model=ExchangeResponse,
    responses=_errors(401, 403, 413, 422, 503),
    tags=["auth"],
)
async def exchange_token(
    request: Request,
    body: ExchangeRequest,
    runner_id: Annotated[
        str | None, Header(alias="X-Flamingock-Runner-Id", pattern=RUNNER_ID_PATTERN)
    ] = None,
) -> ExchangeResponse:
    """Exchange an API token for a short-lived bearer token limited to one service."""
    backend = _backend_of(request)
    info = await backend.meta.verify_api_token(body.token)
    if info is None:
        raise ApiError(401, "INVALID_TOKEN", "The API token is not valid.")
    if info.revoked:
        raise ApiError(401, "TOKEN_REVOKED", f"API token {info.token_id} was revoked.")
    claims = info.claims
    if (claims.environment, claims.service) != (body.environment, body.service):
        raise ApiError(
            403,
            "FORBIDDEN",
            f"API token {info.token_id} is limited to environment {claims.environment!r} "
            f"and service {claims.service!r}.",
        )
    ttl = backend.settings.token_ttl_seconds
    logger.info(
        "Issued a bearer token for API token %s (%s/%s) to runner %s",
        info.token_id,
        claims.environment,
        claims.service,
        runner_id or "unnamed",
    )
    return ExchangeResponse(
        access_token=issue_jwt(claims, backend.signing_secret, ttl),
        expires_in=ttl,
        organization_id=claims.organization_id,
        project_id=claims.project_id,
        environment_id=claims.environment_id,
        service_id=claims.service_id,
        organization=info.organization,
        project=info.project,
        environment=claims.environment,
        service=claims.service,
    )


@router.post(
    f"{base}/execution",
    response_model=ExecutionResponse,
    response_model_by_alias=True,
    responses=_AUTH_ERRORS,
    tags=["execution"],
)
async def request_execution(body: ExecutionRequest, caller: Caller) -> ExecutionResponse:
    """Plan a run: CONTINUE, EXECUTE with a lock grant, AWAIT another runner, or ABORT."""
    async with caller.backend.driver(caller.claims) as driver:
        return await _service.plan_execution(driver, body, caller.runner_id)


@router.post(
    f"{base}/execution/{{execution_id}}/change/{{change_id}}/audit",
    response_model=AppendResponse,
    responses=_errors(401, 403, 404, 409, 413, 422, 503),
    tags=["audit"],
)
async def append_audit(
    execution_id: Annotated[str, Path(min_length=1, max_length=200)],
    change_id: Annotated[str, Path(min_length=1, max_length=200)],
    body: AppendRequest,
    caller: Caller,
) -> AppendResponse:
    """Append an audit entry if the fence is still the lock's holder; idempotent by entry_id."""
    if (body.entry.execution_id, body.entry.change_id) != (execution_id, change_id):
        raise ApiError(
            422,
            "INVALID_REQUEST",
            "The entry's execution_id and change_id must match the path.",
        )
    entry = AuditEntry.from_dict(body.entry.model_dump())
    fence = Fence(body.fence.key, body.fence.owner, body.fence.epoch)
    async with caller.backend.driver(caller.claims) as driver:
        await driver.append_audit(entry, fence)
    return AppendResponse()


@router.get(
    f"{base}/audit/states",
    response_model=EntriesResponse,
    responses=_AUTH_ERRORS,
    tags=["audit"],
)
async def audit_states(caller: Caller) -> EntriesResponse:
    """Return the newest audit entry of each change of the service."""
    async with caller.backend.driver(caller.claims) as driver:
        entries = await driver.read_states()
    return _entries(entries)


@router.get(
    f"{base}/audit/history",
    response_model=EntriesResponse,
    responses=_AUTH_ERRORS,
    tags=["audit"],
)
async def audit_history(
    caller: Caller,
    change_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> EntriesResponse:
    """Return the service's audit history (or one change's), oldest first."""
    async with caller.backend.driver(caller.claims) as driver:
        entries = await driver.read_history(change_id)
    return _entries(entries)


@router.get(
    f"{base}/lock/{{key}}",
    response_model=LockView,
    responses=_AUTH_ERRORS,
    tags=["lock"],
)
async def get_lock(key: LockKey, caller: Caller) -> LockView:
    """Return the lock record of `key` and its current acquisition id."""
    async with caller.backend.driver(caller.claims) as driver:
        record = await driver.read_lock(key)
    return _lock_view(record)


@router.put(
    f"{base}/lock/{{key}}",
    response_model=CompareAndSetResponse,
    responses=_AUTH_ERRORS,
    tags=["lock"],
)
async def compare_and_set_lock(
    key: LockKey, body: CompareAndSetRequest, caller: Caller
) -> CompareAndSetResponse:
    """Insert the record if absent, or replace it if its version is `expected_version`."""
    if body.record.key != key:
        raise ApiError(422, "INVALID_REQUEST", "The record's key must match the path.")
    expected = body.expected_version
    if expected is not None and body.record.version <= expected:
        raise ApiError(
            422,
            "INVALID_REQUEST",
            f"The new version {body.record.version} must be greater than {expected}.",
        )
    record = LockRecord.from_dict(body.record.model_dump())
    async with caller.backend.driver(caller.claims) as driver:
        applied, current = await _service.compare_and_set(driver, key, expected, record)
    return CompareAndSetResponse(applied=applied, lock=_lock_model(current))


@router.post(
    f"{base}/lock/{{key}}/extend",
    response_model=LockGrant,
    responses=_errors(401, 403, 404, 409, 413, 422, 503),
    tags=["lock"],
)
async def extend_lock(key: LockKey, body: ExtendRequest, caller: Caller) -> LockGrant:
    """Extend the lease of its owner; the response carries a new acquisition id."""
    async with caller.backend.driver(caller.claims) as driver:
        return await _service.extend(driver, key, body.owner, body.acquisition_id)


@router.post(
    f"{base}/lock/{{key}}/release",
    response_model=ReleaseResponse,
    responses=_errors(401, 403, 404, 409, 413, 422, 503),
    tags=["lock"],
)
async def release_lock(key: LockKey, body: ReleaseRequest, caller: Caller) -> ReleaseResponse:
    """Free the lock if the caller names its owner and epoch."""
    async with caller.backend.driver(caller.claims) as driver:
        await _service.release(driver, key, body.owner, body.epoch)
    return ReleaseResponse()


def _entries(entries: list[AuditEntry]) -> EntriesResponse:
    return EntriesResponse.model_validate({"entries": [entry.to_dict() for entry in entries]})


def _lock_model(record: LockRecord | None) -> LockModel | None:
    return LockModel.model_validate(record.to_dict()) if record is not None else None


def _lock_view(record: LockRecord | None) -> LockView:
    acquisition = _service.acquisition_id(record) if record is not None else None
    return LockView(lock=_lock_model(record), acquisition_id=acquisition)
