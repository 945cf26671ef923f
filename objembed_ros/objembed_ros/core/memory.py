"""Object memory: "where did I last see X?" (numpy and PIL only, no ROS, no torch).

The memory holds objects, not frames. Every encoded frame offers its proposals as sightings;
a sighting either merges into the entry of the same physical object or starts a new entry.

Which proposals enter (``select_proposals``): those whose predicted IoU, sigmoid(iou logit),
is at least ``min_iou``, best first, at most ``max_per_frame`` of them. Within one frame a
sighting whose box overlaps an already kept one by IoU >= ``merge_box_iou`` and whose
embedding has cosine >= ``merge_cosine`` with it is the same object seen twice and is dropped.

When a sighting merges into an entry (``ObjectMemory.observe``), all of:
- cosine(sighting embedding, entry's fused embedding) >= ``merge_cosine``;
- when both have a position in the same fixed frame (map, odom): distance between the
  sighting and the entry's mean position <= ``merge_distance_m``;
- otherwise (no fixed-frame position on either side): same camera, box IoU with the entry's
  last box >= ``merge_box_iou`` and last seen at most ``merge_window_ns`` before.
Pairs are assigned greedily by descending cosine, each entry takes at most one sighting per
frame; sightings left over start new entries.

A merge updates: fused embedding = normalise(min(hits, fuse_history) * fused + unit sighting)
(a running mean of unit vectors, re-normalised; the cap lets the entry follow slow appearance
changes), hits + 1, last-seen stamp, camera, header frame, last box and image size, label
(when the frame grounded it), the crop when the sighting's predicted IoU beats the best so far,
and the position: a running mean and variance (Welford) of the sightings' positions when they
are in the entry's fixed frame. A position in a camera's optical frame is not averaged (the
camera moves): it replaces the position, and a fixed-frame position always wins over it.

Bounded size: after each frame, while there are more than ``max_entries`` entries, the entry
with the smallest ``last_seen_ns + min(hits, keep_hits_cap) * keep_credit_ns`` is evicted:
least recently seen first, with each sighting buying ``keep_credit_ns`` more time (up to the
cap), so one-off false proposals leave before objects seen many times.

Recall ranks entries by ObjEmbed's object similarity, sigmoid(cos * exp(logit_log_scale) +
logit_bias) (core.scoring), best first, ties by id (also at the top_k cut). Every score is
exact (float32 unit rows). The candidates come from a brute-force scan of the one float32
matrix of unit rows (kept in place as entries come, merge and leave; filters are masks over
per-row arrays; ``_cosines`` and ``_matvec`` say how it is scanned), or, with an approximate
index (``VectorIndex``, e.g. memory/ann.py's HNSW) and at least ``ann_min_entries`` entries,
from the index's ``limit * ann_oversample`` nearest neighbours: when the filters and min_score
leave fewer than the limit of those, or no limit is asked for (top_k and max_results <= 0),
the scan runs instead. The index is given an entry's vector when it is created and again when
its hits have doubled (or grown by fuse_history) since, so it tracks the fused embedding
without an index update per merge.
"""
from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from objembed_ros.core.boxes import box_iou
from objembed_ros.core.scoring import object_similarity, sigmoid

Box = tuple[float, float, float, float]
Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class MemoryConfig:
    """The memory's policy knobs (see the module docstring for what each one does)."""

    max_entries: int = 10_000
    min_iou: float = 0.5  # sigmoid(iou logit) a proposal needs to enter
    max_per_frame: int = 10  # at most this many proposals per frame, best predicted IoU first
    merge_cosine: float = 0.75
    merge_distance_m: float = 0.3
    merge_box_iou: float = 0.5
    merge_window_ns: int = 2_000_000_000
    fuse_history: int = 20
    keep_credit_ns: int = 60_000_000_000
    keep_hits_cap: int = 10
    crop_max_side: int = 96  # pixels; 0 disables crops
    crop_quality: int = 80  # JPEG quality
    ann_min_entries: int = 20_000  # use the approximate index (when given) from this size
    ann_oversample: int = 8

    def __post_init__(self) -> None:
        checks = {
            "max_entries": self.max_entries >= 1,
            "min_iou": 0.0 <= self.min_iou <= 1.0,
            "max_per_frame": self.max_per_frame >= 1,
            "merge_cosine": -1.0 <= self.merge_cosine <= 1.0,
            "merge_distance_m": self.merge_distance_m > 0,
            "merge_box_iou": 0.0 <= self.merge_box_iou <= 1.0,
            "merge_window_ns": self.merge_window_ns >= 0,
            "fuse_history": self.fuse_history >= 1,
            "keep_credit_ns": self.keep_credit_ns >= 0,
            "keep_hits_cap": self.keep_hits_cap >= 1,
            "crop_max_side": self.crop_max_side >= 0,
            "crop_quality": 1 <= self.crop_quality <= 95,
            "ann_min_entries": self.ann_min_entries >= 0,
            "ann_oversample": self.ann_oversample >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid memory config: {', '.join(bad)} ({self})")


@dataclass(frozen=True)
class Sighting:
    """One proposal of one frame, offered to the memory.

    embedding: (D,) float, any norm (unit-normalised on entry). box: xyxy source pixels.
    iou: predicted IoU in [0, 1]. position: metres in position_frame, None without depth;
    fixed: position_frame is the node's fixed frame (positions there are averaged).
    """

    embedding: np.ndarray
    box: Box
    iou: float
    camera: str
    stamp_ns: int
    image_size: tuple[int, int]
    frame_id: str = ""  # the image header's frame (the camera's optical frame)
    position: Vec3 | None = None
    position_frame: str = ""
    fixed: bool = False
    label: str = ""


@dataclass(frozen=True)
class ObjectEntry:
    """A snapshot of one remembered object (what recall and the store see).

    embedding: (D,) float32, unit norm. Position statistics: position_count samples with mean
    position_mean and sum of squared deviations position_m2 (Welford), metres in
    position_frame; stddev = sqrt(m2 / count).
    """

    id: int
    embedding: np.ndarray
    camera: str
    frame_id: str
    label: str
    first_seen_ns: int
    last_seen_ns: int
    hits: int
    box: Box
    image_size: tuple[int, int]
    best_iou: float
    crop: bytes = b""
    position_frame: str = ""
    position_fixed: bool = False
    position_count: int = 0
    position_mean: Vec3 = (0.0, 0.0, 0.0)
    position_m2: Vec3 = (0.0, 0.0, 0.0)

    @property
    def position_valid(self) -> bool:
        return self.position_count > 0

    @property
    def position_stddev(self) -> Vec3:
        if self.position_count < 1:
            return (0.0, 0.0, 0.0)
        return tuple(math.sqrt(max(m2, 0.0) / self.position_count)
                     for m2 in self.position_m2)  # type: ignore[return-value]


class VectorIndex(Protocol):
    """An approximate nearest-neighbour index over entry ids (inner product of unit rows)."""

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: Sequence[int]) -> None: ...

    def search(self, query: np.ndarray, count: int) -> np.ndarray:
        """Up to count ids, nearest first."""
        ...


@dataclass(frozen=True)
class RecallHit:
    entry: ObjectEntry
    score: float  # object similarity in [0, 1]
    cosine: float


@dataclass
class MemoryChanges:
    """What one call changed, for the persistent store: entries to write, ids to delete."""

    upserts: list[ObjectEntry] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def select_proposals(iou_logits: np.ndarray, min_iou: float, max_per_frame: int) -> np.ndarray:
    """Indices of the proposals that enter the memory: sigmoid(iou logit) >= min_iou, best
    predicted IoU first (stable), at most max_per_frame."""
    iou = sigmoid(np.asarray(iou_logits, dtype=np.float64).reshape(-1))
    order = np.argsort(-iou, kind="stable")
    order = order[iou[order] >= min_iou]
    return order[:max_per_frame]


def labels_by_proposal(results: Iterable[object]) -> dict[int, str]:
    """proposal index -> the query that scored it highest among the frame's grounding results
    (objects of core.results.GroundingResult with proposal_index >= 0)."""
    best: dict[int, tuple[float, str]] = {}
    for result in results:
        for obj in result.objects:  # type: ignore[attr-defined]
            i = int(obj.proposal_index)
            if i >= 0 and (i not in best or obj.score > best[i][0]):
                best[i] = (float(obj.score), str(result.query))  # type: ignore[attr-defined]
    return {i: label for i, (_, label) in best.items()}


def make_crop(rgb: np.ndarray, box: Box, max_side: int, quality: int) -> bytes:
    """A JPEG of the box's pixels, scaled down to at most max_side pixels on its long side
    (b"" for an empty box)."""
    from PIL import Image as PILImage

    h, w = rgb.shape[:2]
    x1, y1 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
    x2, y2 = min(int(math.ceil(box[2])), w), min(int(math.ceil(box[3])), h)
    if x2 <= x1 or y2 <= y1 or max_side <= 0:
        return b""
    patch = rgb[y1:y2, x1:x2]
    step = max(1, math.ceil(max(patch.shape[:2]) / max_side))
    patch = np.ascontiguousarray(patch[::step, ::step, :3])  # nearest: cheap, on the frame path
    buf = io.BytesIO()
    PILImage.fromarray(patch, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# recall copies out the rows that pass its filters when they are under 1/_COPY_ROWS_BELOW of
# the memory, else it scans all rows and picks them (at 1e5 x 2048, copying and scanning 1/8
# of the rows took as long as the full scan)
_COPY_ROWS_BELOW = 8
# matrices up to this many elements (8 MiB of float32) are scanned on the calling thread
_ONE_THREAD_MAX_ELEMENTS = 1 << 21


def _matvec(matrix: np.ndarray, v: np.ndarray) -> np.ndarray:
    """matrix @ v in float32. A small matrix is scanned by numpy's own loop on this thread: a
    multi-threaded BLAS call waits for its worker thread, and on a loaded machine that wait is
    a scheduler time slice (measured with 6 busy processes on 2 cores: 32 ms for a 1e3 x 2048
    scan that takes 0.1 ms alone; numpy's loop: 0.4 ms)."""
    if matrix.size <= _ONE_THREAD_MAX_ELEMENTS:
        return np.einsum("ij,j->i", matrix, v)
    return matrix @ v


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


class ObjectMemory:
    """The entries, a float32 matrix of their fused embeddings (one row each) and the indexes
    that keep merging cheap: a voxel grid over fixed-frame positions and, per camera, the
    entries seen within merge_window_ns. Thread-safe: one lock (the worker observes, service
    threads recall)."""

    def __init__(self, config: MemoryConfig | None = None, dim: int | None = None,
                 ann_factory: Callable[[int], VectorIndex] | None = None) -> None:
        """ann_factory(dim) builds the approximate index once the embedding width is known."""
        self.config = config or MemoryConfig()
        self._ann_factory = ann_factory
        self.ann: VectorIndex | None = None
        if dim and ann_factory is not None:
            self.ann = ann_factory(dim)
        self._ann_hits: dict[int, int] = {}  # id -> hits when last given to the index
        self._lock = threading.RLock()
        self._entries: dict[int, ObjectEntry] = {}
        self._row: dict[int, int] = {}
        self._ids = np.zeros(0, np.int64)  # row -> id
        self._emb = np.zeros((0, dim or 0), np.float32)
        self._last_seen = np.zeros(0, np.int64)
        self._hits = np.zeros(0, np.int64)
        self._camera_code = np.zeros(0, np.int32)
        self._camera_names: dict[str, int] = {}
        self._size = 0
        self._dim = dim
        self._next_id = 1
        self._grid: dict[tuple[str, int, int, int], set[int]] = {}
        self._recent: dict[str, dict[int, int]] = {}

    # -- bookkeeping ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    @property
    def dim(self) -> int | None:
        return self._dim

    def get(self, entry_id: int) -> ObjectEntry | None:
        with self._lock:
            e = self._entries.get(entry_id)
            if e is None:
                return None
            return replace(e, embedding=self._emb[self._row[entry_id]].copy())

    def entries(self) -> list[ObjectEntry]:
        with self._lock:
            return [self.get(i) for i in list(self._entries)]  # type: ignore[misc]

    def nbytes(self) -> int:
        """Bytes of the embedding matrix and per-row arrays (the dominant footprint)."""
        return int(self._emb.nbytes + self._ids.nbytes + self._last_seen.nbytes
                   + self._hits.nbytes + self._camera_code.nbytes)

    def _ensure_capacity(self, n: int, dim: int) -> None:
        if self._dim is None:
            self._dim = dim
            if self._ann_factory is not None:
                self.ann = self._ann_factory(dim)
            self._emb = np.zeros((0, dim), np.float32)
        if dim != self._dim:
            raise ValueError(f"embedding width {dim} != memory width {self._dim}")
        cap = self._emb.shape[0]
        if n <= cap:
            return
        # doubling, but not past what a full memory plus one frame needs (a 1e5-entry memory
        # would otherwise hold a 131072-row matrix)
        bound = self.config.max_entries + self.config.max_per_frame
        new = max(n, min(max(2 * cap, 64), bound))
        emb = np.zeros((new, dim), np.float32)
        emb[:self._size] = self._emb[:self._size]
        self._emb = emb
        for name in ("_ids", "_last_seen", "_hits", "_camera_code"):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[:self._size] = old[:self._size]
            setattr(self, name, arr)

    def _camera(self, name: str) -> int:
        if name not in self._camera_names:
            self._camera_names[name] = len(self._camera_names)
        return self._camera_names[name]

    def _cell(self, entry: ObjectEntry) -> tuple[str, int, int, int] | None:
        if not (entry.position_fixed and entry.position_count):
            return None
        s = self.config.merge_distance_m
        x, y, z = entry.position_mean
        return (entry.position_frame, math.floor(x / s), math.floor(y / s), math.floor(z / s))

    def _index(self, entry: ObjectEntry, embedding: np.ndarray | None) -> None:
        """Put (or refresh) an entry in the rows and indexes."""
        old = self._entries.get(entry.id)
        if old is not None:
            cell = self._cell(old)
            if cell is not None:
                self._grid.get(cell, set()).discard(old.id)
            row = self._row[entry.id]
        else:
            self._ensure_capacity(self._size + 1, int(embedding.shape[0]))  # type: ignore[union-attr]
            row = self._size
            self._size += 1
            self._row[entry.id] = row
            self._ids[row] = entry.id
        if embedding is not None:
            self._emb[row] = embedding
            if self.ann is not None:
                indexed = self._ann_hits.get(entry.id, 0)
                if (indexed == 0 or entry.hits >= 2 * indexed
                        or entry.hits - indexed >= self.config.fuse_history):
                    self.ann.upsert(np.array([entry.id], np.int64), embedding[None, :])
                    self._ann_hits[entry.id] = entry.hits
        self._entries[entry.id] = entry
        self._last_seen[row] = entry.last_seen_ns
        self._hits[row] = entry.hits
        self._camera_code[row] = self._camera(entry.camera)
        cell = self._cell(entry)
        if cell is not None:
            self._grid.setdefault(cell, set()).add(entry.id)
        self._recent.setdefault(entry.camera, {})[entry.id] = entry.last_seen_ns
        if old is not None and old.camera != entry.camera:
            self._recent.get(old.camera, {}).pop(entry.id, None)

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        cell = self._cell(entry)
        if cell is not None:
            self._grid.get(cell, set()).discard(entry_id)
        self._recent.get(entry.camera, {}).pop(entry_id, None)
        row = self._row.pop(entry_id)
        if self.ann is not None and self._ann_hits.pop(entry_id, None) is not None:
            self.ann.remove([entry_id])
        last = self._size - 1
        if row != last:  # move the last row into the hole
            moved = int(self._ids[last])
            for arr in (self._emb, self._ids, self._last_seen, self._hits, self._camera_code):
                arr[row] = arr[last]
            self._row[moved] = row
        self._size = last

    # -- loading and removal ----------------------------------------------------------------
    def load(self, entries: Iterable[ObjectEntry]) -> MemoryChanges:
        """Add stored entries (e.g. from the persistent store at start-up); new ids continue
        after the largest one. Evicts down to max_entries; returns the evictions."""
        with self._lock:
            ann, self.ann = self.ann, None  # one batch for the index, not one call per entry
            try:
                for e in entries:
                    emb = _unit(e.embedding)
                    self._index(replace(e, embedding=np.zeros(0, np.float32)), emb)
                    self._next_id = max(self._next_id, e.id + 1)
                gone = self._evict()
            finally:
                self.ann = ann
            if ann is not None and self._size:
                fresh = [i for i in self._entries if i not in self._ann_hits]
                if fresh:
                    rows = np.array([self._row[i] for i in fresh])
                    ann.upsert(np.array(fresh, np.int64), self._emb[rows])
                    self._ann_hits.update({i: self._entries[i].hits for i in fresh})
            return MemoryChanges(deletes=gone)

    def delete(self, ids: Iterable[int]) -> list[int]:
        """Remove entries by id; returns the ids that existed."""
        with self._lock:
            gone = [i for i in ids if i in self._entries]
            for i in gone:
                self._remove(i)
            return gone

    # -- the frame path ---------------------------------------------------------------------
    def observe(self, sightings: Sequence[Sighting], rgb: np.ndarray | None = None
                ) -> MemoryChanges:
        """Merge one frame's sightings (see the module docstring); rgb (H, W, 3) uint8 of that
        frame gives crops. Returns the changed and evicted entries."""
        cfg = self.config
        if not sightings:
            return MemoryChanges()
        units = np.stack([_unit(s.embedding) for s in sightings])
        keep = self._dedupe(sightings, units)
        with self._lock:
            self._ensure_capacity(self._size, units.shape[1])
            stamp = max(s.stamp_ns for s in sightings)
            self._prune_recent(stamp)
            pairs: list[tuple[float, int, int]] = []
            for si in keep:
                s = sightings[si]
                cand = self._gated(self._candidates(s), s)
                if not cand:
                    continue
                rows = np.fromiter((self._row[c] for c in cand), np.int64, len(cand))
                cos = self._emb[rows] @ units[si]
                for c, v in zip(cand, cos.tolist(), strict=True):
                    if v >= cfg.merge_cosine:
                        pairs.append((v, si, c))
            pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
            taken_s: set[int] = set()
            taken_e: set[int] = set()
            changed: list[int] = []
            for _, si, c in pairs:
                if si in taken_s or c in taken_e:
                    continue
                taken_s.add(si)
                taken_e.add(c)
                self._merge(c, sightings[si], units[si], rgb)
                changed.append(c)
            for si in keep:
                if si not in taken_s:
                    changed.append(self._create(sightings[si], units[si], rgb))
            evicted = self._evict()
            gone = set(evicted)
            return MemoryChanges([self.get(i) for i in changed if i not in gone],  # type: ignore[misc]
                                 evicted)

    def _dedupe(self, sightings: Sequence[Sighting], units: np.ndarray) -> list[int]:
        """Indices of the sightings kept after dropping same-frame duplicates (order kept)."""
        cfg = self.config
        boxes = np.array([s.box for s in sightings], np.float64)
        iou = box_iou(boxes, boxes)
        cos = units @ units.T
        kept: list[int] = []
        for i in range(len(sightings)):
            if not any(sightings[k].camera == sightings[i].camera
                       and iou[i, k] >= cfg.merge_box_iou and cos[i, k] >= cfg.merge_cosine
                       for k in kept):
                kept.append(i)
        return kept

    def _prune_recent(self, stamp_ns: int) -> None:
        horizon = stamp_ns - self.config.merge_window_ns
        for seen in self._recent.values():
            stale = [i for i, t in seen.items() if t < horizon]
            for i in stale:
                del seen[i]

    def _candidates(self, s: Sighting) -> set[int]:
        out = set(self._recent.get(s.camera, {}))
        if s.fixed and s.position is not None:
            step = self.config.merge_distance_m
            cx, cy, cz = (math.floor(v / step) for v in s.position)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for dz in (-1, 0, 1):
                        out |= self._grid.get((s.position_frame, cx + dx, cy + dy, cz + dz),
                                              set())
        return out

    def _gated(self, candidates: Iterable[int], s: Sighting) -> list[int]:
        """The candidate entries the sighting may merge into (position or camera/box gate)."""
        cfg = self.config
        out: list[int] = []
        by_box: list[int] = []
        for c in candidates:
            e = self._entries[c]
            if (s.fixed and s.position is not None and e.position_fixed and e.position_count
                    and e.position_frame == s.position_frame):
                if math.dist(s.position, e.position_mean) <= cfg.merge_distance_m:
                    out.append(c)
            elif e.camera == s.camera and 0 <= s.stamp_ns - e.last_seen_ns <= cfg.merge_window_ns:
                by_box.append(c)
        if by_box:
            iou = box_iou(np.array([s.box]), np.array([self._entries[c].box for c in by_box]))[0]
            out += [c for c, v in zip(by_box, iou.tolist(), strict=True)
                    if v >= cfg.merge_box_iou]
        return out

    def _crop(self, s: Sighting, rgb: np.ndarray | None) -> bytes:
        if rgb is None or self.config.crop_max_side <= 0:
            return b""
        return make_crop(rgb, s.box, self.config.crop_max_side, self.config.crop_quality)

    def _create(self, s: Sighting, unit: np.ndarray, rgb: np.ndarray | None) -> int:
        entry_id = self._next_id
        self._next_id += 1
        has_pos = s.position is not None
        entry = ObjectEntry(
            id=entry_id, embedding=np.zeros(0, np.float32), camera=s.camera,
            frame_id=s.frame_id, label=s.label, first_seen_ns=s.stamp_ns,
            last_seen_ns=s.stamp_ns, hits=1, box=tuple(float(v) for v in s.box),  # type: ignore[arg-type]
            image_size=s.image_size, best_iou=float(s.iou), crop=self._crop(s, rgb),
            position_frame=s.position_frame if has_pos else "",
            position_fixed=bool(s.fixed and has_pos), position_count=int(has_pos),
            position_mean=tuple(float(v) for v in s.position) if has_pos  # type: ignore[arg-type,union-attr]
            else (0.0, 0.0, 0.0))
        self._index(entry, unit)
        return entry_id

    def _merge(self, entry_id: int, s: Sighting, unit: np.ndarray,
               rgb: np.ndarray | None) -> None:
        e = self._entries[entry_id]
        row = self._row[entry_id]
        weight = float(min(e.hits, self.config.fuse_history))
        fused = _unit(self._emb[row] * weight + unit)
        changes: dict[str, object] = dict(
            camera=s.camera, frame_id=s.frame_id, hits=e.hits + 1,
            last_seen_ns=max(e.last_seen_ns, s.stamp_ns),
            first_seen_ns=min(e.first_seen_ns, s.stamp_ns),
            box=tuple(float(v) for v in s.box), image_size=s.image_size)
        if s.label:
            changes["label"] = s.label
        if s.iou > e.best_iou:
            changes["best_iou"] = float(s.iou)
            crop = self._crop(s, rgb)
            if crop or rgb is not None:
                changes["crop"] = crop
        changes.update(_fuse_position(e, s))
        self._index(replace(e, **changes), fused)  # type: ignore[arg-type]

    def _evict(self) -> list[int]:
        excess = self._size - self.config.max_entries
        if excess <= 0:
            return []
        n = self._size
        cfg = self.config
        key = (self._last_seen[:n]
               + np.minimum(self._hits[:n], cfg.keep_hits_cap) * np.int64(cfg.keep_credit_ns))
        rows = np.argpartition(key, excess - 1)[:excess] if excess < n else np.arange(n)
        # ties broken by id so the choice is deterministic
        ids = sorted((int(key[r]), int(self._ids[r])) for r in rows)
        gone = [i for _, i in ids]
        for i in gone:
            self._remove(i)
        return gone

    # -- recall -----------------------------------------------------------------------------
    def recall(self, query: np.ndarray, logit_log_scale: float, logit_bias: float, *,
               camera: str = "", since_ns: int = 0, until_ns: int = 0, top_k: int = 0,
               min_score: float = 0.0, max_results: int = 0) -> list[RecallHit]:
        """Entries ranked by object similarity to the (D,) query, best first.

        Filters: camera ('' = all), last seen in [since_ns, until_ns] (0 leaves a side open),
        score >= min_score; top_k <= 0 keeps all that pass; max_results > 0 caps the answer.
        """
        q = _unit(query)
        with self._lock:
            n = self._size
            if n == 0:
                return []
            if q.shape[0] != self._dim:
                raise ValueError(f"query width {q.shape[0]} != memory width {self._dim}")
            code = -1
            if camera:
                code = self._camera_names.get(camera, -2)
                if code == -2:
                    return []
            limit = min((v for v in (top_k, max_results) if v > 0), default=0)
            filters = (code, since_ns, until_ns)
            if (self.ann is not None and limit and n >= self.config.ann_min_entries
                    and limit * self.config.ann_oversample < n):
                ids = self.ann.search(q, limit * self.config.ann_oversample)
                rows = np.fromiter((self._row[int(i)] for i in ids if int(i) in self._row),
                                   np.int64)
                mask = self._passes(rows, *filters)
                hits = self._rank(rows if mask is None else rows[mask], q, logit_log_scale,
                                  logit_bias, min_score, limit)
                if len(hits) >= limit:
                    return hits
            mask = self._passes(slice(0, n), *filters)
            rows = None if mask is None else np.flatnonzero(mask)
            return self._rank(rows, q, logit_log_scale, logit_bias, min_score, limit)

    def _passes(self, rows: np.ndarray | slice, camera_code: int, since_ns: int,
                until_ns: int) -> np.ndarray | None:
        """Which of these rows pass the filters (None: no filter asked for)."""
        tests = []
        if camera_code >= 0:
            tests.append(self._camera_code[rows] == camera_code)
        if since_ns > 0:
            tests.append(self._last_seen[rows] >= since_ns)
        if until_ns > 0:
            tests.append(self._last_seen[rows] <= until_ns)
        return np.logical_and.reduce(tests) if tests else None

    def _cosines(self, rows: np.ndarray | None, q: np.ndarray) -> np.ndarray:
        """(len(rows),) float32 cosines of these rows (None: all) with the unit query. Few rows
        are copied out and scanned; many are picked from a scan of the whole matrix, which
        costs less than copying them (at 1e5 x 2048 a copy of 1/4 of the rows and its scan
        took twice the full scan: the copy writes fresh pages)."""
        n = self._size
        if rows is not None and rows.size * _COPY_ROWS_BELOW < n:
            return _matvec(self._emb[rows], q)
        cos = _matvec(self._emb[:n], q)
        return cos if rows is None else cos[rows]

    def _rank(self, rows: np.ndarray | None, q: np.ndarray, logit_log_scale: float,
              logit_bias: float, min_score: float, limit: int) -> list[RecallHit]:
        """Exact scores of these rows (None: all), best first (ties by id), at most limit
        (0: all)."""
        if rows is not None and rows.size == 0:
            return []
        cos = self._cosines(rows, q)
        ids = self._ids[:self._size] if rows is None else self._ids[rows]
        score = object_similarity(cos.astype(np.float64), logit_log_scale, logit_bias)
        keep = np.flatnonzero(score >= min_score)
        if limit and limit < keep.size:  # the limit best, and all tied with the last of them
            edge = -np.partition(-score[keep], limit - 1)[limit - 1]
            keep = keep[score[keep] >= edge]
        order = keep[np.lexsort((ids[keep], -score[keep]))]
        if limit:
            order = order[:limit]
        return [RecallHit(self.get(int(ids[i])),  # type: ignore[arg-type]
                          float(score[i]), float(cos[i])) for i in order]


def _fuse_position(e: ObjectEntry, s: Sighting) -> Mapping[str, object]:
    """The entry's new position fields after one sighting (see the module docstring)."""
    if s.position is None:
        return {}
    p = tuple(float(v) for v in s.position)
    fresh = dict(position_frame=s.position_frame, position_fixed=bool(s.fixed),
                 position_count=1, position_mean=p, position_m2=(0.0, 0.0, 0.0))
    if not s.fixed:
        return {} if (e.position_fixed and e.position_count) else fresh
    if not (e.position_fixed and e.position_count and e.position_frame == s.position_frame):
        return fresh
    n = e.position_count + 1
    mean, m2 = [], []
    for m_old, q_old, x in zip(e.position_mean, e.position_m2, p, strict=True):
        delta = x - m_old
        m_new = m_old + delta / n
        mean.append(m_new)
        m2.append(q_old + delta * (x - m_new))
    return dict(position_count=n, position_mean=tuple(mean), position_m2=tuple(m2))
