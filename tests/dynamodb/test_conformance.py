"""The driver conformance suite run against the DynamoDB driver and a moto server."""

from __future__ import annotations

from typing import Any

import pytest

from flamingock_async.drivers._base import Driver
from flamingock_async.drivers.dynamodb import DynamoDriver, DynamoTransaction
from flamingock_async.testing import DriverConformance, DriverFactory

from .conftest import REGION

TARGET_TABLE = "conformance_target"


async def create_target_table(driver: DynamoDriver) -> None:
    await driver.client.create_table(
        TableName=TARGET_TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


class TestDynamoConformance(DriverConformance):
    @pytest.fixture
    def driver_factory(self, endpoint: str) -> DriverFactory:
        made = 0

        async def make_driver() -> Driver:
            nonlocal made
            driver = DynamoDriver(region=REGION, endpoint_url=endpoint)
            await driver.open()
            if made == 0:
                await create_target_table(driver)
            made += 1
            return driver

        return make_driver

    async def write_in_transaction(self, handle: Any, key: str, value: str) -> None:
        if not isinstance(handle, DynamoTransaction):
            raise TypeError(f"expected a DynamoTransaction, got {handle!r}")
        handle.put(TARGET_TABLE, {"pk": key, "value": value})

    async def read_target(self, driver: Driver, key: str) -> str | None:
        client = driver.target_dependencies()["dynamodb"]
        response: dict[str, Any] = await client.get_item(  # type: ignore[attr-defined]
            TableName=TARGET_TABLE, Key={"pk": {"S": key}}, ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else str(item["value"]["S"])
