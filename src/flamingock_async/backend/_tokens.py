"""API tokens and bearer tokens.

An API token reads `flk_<id>_<secret>`. The backend stores the id, a random salt and the
HMAC-SHA256 of the secret under that salt, never the secret, so a copy of the database does
not reveal usable tokens. A runner exchanges its API token for a bearer token: a JWT signed
with HS256 that names the token id and the organisation, project, environment and service
it is limited to, and expires after `token_ttl_seconds`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from typing import Any

import jwt

__all__ = [
    "Claims",
    "NewToken",
    "new_api_token",
    "split_api_token",
    "hash_secret",
    "secret_matches",
    "issue_jwt",
    "decode_jwt",
    "TokenExpired",
    "TokenInvalid",
]

_PREFIX = "flk"
_ISSUER = "flamingock-async"
_ALGORITHM = "HS256"


@dataclasses.dataclass(frozen=True, slots=True)
class NewToken:
    """A token as issued: the secret shown once, and the salt and digest that are stored."""

    token_id: str
    token: str
    salt: str
    digest: str


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """What a bearer token grants: one service of one environment."""

    token_id: str
    organization_id: str
    project_id: str
    environment_id: str
    service_id: str
    environment: str
    service: str


class TokenExpired(Exception):
    """The bearer token's expiry time has passed."""


class TokenInvalid(Exception):
    """The bearer token is malformed or its signature does not match."""


def hash_secret(salt: str, secret: str) -> str:
    return hmac.new(salt.encode(), secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(salt: str, secret: str, digest: str) -> bool:
    return hmac.compare_digest(hash_secret(salt, secret), digest)


def new_api_token() -> NewToken:
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return NewToken(token_id, f"{_PREFIX}_{token_id}_{secret}", salt, hash_secret(salt, secret))


def split_api_token(token: str) -> tuple[str, str] | None:
    """Return `(token_id, secret)` of a well-formed API token, or None."""
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != _PREFIX or len(token_id) != 16 or not secret:
        return None
    return token_id, secret


def issue_jwt(claims: Claims, secret: str, ttl_seconds: int) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": _ISSUER,
        "sub": claims.token_id,
        "iat": now,
        "exp": now + ttl_seconds,
        "org": claims.organization_id,
        "prj": claims.project_id,
        "env": claims.environment_id,
        "svc": claims.service_id,
        "env_name": claims.environment,
        "svc_name": claims.service,
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM)


def decode_jwt(token: str, secret: str) -> Claims:
    """Verify `token` and return its claims; raises `TokenExpired` or `TokenInvalid`."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            issuer=_ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as error:
        raise TokenExpired(str(error)) from error
    except jwt.PyJWTError as error:
        raise TokenInvalid(str(error)) from error
    try:
        return Claims(
            token_id=str(payload["sub"]),
            organization_id=str(payload["org"]),
            project_id=str(payload["prj"]),
            environment_id=str(payload["env"]),
            service_id=str(payload["svc"]),
            environment=str(payload["env_name"]),
            service=str(payload["svc_name"]),
        )
    except KeyError as error:
        raise TokenInvalid(f"missing claim {error}") from error
