"""The backend served over HTTPS with a self-signed certificate; verification is on by default.

The certificate is made with `cryptography`, which the dev extra installs through moto.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flamingock_async import DriverError
from flamingock_async.drivers import driver_from_url
from flamingock_async.drivers.cloud import CloudDriver

from .conftest import Backend, Service, cloud_driver, start_backend, stop_backend


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Return a self-signed certificate for 127.0.0.1, valid for a day, and its key."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


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
