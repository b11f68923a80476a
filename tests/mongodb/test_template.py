"""The `mongodb` template: pipeline files run by the runner, undo operations, validation."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from flamingock_async import AsyncRunner, LockSettings, PipelineValidationError
from flamingock_async._discovery import load_pipeline
from flamingock_async.drivers.mongodb import MongoDriver
from flamingock_async.templates.mongodb import MongoConfig, MongoTemplate

from .helpers import entry, fence_of, lock_record

FAST_LOCK = LockSettings(lease=2.0, wait_timeout=30.0, poll_interval=0.1)

USERS = """
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
        documents:
          - {_id: admin, email: admin@example.com, plan: free}
          - {_id: {$oid: 65a000000000000000000001}, email: ops@example.com, plan: free}
- template: mongodb
  id: upgrade-plans
  order: "0002"
  author: platform
  apply:
    - update_many: {collection: users, filter: {plan: free}, update: {$set: {plan: pro}}}
  rollback:
    - update_many: {collection: users, filter: {plan: pro}, update: {$set: {plan: free}}}
"""


def write_pipeline(tmp_path: Path, entries: str) -> str:
    path = tmp_path / "pipeline.yaml"
    body = textwrap.indent(textwrap.dedent(entries).strip(), " " * 6)
    path.write_text(f"stages:\n  - name: mongo\n    changes:\n{body}\n")
    return str(path)


def template_for(fields: dict[str, Any]) -> MongoTemplate:
    config = MongoConfig.model_validate(fields)
    return MongoTemplate(config, None)


async def test_pipeline_file_applied(
    driver: MongoDriver, raw_database: Any, tmp_path: Path
) -> None:
    path = write_pipeline(tmp_path, USERS)
    report = await AsyncRunner(driver, path, lock=FAST_LOCK, manifest_cache=False).run()
    assert report.applied == ("create-users", "upgrade-plans")
    assert await raw_database["users"].count_documents({"plan": "pro"}) == 2
    assert await raw_database["users"].find_one({"_id": ObjectId("65a000000000000000000001")})
    indexes = await raw_database["users"].index_information()
    assert [("email", 1)] in [index["key"] for index in indexes.values()]


async def test_pipeline_file_applied_once(
    driver: MongoDriver, raw_database: Any, tmp_path: Path
) -> None:
    path = write_pipeline(tmp_path, USERS)
    await AsyncRunner(driver, path, lock=FAST_LOCK, manifest_cache=False).run()
    second = await AsyncRunner(driver, path, lock=FAST_LOCK, manifest_cache=False).run()
    assert second.applied == ()
    assert await raw_database["users"].count_documents({}) == 2


async def test_default_undo_reverses(driver: MongoDriver, raw_database: Any) -> None:
    template = template_for(
        {
            "apply": [
                {"create_collection": "users"},
                {"create_index": {"collection": "users", "keys": {"email": 1}}},
                {"insert_many": {"collection": "users", "documents": [{"_id": 1}, {"_id": 2}]}},
            ]
        }
    )
    db = driver.database
    await template.execute(db)
    await raw_database["users"].insert_one({"_id": 3})
    await template.rollback(db)
    assert template.has_rollback() is True
    assert "users" not in await raw_database.list_collection_names()


async def test_insert_undo_deletes_ids(driver: MongoDriver, raw_database: Any) -> None:
    template = template_for(
        {"apply": [{"insert_many": {"collection": "plans", "documents": [{"_id": "free"}]}}]}
    )
    await raw_database["plans"].insert_one({"_id": "pro"})
    await template.execute(driver.database)
    await template.rollback(driver.database)
    assert [document["_id"] async for document in raw_database["plans"].find()] == ["pro"]


async def test_undo_of_missing_index(driver: MongoDriver, raw_database: Any) -> None:
    """Rolling back after create_index failed before running drops nothing and succeeds."""
    await raw_database.create_collection("users")
    template = template_for(
        {"apply": [{"create_index": {"collection": "users", "keys": {"email": 1}}}]}
    )
    await template.rollback(driver.database)
    assert await raw_database["users"].count_documents({}) == 0


def test_index_name_derived_from_keys() -> None:
    template = template_for(
        {"apply": [{"create_index": {"collection": "u", "keys": {"email": 1, "age": -1}}}]}
    )
    [operation] = template.config.apply
    assert operation.inverse().name == "email_1_age_-1"


def test_no_undo_without_ids() -> None:
    template = template_for(
        {"apply": [{"insert_many": {"collection": "plans", "documents": [{"name": "free"}]}}]}
    )
    assert template.has_rollback() is False


def test_no_undo_for_update() -> None:
    template = template_for(
        {
            "apply": [
                {"update_many": {"collection": "u", "filter": {}, "update": {"$set": {"a": 1}}}}
            ]
        }
    )
    assert template.has_rollback() is False


def test_explicit_rollback_wins() -> None:
    template = template_for(
        {
            "apply": [{"delete_many": {"collection": "u", "filter": {"old": True}}}],
            "rollback": [{"drop_collection": "u"}],
        }
    )
    assert template.has_rollback() is True


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("apply: [{rename_collection: users}]", "unknown operation 'rename_collection'"),
        ("apply: [{create_index: {collection: users, keys: {}}}]", "at least one field"),
        ("apply: [{create_index: {collection: users, keys: {email: 2}}}]", "email"),
        ("apply: [{update_many: {collection: u, filter: {}, update: {plan: pro}}}]", "operator"),
        ("apply: [{insert_many: {collection: u, documents: []}}]", "documents"),
        ("apply: [{delete_many: {collection: u}}]", "filter"),
        ("apply: [{drop_collection: {collection: u, force: true}}]", "force"),
        ("apply: [{create_collection: bad$name}]", "bad\\$name"),
        ("apply: []", "apply"),
        ("aply: [{drop_collection: u}]", "aply"),
    ],
)
def test_invalid_entry_rejected(tmp_path: Path, entry: str, message: str) -> None:
    path = write_pipeline(
        tmp_path,
        f"""
        - template: mongodb
          id: broken
          order: "0001"
          author: platform
          {entry}
        """,
    )
    with pytest.raises(PipelineValidationError, match=message) as caught:
        load_pipeline(path)
    assert "broken" in str(caught.value)


def test_valid_file_loads(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path, USERS))
    assert [change.id for change in pipeline] == ["create-users", "upgrade-plans"]


async def test_runs_in_session(make_driver: Callable[..., MongoDriver], raw_database: Any) -> None:
    """A transactional template change writes through the injected session."""
    driver = make_driver()
    await driver.open()
    await driver.setup()
    await raw_database.create_collection("plans")
    seen: list[Any] = []
    template = template_for(
        {"apply": [{"insert_many": {"collection": "plans", "documents": [{"_id": "free"}]}}]}
    )

    async def body(session: Any) -> None:
        seen.append(session)
        await template.execute(driver.database, session)
        raise RuntimeError("abort")

    record = lock_record()
    await driver.insert_lock(record)
    with pytest.raises(RuntimeError):
        await driver.run_in_transaction(fence_of(record), body, lambda: entry())
    assert len(seen) == 1
    assert await raw_database["plans"].count_documents({}) == 0
