"""Test helpers for driver authors and users, including the driver conformance suite.

Every driver, built in or third-party, must pass `DriverConformance`, a pytest base class.
Its test methods check setup, the lock's compare-and-set operations, the `LockManager` on top
of them, fenced audit writes, audit reads and, where the driver supports them, transactions.
Importing this module needs pytest and anyio.

Running the suite against a driver
----------------------------------

Subclass `DriverConformance` in a test module whose name pytest collects (the class name must
start with `Test`), and provide the `driver_factory` fixture::

    import pytest
    from flamingock_async.testing import DriverConformance
    from mypackage import MyDriver, connect_to_fresh_store

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        async def driver_factory(self):
            store = await connect_to_fresh_store()     # a new, EMPTY store for each test

            async def make_driver():
                driver = MyDriver(store)               # a new driver on the SAME store
                await driver.open()                    # opened, but never set up
                return driver

            yield make_driver
            await store.drop()

        # Only for drivers whose supports_transactions is True:
        async def write_in_transaction(self, handle, key, value):
            await handle.put(key, value)               # write through the transaction handle

        async def read_target(self, driver, key):
            return await driver.client.get(key)        # committed value or None

The contract of the fixture and the hooks:

* `driver_factory` is function-scoped and returns an async callable. Each call returns a new,
  opened driver on one store that is fresh and empty for the test. Two calls model two
  runners (or processes) sharing that store. The suite calls `setup()` itself where a test
  needs it (some tests check a store that was never set up) and calls `aclose()` on every
  driver it made. The store itself is yours to create and remove.
* `write_in_transaction(handle, key, value)` writes the string `value` under `key` in the
  target system through the transaction handle that `run_in_transaction` gives to the body.
  It is called inside the body, possibly more than once if the driver retries the body.
* `read_target(driver, key)` returns the committed value under `key`, or None when it was never
  committed. `driver` is an opened and set-up driver on the same store, other than the one
  that ran the transaction, so an uncommitted write must not be visible through it.

Drivers whose `supports_transactions` is False skip the transaction tests and need neither
hook. A driver that supports transactions but does not define the hooks fails those tests with
a message naming the missing hook.

pytest-asyncio must run the async tests and fixtures: with `asyncio_mode = "auto"` nothing
else is needed; in strict mode decorate `driver_factory` with `@pytest_asyncio.fixture` (the
test methods already carry the `asyncio` mark).

Class attributes tune the suite to a store: `contenders` (drivers that race in the
concurrency tests, default 10), `concurrent_attempts` (operations raced in the lock tests,
default 20), `many_changes` (changes written by the paging test, default 120), and
`transactions_lock_store` (set it to True when an open transaction blocks every other writer
of the store, as in SQLite, so that no takeover can happen while a change runs). Run one test
with `pytest -k "TestMyDriver and concurrent_insert"`, and override a test method to mark or
skip it for your store.

Other helpers
-------------

`FakeClock` is a monotonic clock and sleep function for `LockManager` that advance only when
told. `make_entry` builds an `AuditEntry` with test values. `hold_lock` and `take_over_lock`
write lock records directly and return the holder's `Fence`.
"""

from __future__ import annotations

from ._conformance import DriverConformance, DriverFactory, DriverPool
from ._helpers import FakeClock, hold_lock, make_entry, take_over_lock

__all__ = [
    "DriverConformance",
    "DriverFactory",
    "DriverPool",
    "FakeClock",
    "make_entry",
    "hold_lock",
    "take_over_lock",
]
