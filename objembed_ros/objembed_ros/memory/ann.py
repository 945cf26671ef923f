"""An HNSW approximate index for recall at large memory sizes (usearch), the VectorIndex of
core/memory.py.

Why usearch: a maintained single-library HNSW with deletions (the memory evicts), f16
storage and no BLAS/OpenMP dependency. Why approximate at all: a brute-force scan of 1e5
2048-d float32 rows reads 800 MB per query; on a loaded 2-core machine that is hundreds of
milliseconds (bench/bench_memory.py), while HNSW visits a few thousand rows. Scores stay exact:
ObjectMemory re-scores the candidates from its float32 rows.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class UsearchIndex:
    """Inner-product HNSW over unit vectors, keyed by entry id (f16 storage by default)."""

    def __init__(self, dim: int, dtype: str = "f16", connectivity: int = 16,
                 expansion_add: int = 64, expansion_search: int = 128, threads: int = 1) -> None:
        from usearch.index import Index

        self.threads = int(threads)
        self._index = Index(ndim=int(dim), metric="ip", dtype=dtype, connectivity=connectivity,
                            expansion_add=expansion_add, expansion_search=expansion_search)

    def __len__(self) -> int:
        return len(self._index)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.uint64).reshape(-1)
        present = [int(i) for i in ids if int(i) in self._index]
        if present:
            self._index.remove(present)
        self._index.add(ids, np.asarray(vectors, np.float32).reshape(len(ids), -1),
                        threads=0 if len(ids) > 1 else self.threads)

    def remove(self, ids: Sequence[int]) -> None:
        self._index.remove([int(i) for i in ids])

    def search(self, query: np.ndarray, count: int) -> np.ndarray:
        matches = self._index.search(np.asarray(query, np.float32).reshape(-1), int(count),
                                     threads=self.threads)
        return np.asarray(matches.keys, np.int64)

    @property
    def nbytes(self) -> int:
        return int(self._index.memory_usage)
