"""The one interface every object-memory store implements.

The memory itself (core/memory.py) lives in RAM and is the only thing recall reads; a store
only has to give the entries back after a restart and take batches of changes. An embedded
SQLite file is the default (memory/sqlite_store.py); a fleet would put an existing vector
database behind this same Protocol (see README, "Object memory").
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from objembed_ros.core.memory import ObjectEntry


@runtime_checkable
class MemoryStore(Protocol):
    """Persistent entries by id. Calls come from one thread at a time (the StoreWriter's, or
    the caller's at start-up and shutdown)."""

    def load_all(self) -> list[ObjectEntry]:
        """Every stored entry (start-up)."""
        ...

    def upsert(self, entries: Sequence[ObjectEntry]) -> None:
        """Insert or replace these entries, atomically as one batch."""
        ...

    def delete(self, ids: Sequence[int]) -> None:
        """Remove entries by id (unknown ids are ignored)."""
        ...

    def close(self) -> None:
        ...
