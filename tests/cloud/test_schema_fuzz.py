"""The served OpenAPI schema fuzzed with the schemathesis command: no 5xx, documented responses.

Requests carry a valid bearer token and the real environment and service names, so that
generated bodies reach the handlers rather than stopping at authentication. The run is
bounded by the number of examples per operation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from .conftest import Backend, Service

MAX_EXAMPLES = 20

# `positive_data_acceptance` stays off because a body can fit the schema and still break a
# protocol rule that the schema cannot express. Examples are a record whose key differs from
# the path, or a release by a runner that is not the owner. Both are rejected (409 or 422).
CONFIG = """
[parameters]
"path.environment" = "{environment}"
"path.service" = "{service}"

[checks.negative_data_rejection]
expected-statuses = [401, 403, 404, 405, 409, 413, 422]
"""


def bearer(backend: Backend, service: Service) -> str:
    body = {"token": service.token, "environment": service.environment, "service": service.name}
    response = httpx.post(f"{backend.url}/api/v1/auth/exchange-token", json=body)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


@pytest.mark.slow
def test_schema_fuzz_finds_nothing(backend: Backend, service: Service, tmp_path: Path) -> None:
    command = shutil.which("schemathesis")
    assert command is not None, "the schemathesis command is not installed"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(environment=service.environment, service=service.name))
    result = subprocess.run(
        [
            command,
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{backend.url}/openapi.json",
            *("--header", f"Authorization: Bearer {bearer(backend, service)}"),
            *("--header", "X-Flamingock-Runner-Id: schema-fuzzer"),
            *("--max-examples", str(MAX_EXAMPLES)),
            *("--checks", "all"),
            *("--exclude-checks", "positive_data_acceptance"),
            *("--workers", "1"),
            *("--generation-database", "none"),
            *("--report-dir", str(tmp_path / "report")),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested: 10" in result.stdout
