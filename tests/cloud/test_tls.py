"""The backend served over HTTPS with a self-signed certificate; verification is on by default."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flamingock_async import DriverError
from flamingock_async.drivers import driver_from_url
from flamingock_async.drivers.cloud import CloudDriver

from .conftest import Backend, Service, cloud_driver, start_backend, stop_backend


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Return a self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_backend(
    data_dir: Path, backend: Backend, certificate: tuple[Path, Path]
) -> Iterator[Backend]:
    cert, key = certificate
    options = ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    server = start_backend(data_dir, data_dir / "backend-tls.log", *options, ca_file=cert)
    yield server
    stop_backend(server)


async def test_self_signed_rejected_by_default(tls_backend: Backend, service: Service) -> None:
    driver = cloud_driver(tls_backend.url, service, max_attempts=3, backoff=0.01)
    with pytest.raises(DriverError, match="certificate failed verification"):
        await driver.open()
    await driver.aclose()


async def test_trusted_ca_accepted(
    tls_backend: Backend, service: Service, certificate: tuple[Path, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    driver = cloud_driver(tls_backend.url, service, verify=context)
    await driver.open()
    assert await driver.read_lock("flamingock") is None
    await driver.aclose()


async def test_ca_file_in_url(
    tls_backend: Backend,
    service: Service,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLAMINGOCK_API_TOKEN", service.token)
    url = (
        f"{tls_backend.url}?environment={service.environment}&service={service.name}"
        f"&ca_file={certificate[0]}"
    )
    driver = driver_from_url(url)
    assert isinstance(driver, CloudDriver)
    await driver.open()
    assert await driver.read_states() == []
    await driver.aclose()
