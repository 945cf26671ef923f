"""The embedded default store: one SQLite file in WAL mode.

One row per entry; the fused embedding is a float16 blob (half the bytes; the cosine error it
adds is below 1e-3, far under the gaps recall ranks by), the crop a JPEG blob. A ``meta``
table holds the schema version. A file that is not a readable SQLite database, fails
``PRAGMA quick_check`` or carries another schema version is moved aside (renamed with a
``.corrupt-<UTC time>`` or ``.v<N>-<UTC time>`` suffix, WAL and SHM files with it), the reason
is kept in ``problem`` and reported through ``report``, and a fresh store starts: the node
never dies of its memory file.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from objembed_ros.core.memory import ObjectEntry

SCHEMA_VERSION = 1

_COLUMNS = ("id", "camera", "frame_id", "label", "first_seen_ns", "last_seen_ns", "hits",
            "x1", "y1", "x2", "y2", "image_width", "image_height", "best_iou", "crop",
            "position_frame", "position_fixed", "position_count", "px", "py", "pz",
            "m2x", "m2y", "m2z", "dim", "embedding")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
  id INTEGER PRIMARY KEY, camera TEXT NOT NULL, frame_id TEXT NOT NULL, label TEXT NOT NULL,
  first_seen_ns INTEGER NOT NULL, last_seen_ns INTEGER NOT NULL, hits INTEGER NOT NULL,
  x1 REAL, y1 REAL, x2 REAL, y2 REAL, image_width INTEGER, image_height INTEGER,
  best_iou REAL, crop BLOB, position_frame TEXT NOT NULL, position_fixed INTEGER NOT NULL,
  position_count INTEGER NOT NULL, px REAL, py REAL, pz REAL, m2x REAL, m2y REAL, m2z REAL,
  dim INTEGER NOT NULL, embedding BLOB NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


class StoreError(RuntimeError):
    """The store could not be opened even after setting the old file aside."""


def _row(e: ObjectEntry) -> tuple:
    emb = np.asarray(e.embedding, np.float32).reshape(-1)
    return (int(e.id), e.camera, e.frame_id, e.label, int(e.first_seen_ns),
            int(e.last_seen_ns), int(e.hits), *map(float, e.box), int(e.image_size[0]),
            int(e.image_size[1]), float(e.best_iou), bytes(e.crop), e.position_frame,
            int(e.position_fixed), int(e.position_count), *map(float, e.position_mean),
            *map(float, e.position_m2), int(emb.size), emb.astype("<f2").tobytes())


def _entry(r: sqlite3.Row) -> ObjectEntry:
    emb = np.frombuffer(r["embedding"], dtype="<f2")
    if emb.size != r["dim"]:
        raise ValueError(f"entry {r['id']}: embedding has {emb.size} values, dim says {r['dim']}")
    return ObjectEntry(
        id=int(r["id"]), embedding=emb.astype(np.float32), camera=r["camera"],
        frame_id=r["frame_id"], label=r["label"], first_seen_ns=int(r["first_seen_ns"]),
        last_seen_ns=int(r["last_seen_ns"]), hits=int(r["hits"]),
        box=(r["x1"], r["y1"], r["x2"], r["y2"]),
        image_size=(int(r["image_width"]), int(r["image_height"])),
        best_iou=float(r["best_iou"]), crop=bytes(r["crop"] or b""),
        position_frame=r["position_frame"], position_fixed=bool(r["position_fixed"]),
        position_count=int(r["position_count"]), position_mean=(r["px"], r["py"], r["pz"]),
        position_m2=(r["m2x"], r["m2y"], r["m2z"]))


class SqliteStore:
    """MemoryStore on one SQLite file (see the module docstring). ``problem`` holds what was
    wrong with the file found at start-up (None when it was fine or new)."""

    def __init__(self, path: str | Path, report: Callable[[str], None] | None = None) -> None:
        self.path = Path(path).expanduser()
        self.report = report or (lambda msg: None)
        self.problem: str | None = None
        self.skipped_rows = 0
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            self._conn = self._recover(exc)

    def _recover(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Move the unusable file aside, report it, and open a fresh one."""
        suffix = exc.suffix if isinstance(exc, _VersionMismatch) else "corrupt"
        moved = self._move_aside(suffix)
        self.problem = f"memory file {self.path} unusable ({exc}); moved to {moved}"
        self.report(self.problem + "; starting an empty memory")
        try:
            return self._open()
        except sqlite3.DatabaseError as again:
            raise StoreError(f"cannot create a memory file at {self.path}: {again}") from again

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE "
                                                 "type='table'")}
            if tables and "meta" not in tables:
                raise sqlite3.DatabaseError(f"not an objembed memory (tables {sorted(tables)})")
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'"
                                   ).fetchone()
                found = row[0] if row else "none"
                if found != str(SCHEMA_VERSION):
                    raise _VersionMismatch(found)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, suffix: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.{suffix}-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.{suffix}-{stamp}.{n}")
            n += 1
        self.path.rename(target)
        for side in ("-wal", "-shm"):
            extra = self.path.with_name(self.path.name + side)
            if extra.exists():
                extra.rename(target.with_name(target.name + side))
        return target

    def load_all(self) -> list[ObjectEntry]:
        out = []
        with self._lock:
            try:
                rows = self._conn.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM entries ORDER BY id").fetchall()
            except sqlite3.DatabaseError as exc:  # damage quick_check did not see
                self._conn.close()
                self._conn = self._recover(exc)
                return []
        for r in rows:
            try:
                out.append(_entry(r))
            except (ValueError, TypeError) as exc:
                self.skipped_rows += 1
                self.report(f"memory file {self.path}: skipped a bad row: {exc}")
        return out

    def upsert(self, entries: Sequence[ObjectEntry]) -> None:
        if not entries:
            return
        marks = ", ".join("?" * len(_COLUMNS))
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(f"INSERT OR REPLACE INTO entries VALUES ({marks})",
                                   [_row(e) for e in entries])

    def delete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany("DELETE FROM entries WHERE id = ?", [(int(i),) for i in ids])

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()


class _VersionMismatch(sqlite3.DatabaseError):
    def __init__(self, found: str) -> None:
        super().__init__(f"schema version {found}, this build reads {SCHEMA_VERSION}")
        self.suffix = f"v{found}"
