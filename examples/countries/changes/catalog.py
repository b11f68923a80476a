"""Stage `catalog`: import the ISO reference data shipped in pycountry.

Each change is transactional: with the SQLite store, `connection` is the store's transaction,
so the rows and the change's APPLIED audit entry commit together or not at all. A change
that fails halfway leaves no rows behind and the next run applies it again.
"""

from __future__ import annotations

import aiosqlite
import pycountry

from flamingock_async import ChangeContext, change_unit

AUTHOR = "catalog-team"


@change_unit(id="import-countries", order="0002", author=AUTHOR)
class ImportCountries:
    """Insert the ISO 3166-1 countries (about 250 rows)."""

    async def execute(self, connection: aiosqlite.Connection, context: ChangeContext) -> None:
        rows = [
            (
                country.alpha_2,
                country.alpha_3,
                country.numeric,
                country.name,
                getattr(country, "official_name", None),
                getattr(country, "common_name", None),
                getattr(country, "flag", None),
            )
            for country in pycountry.countries
        ]
        await connection.executemany(
            "INSERT INTO countries (alpha_2, alpha_3, numeric_code, name, official_name, "
            "common_name, flag) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        context.metadata["rows"] = len(rows)
        context.logger.info("Imported %d countries", len(rows))


@change_unit(id="import-subdivisions", order="0003", author=AUTHOR)
class ImportSubdivisions:
    """Insert the ISO 3166-2 subdivisions (about 5,000 rows), with their parent codes."""

    async def execute(self, connection: aiosqlite.Connection, context: ChangeContext) -> None:
        rows = [
            (
                subdivision.code,
                subdivision.country_code,
                subdivision.name,
                subdivision.type,
                subdivision.parent_code,
            )
            for subdivision in pycountry.subdivisions
        ]
        await connection.executemany(
            "INSERT INTO subdivisions (code, country_code, name, type, parent_code) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        context.metadata["rows"] = len(rows)
        context.logger.info("Imported %d subdivisions", len(rows))


@change_unit(id="import-currencies-and-languages", order="0004", author=AUTHOR)
class ImportCurrenciesAndLanguages:
    """Insert the ISO 4217 currencies and the ISO 639-3 languages (about 8,000 rows)."""

    async def execute(self, connection: aiosqlite.Connection, context: ChangeContext) -> None:
        currencies = [
            (currency.alpha_3, currency.numeric, currency.name) for currency in pycountry.currencies
        ]
        languages = [
            (
                language.alpha_3,
                getattr(language, "alpha_2", None),
                language.name,
                language.scope,
                language.type,
            )
            for language in pycountry.languages
        ]
        await connection.executemany(
            "INSERT INTO currencies (alpha_3, numeric_code, name) VALUES (?, ?, ?)", currencies
        )
        await connection.executemany(
            "INSERT INTO languages (alpha_3, alpha_2, name, scope, type) VALUES (?, ?, ?, ?, ?)",
            languages,
        )
        context.metadata["currencies"] = len(currencies)
        context.metadata["languages"] = len(languages)
