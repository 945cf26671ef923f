"""Writes memory changes to a store on a background thread, off the frame path.

``submit`` only records the changes (a dict update under a lock) and returns. Pending
upserts are coalesced by entry id (the newest snapshot wins; a delete cancels a pending
upsert), so the pending set never holds more than one snapshot per entry: it is bounded by
the memory's own max_entries plus the deletions since the last write, and nothing is dropped.
The thread writes one batch (one transaction) every ``interval_s``, or sooner once
``batch_size`` changes are pending; ``close`` writes what is left, then closes the store.
A failing write is reported and its batch kept for the next try, ``retry_s`` later.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from objembed_ros.core.memory import MemoryChanges, ObjectEntry
from objembed_ros.memory.store import MemoryStore


class StoreWriter:
    def __init__(self, store: MemoryStore, interval_s: float = 1.0, batch_size: int = 256,
                 report: Callable[[str], None] | None = None, retry_s: float = 1.0) -> None:
        if interval_s <= 0 or batch_size < 1 or retry_s <= 0:
            raise ValueError("interval_s and retry_s must be > 0 and batch_size >= 1")
        self.retry_s = float(retry_s)
        self.store = store
        self.interval_s = float(interval_s)
        self.batch_size = int(batch_size)
        self.report = report or (lambda msg: None)
        self.batches_written = 0
        self.entries_written = 0
        self.write_errors = 0
        self._upserts: dict[int, ObjectEntry] = {}
        self._deletes: set[int] = set()
        self._cond = threading.Condition()
        self._closing = False
        self._writing = False
        self._thread = threading.Thread(target=self._run, name="memory-writer", daemon=True)
        self._thread.start()

    def pending(self) -> int:
        with self._cond:
            return len(self._upserts) + len(self._deletes)

    def submit(self, changes: MemoryChanges) -> None:
        """Queue one call's changes (never blocks on the store)."""
        if not changes:
            return
        with self._cond:
            if self._closing:
                raise RuntimeError("the memory writer is closed")
            for e in changes.upserts:
                self._upserts[e.id] = e
                self._deletes.discard(e.id)
            for i in changes.deletes:
                self._upserts.pop(i, None)
                self._deletes.add(i)
            if len(self._upserts) + len(self._deletes) >= self.batch_size:
                self._cond.notify()

    def _take(self) -> tuple[list[ObjectEntry], list[int]]:
        ups, dels = list(self._upserts.values()), sorted(self._deletes)
        self._upserts, self._deletes = {}, set()
        return ups, dels

    def _write(self, ups: list[ObjectEntry], dels: list[int]) -> bool:
        try:
            if dels:
                self.store.delete(dels)
            if ups:
                self.store.upsert(ups)
            self.batches_written += 1
            self.entries_written += len(ups)
            return True
        except Exception as exc:  # keep the batch; the next round retries it
            self.write_errors += 1
            self.report(f"memory store write failed ({exc}); retrying")
            with self._cond:
                for e in ups:
                    self._upserts.setdefault(e.id, e)
                for i in dels:
                    if i not in self._upserts:
                        self._deletes.add(i)
            return False

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closing and (len(self._upserts) + len(self._deletes)
                                          < self.batch_size):
                    self._cond.wait(self.interval_s)
                if self._closing:
                    return
                ups, dels = self._take()
                self._writing = bool(ups or dels)
            ok = self._write(ups, dels) if (ups or dels) else True
            with self._cond:
                self._writing = False
                self._cond.notify_all()
                if not ok and not self._closing:
                    self._cond.wait(self.retry_s)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (False on timeout)."""
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: not (self._upserts or self._deletes or self._writing), timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread, write what is pending on the caller's thread, close the store."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            ups, dels = self._take()
        if ups or dels:
            self._write(ups, dels)
        self.store.close()
