"""Vector retrieval over item atoms: a faiss HNSW index (inner product on L2-normalised vectors,
i.e. cosine), with its recall against exact search measured on the same vectors."""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np


class ItemIndex:
    def __init__(self, ids: Sequence[str], vectors: np.ndarray, m: int = 32, ef_construction: int = 200,
                 ef_search: int = 128) -> None:
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.ids = list(ids)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.dim = self.vectors.shape[1]
        self.index = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        if len(self.ids):
            self.index.add(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-k (item_id, cosine) per query row."""
        if not self.ids:
            return [[] for _ in range(len(queries))]
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.ids)))
        return [[(self.ids[r], float(s)) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]


def recall_vs_exact(vectors: np.ndarray, k: int = 10, queries: int = 1000, seed: int = 0, **hnsw) -> dict:
    """Recall@k of HNSW against exact inner-product search, queries drawn from the vectors.

    Ties count: a returned neighbour is a hit when its exact score reaches the k-th exact score
    (catalogs hold many items with the same text, hence the same vector).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    q = vectors[pick]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    exact_scores, _ = exact.search(q, k)
    approx = ItemIndex([str(i) for i in range(len(vectors))], vectors, **hnsw)
    _, rows = approx.index.search(q, k)
    hits = 0
    for qi, row in enumerate(rows):
        kth = exact_scores[qi, -1] - 1e-5
        hits += int(sum(1 for r in row if r >= 0 and float(vectors[r] @ q[qi]) >= kth))
    return {"recall_at_k": hits / (k * len(q)), "k": k, "queries": len(q), "vectors": len(vectors),
            "dim": int(vectors.shape[1])}
