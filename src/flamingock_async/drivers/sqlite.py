"""The embedded SQLite driver, the default store, on aiosqlite.

One database file holds two tables: `<prefix>lock` (one row per lock key) and `<prefix>audit`
(the append-only log). Several processes on one host may share the file safely:

* `setup()` switches the file to WAL journal mode, so reads go on while another connection
  writes;
* every connection sets `busy_timeout`, so a writer waits for another writer instead of failing;
* every multi-statement write runs in `BEGIN IMMEDIATE`, which takes the write lock before the
  first read, so no transaction can act on a snapshot that another process changed since.
  Single-statement writes (lock insert and compare-and-set, fenced audit append) are atomic
  on their own.

`open()` writes nothing: a database file that does not exist yet is not created until
`setup()`, and until then `read_states()` returns an empty list and `read_lock()` None.

Connections are opened with `isolation_level=None`, so Python's `sqlite3` never begins or
commits a transaction implicitly; the driver issues `BEGIN IMMEDIATE`, `COMMIT` and
`ROLLBACK` itself. A transactional change receives the transaction's connection and must not
commit or roll it back: an authorizer rejects `BEGIN`, `COMMIT` and `ROLLBACK` while the
change's code runs (savepoints are allowed).

`sqlite:///:memory:` gives a database that lives in one connection of one process; it suits
tests but cannot be shared by several runners in different processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import operator
import os
import re
import sqlite3
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio

from .._audit import AuditEntry, AuditState, StateSummary
from .._errors import (
    ConfigurationError,
    CorruptAuditEntryError,
    DriverError,
    DriverUnavailableError,
    FlamingockError,
    LockLostError,
    MissingDependencyError,
)
from .._lock import Fence, LockRecord, holder_of
from ._base import ChangeBodyFailed, Driver, TransactionBody

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["SQLiteDriver", "from_url"]

logger = logging.getLogger(__name__)

MEMORY = ":memory:"
_PREFIX_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_URL_OPTIONS = ("table_prefix", "busy_timeout")

_LOCK_COLUMNS = (
    "key",
    "owner",
    "epoch",
    "version",
    "lease_ms",
    "acquired_at_ms",
    "renewed_at_ms",
    "host",
    "pid",
)
_AUDIT_COLUMNS = tuple(field.name for field in dataclasses.fields(AuditEntry))
_read_audit_columns = operator.attrgetter(*_AUDIT_COLUMNS)
_STATE_COLUMN = _AUDIT_COLUMNS.index("state")
_TRANSACTIONAL_COLUMN = _AUDIT_COLUMNS.index("transactional")
_METADATA_COLUMN = _AUDIT_COLUMNS.index("metadata")
_TEXT_FIELDS = ("entry_id", "execution_id", "stage", "change_id", "author", "order", "host")
_INT_FIELDS = ("lock_epoch", "sequence", "created_at_ms", "pid")
_OPTIONAL_INT_FIELDS = ("started_at_ms", "finished_at_ms", "duration_ms")
_OPTIONAL_TEXT_FIELDS = ("error_type", "error_message", "error_trace")
_STATES = {state.value: state for state in AuditState}
_FLAGS = {0: False, 1: True}


# One lock per connection serializes the transactions of every driver that shares it, since
# statements of two tasks on one connection would otherwise mix into one transaction. It is
# asyncio's lock, as aiosqlite runs on asyncio only: taking it when free costs a quarter of
# what anyio's does, and a transactional change takes it once.
_CONNECTION_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _transaction_lock(connection: aiosqlite.Connection) -> asyncio.Lock:
    lock = _CONNECTION_LOCKS.get(connection)
    if lock is None:
        lock = _CONNECTION_LOCKS[connection] = asyncio.Lock()
    return lock


def _import_aiosqlite() -> Any:
    try:
        import aiosqlite
    except ImportError as error:
        raise MissingDependencyError("sqlite", "aiosqlite", "sqlite") from error
    return aiosqlite


LOCK_WRITE_BUSY_TIMEOUT = 2.0
"""Seconds a lock write waits for the file's write lock.

Lock writes are single statements, so a longer wait means that a live runner is inside a
transactional change."""

# The driver's own transaction statements on its transaction connection. The comment makes
# their SQL text, the key of sqlite3's statement cache, differ from what change code writes.
_BEGIN = "BEGIN IMMEDIATE /* flamingock-async */"
_COMMIT = "COMMIT /* flamingock-async */"
_ROLLBACK = "ROLLBACK /* flamingock-async */"


def _allow_everything(action: int, *args: object) -> int:
    return sqlite3.SQLITE_OK


# Python 3.11 removes an authorizer with None; 3.10 needs a callback that allows everything.
_NO_AUTHORIZER = None if sys.version_info >= (3, 11) else _allow_everything


def _quote(name: str) -> str:
    return f'"{name}"'


class _OpenTransaction:
    """A transaction running in `_run_in_transaction`, and the lock writes routed into it.

    A plain class, because defining it as a dataclass cost about half a millisecond at
    every start.
    """

    __slots__ = ("connection", "key", "last_record", "version_before")

    def __init__(self, connection: aiosqlite.Connection, key: str) -> None:
        self.connection = connection
        self.key = key
        self.version_before: int | None = None
        self.last_record: LockRecord | None = None


class SQLiteDriver(Driver):
    """Store the audit log and the lock in one SQLite database file.

    `path_or_connection` is a file path, `":memory:"`, or an open `aiosqlite.Connection`
    created with `isolation_level=None`. A connection passed in is used for everything, as
    given (the driver sets neither WAL mode nor `busy_timeout` on it), and is left open by
    `aclose()`. With a path the driver opens and closes its own connections.
    `busy_timeout` is how long, in seconds, a write waits for another process's write.
    """

    name = "sqlite"
    transaction_handle_names = ("connection", "conn", "transaction")

    def __init__(
        self,
        path_or_connection: str | os.PathLike[str] | aiosqlite.Connection,
        *,
        table_prefix: str = "flamingock_",
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        if not _PREFIX_PATTERN.match(table_prefix):
            raise ConfigurationError(
                f"Invalid SQLite table_prefix {table_prefix!r}: use letters, digits and "
                "underscores, starting with a letter or underscore (for example 'flamingock_')."
            )
        if busy_timeout < 0:
            raise ConfigurationError(
                f"Invalid SQLite busy_timeout {busy_timeout!r}: give zero or more seconds."
            )
        self.table_prefix = table_prefix
        self.busy_timeout = busy_timeout
        self._lock_table = _quote(f"{table_prefix}lock")
        self._audit_table = _quote(f"{table_prefix}audit")
        self._user_connection: aiosqlite.Connection | None = None
        self.path: str
        if isinstance(path_or_connection, (str, os.PathLike)):
            self.path = os.fspath(path_or_connection)
        else:
            self._user_connection = path_or_connection
            self.path = "<connection>"
        self._main: aiosqlite.Connection | None = None
        self._target: aiosqlite.Connection | None = None
        self._transaction_connection: aiosqlite.Connection | None = None
        self._open_transaction: _OpenTransaction | None = None
        self._denied_statements: list[str] = []
        self._body_running = False
        self._lock_writer: aiosqlite.Connection | None = None

    # -- capabilities ------------------------------------------------------------------------

    @property
    def supports_transactions(self) -> bool:
        return True

    @property
    def _single_connection(self) -> bool:
        """Whether one connection serves everything (`:memory:` or a connection passed in)."""
        return self._user_connection is not None or self.path == MEMORY

    def describe(self) -> str:
        return f"sqlite database {self.path}"

    def provided_dependencies(self) -> Mapping[str, type]:
        module = _import_aiosqlite()
        names = ("connection", "db", *self.transaction_handle_names)
        return dict.fromkeys(names, module.Connection)

    def target_dependencies(self) -> Mapping[str, object]:
        """Return a connection in autocommit mode to the same database, as `connection` and `db`.

        Raises `DriverError` before `setup()` when the database file did not exist at `open()`.
        """
        if self._target is None:
            raise DriverError(
                f"The SQLite database {self.path} is not open or not created yet; call open() "
                "and setup() before asking for the connection given to changes."
            )
        return {"connection": self._target, "db": self._target}

    # -- lifecycle ---------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._main is not None:
            return
        if self._user_connection is not None:
            self._adopt_user_connection(self._user_connection)
            return
        _check_database_path(self.path)
        if self.path == MEMORY or _file_exists(self.path):
            await self._connect_all()

    def _adopt_user_connection(self, connection: aiosqlite.Connection) -> None:
        if connection.isolation_level is not None:
            raise ConfigurationError(
                "The aiosqlite connection given to SQLiteDriver has isolation_level="
                f"{connection.isolation_level!r}; open it with aiosqlite.connect(path, "
                "isolation_level=None) so that the driver controls its transactions."
            )
        self._main = connection
        self._target = connection

    async def _connect_all(self) -> None:
        """Open the main connection and the one given to changes.

        The target connection is opened here because applications use it after `run()`
        even when nothing was pending. The lock writer and the transaction connection are
        opened on first use, so that a start with nothing pending opens two connections
        (and two aiosqlite threads) instead of four.
        """
        self._main = await self._connect()
        if self.path == MEMORY:
            self._target = self._main
            return
        try:
            self._target = await self._connect()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._aclose()
            raise

    async def _connect(self, *, busy_timeout: float | None = None) -> aiosqlite.Connection:
        module = _import_aiosqlite()
        timeout = self.busy_timeout
        if busy_timeout is not None:
            timeout = min(busy_timeout, timeout)
        # sqlite3's `timeout` is the connection's busy timeout (`PRAGMA busy_timeout`).
        connection: aiosqlite.Connection = await module.connect(
            self.path, timeout=timeout, isolation_level=None
        )
        return connection

    async def _aclose(self) -> None:
        owned = [self._lock_writer, self._transaction_connection, self._target, self._main]
        self._main = self._target = self._transaction_connection = self._lock_writer = None
        if self._user_connection is not None:
            return
        closed: set[int] = set()
        for connection in owned:
            if connection is not None and id(connection) not in closed:
                closed.add(id(connection))
                await connection.close()

    async def _setup(self) -> None:
        if self._main is None:
            _check_database_path(self.path)
            await self._connect_all()
        main = self._require_main()
        if self.path != MEMORY and self._user_connection is None:
            await self._enable_wal(main)
        if await self._schema_exists(main):
            return
        async with _transaction_lock(main), _immediate(main):
            for statement in self._schema_statements():
                await main.execute(statement)
        logger.debug("Created the flamingock tables in %s", self.describe())

    async def _enable_wal(self, connection: aiosqlite.Connection) -> None:
        rows = await connection.execute_fetchall("PRAGMA journal_mode")
        if rows and str(next(iter(rows))[0]).lower() == "wal":
            return
        rows = await connection.execute_fetchall("PRAGMA journal_mode = WAL")
        mode = str(next(iter(rows))[0]).lower() if rows else "unknown"
        if mode != "wal":
            raise DriverError(
                f"Could not switch {self.describe()} to WAL journal mode (it stays {mode!r}); "
                "use a file on a local file system that supports shared memory."
            )

    async def _schema_exists(self, connection: aiosqlite.Connection) -> bool:
        names = [name.strip('"') for name in (self._lock_table, self._audit_table)]
        names += [f"{self.table_prefix}audit_change", f"{self.table_prefix}audit_order"]
        rows = await connection.execute_fetchall(
            "SELECT count(*) FROM sqlite_master WHERE name IN (?, ?, ?, ?)", names
        )
        return bool(rows) and int(next(iter(rows))[0]) == len(names)

    def _schema_statements(self) -> list[str]:
        prefix = self.table_prefix
        return [
            f"""CREATE TABLE IF NOT EXISTS {self._lock_table} (
                key TEXT PRIMARY KEY,
                owner TEXT,
                epoch INTEGER NOT NULL,
                version INTEGER NOT NULL,
                lease_ms INTEGER NOT NULL,
                acquired_at_ms INTEGER NOT NULL,
                renewed_at_ms INTEGER NOT NULL,
                host TEXT NOT NULL DEFAULT '',
                pid INTEGER NOT NULL DEFAULT 0
            )""",
            # Columns other than entry_id accept NULL so that a damaged row can be read and
            # reported with its rowid instead of hiding behind a constraint error.
            f"""CREATE TABLE IF NOT EXISTS {self._audit_table} (
                rowid INTEGER PRIMARY KEY,
                entry_id TEXT NOT NULL UNIQUE,
                execution_id TEXT,
                stage TEXT,
                change_id TEXT,
                author TEXT,
                "order" TEXT,
                state TEXT,
                lock_epoch INTEGER,
                sequence INTEGER,
                created_at_ms INTEGER,
                started_at_ms INTEGER,
                finished_at_ms INTEGER,
                duration_ms INTEGER,
                transactional INTEGER,
                host TEXT,
                pid INTEGER,
                error_type TEXT,
                error_message TEXT,
                error_trace TEXT,
                library_version TEXT,
                metadata TEXT
            )""",
            f"CREATE INDEX IF NOT EXISTS {_quote(prefix + 'audit_change')} "
            f"ON {self._audit_table} (change_id, lock_epoch, sequence)",
            f"CREATE INDEX IF NOT EXISTS {_quote(prefix + 'audit_order')} "
            f"ON {self._audit_table} (lock_epoch, sequence)",
        ]

    # -- lock records ------------------------------------------------------------------------

    async def _read_lock(self, key: str) -> LockRecord | None:
        if self._main is None:
            return None
        columns = ", ".join(_LOCK_COLUMNS)
        rows = await self._fetch_if_table(
            self._main, f"SELECT {columns} FROM {self._lock_table} WHERE key = ?", (key,)
        )
        if not rows:
            return None
        return self._lock_from_row(rows[0])

    async def _insert_lock(self, record: LockRecord) -> bool:
        connection = await self._lock_connection(record.key)
        placeholders = ", ".join("?" for _ in _LOCK_COLUMNS)
        statement = (
            f"INSERT INTO {self._lock_table} ({', '.join(_LOCK_COLUMNS)}) "
            f"VALUES ({placeholders}) ON CONFLICT(key) DO NOTHING"
        )
        inserted = await self._write(connection, statement, _lock_values(record))
        if inserted:
            self._note_lock_write(record.key, None, record)
        return inserted

    async def _replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool:
        if record.key != key:
            raise DriverError(f"The lock record for key {record.key!r} cannot replace {key!r}.")
        connection = await self._lock_connection(key)
        assignments = ", ".join(f"{column} = ?" for column in _LOCK_COLUMNS[1:])
        statement = f"UPDATE {self._lock_table} SET {assignments} WHERE key = ? AND version = ?"
        values = (*_lock_values(record)[1:], key, expected_version)
        replaced = await self._write(connection, statement, values)
        if replaced:
            self._note_lock_write(key, expected_version, record)
        return replaced

    async def _lock_connection(self, key: str) -> aiosqlite.Connection:
        """Return the connection for a write to lock `key`.

        While this driver runs a transaction, the file's write lock belongs to it, so a lock
        write through another connection would wait until the transaction ends. The holder's
        heartbeat would then stall during a long transactional change. Writes to the lock of
        the open transaction therefore go through the transaction's own connection.

        Every other lock write goes through a connection with a short busy timeout
        (`LOCK_WRITE_BUSY_TIMEOUT`). Other runners see the holder's renewals only when its
        transaction commits, so a waiter may find the lease expired during a long change and
        try to take it over. Its write then finds the file locked by a live writer, because
        SQLite's file locks end with their process. The write fails fast with
        `DriverUnavailableError`, and the lock manager keeps waiting.
        """
        current = self._open_transaction
        if current is not None and current.key == key:
            return current.connection
        if self._single_connection:
            return self._require_main()
        if self._lock_writer is None:
            self._require_main()
            connection = await self._connect(busy_timeout=LOCK_WRITE_BUSY_TIMEOUT)
            self._lock_writer = await _keep_first(self._lock_writer, connection)
        return self._lock_writer

    def _note_lock_write(self, key: str, version_before: int | None, record: LockRecord) -> None:
        current = self._open_transaction
        if current is None or current.key != key:
            return
        if current.last_record is None:
            current.version_before = version_before
        current.last_record = record

    def _lock_from_row(self, row: Sequence[Any]) -> LockRecord:
        values = dict(zip(_LOCK_COLUMNS, row, strict=True))
        try:
            record = LockRecord.from_dict(values)
        except (TypeError, ValueError) as error:
            raise DriverError(
                f"The lock row {values.get('key')!r} in {self.describe()} cannot be read "
                f"({error}); release it with 'flamingock lock release --force'."
            ) from error
        return record

    # -- audit log ---------------------------------------------------------------------------

    async def _read_states(self) -> list[AuditEntry]:
        if self._main is None:
            return []
        columns = ", ".join(_quote(column) for column in _AUDIT_COLUMNS)
        statement = (
            f"SELECT rowid, {columns} FROM {self._audit_table} "
            f"WHERE rowid IN ({self._newest_rowids()}) ORDER BY rowid"
        )
        rows = await self._fetch_if_table(self._main, statement, ())
        return [self._entry_from_row(row) for row in rows]

    async def _read_state_summaries(self) -> list[StateSummary]:
        if self._main is None:
            return []
        statement = (
            f"SELECT rowid, change_id, state, transactional, lock_epoch FROM {self._audit_table} "
            f"WHERE rowid IN ({self._newest_rowids()})"
        )
        rows = await self._fetch_if_table(self._main, statement, ())
        summaries = [_summary_from_row(row) for row in rows]
        damaged = [row[0] for row, summary in zip(rows, summaries, strict=True) if summary is None]
        if damaged:
            # Decoding the full rows raises an error that names the damaged column.
            await self._read_states()
            raise CorruptAuditEntryError(
                f"The audit row with rowid {damaged[0]} in {self.describe()} has an invalid "
                "change_id, state, transactional or lock_epoch; repair or delete that row.",
                record_key=f"rowid={damaged[0]}",
            )
        return [summary for summary in summaries if summary is not None]

    def _newest_rowids(self) -> str:
        """Return a subquery of the rowid of each change's newest row by (lock_epoch, sequence).

        It seeks the change index once per change id, newest first, so no sort of the whole
        table is needed. `IS` makes rows with a NULL change_id a group too, so that a damaged
        row is read and reported instead of skipped.
        """
        table = self._audit_table
        return (
            f"SELECT (SELECT newest.rowid FROM {table} AS newest "
            "WHERE newest.change_id IS ids.change_id "
            "ORDER BY newest.lock_epoch DESC, newest.sequence DESC, newest.rowid DESC LIMIT 1) "
            f"FROM (SELECT DISTINCT change_id FROM {table}) AS ids"
        )

    async def _read_history(self, change_id: str | None) -> list[AuditEntry]:
        if self._main is None:
            return []
        columns = ", ".join(_quote(column) for column in _AUDIT_COLUMNS)
        statement = f"SELECT rowid, {columns} FROM {self._audit_table}"
        parameters: tuple[Any, ...] = ()
        if change_id is not None:
            statement += " WHERE change_id = ?"
            parameters = (change_id,)
        statement += " ORDER BY lock_epoch, sequence, rowid"
        rows = await self._fetch_if_table(self._main, statement, parameters)
        return [self._entry_from_row(row) for row in rows]

    async def _append_audit(self, entry: AuditEntry, fence: Fence) -> None:
        # Not shielded here: the runner shields its appends itself, more cheaply (see
        # ChangeExecutor._store), and other drivers do not shield them either.
        main = self._require_main()
        inserted = await main.execute(self._fenced_insert, _fenced_values(entry, fence))
        if inserted.rowcount > 0:
            return
        # Nothing was inserted: either the fence failed or the entry is already stored.
        # An (owner, epoch) pair never comes back once lost, so the lock read now shows
        # which case applies.
        current = await self._read_lock(fence.key)
        _check_fence(current, fence)

    @functools.cached_property
    def _fenced_insert(self) -> str:
        columns = ", ".join(_quote(column) for column in _AUDIT_COLUMNS)
        placeholders = ", ".join("?" for _ in _AUDIT_COLUMNS)
        return (
            f"INSERT INTO {self._audit_table} ({columns}) SELECT {placeholders} "
            f"WHERE EXISTS (SELECT 1 FROM {self._lock_table} "
            "WHERE key = ? AND owner = ? AND epoch = ?) "
            "ON CONFLICT(entry_id) DO NOTHING"
        )

    def _entry_from_row(self, row: Sequence[Any]) -> AuditEntry:
        rowid = row[0]
        values = dict(zip(_AUDIT_COLUMNS, row[1:], strict=True))
        try:
            return _decode_entry(values)
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptAuditEntryError(
                f"The audit row with rowid {rowid} (entry_id {values.get('entry_id')!r}) in "
                f"{self.describe()} cannot be read: {error}; repair or delete that row.",
                record_key=f"rowid={rowid}",
            ) from error

    # -- transactions ------------------------------------------------------------------------

    async def _run_in_transaction(
        self,
        fence: Fence,
        body: TransactionBody,
        audit: Callable[[], AuditEntry],
    ) -> None:
        connection = await self._transaction_handle()
        async with _transaction_lock(connection):
            await connection.execute(_BEGIN)
            self._open_transaction = _OpenTransaction(connection, fence.key)
            try:
                await self._run_body(connection, body)
                await self._finish_transaction(connection, fence, audit())
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._abort_transaction(connection)
                raise
            finally:
                self._open_transaction = None

    async def _transaction_handle(self) -> aiosqlite.Connection:
        if self._single_connection:
            return self._require_main()
        if self._transaction_connection is None:
            # Opened on first use, and again after a failed rollback discarded it.
            self._require_main()
            self._transaction_connection = await self._connect_for_transactions()
        return self._transaction_connection

    async def _connect_for_transactions(self) -> aiosqlite.Connection:
        """Open the dedicated transaction connection, with the body's authorizer installed.

        Installed once: setting an authorizer costs a trip to aiosqlite's thread, and doing
        so around every change doubled the per-change overhead.
        """
        connection = await self._connect()
        await connection.set_authorizer(self._authorize_in_body)
        return connection

    async def _run_body(self, connection: aiosqlite.Connection, body: TransactionBody) -> None:
        """Run a change's body with its own BEGIN, COMMIT and ROLLBACK rejected.

        On the dedicated transaction connection the authorizer stays installed and only
        this flag switches it on. SQLite calls an authorizer when it prepares a statement,
        and sqlite3 caches prepared statements by their SQL text. The only transaction
        statements prepared while the flag is off are the driver's own, whose text carries
        a comment that change code does not write, and a rejected statement is never
        cached. A shared single connection gets the authorizer for the body only, which
        also expires its cached statements.
        """
        self._denied_statements.clear()
        shared = connection is not self._transaction_connection
        if shared:
            await connection.set_authorizer(self._authorize_in_body)
        self._body_running = True
        try:
            await body(connection)
        except ChangeBodyFailed as failure:
            if not self._denied_statements:
                raise
            error = self._transaction_control_error()
            error.__cause__ = failure.error
            raise ChangeBodyFailed(error) from failure.error
        finally:
            self._body_running = False
            if shared:
                with anyio.CancelScope(shield=True):
                    await connection.set_authorizer(_NO_AUTHORIZER)

    def _authorize_in_body(self, action: int, *args: object) -> int:
        """Reject `BEGIN`, `COMMIT` and `ROLLBACK` issued by a change's own code."""
        if self._body_running and action == sqlite3.SQLITE_TRANSACTION:
            self._denied_statements.append(str(args[0]))
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _transaction_control_error(self) -> DriverError:
        return DriverError(
            f"A transactional change ran {self._denied_statements[0]} on the connection of its "
            "transaction (directly, through commit() or rollback(), or through "
            "executescript(), which commits first). flamingock-async commits that "
            "transaction together with the audit entry, so run each statement with "
            "execute(), or declare the change transactional=False to manage transactions "
            "yourself."
        )

    async def _finish_transaction(
        self, connection: aiosqlite.Connection, fence: Fence, entry: AuditEntry
    ) -> None:
        # The insert is awaited here directly, not through _write(): every extra coroutine
        # between the runner and aiosqlite is resumed again on each trip to its thread.
        inserted = await connection.execute(self._fenced_insert, _fenced_values(entry, fence))
        if inserted.rowcount < 1:
            current = await self._read_lock_in(connection, fence.key)
            _check_fence(current, fence)
        await connection.execute(_COMMIT)

    async def _read_lock_in(self, connection: aiosqlite.Connection, key: str) -> LockRecord | None:
        columns = ", ".join(_LOCK_COLUMNS)
        rows = await self._fetch_if_table(
            connection, f"SELECT {columns} FROM {self._lock_table} WHERE key = ?", (key,)
        )
        return self._lock_from_row(rows[0]) if rows else None

    async def _abort_transaction(self, connection: aiosqlite.Connection) -> None:
        """Roll back, then write again the last lock renewal that the rollback undid."""
        opened = self._open_transaction
        self._open_transaction = None
        try:
            if connection.in_transaction:
                await connection.execute(_ROLLBACK)
        except Exception:
            logger.exception("Rolling back the transaction on %s failed", self.describe())
            await self._discard_transaction_connection(connection)
            return
        if opened is not None and opened.last_record is not None:
            await self._restore_lock_write(opened)

    async def _discard_transaction_connection(self, connection: aiosqlite.Connection) -> None:
        """Close a dedicated connection left in an unknown state; the next one is fresh."""
        if connection is not self._transaction_connection:
            return
        self._transaction_connection = None
        try:
            await connection.close()
        except Exception:
            logger.exception("Closing a failed transaction connection to %s", self.describe())

    async def _restore_lock_write(self, opened: _OpenTransaction) -> None:
        record = opened.last_record
        if record is None or opened.version_before is None:
            return
        try:
            restored = await self._replace_lock(opened.key, opened.version_before, record)
        except Exception:
            logger.exception("Restoring the lock %r after a rollback failed", opened.key)
            return
        if not restored:
            logger.warning(
                "The lock %r changed while a transaction was rolled back; the heartbeat "
                "will report it lost",
                opened.key,
            )

    # -- helpers -----------------------------------------------------------------------------

    def _require_main(self) -> aiosqlite.Connection:
        if self._main is None:
            raise DriverError(
                f"The SQLite database {self.path} is not open or not created yet; call open() "
                "and setup() first."
            )
        return self._main

    async def _fetch_if_table(
        self, connection: aiosqlite.Connection, statement: str, parameters: Sequence[Any]
    ) -> list[Sequence[Any]]:
        """Run a query; return no rows when the driver's tables were never created."""
        try:
            rows = await connection.execute_fetchall(statement, parameters)
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise
        return [tuple(row) for row in rows]

    async def _write(
        self, connection: aiosqlite.Connection, statement: str, parameters: Sequence[Any]
    ) -> bool:
        """Run one write statement; return whether it changed a row.

        aiosqlite finishes a statement on its thread even when the awaiting task is
        cancelled, so the wait is shielded: the caller always learns the outcome of a write
        that happened. Otherwise a heartbeat cancelled mid-renewal would leave the lock
        manager with an old version, and its release would fail. Audit inserts are not
        written through here: inside a transaction a cancellation rolls the transaction
        back after the statement, and the runner shields its other appends itself.

        It is one trip to aiosqlite's thread: execute() runs a write statement to
        completion, so the row count is known when it returns and the cursor keeps no open
        statement. Closing the cursor would cost a second trip.
        """
        with anyio.CancelScope(shield=True):
            cursor = await connection.execute(statement, parameters)
        return cursor.rowcount > 0

    def translate_error(self, error: Exception) -> FlamingockError:
        message = str(error)
        if isinstance(error, sqlite3.OperationalError) and (
            "locked" in message or "busy" in message
        ):
            return DriverUnavailableError(
                f"{self.describe()} stayed locked by another connection for longer than "
                f"busy_timeout ({self.busy_timeout:g} s): {message}; a long transactional "
                "change may hold its write lock, so raise busy_timeout or retry later."
            )
        if isinstance(error, sqlite3.OperationalError) and "no such table" in message:
            return DriverError(
                f"{self.describe()} has no flamingock tables ({message}); call setup() first."
            )
        if isinstance(error, sqlite3.DatabaseError) and "not a database" in message:
            return DriverError(
                f"The file {self.path} is not an SQLite database ({message}); give the path of "
                "an SQLite database or of a file that does not exist yet."
            )
        return DriverError(f"{self.describe()}: {type(error).__name__}: {message}")


# -- values and rows -----------------------------------------------------------------------


async def _keep_first(
    current: aiosqlite.Connection | None, opened: aiosqlite.Connection
) -> aiosqlite.Connection:
    """Return `opened`, or close it and return `current` if a concurrent call set that."""
    if current is None:
        return opened
    await opened.close()
    return current


def _lock_values(record: LockRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, column) for column in _LOCK_COLUMNS)


def _fenced_values(entry: AuditEntry, fence: Fence) -> list[Any]:
    """Return the parameters of the fenced insert: the entry's columns, then the fence."""
    values = [*_read_audit_columns(entry), fence.key, fence.owner, fence.epoch]
    values[_STATE_COLUMN] = entry.state.value
    values[_TRANSACTIONAL_COLUMN] = int(entry.transactional)
    metadata = entry.metadata
    values[_METADATA_COLUMN] = (
        json.dumps(metadata, sort_keys=True, default=str) if metadata else "{}"
    )
    return values


def _summary_from_row(row: Sequence[Any]) -> StateSummary | None:
    """Build a summary from (rowid, change_id, state, transactional, lock_epoch), or None."""
    _, change_id, state, transactional, lock_epoch = row
    valid = (
        type(change_id) is str
        and type(lock_epoch) is int
        and state in _STATES
        and transactional in _FLAGS
    )
    if not valid:
        return None
    return StateSummary(change_id, _STATES[state], _FLAGS[transactional], lock_epoch)


def _decode_entry(values: dict[str, Any]) -> AuditEntry:
    """Build an entry from a row, checking each column's type; raises TypeError or ValueError."""
    for name in _TEXT_FIELDS:
        _expect(values, name, str)
    for name in _INT_FIELDS:
        _expect(values, name, int)
    for name in _OPTIONAL_INT_FIELDS:
        _expect(values, name, int, optional=True)
    for name in _OPTIONAL_TEXT_FIELDS:
        _expect(values, name, str, optional=True)
    if values["transactional"] not in (0, 1):
        raise ValueError(f"transactional must be 0 or 1, got {values['transactional']!r}")
    values["transactional"] = bool(values["transactional"])
    values["library_version"] = values["library_version"] or ""
    values["state"] = AuditState(values["state"])
    metadata = json.loads(values["metadata"]) if values["metadata"] is not None else {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    values["metadata"] = metadata
    return AuditEntry(**values)


def _expect(values: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> None:
    value = values[name]
    if value is None and optional:
        return
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"column {name!r} must be {kind.__name__}, got {value!r}")


def _check_fence(current: LockRecord | None, fence: Fence) -> None:
    if current is not None and current.owner == fence.owner and current.epoch == fence.epoch:
        return
    raise LockLostError(
        f"Audit write rejected: the lock {fence.key!r} is no longer held at epoch "
        f"{fence.epoch} by this runner; {holder_of(current)}."
    )


class _immediate:
    """`async with _immediate(connection):` runs the block in a `BEGIN IMMEDIATE` transaction."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def __aenter__(self) -> None:
        await self.connection.execute("BEGIN IMMEDIATE")

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            await self.connection.execute("COMMIT")
            return
        with anyio.CancelScope(shield=True):
            if self.connection.in_transaction:
                await self.connection.execute("ROLLBACK")


# -- URLs and paths ------------------------------------------------------------------------


def from_url(url: str) -> SQLiteDriver:
    """Build a driver from `sqlite:///relative.db`, `sqlite:////absolute.db` or `sqlite:///:memory:`.

    A relative path is resolved against the current directory. Accepted query options:
    `table_prefix` and `busy_timeout` (seconds), for example `sqlite:///app.db?busy_timeout=10`.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(
            f"Invalid SQLite URL {url!r}: it must start with sqlite:/// (for example "
            "sqlite:///app.db)."
        )
    if parts.netloc:
        raise ConfigurationError(
            f"Invalid SQLite URL {url!r}: a host {parts.netloc!r} is not allowed; use three "
            "slashes for a relative path (sqlite:///app.db) or four for an absolute one "
            "(sqlite:////var/lib/app.db)."
        )
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not path:
        raise ConfigurationError(
            f"Invalid SQLite URL {url!r}: the database path is missing; write it after "
            "sqlite:/// (for example sqlite:///app.db)."
        )
    options = _parse_options(url, parts.query)
    if parts.fragment:
        raise ConfigurationError(
            f"Invalid SQLite URL {url!r}: remove the fragment {'#' + parts.fragment!r}."
        )
    _check_database_path(path, url=url)
    if path != MEMORY:
        path = os.path.abspath(path)
    return SQLiteDriver(path, **options)


def _parse_options(url: str, query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name not in _URL_OPTIONS:
            raise ConfigurationError(
                f"Invalid SQLite URL {url!r}: unknown option {name!r}; the accepted options "
                f"are {', '.join(_URL_OPTIONS)}."
            )
        if name == "table_prefix":
            options[name] = value
            continue
        try:
            options[name] = float(value)
        except ValueError:
            raise ConfigurationError(
                f"Invalid SQLite URL {url!r}: busy_timeout must be a number of seconds, "
                f"got {value!r}."
            ) from None
    return options


def _file_exists(path: str) -> bool:
    """Return whether `path` exists, with one stat call on the event loop's thread.

    A worker thread would cost more than the call, and `open()` with nothing pending would
    then import anyio's thread machinery for this alone.
    """
    return os.path.exists(path)


def _check_database_path(path: str, *, url: str | None = None) -> None:
    """Raise `ConfigurationError` unless `path` can be an SQLite database file."""
    if path == MEMORY:
        return
    shown = url if url is not None else path
    target = Path(path)
    if target.is_dir():
        raise ConfigurationError(
            f"The SQLite database {shown!r} is a directory; name a file inside it, for "
            f"example {os.path.join(path, 'flamingock.db')!r}."
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigurationError(
            f"The folder of the SQLite database {shown!r} does not exist "
            f"({os.path.abspath(parent)}); create it first or choose another path."
        )
