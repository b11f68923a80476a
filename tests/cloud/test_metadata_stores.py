"""The backend's metadata stores (SQLite, MongoDB, DynamoDB) pass the same behaviour tests.

MongoDB is the session's nx-27017 (each test in a database of its own), DynamoDB the
session's moto_server (each test in a table of its own), SQLite a file in the test's
directory. Races are between OS processes started together on a signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from dynamodb.conftest import FAKE_AWS_ENVIRONMENT, REMOVED_AWS_VARIABLES
from flamingock_async import ConfigurationError
from flamingock_async.backend import ServerSettings
from flamingock_async.backend._meta import MetadataStore, metadata_store_from_url
from flamingock_async.backend.cli import serve
from mongodb.conftest import MongoServer

from .conftest import free_port

pytest.importorskip("pymongo")
pytest.importorskip("aioboto3")

WORKER = Path(__file__).with_name("metadata_worker.py")
KINDS = ("sqlite", "mongodb", "dynamodb")
NAMES = {"organization": "acme", "project": "shop", "environment": "prod", "service": "billing"}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials that only moto accepts, and no other AWS source."""
    for name in REMOVED_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{quote(str(path.resolve()))}"


@pytest.fixture(params=KINDS)
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty metadata store of each kind."""
    suffix = uuid.uuid4().hex[:12]
    if request.param == "mongodb":
        server: MongoServer = request.getfixturevalue("mongo_server")
        return server.url(f"meta_{suffix}")
    if request.param == "dynamodb":
        request.getfixturevalue("aws")
        endpoint: str = request.getfixturevalue("moto_endpoint")
        return f"dynamodb://meta_{suffix}?region=us-east-1&endpoint_url={endpoint}"
    return sqlite_url(tmp_path / "backend.db")


@pytest.fixture
async def store(metadata_url: str) -> AsyncIterator[MetadataStore]:
    async with metadata_store_from_url(metadata_url) as opened:
        yield opened


async def test_ensure_service_idempotent(store: MetadataStore) -> None:
    first = await store.ensure_service("acme", "shop", "prod", "billing")
    second = await store.ensure_service("acme", "shop", "prod", "billing")
    assert first == second


async def test_ensure_service_separates_names(store: MetadataStore) -> None:
    billing = await store.ensure_service("acme", "shop", "prod", "billing")
    orders = await store.ensure_service("acme", "shop", "prod", "orders")
    staging = await store.ensure_service("acme", "shop", "staging", "billing")
    assert billing[:3] == orders[:3]
    assert billing[3] != orders[3]
    assert billing[:2] == staging[:2]
    assert billing[2] != staging[2]


async def test_token_verifies(store: MetadataStore) -> None:
    created, info = await store.create_token(**NAMES, description="ci")
    verified = await store.verify_api_token(created.token)
    assert verified == info
    assert verified is not None
    assert verified.claims.service == "billing"
    assert verified.organization == "acme"
    assert verified.description == "ci"
    assert not verified.revoked


async def test_token_ids_match_service(store: MetadataStore) -> None:
    _, info = await store.create_token(**NAMES)
    ids = await store.ensure_service("acme", "shop", "prod", "billing")
    assert (
        info.claims.organization_id,
        info.claims.project_id,
        info.claims.environment_id,
        info.claims.service_id,
    ) == ids


async def test_wrong_secret_not_verified(store: MetadataStore) -> None:
    created, _ = await store.create_token(**NAMES)
    assert await store.verify_api_token(created.token[:-2] + "xx") is None


async def test_unknown_token_not_verified(store: MetadataStore) -> None:
    assert await store.verify_api_token("flk_0123456789abcdef_secret") is None


async def test_secret_not_stored(store: MetadataStore) -> None:
    created, _ = await store.create_token(**NAMES)
    secret = created.token.rsplit("_", 1)[1]
    listed = await store.list_tokens()
    assert secret not in repr(listed)
    assert listed[0].digest != secret


async def test_revoke_token(store: MetadataStore) -> None:
    created, info = await store.create_token(**NAMES)
    assert await store.revoke_token(info.token_id)
    verified = await store.verify_api_token(created.token)
    assert verified is not None
    assert verified.revoked


async def test_revoke_twice_reports_false(store: MetadataStore) -> None:
    _, info = await store.create_token(**NAMES)
    await store.revoke_token(info.token_id)
    assert not await store.revoke_token(info.token_id)


async def test_revoke_unknown_reports_false(store: MetadataStore) -> None:
    assert not await store.revoke_token("0123456789abcdef")


async def test_revoke_leaves_other_tokens(store: MetadataStore) -> None:
    _, revoked = await store.create_token(**NAMES)
    kept_token, _ = await store.create_token(**NAMES)
    await store.revoke_token(revoked.token_id)
    verified = await store.verify_api_token(kept_token.token)
    assert verified is not None
    assert not verified.revoked


async def test_list_tokens_oldest_first(store: MetadataStore) -> None:
    _, first = await store.create_token(**NAMES, description="first")
    _, second = await store.create_token(**{**NAMES, "service": "orders"}, description="second")
    listed = await store.list_tokens()
    assert [info.description for info in listed] == ["first", "second"]
    assert [info.token_id for info in listed] == [first.token_id, second.token_id]


async def test_signing_secret_stable(metadata_url: str) -> None:
    async with metadata_store_from_url(metadata_url) as first:
        secret = await first.signing_secret()
    async with metadata_store_from_url(metadata_url) as second:
        assert await second.signing_secret() == secret


async def test_second_store_sees_token(store: MetadataStore, metadata_url: str) -> None:
    created, info = await store.create_token(**NAMES)
    async with metadata_store_from_url(metadata_url) as other:
        assert await other.verify_api_token(created.token) == info


async def test_invalid_name_rejected(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="Invalid service name 'a b'"):
        await store.create_token(**{**NAMES, "service": "a b"})
    assert await store.list_tokens() == []


# -- races between processes -------------------------------------------------------------


@pytest.fixture
def race(metadata_url: str) -> Iterator[list[dict[str, Any]]]:
    """Four processes that create one service and the signing secret at the same moment."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), metadata_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60)[0] for process in processes]
        assert all(process.returncode == 0 for process in processes)
        yield [json.loads(output) for output in outputs]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_race_creates_one_service_and_secret(
    race: list[dict[str, Any]], metadata_url: str
) -> None:
    async with metadata_store_from_url(metadata_url) as store:
        ids = await store.ensure_service("org", "prj", "env", "svc")
        secret = await store.signing_secret()
    assert len({tuple(result["ids"]) for result in race}) == 1
    assert race[0]["ids"] == list(ids)
    assert len({result["secret_sha256"] for result in race}) == 1
    assert race[0]["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()


# -- the token commands ------------------------------------------------------------------


def cli(metadata_url: str, tmp_path: Path, *arguments: str) -> str:
    environ = {"FLAMINGOCK_SERVER_DATA_DIR": str(tmp_path / "unused")}
    result = CliRunner().invoke(
        serve, ["--metadata-url", metadata_url, *arguments], env=environ, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_token_commands(metadata_url: str, tmp_path: Path) -> None:
    arguments = ("token", "create", "--environment", "prod", "--service", "billing", "--json")
    created = json.loads(cli(metadata_url, tmp_path, *arguments))
    listed = json.loads(cli(metadata_url, tmp_path, "token", "list", "--json"))
    assert [row["id"] for row in listed] == [created["id"]]
    assert "token" not in listed[0]
    cli(metadata_url, tmp_path, "token", "revoke", created["id"])
    listed = json.loads(cli(metadata_url, tmp_path, "token", "list", "--json"))
    assert listed[0]["revoked_at"] is not None


def test_cli_metadata_url_from_environment(metadata_url: str, tmp_path: Path) -> None:
    environ = {
        "FLAMINGOCK_SERVER_DATA_DIR": str(tmp_path / "unused"),
        "FLAMINGOCK_SERVER_METADATA_URL": metadata_url,
    }
    arguments = ["token", "create", "--environment", "prod", "--service", "billing", "--json"]
    result = CliRunner().invoke(serve, arguments, env=environ)
    assert result.exit_code == 0, result.output
    listed = json.loads(cli(metadata_url, tmp_path, "token", "list", "--json"))
    assert [row["id"] for row in listed] == [json.loads(result.output)["id"]]


def test_default_is_data_dir_file(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path)
    assert settings.metadata_location == sqlite_url(tmp_path / "backend.db")


# -- URLs and their passwords --------------------------------------------------------------


def test_unknown_scheme_rejected() -> None:
    with pytest.raises(ConfigurationError, match="no supported scheme"):
        metadata_store_from_url("postgres://user:hunter2@localhost/db")


def test_rejected_url_hides_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        metadata_store_from_url("postgres://user:hunter2@localhost/db")
    assert "hunter2" not in str(caught.value)


def test_mongo_url_needs_database() -> None:
    with pytest.raises(ConfigurationError, match="names no MongoDB database"):
        metadata_store_from_url("mongodb://user:hunter2@127.0.0.1:27017")


def test_dynamodb_url_unknown_parameter() -> None:
    with pytest.raises(ConfigurationError, match="Unknown parameter 'colour'"):
        metadata_store_from_url("dynamodb://meta?region=us-east-1&colour=red")


def test_settings_hide_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        serve,
        ["--metadata-url", "redis://user:hunter2@localhost/0", "token", "list"],
        env={"FLAMINGOCK_SERVER_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code != 0
    assert "no supported scheme" in result.output
    assert "hunter2" not in result.output


def test_unreachable_mongo_hides_password(tmp_path: Path) -> None:
    """In a child process: PyMongo leaves a refused socket to the garbage collector."""
    port = free_port()
    url = f"mongodb://user:hunter2@127.0.0.1:{port}/meta?serverSelectionTimeoutMS=300"
    result = subprocess.run(
        [sys.executable, "-m", "flamingock_async.backend", "--metadata-url", url, "token", "list"],
        env={**os.environ, "FLAMINGOCK_SERVER_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
