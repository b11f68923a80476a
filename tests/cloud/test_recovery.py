"""The runner's failure handling through the backend: one runner in process, a served backend."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from flamingock_async import (
    AsyncRunner,
    AuditState,
    ChangeExecutionError,
    DriverAuthError,
    LockLostError,
    LockSettings,
    ManualInterventionRequiredError,
    PipelineValidationError,
    change_unit,
)
from flamingock_async.drivers.cloud import CloudDriver

from .conftest import Backend, Service, cloud_driver

FAST_LOCK = LockSettings(lease=1.0, wait_timeout=10.0, poll_interval=0.05)


class Calls:
    """Records what changes did, injected by type."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.fail = True


@change_unit(id="add-index", order="0001", author="tests", transactional=False)
class AddIndex:
    async def execute(self, calls: Calls) -> None:
        calls.log.append("add-index")


@change_unit(id="fragile", order="0002", author="tests", transactional=False)
class Fragile:
    """Fails while `calls.fail` is set; its rollback succeeds."""

    async def execute(self, calls: Calls) -> None:
        calls.log.append("fragile")
        if calls.fail:
            raise RuntimeError("the target refused the write")

    async def rollback(self, calls: Calls) -> None:
        calls.log.append("rollback fragile")


@change_unit(id="fragile", order="0002", author="tests", transactional=False)
class BrokenRollback:
    async def execute(self, calls: Calls) -> None:
        raise RuntimeError("the target refused the write")

    async def rollback(self, calls: Calls) -> None:
        raise OSError("the target is gone")


@change_unit(id="atomic", order="0002", author="tests", transactional=True)
class FailingTransactional:
    async def execute(self, calls: Calls) -> None:
        raise RuntimeError("constraint violated")


@change_unit(id="add-index", order="0003", author="someone-else", transactional=False)
class DuplicateId:
    async def execute(self) -> None:
        return None


@pytest.fixture
async def drivers(backend: Backend, service: Service) -> AsyncIterator[Callable[[], CloudDriver]]:
    created: list[CloudDriver] = []

    def make() -> CloudDriver:
        created.append(cloud_driver(backend.url, service))
        return created[-1]

    yield make
    for driver in created:
        await driver.aclose()


def runner(
    driver: CloudDriver, changes: list[type], calls: Calls, **options: object
) -> AsyncRunner:
    options.setdefault("lock", FAST_LOCK)
    return AsyncRunner(
        driver,
        changes,
        dependencies=[calls],
        manifest_cache=False,
        **options,  # type: ignore[arg-type]
    )


async def states(driver: CloudDriver, change_id: str) -> list[AuditState]:
    return [entry.state for entry in await driver.read_history(change_id)]


async def test_rolled_back_change_applies_again(drivers: Callable[[], CloudDriver]) -> None:
    """A failed change whose rollback worked is applied by the next run; history keeps both."""
    calls = Calls()
    with pytest.raises(ChangeExecutionError):
        await runner(drivers(), [AddIndex, Fragile], calls).run()
    calls.fail = False
    report = await runner(drivers(), [AddIndex, Fragile], calls).run()
    history = await states(drivers(), "fragile")
    assert report.applied == ("fragile",)
    assert calls.log == ["add-index", "fragile", "rollback fragile", "fragile"]
    assert history == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLED_BACK,
        AuditState.STARTED,
        AuditState.APPLIED,
    ]


async def test_failed_rollback_blocks_next_run(drivers: Callable[[], CloudDriver]) -> None:
    calls = Calls()
    with pytest.raises(ChangeExecutionError) as raised:
        await runner(drivers(), [AddIndex, BrokenRollback], calls).run()
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert isinstance(raised.value.rollback_error, OSError)
    assert await states(drivers(), "fragile") == [
        AuditState.STARTED,
        AuditState.FAILED,
        AuditState.ROLLBACK_FAILED,
    ]
    with pytest.raises(ManualInterventionRequiredError, match="fragile"):
        await runner(drivers(), [AddIndex, BrokenRollback], calls).run()


async def test_failing_transactional_change_raises(drivers: Callable[[], CloudDriver]) -> None:
    """The backend has no transaction that spans a change's code: the run raises, never succeeds."""
    calls = Calls()
    with pytest.raises(ChangeExecutionError):
        await runner(drivers(), [AddIndex, FailingTransactional], calls).run()
    history = await states(drivers(), "atomic")
    assert history[0] is AuditState.STARTED
    assert AuditState.APPLIED not in history
    # Without a transaction nothing proves the change left no trace, so the next run stops.
    with pytest.raises(ManualInterventionRequiredError, match="atomic"):
        await runner(drivers(), [AddIndex, FailingTransactional], calls).run()


async def test_mark_resolves_manual_intervention(drivers: Callable[[], CloudDriver]) -> None:
    calls = Calls()
    with pytest.raises(ChangeExecutionError):
        await runner(drivers(), [AddIndex, BrokenRollback], calls).run()
    await runner(drivers(), [AddIndex, BrokenRollback], calls).mark(
        "fragile", AuditState.MANUAL_MARKED_AS_APPLIED
    )
    report = await runner(drivers(), [AddIndex, BrokenRollback], calls).run()
    assert report.applied == ()
    assert "fragile" in report.skipped
    assert (await states(drivers(), "fragile"))[-1] is AuditState.MANUAL_MARKED_AS_APPLIED


async def test_duplicate_ids_touch_nothing(drivers: Callable[[], CloudDriver]) -> None:
    driver = drivers()
    with pytest.raises(PipelineValidationError, match="add-index"):
        await runner(driver, [AddIndex, DuplicateId], Calls()).run()
    assert driver.stats.round_trips == 0
    assert await drivers().read_lock("flamingock") is None


@change_unit(id="verbose", order="0002", author="tests", transactional=False)
class VerboseFailure:
    async def execute(self) -> None:
        raise RuntimeError("x" * 50_000)

    async def rollback(self) -> None:
        return None


async def test_huge_error_still_audited(drivers: Callable[[], CloudDriver]) -> None:
    with pytest.raises(ChangeExecutionError):
        await runner(drivers(), [AddIndex, VerboseFailure], Calls()).run()
    history = await drivers().read_history("verbose")
    failed = [entry for entry in history if entry.state is AuditState.FAILED]
    assert len(failed) == 1
    assert failed[0].error_message is not None
    assert failed[0].error_message.endswith("(shortened)")
    assert len(failed[0].error_message) <= 20_000
    assert history[-1].state is AuditState.ROLLED_BACK


class TokenRevoker:
    """A dependency, injected by type, that revokes the service's API token by the CLI."""

    def __init__(self, cli: Callable[..., str], token_id: str) -> None:
        self.cli = cli
        self.token_id = token_id

    async def revoke(self) -> None:
        await anyio.to_thread.run_sync(self.cli, "token", "revoke", self.token_id)


@change_unit(id="revokes-token", order="0001", author="tests", transactional=False)
class RevokesItsToken:
    async def execute(self, revoker: TokenRevoker) -> None:
        await revoker.revoke()
        await anyio.sleep(30)


async def test_revoked_token_loses_lock_without_retries(
    drivers: Callable[[], CloudDriver],
    service: Service,
    cli: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The heartbeat reports the lock lost at the first renewal the backend rejects."""
    lock = LockSettings(lease=6.0, wait_timeout=10.0, poll_interval=0.05)
    revoker = TokenRevoker(cli, service.token_id)
    run = AsyncRunner(
        drivers(), [RevokesItsToken], dependencies=[revoker], manifest_cache=False, lock=lock
    )

    caplog.set_level(logging.WARNING, logger="flamingock_async.lock")
    with pytest.raises(LockLostError, match="TOKEN_REVOKED") as raised:
        await run.run()

    assert isinstance(raised.value.__cause__, DriverAuthError)
    assert "failed, retrying" not in caplog.text
