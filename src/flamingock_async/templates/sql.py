"""The `sql` template: SQL statements run on an aiosqlite connection.

```yaml
- template: sql
  id: create-users
  order: "0001"
  author: platform
  apply: |
    CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
    CREATE INDEX users_email ON users (email);
  rollback:
    - DROP INDEX users_email
    - DROP TABLE users
```

`apply` and the optional `rollback` are each a list of statements, or one SQL string that is
split into statements where `sqlite3.complete_statement` reports a complete one. A
`CREATE TRIGGER ... BEGIN ...; END;` therefore stays whole.

The connection is injected by type (`aiosqlite.Connection`), or by the name `connection`.
With the SQLite driver, a transactional change receives the driver's transaction connection
and commits together with its audit entry. On any other connection the template commits
after the last statement.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

from . import ChangeTemplate

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["SqlConfig", "SqlTemplate", "TEMPLATE", "split_statements"]


class SqlConfig(BaseModel):
    """The fields of a `sql` template change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apply: tuple[str, ...]
    rollback: tuple[str, ...] | None = None

    @field_validator("apply", "rollback", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return split_statements(value)
        return value

    @field_validator("apply", "rollback")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        statements = tuple(statement.strip() for statement in value)
        if not statements or not all(statements):
            raise ValueError("give at least one SQL statement, and no empty ones")
        for statement in statements:
            if not sqlite3.complete_statement(_terminated(statement)):
                raise ValueError(f"the statement {statement!r} is incomplete")
            if len(split_statements(statement)) > 1:
                raise ValueError(
                    f"the list entry {statement!r} contains several statements; give one per entry"
                )
        return statements


class SqlTemplate(ChangeTemplate):
    """Runs the `apply` statements, and the `rollback` statements on rollback."""

    config_model = SqlConfig
    config: SqlConfig

    def has_rollback(self) -> bool:
        return self.config.rollback is not None

    async def execute(self, connection: aiosqlite.Connection, transaction: Any = None) -> None:
        await self._run(self.config.apply, connection, transaction)

    async def rollback(self, connection: aiosqlite.Connection, transaction: Any = None) -> None:
        if self.config.rollback is not None:
            await self._run(self.config.rollback, connection, transaction)

    async def _run(
        self, statements: tuple[str, ...], connection: aiosqlite.Connection, transaction: Any
    ) -> None:
        for statement in statements:
            await connection.execute(statement)

        # The driver commits its own transaction connection together with the audit entry.
        if transaction is not connection and connection.in_transaction:
            await connection.commit()


TEMPLATE = SqlTemplate


def split_statements(script: str) -> tuple[str, ...]:
    """Split an SQL script into statements, using SQLite's own test for a complete statement."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statement = pending.strip().rstrip(";").strip()
            if statement:
                statements.append(statement)
            pending = ""

    if pending.rstrip(";").strip():
        statements.append(pending.rstrip(";").strip())
    return tuple(statements)


def _terminated(statement: str) -> str:
    return statement if statement.rstrip().endswith(";") else statement + ";"
