"""Backend metadata in MongoDB, through PyMongo's `AsyncMongoClient` (imported when opened).

The URL is `mongodb://HOST:PORT/DATABASE` (or `mongodb+srv://`), with PyMongo's own query
options. The metadata lives in collections named `backend_*` in that database, which may be
the database of the audit logs too. Organisations, projects, environments and services share
one layout: `_id`, `parent_id` (empty for an organisation), `name` and `created_at_ms`, with a
unique index on `(parent_id, name)`. An API token is one document whose `_id` is the token id;
it repeats the names and ids of its service, which never change.

Writes stay portable across MongoDB-compatible servers. A row is created by an insert that a
unique index may reject, followed by a read, rather than by an upsert. Filters use no `$or`,
and times are epoch-millisecond integers.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit

from .._audit import new_id, now_ms
from .._errors import ConfigurationError, DriverUnavailableError, MissingDependencyError
from ..drivers import redact_url
from ._meta import LEVELS, MetadataStore, TokenInfo, token_fields, token_from_fields

__all__ = ["MongoMetadataStore"]

logger = logging.getLogger(__name__)

_PREFIX = "backend_"
_SETTINGS = f"{_PREFIX}settings"
_TOKENS = f"{_PREFIX}api_tokens"
_COLLECTIONS = {level: f"{_PREFIX}{level}s" for level in LEVELS}


def _import_pymongo() -> Any:
    try:
        import pymongo
    except ImportError as error:
        raise MissingDependencyError("MongoDB", "pymongo", "mongodb") from error
    return pymongo


class MongoMetadataStore(MetadataStore):
    """Metadata in the `backend_*` collections of one MongoDB database."""

    def __init__(self, url: str, *, server_selection_timeout_ms: int = 10_000) -> None:
        parts = urlsplit(url)
        database = unquote(parts.path.lstrip("/"))
        if parts.scheme.lower() not in ("mongodb", "mongodb+srv") or not database:
            raise ConfigurationError(
                f"The metadata URL {redact_url(url)!r} names no MongoDB database; write it as "
                "mongodb://HOST:PORT/DATABASE."
            )
        self._url = url
        self.database_name = database
        self.location = f"MongoDB {redact_url(url)}"
        self._timeout_ms = server_selection_timeout_ms
        self._client: Any = None
        self._database: Any = None

    async def open(self) -> None:
        if self._client is not None:
            return
        pymongo = _import_pymongo()
        options: dict[str, Any] = {}
        if "serverselectiontimeoutms" not in self._url.lower():
            options["serverSelectionTimeoutMS"] = self._timeout_ms
        client = pymongo.AsyncMongoClient(self._url, **options)
        database = client[self.database_name]
        try:
            for level in LEVELS:
                await database[_COLLECTIONS[level]].create_index(
                    [("parent_id", 1), ("name", 1)], unique=True, name="parent_name"
                )
            await database[_TOKENS].create_index([("created_at_ms", 1)], name="created")
        except pymongo.errors.PyMongoError as error:
            await client.close()
            raise DriverUnavailableError(
                f"The metadata store at {self.location} cannot be reached "
                f"({type(error).__name__}); check that MongoDB runs there and the URL is right."
            ) from None
        self._client = client
        self._database = database

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client, self._database = self._client, None, None
            await client.close()

    @property
    def database(self) -> Any:
        if self._database is None:
            raise RuntimeError("The metadata store is not open; call open() first.")
        return self._database

    async def _insert_once(self, collection: str, document: dict[str, Any]) -> None:
        """Insert `document` unless a unique index already contains its key."""
        errors = _import_pymongo().errors
        try:
            await self.database[collection].insert_one(document)
        except errors.DuplicateKeyError:
            logger.debug("Another writer created the %s document first", collection)

    async def _setting(self, name: str, value: str) -> str:
        settings = self.database[_SETTINGS]
        found = await settings.find_one({"_id": name})
        if found is None:
            await self._insert_once(_SETTINGS, {"_id": name, "value": value})
            found = await settings.find_one({"_id": name})
        if found is None:
            raise RuntimeError(f"The setting {name!r} vanished right after its creation.")
        return str(found["value"])

    async def _ensure(self, level: str, parent_id: str | None, name: str) -> str:
        collection = _COLLECTIONS[level]
        key = {"parent_id": parent_id or "", "name": name}
        found = await self.database[collection].find_one(key, {"_id": 1})
        if found is None:
            document = {"_id": new_id(), **key, "created_at_ms": now_ms()}
            await self._insert_once(collection, document)
            found = await self.database[collection].find_one(key, {"_id": 1})
        if found is None:
            raise RuntimeError(f"The {level} {name!r} vanished right after its creation.")
        return str(found["_id"])

    async def _insert_token(self, info: TokenInfo) -> None:
        document = {"_id": info.token_id, **token_fields(info), "revoked_at_ms": None}
        await self.database[_TOKENS].insert_one(document)

    async def revoke_token(self, token_id: str) -> bool:
        result = await self.database[_TOKENS].update_one(
            {"_id": token_id, "revoked_at_ms": None}, {"$set": {"revoked_at_ms": now_ms()}}
        )
        return bool(result.modified_count > 0)

    async def list_tokens(self) -> list[TokenInfo]:
        cursor = self.database[_TOKENS].find().sort([("created_at_ms", 1), ("_id", 1)])
        return [token_from_fields(str(document["_id"]), document) async for document in cursor]

    async def get_token(self, token_id: str) -> TokenInfo | None:
        document = await self.database[_TOKENS].find_one({"_id": token_id})
        return None if document is None else token_from_fields(token_id, document)
