"""The backend's metadata: organisations, projects, environments, services, API tokens and
the signing secret of bearer tokens.

`metadata_store_from_url` picks where they live:

- `sqlite:///path` (the default, `backend.db` in the data directory): one SQLite file. The
  schema is created with `IF NOT EXISTS`, rows are inserted with `INSERT OR IGNORE` and then
  read back, and SQLite's busy timeout serialises writers.
- `mongodb://host:port/database`: collections named `backend_*` in that database, with unique
  indexes on names (`_meta_mongodb.py`).
- `dynamodb://TABLE?region=...&endpoint_url=...`: one table keyed by `pk`, written with
  conditional puts (`_meta_dynamodb.py`).

Every write is create-if-absent followed by a read, so backend processes racing to create the
same service, or the signing secret, end up with one row that all of them read.

NOTE: backend processes on several machines need one shared metadata store. A SQLite file
works only on storage that all of them reach. Point `--metadata-url` at the MongoDB or
DynamoDB service of the audit logs instead, so the processes share tokens and the secret
that signs bearer tokens.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosqlite

from .._audit import new_id, now_ms
from .._errors import ConfigurationError
from ..drivers import redact_url
from ._tokens import Claims, NewToken, new_api_token, secret_matches, split_api_token

__all__ = [
    "MetadataStore",
    "SQLiteMetadataStore",
    "TokenInfo",
    "NAME_PATTERN",
    "METADATA_SCHEMES",
    "check_name",
    "check_metadata_url",
    "metadata_store_from_url",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)

METADATA_SCHEMES = ("sqlite", "mongodb", "mongodb+srv", "dynamodb")

# The levels of the hierarchy, each the child of the one before it.
LEVELS = ("organization", "project", "environment", "service")

JWT_SECRET_SETTING = "jwt_secret"


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a valid organisation, project, environment or service name."""
    if not _NAME.match(name):
        raise ValueError(
            f"Invalid {kind} name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def check_metadata_url(url: str) -> str:
    """Return `url` if its scheme names a metadata store; the message hides any password."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in METADATA_SCHEMES:
        raise ConfigurationError(
            f"The metadata URL {redact_url(url)!r} has no supported scheme; use sqlite:///PATH, "
            "mongodb://HOST:PORT/DATABASE or dynamodb://TABLE?region=REGION."
        )
    return url


def metadata_store_from_url(url: str) -> MetadataStore:
    """Build the metadata store named by `url` (not yet open)."""
    scheme = urlsplit(check_metadata_url(url)).scheme.lower()
    if scheme in ("mongodb", "mongodb+srv"):
        from ._meta_mongodb import MongoMetadataStore

        return MongoMetadataStore(url)
    if scheme == "dynamodb":
        from ._meta_dynamodb import DynamoMetadataStore

        return DynamoMetadataStore(url)
    return SQLiteMetadataStore(_sqlite_path(url))


def _sqlite_path(url: str) -> Path:
    parts = urlsplit(url)
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not path or parts.netloc or parts.query:
        raise ConfigurationError(
            f"Invalid metadata URL {redact_url(url)!r}: write the database file after three "
            "slashes and nothing else, as in sqlite:///data/backend.db or "
            "sqlite:////var/lib/flamingock/backend.db."
        )
    return Path(path)


@dataclasses.dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as stored, without its secret."""

    token_id: str
    description: str
    created_at_ms: int
    revoked_at_ms: int | None
    claims: Claims
    organization: str
    project: str
    salt: str = dataclasses.field(repr=False)
    digest: str = dataclasses.field(repr=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms is not None


class MetadataStore(abc.ABC):
    """Store of the backend's metadata; `open()` connects and creates what is missing.

    Implementations provide create-if-absent writes that return the stored row, so that
    concurrent callers in several processes agree on one id and one signing secret.
    """

    #: Location of the store for messages, without any password.
    location: str

    async def __aenter__(self) -> MetadataStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the tables, collections or indexes that are missing."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection; calling it twice is harmless."""

    # -- what each store implements -----------------------------------------------------------

    @abc.abstractmethod
    async def _setting(self, name: str, value: str) -> str:
        """Store `value` under `name` unless a value is there; return the stored value."""

    @abc.abstractmethod
    async def _ensure(self, level: str, parent_id: str | None, name: str) -> str:
        """Create the `level` named `name` under `parent_id` unless it exists; return its id."""

    @abc.abstractmethod
    async def _insert_token(self, info: TokenInfo) -> None:
        """Store a new token; its id is random, so it never exists yet."""

    @abc.abstractmethod
    async def revoke_token(self, token_id: str) -> bool:
        """Revoke a token; return False when no unrevoked token has that id."""

    @abc.abstractmethod
    async def list_tokens(self) -> list[TokenInfo]:
        """Return all tokens, revoked or not, oldest first."""

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> TokenInfo | None:
        """Return the token with that id, revoked or not, or None."""

    # -- shared behaviour ---------------------------------------------------------------------

    async def signing_secret(self) -> str:
        """Return the stored JWT signing secret, creating it on first use."""
        return await self._setting(JWT_SECRET_SETTING, secrets.token_urlsafe(48))

    async def ensure_service(
        self, organization: str, project: str, environment: str, service: str
    ) -> tuple[str, str, str, str]:
        """Create whatever of the hierarchy is missing; return the four ids."""
        ids: list[str] = []
        parent_id: str | None = None
        for level, name in zip(LEVELS, (organization, project, environment, service), strict=True):
            parent_id = await self._ensure(level, parent_id, name)
            ids.append(parent_id)
        return ids[0], ids[1], ids[2], ids[3]

    async def create_token(
        self,
        *,
        organization: str,
        project: str,
        environment: str,
        service: str,
        description: str = "",
    ) -> tuple[NewToken, TokenInfo]:
        """Create an API token limited to one service; the secret is only in the result."""
        names = (organization, project, environment, service)
        for level, name in zip(LEVELS, names, strict=True):
            check_name(level, name)
        ids = await self.ensure_service(*names)
        token = new_api_token()
        info = TokenInfo(
            token_id=token.token_id,
            description=description,
            created_at_ms=now_ms(),
            revoked_at_ms=None,
            claims=Claims(
                token_id=token.token_id,
                organization_id=ids[0],
                project_id=ids[1],
                environment_id=ids[2],
                service_id=ids[3],
                environment=environment,
                service=service,
            ),
            organization=organization,
            project=project,
            salt=token.salt,
            digest=token.digest,
        )
        await self._insert_token(info)
        return token, info

    async def verify_api_token(self, token: str) -> TokenInfo | None:
        """Return the stored token matching `token`, revoked or not, or None."""
        parts = split_api_token(token)
        if parts is None:
            return None
        info = await self.get_token(parts[0])
        if info is None or not secret_matches(info.salt, parts[1], info.digest):
            return None
        return info


def token_fields(info: TokenInfo) -> dict[str, Any]:
    """Return the stored fields of a token by name, for stores that keep it in one record."""
    claims = info.claims
    return {
        "salt": info.salt,
        "digest": info.digest,
        "description": info.description,
        "created_at_ms": info.created_at_ms,
        "organization_id": claims.organization_id,
        "project_id": claims.project_id,
        "environment_id": claims.environment_id,
        "service_id": claims.service_id,
        "organization": info.organization,
        "project": info.project,
        "environment": claims.environment,
        "service": claims.service,
    }


def token_from_fields(token_id: str, fields: dict[str, Any]) -> TokenInfo:
    """Build a token from `token_fields` plus `revoked_at_ms` (None or missing when active)."""
    revoked = fields.get("revoked_at_ms")
    return TokenInfo(
        token_id=token_id,
        salt=str(fields["salt"]),
        digest=str(fields["digest"]),
        description=str(fields["description"]),
        created_at_ms=int(fields["created_at_ms"]),
        revoked_at_ms=None if revoked is None else int(revoked),
        claims=Claims(
            token_id=token_id,
            organization_id=str(fields["organization_id"]),
            project_id=str(fields["project_id"]),
            environment_id=str(fields["environment_id"]),
            service_id=str(fields["service_id"]),
            environment=str(fields["environment"]),
            service=str(fields["service"]),
        ),
        organization=str(fields["organization"]),
        project=str(fields["project"]),
    )


# -- SQLite -----------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS backend_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (organization_id, name)
);
CREATE TABLE IF NOT EXISTS environments (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS services (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments(id),
    name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (environment_id, name)
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    salt TEXT NOT NULL,
    digest TEXT NOT NULL,
    service_id TEXT NOT NULL REFERENCES services(id),
    description TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
"""

_TOKEN_QUERY = """
SELECT t.id, t.salt, t.digest, t.description, t.created_at_ms, t.revoked_at_ms,
       o.id, p.id, e.id, s.id, o.name, p.name, e.name, s.name
FROM api_tokens t
JOIN services s ON s.id = t.service_id
JOIN environments e ON e.id = s.environment_id
JOIN projects p ON p.id = e.project_id
JOIN organizations o ON o.id = p.organization_id
"""


# Table and column of each level; names come from this fixed map, never from input.
_TABLES = {
    "organization": ("organizations", None),
    "project": ("projects", "organization_id"),
    "environment": ("environments", "project_id"),
    "service": ("services", "environment_id"),
}


class SQLiteMetadataStore(MetadataStore):
    """Metadata in one SQLite file (`backend.db` by default)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = f"SQLite file {path}"
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, timeout=30.0)
        await db.execute("PRAGMA busy_timeout = 30000")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.executescript(_SCHEMA)
        await db.commit()
        self._db = db

    async def aclose(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("The metadata store is not open; call open() first.")
        return self._db

    async def _setting(self, name: str, value: str) -> str:
        await self.db.execute(
            "INSERT OR IGNORE INTO backend_settings (name, value) VALUES (?, ?)", (name, value)
        )
        await self.db.commit()
        row = await self._one("SELECT value FROM backend_settings WHERE name = ?", name)
        return str(row[0])

    async def _ensure(self, level: str, parent_id: str | None, name: str) -> str:
        table, parent_column = _TABLES[level]
        if parent_column is None:
            await self.db.execute(
                f"INSERT OR IGNORE INTO {table} (id, name, created_at_ms) VALUES (?, ?, ?)",
                (new_id(), name, now_ms()),
            )
            await self.db.commit()
            row = await self._one(f"SELECT id FROM {table} WHERE name = ?", name)
        else:
            await self.db.execute(
                f"INSERT OR IGNORE INTO {table} (id, {parent_column}, name, created_at_ms) "
                "VALUES (?, ?, ?, ?)",
                (new_id(), parent_id, name, now_ms()),
            )
            await self.db.commit()
            row = await self._one(
                f"SELECT id FROM {table} WHERE {parent_column} = ? AND name = ?", parent_id, name
            )
        return str(row[0])

    async def _insert_token(self, info: TokenInfo) -> None:
        await self.db.execute(
            "INSERT INTO api_tokens (id, salt, digest, service_id, description, created_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                info.token_id,
                info.salt,
                info.digest,
                info.claims.service_id,
                info.description,
                info.created_at_ms,
            ),
        )
        await self.db.commit()

    async def revoke_token(self, token_id: str) -> bool:
        cursor = await self.db.execute(
            "UPDATE api_tokens SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL",
            (now_ms(), token_id),
        )
        await self.db.commit()
        return cursor.rowcount > 0

    async def list_tokens(self) -> list[TokenInfo]:
        async with self.db.execute(f"{_TOKEN_QUERY} ORDER BY t.created_at_ms, t.id") as cursor:
            rows = await cursor.fetchall()
        return [_token_info(row) for row in rows]

    async def get_token(self, token_id: str) -> TokenInfo | None:
        async with self.db.execute(f"{_TOKEN_QUERY} WHERE t.id = ?", (token_id,)) as cursor:
            row = await cursor.fetchone()
        return _token_info(row) if row is not None else None

    async def _one(self, sql: str, *parameters: Any) -> Any:
        async with self.db.execute(sql, parameters) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise RuntimeError(f"Expected a row from {sql.split()[0]} but found none.")
        return row


def _token_info(row: Any) -> TokenInfo:
    return TokenInfo(
        token_id=row[0],
        salt=row[1],
        digest=row[2],
        description=row[3],
        created_at_ms=row[4],
        revoked_at_ms=row[5],
        claims=Claims(
            token_id=row[0],
            organization_id=row[6],
            project_id=row[7],
            environment_id=row[8],
            service_id=row[9],
            environment=row[12],
            service=row[13],
        ),
        organization=row[10],
        project=row[11],
    )
