"""Settings of the self-hosted backend, from arguments or `FLAMINGOCK_SERVER_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..drivers import redact_url

__all__ = ["ServerSettings", "ENV_PREFIX"]

ENV_PREFIX = "FLAMINGOCK_SERVER_"


class ServerSettings(BaseModel):
    """Where the backend keeps its data and how it authenticates runners.

    `data_dir` contains `backend.db`, the SQLite database of organisations, projects,
    environments, services, API tokens and the signing secret. `store_url` is the store of
    each service's audit log and lock: a driver URL in which `{namespace}` is replaced by a
    name unique to the environment and service (letters, digits and `_`). By default every
    service gets its own table prefix in `audit.db` in `data_dir`. `jwt_secret` signs bearer
    tokens (HS256). When it is unset, a random secret is generated once and kept in
    `backend.db`, so every process on one data directory shares it.
    """

    model_config = ConfigDict(frozen=True)

    data_dir: Path
    store_url: str | None = None
    jwt_secret: SecretStr | None = None
    token_ttl_seconds: int = Field(default=900, ge=10, le=86_400)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
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

    @property
    def database_path(self) -> Path:
        return self.data_dir / "backend.db"

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
