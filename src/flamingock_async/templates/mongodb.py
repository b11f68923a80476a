"""The `mongodb` template: collection, index and document operations on the store's database.

```yaml
- template: mongodb
  id: create-users
  order: "0001"
  author: platform
  transactional: false
  apply:
    - create_collection: users
    - create_index: {collection: users, keys: {email: 1}, unique: true}
    - insert_many:
        collection: users
        documents: [{_id: admin, email: admin@example.com}]
  rollback:                      # optional
    - drop_collection: users
```

Operations, each a mapping with one key:

- `create_collection`: `collection` (or the name alone), `options`; undone by dropping it.
- `drop_collection`: `collection` (or the name alone); no default undo.
- `create_index`: `collection`, `keys` (field to 1, -1, "text", "2d", "2dsphere" or "hashed"),
  `name`, `unique`, `options`; undone by dropping the index.
- `drop_index`: `collection`, `name`; no default undo.
- `insert_many`: `collection`, `documents`; undone by deleting their `_id`s, when every
  document has one.
- `update_many`: `collection`, `filter`, `update` (operators or a pipeline), `upsert`; no
  default undo.
- `delete_many`: `collection`, `filter`; no default undo.

Without a `rollback` list, rolling back runs the default undo of each `apply` operation in
reverse order, and the change has a rollback only if every operation has one. Values may use
MongoDB Extended JSON, such as `{$oid: ...}` or `{$date: ...}`.

The database is injected by the name `db` (the store's own database, or a user dependency of
that name); a transactional change runs every operation in the injected `session`. MongoDB
rejects creating or dropping collections and indexes inside transactions in many cases, so
declare changes with those operations `transactional: false`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import ChangeTemplate
from ._operations import tag_operations, undo_operations

__all__ = ["MongoConfig", "MongoTemplate", "TEMPLATE"]

# Server error code for a missing index (IndexNotFound).
_INDEX_NOT_FOUND = 27

IndexDirection = Literal[1, -1, "text", "2d", "2dsphere", "hashed"]


def _to_bson(value: Any) -> Any:
    """Convert Extended JSON such as `{$oid: ...}` inside `value` to BSON types."""
    from bson import json_util

    if isinstance(value, Mapping):
        return json_util.object_hook({key: _to_bson(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_to_bson(item) for item in value]
    return value


class _Operation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    collection: str

    @field_validator("collection")
    @classmethod
    def _valid_collection(cls, value: str) -> str:
        if not value or "$" in value or "\x00" in value or value.startswith("system."):
            raise ValueError(
                f"the collection name {value!r} is invalid; use a non-empty name without '$' "
                "that does not start with 'system.'"
            )
        return value

    def inverse(self) -> _Operation | None:
        """Return the operation that undoes this one, or None when there is none."""
        return None

    async def run(self, db: Any, session: Any) -> None:
        raise NotImplementedError


class CreateCollection(_Operation):
    op: Literal["create_collection"]
    options: dict[str, Any] = Field(default_factory=dict)

    def inverse(self) -> _Operation:
        return DropCollection(op="drop_collection", collection=self.collection)

    async def run(self, db: Any, session: Any) -> None:
        await db.create_collection(self.collection, session=session, **_to_bson(self.options))


class DropCollection(_Operation):
    op: Literal["drop_collection"]

    async def run(self, db: Any, session: Any) -> None:
        await db.drop_collection(self.collection, session=session)


class CreateIndex(_Operation):
    op: Literal["create_index"]
    keys: dict[str, IndexDirection]
    name: str | None = None
    unique: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("keys")
    @classmethod
    def _not_empty(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("give at least one field, as in {email: 1}")
        return value

    @property
    def index_name(self) -> str:
        """The given name, or the one MongoDB derives from the keys (`email_1_age_-1`)."""
        if self.name:
            return self.name
        return "_".join(f"{field}_{direction}" for field, direction in self.keys.items())

    def inverse(self) -> _Operation:
        return DropIndex(
            op="drop_index", collection=self.collection, name=self.index_name, missing_ok=True
        )

    async def run(self, db: Any, session: Any) -> None:
        await db[self.collection].create_index(
            list(self.keys.items()),
            name=self.index_name,
            unique=self.unique,
            session=session,
            **_to_bson(self.options),
        )


class DropIndex(_Operation):
    op: Literal["drop_index"]
    name: str
    missing_ok: bool = False

    async def run(self, db: Any, session: Any) -> None:
        from pymongo.errors import OperationFailure

        try:
            await db[self.collection].drop_index(self.name, session=session)
        except OperationFailure as error:
            if not (self.missing_ok and error.code == _INDEX_NOT_FOUND):
                raise


class InsertMany(_Operation):
    op: Literal["insert_many"]
    documents: list[dict[str, Any]] = Field(min_length=1)

    def inverse(self) -> _Operation | None:
        if not all("_id" in document for document in self.documents):
            return None
        ids = [document["_id"] for document in self.documents]
        return DeleteMany(
            op="delete_many", collection=self.collection, filter={"_id": {"$in": ids}}
        )

    async def run(self, db: Any, session: Any) -> None:
        await db[self.collection].insert_many(_to_bson(self.documents), session=session)


class UpdateMany(_Operation):
    op: Literal["update_many"]
    filter: dict[str, Any]
    update: dict[str, Any] | list[dict[str, Any]]
    upsert: bool = False

    @field_validator("update")
    @classmethod
    def _operators_only(cls, value: dict[str, Any] | list[dict[str, Any]]) -> Any:
        if not value:
            raise ValueError("give update operators such as {$set: {...}} or a pipeline")
        if isinstance(value, dict) and not all(key.startswith("$") for key in value):
            raise ValueError(
                "every key of an update must be an operator such as $set or $unset; to "
                "replace whole documents, delete and insert them"
            )
        return value

    async def run(self, db: Any, session: Any) -> None:
        await db[self.collection].update_many(
            _to_bson(self.filter), _to_bson(self.update), upsert=self.upsert, session=session
        )


class DeleteMany(_Operation):
    op: Literal["delete_many"]
    filter: dict[str, Any]

    async def run(self, db: Any, session: Any) -> None:
        await db[self.collection].delete_many(_to_bson(self.filter), session=session)


Operation = Annotated[
    CreateCollection
    | DropCollection
    | CreateIndex
    | DropIndex
    | InsertMany
    | UpdateMany
    | DeleteMany,
    Field(discriminator="op"),
]

_OPERATION_NAMES = (
    "create_collection",
    "drop_collection",
    "create_index",
    "drop_index",
    "insert_many",
    "update_many",
    "delete_many",
)


_SHORTHAND = {"create_collection": "collection", "drop_collection": "collection"}


class MongoConfig(BaseModel):
    """The fields of a `mongodb` template change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apply: tuple[Operation, ...] = Field(min_length=1)
    rollback: tuple[Operation, ...] | None = None

    @field_validator("apply", "rollback", mode="before")
    @classmethod
    def _tag(cls, value: object) -> object:
        return tag_operations(value, _OPERATION_NAMES, _SHORTHAND)

    def undo_operations(self) -> tuple[_Operation, ...] | None:
        """Return the operations that undo `apply`, or None when some cannot be undone."""
        return undo_operations(self.apply, self.rollback)


class MongoTemplate(ChangeTemplate):
    """Runs the `apply` operations in order, and their undo operations on rollback."""

    config_model = MongoConfig
    config: MongoConfig

    def has_rollback(self) -> bool:
        return self.config.undo_operations() is not None

    async def execute(self, db: Any, session: Any = None) -> None:
        for operation in self.config.apply:
            await operation.run(db, session)

    async def rollback(self, db: Any, session: Any = None) -> None:
        for operation in self.config.undo_operations() or ():
            await operation.run(db, session)


TEMPLATE = MongoTemplate
