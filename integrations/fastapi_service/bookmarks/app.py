"""The bookmarks HTTP service. Its database changes run from the lifespan, in the background.

Run it with `uvicorn bookmarks.app:app` from `integrations/fastapi_service`. Settings come from
environment variables:

* `BOOKMARKS_STORE`: the store URL, for the audit log, the lock and the bookmarks themselves
  (default `sqlite:///bookmarks.db`; also `mongodb://host/db` or `dynamodb://audit_table?...`);
* `FLAMINGOCK_MODE`: `background` (default) or `blocking`;
* `FLAMINGOCK_ON_FAILURE`: `stay_unready` (default) or `exit`;
* `FLAMINGOCK_LOCK_LEASE` and `FLAMINGOCK_SHUTDOWN_GRACE`: seconds (defaults 30 and 10).
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from flamingock_async import AsyncRunner, LockSettings
from flamingock_async.drivers import driver_from_url
from flamingock_async.fastapi import (
    FlamingockLifespan,
    Mode,
    OnFailure,
    ReadinessGuard,
    flamingock_lifespan,
)

from .storage import Bookmarks, backend_of, bookmarks_for

# uvicorn sets up only its own loggers. This sends the library's records (one line per
# applied change, lock waits, a failed change and its error) to standard error as well.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

DEFAULT_STORE = "sqlite:///bookmarks.db"
PORT = 8000
"""The port the container image and the Kubernetes manifests serve on."""


class NewBookmark(BaseModel):
    url: str = Field(min_length=1, max_length=2048)
    title: str = Field(min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=20)


class Bookmark(NewBookmark):
    id: str


def build_runner(store_url: str) -> AsyncRunner:
    """Return the runner of this service's changes for the kind of store `store_url` names."""
    backend = backend_of(store_url)
    # The runner closes a driver it built from a URL after each run, but leaves a driver
    # passed in open. Requests use its database, and the lifespan closes it at shutdown.
    return AsyncRunner(
        driver_from_url(store_url),
        f"bookmarks.changes.{backend}",
        lock=LockSettings(
            key="bookmarks", lease=float(os.environ.get("FLAMINGOCK_LOCK_LEASE", "30"))
        ),
        shutdown_grace=float(os.environ.get("FLAMINGOCK_SHUTDOWN_GRACE", "10")),
    )


def create_app(store_url: str | None = None) -> FastAPI:
    """Build the service on `store_url`, or on `BOOKMARKS_STORE`, or on the default SQLite file."""
    store_url = store_url or os.environ.get("BOOKMARKS_STORE", DEFAULT_STORE)
    backend = backend_of(store_url)
    runner = build_runner(store_url)

    flamingock = flamingock_lifespan(
        runner,
        mode=cast(Mode, os.environ.get("FLAMINGOCK_MODE", "background")),
        on_failure=cast(OnFailure, os.environ.get("FLAMINGOCK_ON_FAILURE", "stay_unready")),
    )
    app = FastAPI(title="bookmarks", lifespan=flamingock)
    app.state.flamingock = flamingock
    app.state.bookmarks = lambda: bookmarks_for(runner.driver, backend)
    app.include_router(flamingock.api_router())
    app.add_middleware(ReadinessGuard, flamingock=flamingock, exempt_paths=("/openapi.json",))
    _add_routes(app, flamingock)
    return app


def _bookmarks(request: Request) -> Bookmarks:
    return cast(Bookmarks, request.app.state.bookmarks())


BookmarksStore = Annotated[Bookmarks, Depends(_bookmarks)]


def _add_routes(app: FastAPI, flamingock: FlamingockLifespan) -> None:
    # The middleware already refuses requests until the run completes; the dependency shows
    # the per-route form, for applications that guard only some routes.
    ready = [Depends(flamingock.require_ready)]

    @app.get("/bookmarks", dependencies=ready)
    async def list_bookmarks(
        bookmarks: BookmarksStore, tag: str | None = Query(None)
    ) -> list[Bookmark]:
        return [Bookmark(**item) for item in await bookmarks.list(tag)]

    @app.post("/bookmarks", status_code=201, dependencies=ready)
    async def add_bookmark(bookmarks: BookmarksStore, body: NewBookmark) -> Bookmark:
        return Bookmark(**await bookmarks.add(body.url, body.title, body.tags))

    @app.get("/bookmarks/{bookmark_id}", dependencies=ready)
    async def get_bookmark(bookmarks: BookmarksStore, bookmark_id: str) -> Bookmark:
        item: dict[str, Any] | None = await bookmarks.get(bookmark_id)
        if item is None:
            raise HTTPException(404, f"No bookmark has the id {bookmark_id!r}.")
        return Bookmark(**item)


app = create_app()
