"""`flamingock serve`: run the self-hosted backend and manage its API tokens.

    flamingock serve --data-dir /var/lib/flamingock --host 0.0.0.0 --port 8080
    flamingock serve token create --environment prod --service billing
    flamingock serve token list
    flamingock serve token revoke TOKEN_ID

Options also come from `FLAMINGOCK_SERVER_*` environment variables (`..._DATA_DIR`,
`..._STORE_URL`, `..._METADATA_URL`, `..._HOST`, `..._PORT`, `..._TOKEN_TTL_SECONDS`,
`..._MAX_BODY_BYTES`, `..._SSL_CERTFILE`, `..._SSL_KEYFILE`); a rejected value is reported
with both its option and its variable. The data directory is created when missing. The
signing secret of bearer tokens comes only from `FLAMINGOCK_SERVER_JWT_SECRET`, never from
the command line, where other users of the machine could read it. Without it, a secret is
generated once and kept in the metadata store (`--metadata-url`, by default `backend.db` in
the data directory), which backend processes on several machines must share. FastAPI and
uvicorn are imported only by the server command, so the token commands work without the
`server` extra.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from .._errors import FlamingockError
from ._meta import MetadataStore, TokenInfo, metadata_store_from_url
from ._settings import ENV_PREFIX, MIN_BODY_BYTES, TOKEN_TTL_RANGE, ServerSettings

__all__ = ["serve"]

T = TypeVar("T")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Settings whose command-line option has a different name.
_OPTION_OF_SETTING = {"token_ttl_seconds": "token_ttl"}


def _settings(context: click.Context) -> ServerSettings:
    settings: ServerSettings = context.obj
    return settings


def _with_store(settings: ServerSettings, action: Callable[[MetadataStore], Awaitable[T]]) -> T:
    async def run() -> T:
        async with metadata_store_from_url(settings.metadata_location) as store:
            return await action(store)

    try:
        return asyncio.run(run())
    except FlamingockError as error:
        raise click.ClickException(str(error)) from None


@click.group(invoke_without_command=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FLAMINGOCK_SERVER_DATA_DIR",
    show_envvar=True,
    default="flamingock-data",
    show_default=True,
    help="Directory of the default metadata store backend.db and the default store audit.db; "
    "created if missing.",
)
@click.option(
    "--store-url",
    envvar="FLAMINGOCK_SERVER_STORE_URL",
    show_envvar=True,
    default=None,
    help="Driver URL of the audit logs and locks; '{namespace}' in it is replaced per service.",
)
@click.option(
    "--metadata-url",
    envvar="FLAMINGOCK_SERVER_METADATA_URL",
    show_envvar=True,
    default=None,
    help="Store of tokens, services and the signing secret: sqlite:///PATH, "
    "mongodb://HOST:PORT/DB or dynamodb://TABLE?region=R; default DATA_DIR/backend.db.",
)
@click.option(
    "--host",
    envvar="FLAMINGOCK_SERVER_HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on.",
)
@click.option(
    "--port",
    envvar="FLAMINGOCK_SERVER_PORT",
    show_envvar=True,
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65_535),
    help="TCP port to listen on.",
)
@click.option(
    "--token-ttl",
    envvar="FLAMINGOCK_SERVER_TOKEN_TTL_SECONDS",
    show_envvar=True,
    default=900,
    show_default=True,
    type=click.IntRange(*TOKEN_TTL_RANGE),
    help="Lifetime of the bearer tokens issued by exchange-token, in seconds.",
)
@click.option(
    "--max-body-bytes",
    envvar="FLAMINGOCK_SERVER_MAX_BODY_BYTES",
    show_envvar=True,
    default=1_048_576,
    show_default=True,
    type=click.IntRange(min=MIN_BODY_BYTES),
    help="Largest accepted request body, in bytes; larger ones get 413.",
)
@click.option(
    "--ssl-certfile",
    envvar="FLAMINGOCK_SERVER_SSL_CERTFILE",
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM certificate chain; serve HTTPS instead of HTTP (with --ssl-keyfile).",
)
@click.option(
    "--ssl-keyfile",
    envvar="FLAMINGOCK_SERVER_SSL_KEYFILE",
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM private key of --ssl-certfile.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="Level of the server's log on standard error.",
)
@click.pass_context
def serve(
    context: click.Context,
    data_dir: Path,
    store_url: str | None,
    metadata_url: str | None,
    host: str,
    port: int,
    token_ttl: int,
    max_body_bytes: int,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    log_level: str,
) -> None:
    """Run the self-hosted backend, or manage its API tokens with 'token'."""
    try:
        context.obj = ServerSettings.from_env(
            data_dir=data_dir,
            store_url=store_url,
            metadata_url=metadata_url,
            token_ttl_seconds=token_ttl,
            max_body_bytes=max_body_bytes,
        )
    except ValidationError as error:
        raise _invalid_settings(context, error) from None
    if context.invoked_subcommand is not None:
        return
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile must be given together.")
    _run_server(context, host, port, log_level, ssl_certfile, ssl_keyfile)


def _invalid_settings(context: click.Context, error: ValidationError) -> click.UsageError:
    """Build one error that names the option or variable of each invalid setting and the reason."""
    # Only names and reasons, because a rejected value may contain a password or a secret.
    problems = "; ".join(
        f"Invalid value for {_setting_hint(context, str(problem['loc'][0]))}: "
        + problem["msg"].removeprefix("Value error, ")
        for problem in error.errors()
    )
    return click.UsageError(f"{problems}.")


def _setting_hint(context: click.Context, setting: str) -> str:
    """Return how a user gives `setting`: its option and variable, or its variable alone."""
    option = _option(context, _OPTION_OF_SETTING.get(setting, setting))
    if option is None:
        return f"'{ENV_PREFIX}{setting.upper()}'"
    return option.get_error_hint(context)


def _option(context: click.Context, name: str) -> click.Parameter | None:
    return next((param for param in context.command.params if param.name == name), None)


def _run_server(
    context: click.Context,
    host: str,
    port: int,
    log_level: str,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
) -> None:
    try:
        import uvicorn
    except ImportError as error:
        raise click.ClickException(
            "The backend needs uvicorn and FastAPI; install them with: "
            "pip install 'flamingock-async[server]'"
        ) from error
    from . import create_app

    settings = _settings(context)
    _create_data_dir(context, settings)
    _check_stores(context, settings)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def _create_data_dir(context: click.Context, settings: ServerSettings) -> None:
    try:
        settings.create_data_dir()
    except OSError as error:
        raise click.BadParameter(
            f"the folder {str(settings.data_dir)!r} cannot be created ({error.strerror}). Give "
            "a folder that this user can create or write to.",
            ctx=context,
            param=_option(context, "data_dir"),
        ) from None


def _check_stores(context: click.Context, settings: ServerSettings) -> None:
    """Build both stores' clients once, so that a wrong URL stops the server before it listens."""
    from ..drivers import driver_from_url

    store_option = "store_url" if settings.store_url is not None else "data_dir"
    _check_store(
        context, store_option, lambda: driver_from_url(settings.store_url_for("startup_check"))
    )
    metadata_option = "metadata_url" if settings.metadata_url is not None else "data_dir"
    _check_store(
        context, metadata_option, lambda: metadata_store_from_url(settings.metadata_location)
    )


def _check_store(context: click.Context, option: str, build: Callable[[], object]) -> None:
    """Call `build` and report a store URL that it rejects as an invalid value of `option`."""
    try:
        build()
    except FlamingockError as error:
        raise click.BadParameter(str(error), ctx=context, param=_option(context, option)) from None


@serve.group()
def token() -> None:
    """Create, list and revoke API tokens."""


@token.command("create")
@click.option("--environment", required=True, help="Environment the token is limited to.")
@click.option("--service", required=True, help="Service the token is limited to.")
@click.option("--organization", default="default", show_default=True, help="Organisation name.")
@click.option("--project", default="default", show_default=True, help="Project name.")
@click.option("--description", default="", help="Free text shown by 'token list'.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def create_token(
    context: click.Context,
    environment: str,
    service: str,
    organization: str,
    project: str,
    description: str,
    as_json: bool,
) -> None:
    """Create an API token and print it; it cannot be shown again."""
    settings = _settings(context)

    async def create(store: MetadataStore) -> tuple[str, TokenInfo]:
        created, info = await store.create_token(
            organization=organization,
            project=project,
            environment=environment,
            service=service,
            description=description,
        )
        return created.token, info

    try:
        secret, info = _with_store(settings, create)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if as_json:
        click.echo(json.dumps({**_token_row(info), "token": secret}))
        return
    click.echo(f"Created API token {info.token_id} for {environment}/{service}.")
    click.echo("Store it now; it is not shown again:")
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
@click.pass_context
def list_tokens(context: click.Context, as_json: bool) -> None:
    """List API tokens (never their secrets)."""
    tokens = _with_store(_settings(context), lambda store: store.list_tokens())
    rows = [_token_row(info) for info in tokens]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("No API tokens.")
        return
    for row in rows:
        status = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        click.echo(
            f"{row['id']}  {row['organization']}/{row['project']}/{row['environment']}/"
            f"{row['service']}  created {row['created_at']}  {status}  {row['description']}"
        )


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def revoke_token(context: click.Context, token_id: str) -> None:
    """Revoke the API token TOKEN_ID; bearer tokens issued for it stop working at once."""
    revoked = _with_store(_settings(context), lambda store: store.revoke_token(token_id))
    if not revoked:
        raise click.ClickException(
            f"No active API token has the id {token_id!r}; see 'flamingock serve token list'."
        )
    click.echo(f"Revoked API token {token_id}.")


def _token_row(info: TokenInfo) -> dict[str, Any]:
    return {
        "id": info.token_id,
        "organization": info.organization,
        "project": info.project,
        "environment": info.claims.environment,
        "service": info.claims.service,
        "description": info.description,
        "created_at": _time(info.created_at_ms),
        "revoked_at": _time(info.revoked_at_ms) if info.revoked_at_ms is not None else None,
    }


def _time(epoch_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")
