"""The MongoDB driver, on PyMongo's `AsyncMongoClient` (a Motor client is accepted too).

Storage:

* the audit collection contains one document per `AuditEntry` (the fields of `to_dict()`, with a
  generated `_id`), with a unique index on `entry_id` so that a retried append is a no-op;
* the lock collection contains one document per lock key, with `_id` set to the key, and a
  fence document per key (`_id` is the key followed by `:fence`) holding the owner and epoch
  of the current holding. Times are epoch milliseconds, so that no datetime is compared.

Every lock operation is a single-document atomic write; taking the lock over or releasing it
then also rewrites the fence document. On a replica set or a sharded cluster (detected from
`hello`) a transactional change, its `APPLIED` entry and the fence check commit in one
transaction. The fence check updates the fence document filtered by owner and epoch, so a
runner that takes the lock over concurrently conflicts with the transaction, while the
holder's heartbeat, which writes only the lock document, does not.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from .._audit import AuditEntry
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
from .._lock import Fence, LockRecord, holder_of
from ._base import ChangeBodyFailed, Driver, TransactionBody
from ._mongodb_url import DEFAULT_AUDIT_COLLECTION, DEFAULT_LOCK_COLLECTION

if TYPE_CHECKING:
    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.database import AsyncDatabase

__all__ = ["MongoDriver", "from_url"]

logger = logging.getLogger(__name__)

# How long a transactional change is retried on transient errors, as the `with_transaction`
# helper of the MongoDB driver specifications does (120 s there too).
TRANSACTION_RETRY_DEADLINE = 120.0

# Upper bound, in seconds, for aborting a transaction or ending a session during cleanup.
_CLEANUP_TIMEOUT = 10.0

# Server error codes (src/mongo/base/error_codes.yml in the MongoDB server sources).
_AUTH_CODES = {13, 18}  # Unauthorized, AuthenticationFailed
_ILLEGAL_OPERATION = 20
_NAMESPACE_EXISTS = 48
_INDEX_ALREADY_EXISTS = 68
_INVALID_NAMESPACE = 73
_INDEX_CONFLICT_CODES = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict
_WRITE_CONFLICT = 112
_NOT_IN_TRANSACTION = 263  # OperationNotSupportedInTransaction
_INDEX_BUILD_IN_PROGRESS = 276
_SETUP_RACE_CODES = {
    _NAMESPACE_EXISTS,
    _INDEX_ALREADY_EXISTS,
    _WRITE_CONFLICT,
    _INDEX_BUILD_IN_PROGRESS,
}
_COMMAND_NOT_FOUND = 59

_AUDIT_INDEXES = (
    ("entry_id_unique", [("entry_id", 1)], True),
    ("change_epoch_sequence", [("change_id", 1), ("lock_epoch", 1), ("sequence", 1)], False),
)


def _import_pymongo() -> Any:
    try:
        import pymongo
    except ImportError as error:
        raise MissingDependencyError("mongodb", "pymongo", "mongodb") from error
    return pymongo


async def _maybe_await(value: Any) -> Any:
    """Await `value` if it is awaitable: Motor and PyMongo differ on which calls are async."""
    if inspect.isawaitable(value):
        return await value
    return value


def _is_motor(client: object) -> bool:
    return type(client).__module__.split(".", 1)[0] == "motor"


class MongoDriver(Driver):
    """Driver storing the audit log and the lock in a MongoDB database.

    `client_or_url` is a `mongodb://` or `mongodb+srv://` URL, an `AsyncMongoClient`, or a
    Motor `AsyncIOMotorClient`. A client passed in stays open when the driver closes.
    `transactions=None` detects transaction support from the server (replica set or
    mongos); `False` never opens a transaction, for standalone servers.
    `server_selection_timeout` (seconds) bounds how long an unreachable server is waited for.
    `client_options` are passed to `AsyncMongoClient` when the driver creates it.
    """

    name = "mongodb"
    transaction_handle_names = ("session", "transaction")

    def __init__(
        self,
        client_or_url: Any,
        database: str,
        *,
        audit_collection: str = DEFAULT_AUDIT_COLLECTION,
        lock_collection: str = DEFAULT_LOCK_COLLECTION,
        transactions: bool | None = None,
        server_selection_timeout: float = 10.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(client_or_url, str) and not callable(
            getattr(client_or_url, "start_session", None)
        ):
            raise ConfigurationError(
                f"MongoDriver needs a mongodb:// URL or an AsyncMongoClient, got "
                f"{type(client_or_url).__name__}; pass one of those."
            )
        if not isinstance(database, str) or not database:
            raise ConfigurationError(
                f"The MongoDB database name must be a non-empty string, got {database!r}."
            )
        if server_selection_timeout <= 0:
            raise ConfigurationError(
                f"server_selection_timeout must be positive, got {server_selection_timeout!r}."
            )
        for label, value in (
            ("audit_collection", audit_collection),
            ("lock_collection", lock_collection),
        ):
            if not value or "$" in value or "\x00" in value:
                raise ConfigurationError(
                    f"The {label} name {value!r} is invalid; use a non-empty name without '$'."
                )

        self._url = client_or_url if isinstance(client_or_url, str) else None
        self._client: Any = None if self._url is not None else client_or_url
        self._owns_client = self._url is not None
        self._database_name = database
        self._audit_name = audit_collection
        self._lock_name = lock_collection
        self._requested_transactions = transactions
        self._transactions = False
        self._timeout = server_selection_timeout
        # Bound for a shielded lock write: server selection, then the write and a fence update.
        self._write_timeout = server_selection_timeout + 30.0
        self._client_options = dict(client_options or {})

        # Bound by `open()`.
        self._database: Any = None
        self._audit: Any = None
        self._locks: Any = None
        self._set_up = False
        self._opened = False

    # -- description -------------------------------------------------------------------------

    @property
    def supports_transactions(self) -> bool:
        return self._transactions

    @property
    def database(self) -> AsyncDatabase[Any]:
        """The store's database; available once the driver is open."""
        if self._database is None:
            raise DriverError("The MongoDB driver is not open; call 'await driver.open()' first.")
        database: AsyncDatabase[Any] = self._database
        return database

    @property
    def client(self) -> Any:
        """The PyMongo or Motor client; None before `open()` when built from a URL."""
        return self._client

    def describe(self) -> str:
        return f"MongoDB at {self._hosts()}/{self._database_name}"

    def _hosts(self) -> str:
        if self._url is not None:
            netloc = urlsplit(self._url).netloc
            return netloc.rpartition("@")[2] or "localhost"
        try:
            seeds = self._client._topology_settings.seeds
        except AttributeError:
            try:
                seeds = self._client.delegate._topology_settings.seeds
            except AttributeError:
                return "an unknown host"
        return ",".join(f"{host}:{port}" for host, port in sorted(seeds))

    def provided_dependencies(self) -> Mapping[str, type]:
        database_type, session_type = self._dependency_types()
        return {
            "db": database_type,
            "database": database_type,
            "session": session_type,
            "transaction": session_type,
        }

    def target_dependencies(self) -> Mapping[str, object]:
        return {"db": self.database, "database": self.database}

    def _dependency_types(self) -> tuple[type, type]:
        if self._client is not None and _is_motor(self._client):
            import motor.motor_asyncio as motor_asyncio

            return motor_asyncio.AsyncIOMotorDatabase, motor_asyncio.AsyncIOMotorClientSession
        _import_pymongo()
        from pymongo.asynchronous.client_session import AsyncClientSession
        from pymongo.asynchronous.database import AsyncDatabase

        return AsyncDatabase, AsyncClientSession

    # -- lifecycle ---------------------------------------------------------------------------

    async def _open(self) -> None:
        # Set only once the server answered, so that an open that failed can be retried.
        if self._opened:
            return
        pymongo = _import_pymongo()
        if isinstance(self._client, pymongo.MongoClient):
            raise ConfigurationError(
                "MongoDriver needs an asyncio client, got a synchronous pymongo.MongoClient; "
                "pass a pymongo.AsyncMongoClient or the connection URL instead."
            )
        if self._client is None:
            options: dict[str, Any] = {"serverSelectionTimeoutMS": int(self._timeout * 1000)}
            options.update(self._client_options)
            self._client = pymongo.AsyncMongoClient(self._url, **options)
        self._database = self._client[self._database_name]
        self._bind_collections(pymongo)
        hello = await self._hello()
        self._transactions = self._decide_transactions(hello)
        self._opened = True
        logger.debug(
            "Opened %s (transactions %s)", self.describe(), "on" if self._transactions else "off"
        )

    def _bind_collections(self, pymongo: Any) -> None:
        from pymongo.read_concern import ReadConcern

        options = {
            "write_concern": pymongo.WriteConcern("majority"),
            "read_concern": ReadConcern("majority"),
            "read_preference": pymongo.ReadPreference.PRIMARY,
        }
        self._audit = self._database.get_collection(self._audit_name, **options)
        self._locks = self._database.get_collection(self._lock_name, **options)

    async def _hello(self) -> Mapping[str, Any]:
        from pymongo.errors import OperationFailure

        try:
            reply: Mapping[str, Any] = await self._client.admin.command("hello")
        except OperationFailure as error:
            if error.code != _COMMAND_NOT_FOUND:
                raise
            # Servers before 4.4.2 know only the legacy name of the command.
            reply = await self._client.admin.command("isMaster")
        return reply

    def _decide_transactions(self, hello: Mapping[str, Any]) -> bool:
        capable = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        if self._requested_transactions is None:
            return capable
        if self._requested_transactions and not capable:
            logger.warning(
                "transactions=True was set but %s reports neither a replica set nor mongos; "
                "real MongoDB rejects transactions there, so set transactions=False if changes "
                "fail with 'Transaction numbers are only allowed on a replica set member'.",
                self.describe(),
            )
        return self._requested_transactions

    async def _aclose(self) -> None:
        client, self._database = self._client, None
        self._opened = False
        if self._owns_client and client is not None:
            self._client = None
            await _maybe_await(client.close())

    async def _setup(self) -> None:
        """Create the collections and indexes; safe when many runners race on an empty store.

        Nothing here runs in a transaction. A collection or index that another runner created
        a moment before is not an error, and a conflicting concurrent build is retried.
        """
        if self._set_up:
            return
        from pymongo.errors import CollectionInvalid, OperationFailure

        for attempt in range(5):
            try:
                await self._create_collections()
                await self._create_indexes()
            except (OperationFailure, CollectionInvalid) as error:
                if attempt == 4 or not _is_setup_race(error):
                    raise
                logger.debug("Setup raced with another runner, retrying: %s", error)
                continue
            break
        self._set_up = True

    async def _create_collections(self) -> None:
        from pymongo.errors import CollectionInvalid, OperationFailure

        wanted = [self._audit_name, self._lock_name]
        existing = await self.database.list_collection_names(filter={"name": {"$in": wanted}})
        for name in wanted:
            if name in existing:
                continue
            try:
                await self.database.create_collection(name)
            except CollectionInvalid:
                continue  # another runner created it since the listing
            except OperationFailure as error:
                if error.code != _NAMESPACE_EXISTS:
                    raise

    async def _create_indexes(self) -> None:
        from pymongo import IndexModel
        from pymongo.errors import OperationFailure

        models = [
            IndexModel(keys, name=name, unique=unique) for name, keys, unique in _AUDIT_INDEXES
        ]
        try:
            await self._audit.create_indexes(models)
        except OperationFailure as error:
            if error.code in _INDEX_CONFLICT_CODES:
                raise DriverError(
                    f"The collection {self._audit_name!r} of {self.describe()} has an index that "
                    f"conflicts with the driver's indexes ({error.details or error}); drop that "
                    "index or choose another audit_collection."
                ) from error
            raise

    # -- lock records ------------------------------------------------------------------------

    async def _read_lock(self, key: str) -> LockRecord | None:
        document = await self._locks.find_one({"_id": key})
        if document is None:
            return None
        try:
            return LockRecord.from_dict({**document, "key": document["_id"]})
        except (TypeError, KeyError) as error:
            raise DriverError(
                f"The lock document {key!r} in {self._lock_name!r} of {self.describe()} is "
                f"invalid ({error}); release it with 'flamingock lock release --force'."
            ) from error

    async def _insert_lock(self, record: LockRecord) -> bool:
        return await self._to_completion(self._insert_lock_once, record)

    async def _replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool:
        return await self._to_completion(self._replace_lock_once, key, expected_version, record)

    async def _to_completion(self, write: Callable[..., Awaitable[bool]], *args: Any) -> bool:
        """Run a lock write to its end even if the caller is cancelled meanwhile.

        A write cancelled in flight may still reach the server, and the lock manager would then
        hold a stale version and fail to release. Shielded, the write completes and its outcome
        is returned; the cancellation is delivered at the caller's next checkpoint.
        """
        with anyio.fail_after(self._write_timeout, shield=True):
            return await write(*args)

    async def _insert_lock_once(self, record: LockRecord) -> bool:
        from pymongo.errors import DuplicateKeyError

        try:
            await self._locks.insert_one(_lock_document(record))
        except DuplicateKeyError:
            return False
        await self._publish_fence(record)
        return True

    async def _replace_lock_once(self, key: str, expected_version: int, record: LockRecord) -> bool:
        from pymongo import ReturnDocument

        # A compare-and-set on the version alone: every write increments it, so a match proves
        # that no other write reached the record since the caller read it.
        before = await self._locks.find_one_and_replace(
            {"_id": key, "version": expected_version},
            _lock_document(record),
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return False
        if before.get("owner") != record.owner or before.get("epoch") != record.epoch:
            await self._publish_fence(record)
        return True

    async def _publish_fence(self, record: LockRecord) -> None:
        """Copy the holder's owner and epoch to the fence document of the lock.

        The fence document changes only when the lock changes hands, never on a renewal, so a
        transaction that writes it conflicts with a takeover but not with the holder's own
        heartbeat. The epoch filter keeps a delayed publication from overwriting a newer one.
        """
        from pymongo.errors import DuplicateKeyError

        try:
            await self._locks.update_one(
                {"_id": _fence_id(record.key), "epoch": {"$lte": record.epoch}},
                {"$set": {"owner": record.owner, "epoch": record.epoch}},
                upsert=True,
            )
        except DuplicateKeyError:
            return  # a later acquisition already published a higher epoch

    # -- audit log ---------------------------------------------------------------------------

    async def _read_states(self) -> list[AuditEntry]:
        pipeline = [
            {"$sort": {"change_id": 1, "lock_epoch": -1, "sequence": -1}},
            {"$group": {"_id": "$change_id", "newest": {"$first": "$$ROOT"}}},
        ]
        cursor = await _maybe_await(self._audit.aggregate(pipeline))
        return [self._entry(group["newest"]) async for group in cursor]

    async def _read_history(self, change_id: str | None) -> list[AuditEntry]:
        query = {} if change_id is None else {"change_id": change_id}
        cursor = self._audit.find(query).sort([("lock_epoch", 1), ("sequence", 1)])
        return [self._entry(document) async for document in cursor]

    def _entry(self, document: Mapping[str, Any]) -> AuditEntry:
        try:
            return AuditEntry.from_dict(document)
        except (KeyError, TypeError, ValueError) as error:
            record_id = str(document.get("_id"))
            raise CorruptAuditEntryError(
                f"The audit document with _id {record_id} in {self._audit_name!r} of "
                f"{self.describe()} cannot be read ({error}); repair or remove it by hand.",
                record_key=record_id,
            ) from error

    async def _append_audit(self, entry: AuditEntry, fence: Fence) -> None:
        if self._transactions:
            await self._append_in_transaction(entry, fence)
            return
        # NOTE: without transactions the fence is checked by a read just before the insert, so
        # a runner whose lease expires between the two can still append one entry. Entries that
        # commit atomically with a change are not exposed to that window: with transactions
        # they are fenced inside the transaction (`_run_in_transaction`).
        lock = await self._locks.find_one(_fence_filter(fence), projection={"_id": 1})
        if lock is None:
            raise await self._lock_lost(fence)
        await self._insert_entry(entry, session=None)

    async def _append_in_transaction(self, entry: AuditEntry, fence: Fence) -> None:
        from pymongo.errors import DuplicateKeyError

        async def write(session: Any) -> None:
            await self._check_fence(fence, session)
            await self._audit.insert_one(entry.to_dict(), session=session)

        try:
            await self._transaction(write)
        except DuplicateKeyError:
            return  # the entry was stored by an earlier attempt

    async def _insert_entry(self, entry: AuditEntry, session: Any) -> None:
        from pymongo.errors import DuplicateKeyError

        try:
            await self._audit.insert_one(entry.to_dict(), session=session)
        except DuplicateKeyError:
            return  # the entry was stored by an earlier attempt

    async def _check_fence(self, fence: Fence, session: Any) -> None:
        """Fail unless the lock carries the fence, writing its fence document in `session`.

        The write makes a takeover that commits after the transaction started conflict with
        the transaction, which then retries and finds the fence gone.
        """
        result = await self._locks.update_one(
            {"_id": _fence_id(fence.key), "owner": fence.owner, "epoch": fence.epoch},
            {"$inc": {"fenced_writes": 1}},
            session=session,
        )
        if result.matched_count != 1:
            raise await self._lock_lost(fence)

    async def _lock_lost(self, fence: Fence) -> LockLostError:
        current = await self._read_lock(fence.key)
        return LockLostError(
            f"Audit write rejected: the lock {fence.key!r} is no longer held at epoch "
            f"{fence.epoch} by this runner; {holder_of(current)}."
        )

    # -- transactions ------------------------------------------------------------------------

    async def _run_in_transaction(
        self,
        fence: Fence,
        body: TransactionBody,
        audit: Callable[[], AuditEntry],
    ) -> None:
        if not self._transactions:
            raise DriverError(
                f"Transactions are off for {self.describe()}; the runner must not ask for one."
            )

        async def write(session: Any) -> None:
            try:
                await body(session)
            except ChangeBodyFailed as carrier:
                raise _explain_transaction_rejection(carrier) from carrier.error
            await self._check_fence(fence, session)
            await self._audit.insert_one(audit().to_dict(), session=session)

        await self._transaction(write)

    async def _transaction(self, write: Callable[[Any], Awaitable[None]]) -> None:
        """Run `write` in a transaction and commit, retrying as `with_transaction` does.

        The whole of `write` runs again on a `TransientTransactionError`, and the commit alone
        is retried on an `UnknownTransactionCommitResult`, until the retry deadline passes.
        """
        from pymongo import WriteConcern

        deadline = time.monotonic() + TRANSACTION_RETRY_DEADLINE
        session: AsyncClientSession = await _maybe_await(self._client.start_session())
        try:
            while True:
                await _maybe_await(
                    session.start_transaction(write_concern=WriteConcern("majority"))
                )
                try:
                    await write(session)
                except BaseException as error:
                    await self._abort(session)
                    if _has_label(error, "TransientTransactionError") and _before(deadline):
                        logger.debug("Retrying a transaction after a transient error: %s", error)
                        continue
                    raise
                if await self._commit(session, deadline):
                    return
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT):
                await _maybe_await(session.end_session())

    async def _commit(self, session: Any, deadline: float) -> bool:
        """Commit; return False when the whole transaction must run again."""
        from pymongo.errors import PyMongoError

        while True:
            try:
                await session.commit_transaction()
            except PyMongoError as error:
                # MaxTimeMSExpired (code 50) is final even with the label, as in the specification.
                if (
                    _has_label(error, "UnknownTransactionCommitResult")
                    and getattr(error, "code", None) != 50
                    and _before(deadline)
                ):
                    logger.debug("Retrying a commit with an unknown result: %s", error)
                    continue
                if _has_label(error, "TransientTransactionError") and _before(deadline):
                    return False
                raise
            return True

    async def _abort(self, session: Any) -> None:
        from pymongo.errors import PyMongoError

        if not session.in_transaction:
            return
        try:
            # Shielded, so that a cancelled change still aborts its transaction promptly.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT):
                await session.abort_transaction()
        except PyMongoError as error:
            # The server aborts an unfinished transaction itself; the original error matters.
            logger.debug("Aborting a transaction failed: %s", error)

    # -- errors ------------------------------------------------------------------------------

    def translate_error(self, error: Exception) -> FlamingockError:
        """Map a PyMongo exception to a flamingock-async error; the one place this happens."""
        pymongo = _import_pymongo()
        errors = pymongo.errors
        where = self.describe()
        if isinstance(error, errors.ServerSelectionTimeoutError):
            return DriverUnavailableError(
                f"Could not reach {where} within the server selection timeout of "
                f"{self._timeout:g} s ({_first_line(error)}); check the host, port and network, "
                "or raise serverSelectionTimeoutMS in the store URL (server_selection_timeout "
                "when you build MongoDriver yourself)."
            )
        if isinstance(error, TimeoutError):
            return DriverUnavailableError(
                f"A lock write to {where} did not finish within {self._write_timeout:g} s; "
                "check the health of the server."
            )
        if isinstance(error, errors.ConnectionFailure):
            return DriverUnavailableError(
                f"The connection to {where} failed ({type(error).__name__}: "
                f"{_first_line(error)}); check that the server is running and reachable."
            )
        if isinstance(error, errors.InvalidName):
            return ConfigurationError(
                f"A name given for {where} is invalid ({error}): database "
                f"{self._database_name!r}, audit collection {self._audit_name!r}, lock "
                f"collection {self._lock_name!r}; choose names that MongoDB accepts."
            )
        if isinstance(error, errors.ConfigurationError):
            return ConfigurationError(
                f"The MongoDB client configuration for {where} is invalid: {error}."
            )
        if isinstance(error, errors.OperationFailure):
            return self._translate_operation_failure(error)
        if isinstance(error, errors.InvalidDocument):
            return DriverError(
                f"{where} rejected a document: {error}; audit metadata must be BSON-encodable."
            )
        if isinstance(error, errors.CollectionInvalid):
            return DriverError(f"{where}: a collection operation failed: {error}.")
        if isinstance(error, errors.EncryptionError):
            return DriverError(f"{where}: client-side field level encryption failed: {error}.")
        if isinstance(error, (errors.InvalidOperation, errors.ProtocolError)):
            return DriverError(f"{where}: {type(error).__name__}: {error}.")
        return DriverError(f"{where}: {type(error).__name__}: {error}")

    def _translate_operation_failure(self, error: Any) -> FlamingockError:
        errors = _import_pymongo().errors
        where = self.describe()
        code = error.code
        if code in _AUTH_CODES:
            return DriverAuthError(
                f"{where} rejected the credentials (code {code}: {_first_line(error)}); check the "
                "user name, password, authSource and the user's roles."
            )
        if code == _INVALID_NAMESPACE:
            return ConfigurationError(
                f"{where} rejected the database or collection name ({_first_line(error)}); "
                "choose a shorter name without reserved characters."
            )
        if code == _ILLEGAL_OPERATION and "transaction" in str(error).lower():
            return ConfigurationError(
                f"{where} does not support transactions ({_first_line(error)}); create the "
                "driver with transactions=False for a standalone server."
            )
        if code == 50 or isinstance(error, errors.ExecutionTimeout):
            return DriverUnavailableError(f"{where}: an operation timed out ({error}).")
        if isinstance(error, errors.DuplicateKeyError):
            return DriverError(f"{where}: an unexpected duplicate key: {_first_line(error)}.")
        if isinstance(error, errors.WriteConcernError):
            return DriverError(
                f"{where} could not confirm a write with write concern 'majority' "
                f"({_first_line(error)}); check the health of the replica set."
            )
        if isinstance(error, errors.CursorNotFound):
            return DriverError(f"{where}: a cursor expired while reading ({error}); retry.")
        return DriverError(f"{where}: {type(error).__name__} (code {code}): {_first_line(error)}")


def _lock_document(record: LockRecord) -> dict[str, Any]:
    document = record.to_dict()
    document["_id"] = document.pop("key")
    return document


def _fence_id(key: str) -> str:
    return f"{key}:fence"


def _fence_filter(fence: Fence) -> dict[str, Any]:
    return {"_id": fence.key, "owner": fence.owner, "epoch": fence.epoch}


def _has_label(error: BaseException, label: str) -> bool:
    if isinstance(error, ChangeBodyFailed):
        error = error.error
    has_error_label = getattr(error, "has_error_label", None)
    return bool(has_error_label(label)) if callable(has_error_label) else False


def _before(deadline: float) -> bool:
    return time.monotonic() < deadline


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.split(", full error:", 1)[0].split(", Timeout:", 1)[0].splitlines()[0]


def _is_setup_race(error: Exception) -> bool:
    code = getattr(error, "code", None)
    return code in _SETUP_RACE_CODES or "already exists" in str(error)


def _explain_transaction_rejection(carrier: ChangeBodyFailed) -> ChangeBodyFailed:
    """Replace a server's refusal of DDL inside a transaction with an actionable error."""
    error = carrier.error
    code = getattr(error, "code", None)
    text = str(error)
    rejected = code == _NOT_IN_TRANSACTION or "in a multi-document transaction" in text
    if not rejected or _has_label(error, "TransientTransactionError"):
        return carrier
    explained = DriverError(
        f"MongoDB rejected a command of the change inside its transaction "
        f"({_first_line(error)}); creating or dropping collections and indexes cannot run "
        "in a transaction here, so declare the change with transactional=False."
    )
    explained.__cause__ = error
    return ChangeBodyFailed(explained)


def from_url(url: str) -> MongoDriver:
    """Build a driver from `mongodb://[user:password@]HOST[:PORT]/DATABASE[?OPTIONS]`.

    `mongodb+srv://` works too. Besides PyMongo's connection options, the query may contain
    `auditCollection`, `lockCollection` and `transactions` (`true`, `false` or `auto`).
    """
    from ._mongodb_url import parse_store_url

    _import_pymongo()  # the URL's options are checked against PyMongo's own list
    driver_url, database, options = parse_store_url(url)
    return MongoDriver(driver_url, database, **options)
