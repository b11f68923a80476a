"""Helpers for the adapter's in-process tests: the server side of the ASGI lifespan protocol.

`serving(app)` does what uvicorn does around an application: it sends `lifespan.startup`,
waits for the response, passes the lifespan state into each request, and sends
`lifespan.shutdown` on exit. Requests go through httpx's ASGI transport, so no socket is
opened. This avoids Starlette's TestClient, which warns about its httpx backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class LifespanFailed(Exception):
    """The application sent `lifespan.startup.failed` or `lifespan.shutdown.failed`."""


class LifespanHost:
    """One application's lifespan, driven like a server drives it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](4)
        self._from_app, self._host_inbox = anyio.create_memory_object_stream[Message](4)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        task_status.started()
        try:
            await self.app(scope, self._app_inbox.receive, self._from_app.send)
        except Exception as error:  # Starlette re-raises after reporting the failure
            self.error = error

    async def startup(self) -> None:
        await self._exchange("lifespan.startup")

    async def shutdown(self) -> None:
        await self._exchange("lifespan.shutdown")

    async def _exchange(self, kind: str) -> None:
        await self._to_app.send({"type": kind})
        answer = await self._host_inbox.receive()
        if answer["type"].endswith(".failed"):
            raise LifespanFailed(answer.get("message", ""))

    def close(self) -> None:
        for stream in (self._to_app, self._app_inbox, self._from_app, self._host_inbox):
            stream.close()

    def client(self) -> httpx.AsyncClient:
        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await self.app({**scope, "state": dict(self.state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        return httpx.AsyncClient(transport=transport, base_url="http://service")


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """Start `app`'s lifespan, yield a client for it, and shut the lifespan down on exit.

    Errors are raised outside the task group, so a test gets them unwrapped.
    """
    host = LifespanHost(app)
    error: Exception | None = None
    async with anyio.create_task_group() as tasks:
        await tasks.start(host.run)
        try:
            await host.startup()
            async with host.client() as client:
                yield client
            await host.shutdown()
        except Exception as raised:
            error = raised
        finally:
            tasks.cancel_scope.cancel()
    host.close()
    if error is not None:
        raise error


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait until `condition()` is true; fail the test after `limit` seconds.

    Polling is the point here: the conditions read state that the run changes, with no event.
    """
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)
