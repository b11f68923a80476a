"""The self-hosted backend: a server that speaks the Flamingock runner protocol, version 1.

Run it with `flamingock serve` or `python -m flamingock_async.backend`. It needs the
`server` extra (FastAPI, uvicorn, PyJWT). `create_app(settings)` builds the ASGI
application; `ServerSettings` sets where its data lives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import MissingDependencyError
from ._settings import ServerSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServerSettings", "create_app"]


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the backend's FastAPI application from `settings`."""
    try:
        from ._app import create_app as build
    except ImportError as error:
        if error.name not in ("fastapi", "jwt", "starlette"):
            raise
        raise MissingDependencyError("backend", error.name, "server") from error
    return build(settings)
