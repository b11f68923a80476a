"""The Kubernetes manifests under integrations/kubernetes, checked against the example service.

The probe paths, ports, pipeline and lock key in the manifests must be the ones the bookmarks
service really uses, so the service is imported and asked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from uvicorn_helpers import REPOSITORY

MANIFESTS = REPOSITORY / "integrations" / "kubernetes"
SERVICE = REPOSITORY / "integrations" / "fastapi_service"
LOCK_WAIT_TIMEOUT = 300.0
"""The lock's default wait_timeout, which a blocking startup may spend waiting."""


@pytest.fixture(scope="module")
def service() -> Iterator[Any]:
    """The bookmarks service module, built on a MongoDB URL as in the manifests."""
    sys.path.insert(0, str(SERVICE))
    try:
        from bookmarks import app as module

        yield module
    finally:
        sys.path.remove(str(SERVICE))


def documents(name: str) -> list[dict[str, Any]]:
    with (MANIFESTS / name).open() as file:
        return [document for document in yaml.safe_load_all(file) if document]


def of_kind(name: str, kind: str) -> dict[str, Any]:
    found = [document for document in documents(name) if document["kind"] == kind]
    assert len(found) == 1, f"{name} must hold one {kind}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(item for item in containers if item["name"] == "bookmarks")


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    return {variable["name"]: variable.get("value") for variable in item.get("env", [])}


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


DEPLOYMENTS = ["bookmarks-background.yaml", "bookmarks-blocking.yaml", "bookmarks-job.yaml"]


@pytest.mark.parametrize("name", sorted(path.name for path in MANIFESTS.glob("*.yaml")))
def test_manifest_parses(name: str) -> None:
    kinds = [document["kind"] for document in documents(name)]

    assert "Deployment" in kinds
    assert "Service" in kinds


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_ports_match_service(name: str, service: Any) -> None:
    main = container(of_kind(name, "Deployment"))
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    target = of_kind(name, "Service")["spec"]["ports"][0]["targetPort"]

    assert ports == {"http": service.PORT}
    assert option(main["command"], "--port") == str(service.PORT)
    assert main["command"][:2] == ["uvicorn", "bookmarks.app:app"]
    assert target == "http"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_probe_paths_match_service(name: str, service: Any) -> None:
    main = container(of_kind(name, "Deployment"))
    flamingock = service.app.state.flamingock
    liveness = main["livenessProbe"]["httpGet"]
    readiness = main["readinessProbe"]["httpGet"]
    startup = main["startupProbe"]["httpGet"]

    assert liveness == {"path": flamingock.liveness_path, "port": "http"}
    assert readiness == {"path": flamingock.readiness_path, "port": "http"}
    assert startup["port"] == "http"
    assert startup["path"] in flamingock.probe_paths


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_grace_covers_cleanup(name: str) -> None:
    """The pod's grace covers HTTP draining, then auditing the change and releasing the lock."""
    template = of_kind(name, "Deployment")["spec"]["template"]["spec"]
    main = container(of_kind(name, "Deployment"))
    draining = float(option(main["command"], "--timeout-graceful-shutdown"))
    cleanup = 2 * float(env_of(main)["FLAMINGOCK_SHUTDOWN_GRACE"])

    assert template["terminationGracePeriodSeconds"] > draining + cleanup


def test_background_startup_probe_is_short() -> None:
    main = container(of_kind("bookmarks-background.yaml", "Deployment"))
    startup = main["startupProbe"]

    assert env_of(main)["FLAMINGOCK_MODE"] == "background"
    assert startup["httpGet"]["path"] == "/livez"
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 60


def test_blocking_startup_probe_covers_lock_wait() -> None:
    main = container(of_kind("bookmarks-blocking.yaml", "Deployment"))
    startup = main["startupProbe"]

    assert env_of(main)["FLAMINGOCK_MODE"] == "blocking"
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["periodSeconds"] * startup["failureThreshold"] > LOCK_WAIT_TIMEOUT


def test_liveness_probe_outlasts_lease_renewal() -> None:
    """A run that renews its lease every third of it never fails a liveness check."""
    main = container(of_kind("bookmarks-background.yaml", "Deployment"))
    lease = float(env_of(main)["FLAMINGOCK_LOCK_LEASE"])
    probe = main["livenessProbe"]

    assert probe["periodSeconds"] * probe["failureThreshold"] > lease / 3


def test_job_runs_service_pipeline(service: Any) -> None:
    job = of_kind("bookmarks-job.yaml", "Job")
    migrate = job["spec"]["template"]["spec"]["containers"][0]
    runner = service.build_runner("mongodb://mongo:27017/bookmarks")
    variables = env_of(migrate)

    assert migrate["command"][:2] == ["flamingock", "run"]
    assert variables["FLAMINGOCK_CHANGES"] == runner.changes
    assert variables["FLAMINGOCK_LOCK_KEY"] == runner.lock_settings.key
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_init_container_waits_for_pipeline(service: Any) -> None:
    deployment = of_kind("bookmarks-job.yaml", "Deployment")
    waiting = deployment["spec"]["template"]["spec"]["initContainers"][0]
    migrate = of_kind("bookmarks-job.yaml", "Job")["spec"]["template"]["spec"]["containers"][0]

    assert waiting["command"][:2] == ["flamingock", "wait"]
    assert env_of(waiting) == env_of(migrate)
    assert waiting["image"] == container(deployment)["image"]


def test_store_url_from_secret() -> None:
    for name in DEPLOYMENTS:
        main = container(of_kind(name, "Deployment"))
        store = next(item for item in main["env"] if item["name"] == "BOOKMARKS_STORE")

        assert store["valueFrom"]["secretKeyRef"] == {"name": "bookmarks-store", "key": "url"}
