"""Settings of the self-hosted backend, from arguments or `FLAMINGOCK_SERVER_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..drivers import redact_url
from ._meta import check_metadata_url

__all__ = ["ServerSettings", "ENV_PREFIX", "TOKEN_TTL_RANGE", "MIN_BODY_BYTES"]

ENV_PREFIX = "FLAMINGOCK_SERVER_"
TOKEN_TTL_RANGE = (10, 86_400)
"""Shortest and longest lifetime of a bearer token, in seconds."""
MIN_BODY_BYTES = 1024
"""Smallest accepted `max_body_bytes`."""


class ServerSettings(BaseModel):
    """Where the backend keeps its data and how it authenticates runners.

    `metadata_url` names the store of organisations, projects, environments, services, API
    tokens and the signing secret: `sqlite:///PATH`, `mongodb://HOST:PORT/DATABASE` or
    `dynamodb://TABLE?region=...`; by default the SQLite file `backend.db` in `data_dir`.
    Backend processes on several machines need a shared one. `store_url` is the store of
    each service's audit log and lock: a driver URL in which `{namespace}` is replaced by a
    name unique to the environment and service (letters, digits and `_`). By default every
    service gets its own table prefix in `audit.db` in `data_dir`. `jwt_secret` signs bearer
    tokens (HS256). When it is unset, a random secret is generated once and kept in
    the metadata store, so every process on one metadata store shares it.
    """

    model_config = ConfigDict(frozen=True)

    data_dir: Path
    store_url: str | None = None
    metadata_url: str | None = None
    jwt_secret: SecretStr | None = None
    token_ttl_seconds: int = Field(default=900, ge=TOKEN_TTL_RANGE[0], le=TOKEN_TTL_RANGE[1])
    max_body_bytes: int = Field(default=1_048_576, ge=MIN_BODY_BYTES)
    organization: str = "default"
    project: str = "default"

    @field_validator("store_url")
    @classmethod
    def _one_namespace_per_service(cls, value: str | None) -> str | None:
        if value is not None and "{namespace}" not in value:
            raise ValueError(
                f"the store URL {redact_url(value)!r} must contain '{{namespace}}' where each "
                "service's name goes (a table prefix or collection name), or all services "
                "would share one audit log and lock"
            )
        return value

    @field_validator("metadata_url")
    @classmethod
    def _known_metadata_scheme(cls, value: str | None) -> str | None:
        if value is not None:
            # A ValueError whose message shows the URL without its password.
            check_metadata_url(value)
        return value

    def create_data_dir(self) -> None:
        """Create `data_dir` when a default store is kept in it. Raises `OSError` if that fails."""
        if self.store_url is None or self.metadata_url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "backend.db"

    @property
    def metadata_location(self) -> str:
        """The metadata URL in effect, the default SQLite file if none is set."""
        if self.metadata_url is not None:
            return self.metadata_url
        return f"sqlite:///{quote(str(self.database_path.resolve()))}"

    def store_url_for(self, namespace: str) -> str:
        """Return the driver URL of one service's audit log and lock."""
        database = quote(str(self.data_dir.resolve() / "audit.db"))
        default = f"sqlite:///{database}?table_prefix=svc_{{namespace}}_"
        template = self.store_url or default
        return template.replace("{namespace}", namespace)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServerSettings:
        """Build settings from `FLAMINGOCK_SERVER_*` variables; `overrides` that are not None win.

        `FLAMINGOCK_SERVER_DATA_DIR` defaults to `./flamingock-data`.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {"data_dir": Path("flamingock-data")}
        for name in cls.model_fields:
            variable = f"{ENV_PREFIX}{name.upper()}"
            if variable in environ:
                values[name] = environ[variable]
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls.model_validate(values)
