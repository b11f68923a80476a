"""Stage `search`: derived columns, a file export and statistics for the service's search API."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import unicodedata

import aiosqlite
import anyio

from flamingock_async import ChangeContext, change_unit

AUTHOR = "search-team"
SNAPSHOT_NAME = "countries-snapshot.json"

_NOT_ALPHANUMERIC = re.compile(r"[^0-9a-z]+")


def search_name(name: str) -> str:
    """Return `name` lower-cased, without accents and with punctuation collapsed to spaces.

    For example "Côte d'Ivoire" becomes "cote d ivoire", so a search for "cote" finds it.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _NOT_ALPHANUMERIC.sub(" ", letters.casefold()).strip()


@change_unit(id="add-search-names", order="0001", author=AUTHOR)
class AddSearchNames:
    """Add `search_name` to countries and subdivisions and backfill it from `name`."""

    async def execute(self, connection: aiosqlite.Connection, context: ChangeContext) -> None:
        for table, key in (("countries", "alpha_2"), ("subdivisions", "code")):
            await connection.execute(f"ALTER TABLE {table} ADD COLUMN search_name TEXT")
            rows = await connection.execute_fetchall(f"SELECT {key}, name FROM {table}")
            updates = [(search_name(name), code) for code, name in rows]
            await connection.executemany(
                f"UPDATE {table} SET search_name = ? WHERE {key} = ?", updates
            )
            context.metadata[table] = len(updates)


@change_unit(
    id="export-countries-snapshot",
    order="0003",
    author=AUTHOR,
    transactional=False,
    description="Write the catalogue as JSON next to the database, for the static site.",
)
class ExportCountriesSnapshot:
    """Write `countries-snapshot.json` next to the database file; the rollback deletes it.

    A file is outside any database transaction, so this change is not transactional: the
    runner audits STARTED first and, if `execute` fails, calls `rollback` to remove a
    partly written file.
    """

    async def execute(self, connection: aiosqlite.Connection, context: ChangeContext) -> None:
        rows = await connection.execute_fetchall(
            "SELECT alpha_2, alpha_3, name, search_name, subdivision_count "
            "FROM countries ORDER BY alpha_2"
        )
        countries = [
            {
                "alpha_2": alpha_2,
                "alpha_3": alpha_3,
                "name": name,
                "search_name": search,
                "subdivisions": count,
            }
            for alpha_2, alpha_3, name, search, count in rows
        ]
        body = json.dumps({"countries": countries}, ensure_ascii=False, indent=1)
        target = await snapshot_path(connection)
        partial = anyio.Path(f"{target}.partial")
        await partial.write_text(body, encoding="utf-8")
        await partial.rename(target)  # atomic on POSIX: readers never see half a file
        context.metadata["file"] = os.path.basename(target)
        context.metadata["sha256"] = hashlib.sha256(body.encode("utf-8")).hexdigest()
        context.metadata["countries"] = len(countries)

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        target = await snapshot_path(connection)
        for path in (anyio.Path(target), anyio.Path(f"{target}.partial")):
            await path.unlink(missing_ok=True)


async def snapshot_path(connection: aiosqlite.Connection) -> str:
    """Return the snapshot's path: `countries-snapshot.json` in the database's folder."""
    rows = await connection.execute_fetchall("PRAGMA database_list")
    files = [str(file) for _, name, file in rows if name == "main" and file]
    folder = os.path.dirname(files[0]) if files else os.getcwd()
    return os.path.join(folder, SNAPSHOT_NAME)


@change_unit(id="refresh-statistics", order="0004", author=AUTHOR, run_always=True)
class RefreshStatistics:
    """Recompute the `catalog_stats` table on every run, so it always matches the data."""

    async def execute(self, connection: aiosqlite.Connection, context: ChangeContext) -> None:
        await connection.execute("DELETE FROM catalog_stats")
        await connection.execute(
            "INSERT INTO catalog_stats (name, value) "
            "SELECT 'countries', count(*) FROM countries "
            "UNION ALL SELECT 'subdivisions', count(*) FROM subdivisions "
            "UNION ALL SELECT 'currencies', count(*) FROM currencies "
            "UNION ALL SELECT 'languages', count(*) FROM languages "
            "UNION ALL SELECT 'countries_without_subdivisions', count(*) FROM countries "
            "WHERE subdivision_count = 0"
        )
        await connection.execute(
            "INSERT INTO catalog_stats (name, value) VALUES ('refreshed_at_ms', ?)",
            (time.time_ns() // 1_000_000,),
        )
        rows = await connection.execute_fetchall("SELECT name, value FROM catalog_stats")
        context.metadata.update({str(name): value for name, value in rows})

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        """Empty the statistics, which describe data that is being rolled back."""
        await connection.execute("DELETE FROM catalog_stats")
