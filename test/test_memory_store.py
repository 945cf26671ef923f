"""memory/: the SQLite store (round trip, corrupt and version-mismatched files) and the
background writer (coalescing, flush on close, retry)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from objembed_ros.core.memory import MemoryChanges, ObjectEntry
from objembed_ros.memory import SCHEMA_VERSION, MemoryStore, SqliteStore, StoreWriter


def entry(i: int, dim: int = 8, **kw) -> ObjectEntry:
    rng = np.random.default_rng(i)
    emb = rng.normal(size=dim).astype(np.float32)
    base = dict(id=i, embedding=emb / np.linalg.norm(emb), camera=f"/cam{i % 2}/image",
                frame_id="cam_optical", label=f"thing {i}", first_seen_ns=10 * i,
                last_seen_ns=10 * i + 5, hits=i + 1, box=(1.5, 2.0, 30.25, 40.0),
                image_size=(640, 480), best_iou=0.875, crop=bytes([i, 0, 255]) * 10,
                position_frame="map", position_fixed=True, position_count=3,
                position_mean=(1.0, -2.5, 0.125), position_m2=(0.5, 0.25, 0.0))
    base.update(kw)
    return ObjectEntry(**base)


def assert_same(got: ObjectEntry, want: ObjectEntry) -> None:
    # float16 storage: the reference is numpy's own float16 rounding of the float32 vector
    np.testing.assert_array_equal(got.embedding,
                                  want.embedding.astype(np.float16).astype(np.float32))
    for name in ("id", "camera", "frame_id", "label", "first_seen_ns", "last_seen_ns", "hits",
                 "box", "image_size", "best_iou", "crop", "position_frame", "position_fixed",
                 "position_count", "position_mean", "position_m2"):
        assert getattr(got, name) == getattr(want, name), name


def test_round_trip_upsert_delete(tmp_path: Path):
    path = tmp_path / "mem.sqlite"
    store = SqliteStore(path)
    assert isinstance(store, MemoryStore) and store.problem is None
    entries = [entry(i) for i in range(1, 6)]
    store.upsert(entries)
    store.upsert([entry(2, hits=42, label="", crop=b"", position_count=0)])
    store.delete([3, 99])
    store.close()
    again = SqliteStore(path)
    got = again.load_all()
    want = [entries[0], entry(2, hits=42, label="", crop=b"", position_count=0), *entries[3:]]
    assert [e.id for e in got] == [1, 2, 4, 5]
    for g, w in zip(got, want, strict=True):
        assert_same(g, w)
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again.close()


def test_corrupt_file_is_moved_aside_and_a_fresh_store_starts(tmp_path: Path):
    path = tmp_path / "mem.sqlite"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    reports: list[str] = []
    store = SqliteStore(path, report=reports.append)
    assert store.problem and "moved to" in store.problem and reports
    (aside,) = tmp_path.glob("mem.sqlite.corrupt-*")
    assert aside.read_bytes() == garbage  # nothing lost
    assert store.load_all() == []
    store.upsert([entry(1)])
    store.close()
    assert [e.id for e in SqliteStore(path).load_all()] == [1]


def test_damaged_database_pages_are_detected(tmp_path: Path):
    path = tmp_path / "mem.sqlite"
    store = SqliteStore(path)
    store.upsert([entry(i, dim=512) for i in range(1, 40)])
    store.close()
    data = bytearray(path.read_bytes())
    data[4096:3 * 4096] = b"\xff" * (2 * 4096)  # scribble over pages 2 and 3
    path.write_bytes(bytes(data))
    store = SqliteStore(path)
    assert store.problem is not None
    assert len(list(tmp_path.glob("mem.sqlite.corrupt-*"))) == 1
    assert store.load_all() == []
    store.close()


def test_version_mismatch_and_foreign_database_are_set_aside(tmp_path: Path):
    path = tmp_path / "mem.sqlite"
    store = SqliteStore(path)
    store.upsert([entry(1)])
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                 (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    assert f"schema version {SCHEMA_VERSION + 1}" in store.problem
    assert len(list(tmp_path.glob(f"mem.sqlite.v{SCHEMA_VERSION + 1}-*"))) == 1
    assert store.load_all() == []
    store.close()
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE photos (x)")
    conn.commit()
    conn.close()
    store = SqliteStore(other)
    assert "not an objembed memory" in store.problem
    store.close()


def test_writer_coalesces_and_flushes_on_close(tmp_path: Path):
    path = tmp_path / "mem.sqlite"
    writer = StoreWriter(SqliteStore(path), interval_s=3600.0, batch_size=10_000)
    writer.submit(MemoryChanges(upserts=[entry(1), entry(2), entry(3)]))
    writer.submit(MemoryChanges(upserts=[entry(1, hits=7)], deletes=[2]))
    assert writer.pending() == 3  # 1, 3 and the delete of 2
    writer.submit(MemoryChanges(deletes=[3]))
    writer.submit(MemoryChanges(upserts=[entry(3)]))  # re-created: the delete is void
    assert writer.pending() == 3
    writer.close()  # the thread never woke (hour interval): close writes it
    got = SqliteStore(path).load_all()
    assert [(e.id, e.hits) for e in got] == [(1, 7), (3, 4)]


def test_writer_writes_in_the_background_when_a_batch_is_full(tmp_path: Path):
    store = SqliteStore(tmp_path / "mem.sqlite")
    writer = StoreWriter(store, interval_s=3600.0, batch_size=2)
    writer.submit(MemoryChanges(upserts=[entry(1), entry(2)]))
    assert writer.flush(timeout_s=30.0)
    assert store.count() == 2 and writer.batches_written == 1
    writer.close()


class FlakyStore:
    """A store whose first upsert fails (a full disk, say)."""

    def __init__(self) -> None:
        self.rows: dict[int, ObjectEntry] = {}
        self.fail = True

    def load_all(self):
        return list(self.rows.values())

    def upsert(self, entries):
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        self.rows.update({e.id: e for e in entries})

    def delete(self, ids):
        for i in ids:
            self.rows.pop(i, None)

    def close(self):
        pass


def test_writer_keeps_a_failed_batch_and_retries():
    store = FlakyStore()
    reports: list[str] = []
    writer = StoreWriter(store, interval_s=3600.0, batch_size=1, report=reports.append)
    writer.submit(MemoryChanges(upserts=[entry(1)]))
    assert writer.flush(timeout_s=30.0)
    assert writer.write_errors == 1 and "disk full" in reports[0]
    writer.submit(MemoryChanges(upserts=[entry(2)]))
    assert writer.flush(timeout_s=30.0)
    writer.close()
    assert sorted(store.rows) == [1, 2]
