"""Reading and writing bookmarks in the store's own database, one class per kind of store.

The service keeps its data next to the audit log, in the database that the runner's driver
opens (`driver.target_dependencies()`), so it needs no second connection setting. Requests are
refused with 503 until the run completes, so the driver is open before any class here is used.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

from flamingock_async.drivers import Driver

TABLE = "bookmarks"


class Bookmarks(Protocol):
    async def add(self, url: str, title: str, tags: list[str]) -> dict[str, Any]: ...

    async def get(self, bookmark_id: str) -> dict[str, Any] | None: ...

    async def list(self, tag: str | None = None) -> list[dict[str, Any]]: ...


def backend_of(store_url: str) -> str:
    """Return the kind of store a URL names: 'sqlite', 'mongodb' or 'dynamodb'."""
    scheme = store_url.partition("://")[0].lower()
    if scheme in ("mongodb", "mongodb+srv"):
        return "mongodb"
    if scheme in ("sqlite", "dynamodb"):
        return scheme
    raise ValueError(
        f"The bookmarks service runs on sqlite://, mongodb:// or dynamodb:// stores, got "
        f"{scheme!r}; set BOOKMARKS_STORE to one of them."
    )


def bookmarks_for(driver: Driver, backend: str) -> Bookmarks:
    """Return the bookmark store on the database that `driver` has opened."""
    target = driver.target_dependencies()
    if backend == "sqlite":
        return SQLiteBookmarks(target["connection"])
    if backend == "mongodb":
        return MongoBookmarks(target["db"])
    return DynamoBookmarks(target["dynamodb"])


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class SQLiteBookmarks:
    """Bookmarks in a table of the SQLite database, on an autocommit aiosqlite connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def add(self, url: str, title: str, tags: list[str]) -> dict[str, Any]:
        bookmark = {"id": new_id(), "url": url, "title": title, "tags": tags}
        await self.connection.execute(
            f"INSERT INTO {TABLE} (id, url, title, tags) VALUES (?, ?, ?, ?)",
            (bookmark["id"], url, title, json.dumps(tags)),
        )
        return bookmark

    async def get(self, bookmark_id: str) -> dict[str, Any] | None:
        rows = await self.connection.execute_fetchall(
            f"SELECT id, url, title, tags FROM {TABLE} WHERE id = ?", (bookmark_id,)
        )
        return next((_from_row(row) for row in rows), None)

    async def list(self, tag: str | None = None) -> list[dict[str, Any]]:
        rows = await self.connection.execute_fetchall(
            f"SELECT id, url, title, tags FROM {TABLE} ORDER BY url"
        )
        return _with_tag([_from_row(row) for row in rows], tag)


class MongoBookmarks:
    """Bookmarks in a collection of the MongoDB database, keyed by their id."""

    def __init__(self, db: Any) -> None:
        self.collection = db[TABLE]

    async def add(self, url: str, title: str, tags: list[str]) -> dict[str, Any]:
        bookmark = {"id": new_id(), "url": url, "title": title, "tags": tags}
        await self.collection.insert_one({"_id": bookmark["id"], **bookmark})
        return bookmark

    async def get(self, bookmark_id: str) -> dict[str, Any] | None:
        document = await self.collection.find_one({"_id": bookmark_id}, {"_id": 0})
        return dict(document) if document is not None else None

    async def list(self, tag: str | None = None) -> list[dict[str, Any]]:
        query = {"tags": tag} if tag else {}
        cursor = self.collection.find(query, {"_id": 0}).sort("url", 1)
        return [dict(document) async for document in cursor]


class DynamoBookmarks:
    """Bookmarks in a DynamoDB table with the partition key `id`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def add(self, url: str, title: str, tags: list[str]) -> dict[str, Any]:
        bookmark = {"id": new_id(), "url": url, "title": title, "tags": tags}
        item = {
            "id": {"S": bookmark["id"]},
            "url": {"S": url},
            "title": {"S": title},
            "tags": {"L": [{"S": tag} for tag in tags]},
        }
        await self.client.put_item(TableName=TABLE, Item=item)
        return bookmark

    async def get(self, bookmark_id: str) -> dict[str, Any] | None:
        response = await self.client.get_item(
            TableName=TABLE, Key={"id": {"S": bookmark_id}}, ConsistentRead=True
        )
        item = response.get("Item")
        return _from_item(item) if item else None

    async def list(self, tag: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        arguments: dict[str, Any] = {"TableName": TABLE, "ConsistentRead": True}
        while True:
            page = await self.client.scan(**arguments)
            items.extend(_from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return _with_tag(sorted(items, key=lambda item: str(item["url"])), tag)


def _from_row(row: Any) -> dict[str, Any]:
    return {"id": row[0], "url": row[1], "title": row[2], "tags": json.loads(row[3])}


def _from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item["id"]["S"],
        "url": item["url"]["S"],
        "title": item["title"]["S"],
        "tags": [value["S"] for value in item.get("tags", {"L": []})["L"]],
    }


def _with_tag(bookmarks: list[dict[str, Any]], tag: str | None) -> list[dict[str, Any]]:
    return [b for b in bookmarks if tag in b["tags"]] if tag else bookmarks
