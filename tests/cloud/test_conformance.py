"""The driver conformance suite run against the cloud driver and a served backend."""

from __future__ import annotations

import pytest

from flamingock_async.drivers._base import Driver
from flamingock_async.testing import DriverConformance, DriverFactory

from .conftest import Backend, Service, cloud_driver


class TestCloudConformance(DriverConformance):
    @pytest.fixture
    def driver_factory(self, backend: Backend, service: Service) -> DriverFactory:
        async def make_driver() -> Driver:
            driver = cloud_driver(backend.url, service)
            await driver.open()
            return driver

        return make_driver


class TestCloudTwoBackendsConformance(DriverConformance):
    """Drivers created one after the other talk to two backend processes sharing one store."""

    @pytest.fixture
    def driver_factory(
        self, backend: Backend, second_backend: Backend, service: Service
    ) -> DriverFactory:
        urls = [backend.url, second_backend.url]
        created = 0

        async def make_driver() -> Driver:
            nonlocal created
            driver = cloud_driver(urls[created % 2], service)
            created += 1
            await driver.open()
            return driver

        return make_driver
