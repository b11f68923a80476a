"""The backend's own tables: organisations, projects, environments, services and API tokens.

They live in one SQLite database, `backend.db` in the data directory. Several backend
processes may share it: the schema is created with `IF NOT EXISTS`, rows are inserted with
`INSERT OR IGNORE` and then read back, and SQLite's busy timeout serialises writers.

NOTE: these tables are always SQLite, even when the audit logs and locks are in MongoDB or
DynamoDB, so backend processes on several machines need this file on storage they share.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from pathlib import Path
from typing import Any

import aiosqlite

from .._audit import new_id, now_ms
from ._tokens import Claims, NewToken, new_api_token, secret_matches, split_api_token

__all__ = ["MetadataStore", "TokenInfo", "NAME_PATTERN", "check_name"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)

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


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a valid organisation, project, environment or service name."""
    if not _NAME.match(name):
        raise ValueError(
            f"Invalid {kind} name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


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


class MetadataStore:
    """Access to `backend.db`; `open()` connects and creates the schema if missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
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

    # -- settings ----------------------------------------------------------------------------

    async def signing_secret(self) -> str:
        """Return the stored JWT signing secret, creating it on first use."""
        await self.db.execute(
            "INSERT OR IGNORE INTO backend_settings (name, value) VALUES ('jwt_secret', ?)",
            (secrets.token_urlsafe(48),),
        )
        await self.db.commit()
        row = await self._one("SELECT value FROM backend_settings WHERE name = 'jwt_secret'")
        return str(row[0])

    # -- organisations, projects, environments, services --------------------------------------

    async def ensure_service(
        self, organization: str, project: str, environment: str, service: str
    ) -> tuple[str, str, str, str]:
        """Create whatever of the hierarchy is missing; return the four ids."""
        organization_id = await self._ensure("organizations", None, None, organization)
        project_id = await self._ensure("projects", "organization_id", organization_id, project)
        environment_id = await self._ensure("environments", "project_id", project_id, environment)
        service_id = await self._ensure("services", "environment_id", environment_id, service)
        await self.db.commit()
        return organization_id, project_id, environment_id, service_id

    async def _ensure(
        self, table: str, parent_column: str | None, parent_id: str | None, name: str
    ) -> str:
        # Table and column names come from the fixed list in ensure_service, never from input.
        if parent_column is None:
            await self.db.execute(
                f"INSERT OR IGNORE INTO {table} (id, name, created_at_ms) VALUES (?, ?, ?)",
                (new_id(), name, now_ms()),
            )
            row = await self._one(f"SELECT id FROM {table} WHERE name = ?", name)
        else:
            await self.db.execute(
                f"INSERT OR IGNORE INTO {table} (id, {parent_column}, name, created_at_ms) "
                "VALUES (?, ?, ?, ?)",
                (new_id(), parent_id, name, now_ms()),
            )
            row = await self._one(
                f"SELECT id FROM {table} WHERE {parent_column} = ? AND name = ?", parent_id, name
            )
        return str(row[0])

    # -- API tokens --------------------------------------------------------------------------

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
        for kind, name in (
            ("organization", organization),
            ("project", project),
            ("environment", environment),
            ("service", service),
        ):
            check_name(kind, name)
        ids = await self.ensure_service(organization, project, environment, service)
        token = new_api_token()
        await self.db.execute(
            "INSERT INTO api_tokens (id, salt, digest, service_id, description, created_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (token.token_id, token.salt, token.digest, ids[3], description, now_ms()),
        )
        await self.db.commit()
        info = await self.get_token(token.token_id)
        if info is None:
            raise RuntimeError(f"API token {token.token_id} vanished right after its creation.")
        return token, info

    async def revoke_token(self, token_id: str) -> bool:
        """Revoke a token; return False when no unrevoked token has that id."""
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

    async def verify_api_token(self, token: str) -> TokenInfo | None:
        """Return the stored token matching `token`, revoked or not, or None."""
        parts = split_api_token(token)
        if parts is None:
            return None
        info = await self.get_token(parts[0])
        if info is None or not secret_matches(info.salt, parts[1], info.digest):
            return None
        return info

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
