"""Transactions of MongoDriver: the session handed to a change, retries, and DDL rejection."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import OperationFailure

from flamingock_async import DriverError
from flamingock_async.drivers import mongodb as mongodb_module
from flamingock_async.drivers.mongodb import MongoDriver

from .helpers import entry, fence_of, lock_record


def labelled_failure(
    label: str, code: int = 112, message: str = "WriteConflict"
) -> OperationFailure:
    return OperationFailure(
        message, code, {"ok": 0, "code": code, "errmsg": message, "errorLabels": [label]}
    )


async def held_fence(driver: MongoDriver) -> Any:
    record = lock_record()
    await driver.insert_lock(record)
    return fence_of(record)


async def test_body_receives_session(driver: MongoDriver) -> None:
    fence = await held_fence(driver)
    seen: list[Any] = []

    async def body(session: Any) -> None:
        seen.append(session)
        seen.append(session.in_transaction)

    await driver.run_in_transaction(fence, body, lambda: entry())
    assert isinstance(seen[0], AsyncClientSession)
    assert seen[1] is True


async def test_body_and_entry_commit(driver: MongoDriver, raw_database: Any) -> None:
    await raw_database.create_collection("accounts")
    fence = await held_fence(driver)
    written = entry()

    async def body(session: Any) -> None:
        await driver.database["accounts"].insert_one({"_id": "alice"}, session=session)

    await driver.run_in_transaction(fence, body, lambda: written)
    assert await raw_database["accounts"].count_documents({}) == 1
    assert await driver.read_history() == [written]


async def test_failed_body_leaves_nothing(driver: MongoDriver, raw_database: Any) -> None:
    await raw_database.create_collection("accounts")
    fence = await held_fence(driver)

    async def body(session: Any) -> None:
        await driver.database["accounts"].insert_one({"_id": "alice"}, session=session)
        raise KeyError("halfway")

    with pytest.raises(KeyError, match="halfway"):
        await driver.run_in_transaction(fence, body, lambda: entry())
    assert await raw_database["accounts"].count_documents({}) == 0
    assert await driver.read_history() == []


async def test_transient_error_retries_body(driver: MongoDriver, raw_database: Any) -> None:
    await raw_database.create_collection("accounts")
    fence = await held_fence(driver)
    attempts: list[int] = []

    async def body(session: Any) -> None:
        attempts.append(1)
        await driver.database["accounts"].insert_one({"n": len(attempts)}, session=session)
        if len(attempts) == 1:
            raise labelled_failure("TransientTransactionError")

    await driver.run_in_transaction(fence, body, lambda: entry())
    assert len(attempts) == 2
    assert await raw_database["accounts"].count_documents({}) == 1
    assert len(await driver.read_history()) == 1


async def test_transient_error_after_deadline(
    driver: MongoDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongodb_module, "TRANSACTION_RETRY_DEADLINE", 0.0)
    fence = await held_fence(driver)
    attempts: list[int] = []

    async def body(session: Any) -> None:
        attempts.append(1)
        raise labelled_failure("TransientTransactionError")

    with pytest.raises(OperationFailure):
        await driver.run_in_transaction(fence, body, lambda: entry())
    assert len(attempts) == 1
    assert await driver.read_history() == []


async def test_unknown_commit_result_retried(
    driver: MongoDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fence = await held_fence(driver)
    original = AsyncClientSession.commit_transaction
    commits: list[int] = []

    async def flaky_commit(self: AsyncClientSession) -> None:
        commits.append(1)
        if len(commits) == 1:
            raise labelled_failure("UnknownTransactionCommitResult", 91, "ShutdownInProgress")
        await original(self)

    monkeypatch.setattr(AsyncClientSession, "commit_transaction", flaky_commit)
    bodies: list[int] = []

    async def body(session: Any) -> None:
        bodies.append(1)

    written = entry()
    await driver.run_in_transaction(fence, body, lambda: written)
    assert len(commits) == 2
    assert len(bodies) == 1
    assert await driver.read_history() == [written]


async def test_transient_commit_reruns_body(
    driver: MongoDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fence = await held_fence(driver)
    original = AsyncClientSession.commit_transaction
    commits: list[int] = []

    async def conflicting_commit(self: AsyncClientSession) -> None:
        commits.append(1)
        if len(commits) == 1:
            await self.abort_transaction()
            raise labelled_failure("TransientTransactionError", 251, "NoSuchTransaction")
        await original(self)

    monkeypatch.setattr(AsyncClientSession, "commit_transaction", conflicting_commit)
    bodies: list[int] = []

    async def body(session: Any) -> None:
        bodies.append(1)

    await driver.run_in_transaction(fence, body, lambda: entry())
    assert len(bodies) == 2
    assert len(await driver.read_history()) == 1


async def test_ddl_rejection_explained(driver: MongoDriver) -> None:
    fence = await held_fence(driver)
    rejection = OperationFailure(
        "Cannot run 'drop' in a multi-document transaction.",
        263,
        {"ok": 0, "code": 263, "errmsg": "Cannot run 'drop' in a multi-document transaction."},
    )

    async def body(session: Any) -> None:
        raise rejection

    with pytest.raises(DriverError, match="transactional=False") as caught:
        await driver.run_in_transaction(fence, body, lambda: entry())
    assert caught.value.__cause__ is rejection


@pytest.mark.real_mongodb
async def test_real_ddl_rejection_explained(driver: MongoDriver, raw_database: Any) -> None:
    """A real server rejects dropping a collection inside a transaction."""
    await raw_database["accounts"].insert_one({"_id": "alice"})
    fence = await held_fence(driver)

    async def body(session: Any) -> None:
        await driver.database.drop_collection("accounts", session=session)

    with pytest.raises(DriverError, match="transactional=False"):
        await driver.run_in_transaction(fence, body, lambda: entry())
    assert await driver.read_history() == []


async def test_no_transaction_when_off(make_driver: Any) -> None:
    driver = make_driver(transactions=False)
    await driver.open()
    await driver.setup()
    fence = await held_fence(driver)

    async def body(session: Any) -> None:
        return None

    with pytest.raises(DriverError, match="Transactions are off"):
        await driver.run_in_transaction(fence, body, lambda: entry())
