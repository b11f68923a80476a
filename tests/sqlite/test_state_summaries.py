"""Tests of `read_state_summaries()` on SQLite: the narrow read of a start with nothing pending."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from flamingock_async import AuditState, CorruptAuditEntryError
from flamingock_async._audit import StateSummary
from flamingock_async.drivers.sqlite import SQLiteDriver
from flamingock_async.testing import hold_lock, make_entry


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def driver(database: Path) -> AsyncIterator[SQLiteDriver]:
    async with SQLiteDriver(database) as opened:
        await opened.setup()
        yield opened


async def test_summaries_match_newest_entries(driver: SQLiteDriver) -> None:
    first = await hold_lock(driver, "k", "runner-a")
    await driver.append_audit(make_entry("a", epoch=first.epoch, sequence=1), first)
    started = make_entry("b", epoch=first.epoch, sequence=2, state=AuditState.STARTED)
    await driver.append_audit(started, first)
    second = await hold_lock(driver, "k", "runner-b")
    failed = make_entry(
        "b", epoch=second.epoch, sequence=1, state=AuditState.FAILED, transactional=True
    )
    await driver.append_audit(failed, second)

    summaries = await driver.read_state_summaries()
    expected = [StateSummary.of(entry) for entry in await driver.read_states()]

    assert sorted(summaries) == sorted(expected)
    assert StateSummary("b", AuditState.FAILED, True, second.epoch) in summaries


async def test_summaries_of_missing_database(database: Path) -> None:
    async with SQLiteDriver(database) as driver:
        summaries = await driver.read_state_summaries()

    assert summaries == []
    assert not await anyio.Path(database).exists()


async def test_summaries_count_one_read(driver: SQLiteDriver) -> None:
    fence = await hold_lock(driver, "k", "runner-a")
    for sequence in range(1, 6):
        await driver.append_audit(make_entry(f"c{sequence}", epoch=1, sequence=sequence), fence)
    before = driver.stats.reads

    summaries = await driver.read_state_summaries()

    assert len(summaries) == 5
    assert driver.stats.reads == before + 1


@pytest.mark.parametrize(
    ("column", "value"),
    [("state", "BOGUS"), ("transactional", 5), ("lock_epoch", "seven"), ("change_id", None)],
)
async def test_summaries_corrupt_row_raises(
    driver: SQLiteDriver, database: Path, column: str, value: object
) -> None:
    fence = await hold_lock(driver, "k", "runner-a")
    await driver.append_audit(make_entry("a", epoch=fence.epoch, sequence=1), fence)
    with closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute(f'UPDATE flamingock_audit SET "{column}" = ?', (value,))

    with pytest.raises(CorruptAuditEntryError) as raised:
        await driver.read_state_summaries()

    assert "rowid 1" in str(raised.value)
    assert raised.value.record_key == "rowid=1"
