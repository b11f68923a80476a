"""`memory://NAME` URLs: one in-process `MemoryStore` per name, for tests of the CLI and tools."""

from __future__ import annotations

from .memory import MemoryDriver, MemoryStore

__all__ = ["from_url"]

_STORES: dict[str, MemoryStore] = {}


def from_url(url: str) -> MemoryDriver:
    name = url.split("://", 1)[1]
    return MemoryDriver(_STORES.setdefault(name, MemoryStore()))
