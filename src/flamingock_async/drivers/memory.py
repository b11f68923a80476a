"""An in-process driver for unit tests of the core and of change units.

Several `MemoryDriver`s that share one `MemoryStore` behave like several runners on one store.
Nothing survives the process.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from .._audit import AuditEntry, latest_by_change
from .._errors import LockLostError
from .._lock import Fence, LockRecord, holder_of
from ._base import Driver, TransactionBody

__all__ = ["MemoryStore", "MemoryTransaction", "MemoryDriver"]


@dataclasses.dataclass
class MemoryStore:
    """The shared state: lock records, the audit log, and `data`, a dict changes may write."""

    locks: dict[str, LockRecord] = dataclasses.field(default_factory=dict)
    audit: list[AuditEntry] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    set_up: bool = False


class MemoryTransaction:
    """The handle a transactional change receives: `data` is a copy committed on success."""

    def __init__(self, store: MemoryStore) -> None:
        self.data: dict[str, Any] = copy.deepcopy(store.data)


class MemoryDriver(Driver):
    """Driver over a `MemoryStore`; changes receive `store.data` by the name `data`."""

    name = "memory"
    transaction_handle_names = ("transaction", "tx")

    def __init__(self, store: MemoryStore | None = None, *, transactions: bool = True) -> None:
        super().__init__()
        self.store = store if store is not None else MemoryStore()
        self._transactions = transactions

    @property
    def supports_transactions(self) -> bool:
        return self._transactions

    def provided_dependencies(self) -> Mapping[str, type]:
        return {"data": dict, "transaction": MemoryTransaction, "tx": MemoryTransaction}

    def target_dependencies(self) -> Mapping[str, object]:
        return {"data": self.store.data}

    async def _setup(self) -> None:
        self.store.set_up = True

    async def _read_lock(self, key: str) -> LockRecord | None:
        return self.store.locks.get(key)

    async def _insert_lock(self, record: LockRecord) -> bool:
        if record.key in self.store.locks:
            return False
        self.store.locks[record.key] = record
        return True

    async def _replace_lock(self, key: str, expected_version: int, record: LockRecord) -> bool:
        current = self.store.locks.get(key)
        if current is None or current.version != expected_version:
            return False
        self.store.locks[key] = record
        return True

    async def _read_states(self) -> list[AuditEntry]:
        return list(latest_by_change(self.store.audit).values())

    async def _read_history(self, change_id: str | None) -> list[AuditEntry]:
        entries = [e for e in self.store.audit if change_id is None or e.change_id == change_id]
        return sorted(entries, key=lambda entry: entry.sort_key)

    async def _append_audit(self, entry: AuditEntry, fence: Fence) -> None:
        self._check_fence(fence)
        if any(existing.entry_id == entry.entry_id for existing in self.store.audit):
            return
        self.store.audit.append(entry)

    async def _run_in_transaction(
        self,
        fence: Fence,
        body: TransactionBody,
        audit: Callable[[], AuditEntry],
    ) -> None:
        transaction = MemoryTransaction(self.store)
        await body(transaction)
        entry = audit()
        self._check_fence(fence)
        self.store.data.clear()
        self.store.data.update(transaction.data)
        self.store.audit.append(entry)

    def _check_fence(self, fence: Fence) -> None:
        current = self.store.locks.get(fence.key)
        if current is None or current.owner != fence.owner or current.epoch != fence.epoch:
            raise LockLostError(
                f"Audit write rejected: the lock {fence.key!r} is no longer held at epoch "
                f"{fence.epoch} by this runner; {holder_of(current)}."
            )
