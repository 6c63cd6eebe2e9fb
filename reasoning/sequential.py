"""The sequential route: a SASRec model's next-item scores, served from ONNX with faiss.

SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the user's item sequence, learned
positions, item embeddings shared by input and output, trained with a full softmax over the
catalog (training/sequential.py; "Turning Dross Into Gold Loss", RecSys 2023, and gSASRec show
the softmax makes it the strong baseline). The offline baseline (evaluation/sasrec.py) and the
served route are the same model and the same training code.

Serving splits the model in two: the encoder (item sequence -> the user vector at the newest
position) runs in onnxruntime, a batch of users per refresh; the output layer is a dot product
with the item embeddings, a faiss inner-product index (exact: `IndexFlatIP`), so a refresh asks
for the top k instead of scoring the catalog in Python. Items the model has never seen (new in
the catalog since it was trained) get no embedding: they are skipped in a history and can only
reach a user through the other routes.

The served list fuses three routes by weighted reciprocal-rank fusion (`fuse`): the user's recent
unbought items, the behavioural list (weight 1) and this route, with the `Fusion` weights fitted
with the model on a per-user holdout of its training events (training/sequential.py `fit_fusion`):
how much re-showing what a user looked at is worth, and how much the model is, differs by shop.

A model directory holds `sequential.json` (version, config, the fitted fusion weights, figures),
`encoder.onnx`, `items.npy` (float32 embeddings, row i = item i + 1) and `items.json` (ids).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import redis

from contracts.recs import FallbackReason, rec_item
from reasoning.registry import MARKERS, RegistryError, served_sequential_dir
from reasoning.retrieval import PersonalScores, merge, recent_route

log = logging.getLogger(__name__)

META = MARKERS["sequential"]
EXPLANATION = "Shoppers whose recent items were like yours picked this next"


class Fusion(NamedTuple):
    """Weights of the served list's routes in reciprocal-rank fusion, against the behavioural
    route at weight 1; 0 leaves a route out."""

    recent: float
    """The user's recent unbought items (reasoning/retrieval.py `recent_route`)."""
    sequential: float
    """This route."""

    @classmethod
    def of(cls, meta: dict) -> Fusion:
        """From a model's metadata; directories written before the recent weight was fitted with
        the model (`merge_weight` only) fuse no recent items, as they were served.

        >>> Fusion.of({"merge_weight": 2.0, "weight_recent": 0.5}), Fusion.of({"merge_weight": 2.0})
        (Fusion(recent=0.5, sequential=2.0), Fusion(recent=0.0, sequential=2.0))
        """
        return cls(float(meta.get("weight_recent", 0.0)), float(meta.get("merge_weight", 1.0)))


def fuse(fusion: Fusion, recent: Sequence[Sequence], behavioural: list[dict], sequential: list[dict],
         bought: set[str], k: int) -> list[dict]:
    """The served list: `recent` (state entries, newest first), the behavioural list and the
    sequential route's list fused with `fusion`'s weights, none of `bought`.

    >>> b = [{"item_id": "x", "route": "covisit"}, {"item_id": "y", "route": "covisit"}]
    >>> s = [{"item_id": "z", "route": "sequential"}]
    >>> [e["item_id"] for e in fuse(Fusion(0.0, 2.0), [["y", "view"]], b, s, set(), 10)]
    ['z', 'x', 'y']
    >>> [e["item_id"] for e in fuse(Fusion(4.0, 2.0), [["y", "view"]], b, s, set(), 10)]
    ['y', 'z', 'x']
    """
    routes = [(fusion.recent, recent_route(recent, bought, k) if fusion.recent > 0 else []),
              (1.0, behavioural), (fusion.sequential, sequential if fusion.sequential > 0 else [])]
    return merge([(w, items) for w, items in routes if items], bought, k)


@dataclass(frozen=True)
class SequentialShape:
    """The model's shape (what serving must know to rebuild it). The default width and depth
    are the SASRec shape the eSASRec benchmark reports on Amazon Beauty (256 factors, one block,
    one head); it replaced 64 / 2 blocks on validation scores only (best NDCG@10 over the
    dropout grid, training/sequential.py): Beauty 0.0639 vs 0.0618, REES46 0.421 vs 0.409,
    Taobao 0.135 vs 0.127."""

    hidden: int = 256     # embedding and model width
    blocks: int = 1       # transformer blocks
    heads: int = 1        # attention heads
    dropout: float = 0.2  # on embeddings, attention and feed-forward (training only)
    maxlen: int = 200     # most recent items read per user

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError("hidden must be divisible by heads")
        for name in ("hidden", "blocks", "heads", "maxlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def build_model(n_items: int, shape: SequentialShape):
    """The torch module: `forward(seq)` (B, T) item indices, 0 = left padding, T <= maxlen ->
    (B, T, hidden); `logits(h)` -> scores over the n_items + 1 indices; `encode(seq)` -> the user
    vector at the newest position (what the ONNX encoder computes). Positions count from the right
    (the newest item always has position maxlen - 1), so a batch padded to its longest sequence
    gives the outputs of one padded to maxlen (padding is masked out of attention)."""
    import torch
    from torch import nn

    heads, width = shape.heads, shape.hidden // shape.heads

    class Attention(nn.Module):
        """Multi-head self-attention written out (nn.MultiheadAttention's ONNX export fixes the
        batch and length of the example it was traced with)."""

        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(shape.hidden, 3 * shape.hidden)
            self.out = nn.Linear(shape.hidden, shape.hidden)
            self.drop = nn.Dropout(shape.dropout)

        def forward(self, x, mask):  # mask (B, T, T): True where a query may not look
            q, k, v = (t.reshape(x.shape[0], -1, heads, width).transpose(1, 2)
                       for t in self.qkv(x).chunk(3, dim=-1))  # (B, heads, T, width)
            att = (q @ k.transpose(-2, -1)) * width ** -0.5
            att = self.drop(att.masked_fill(mask[:, None], float("-inf")).softmax(dim=-1))
            return self.out((att @ v).transpose(1, 2).reshape(x.shape[0], -1, shape.hidden))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(shape.hidden)
            self.attn = Attention()
            self.ln2 = nn.LayerNorm(shape.hidden)
            self.ff = nn.Sequential(nn.Linear(shape.hidden, shape.hidden), nn.GELU(), nn.Dropout(shape.dropout),
                                    nn.Linear(shape.hidden, shape.hidden), nn.Dropout(shape.dropout))

        def forward(self, x, mask):
            x = x + self.attn(self.ln1(x), mask)
            return x + self.ff(self.ln2(x))

    class SASRec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(n_items + 1, shape.hidden, padding_idx=0)
            self.positions = nn.Embedding(shape.maxlen, shape.hidden)
            self.drop = nn.Dropout(shape.dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(shape.blocks))
            self.ln = nn.LayerNorm(shape.hidden)
            # Small initial embeddings: with N(0, 1) the tied output layer starts with logits in
            # the tens and cross-entropy near 50 instead of ln(n_items).
            nn.init.normal_(self.items.weight, std=0.02)
            nn.init.normal_(self.positions.weight, std=0.02)
            with torch.no_grad():
                self.items.weight[0].zero_()

        def forward(self, seq):
            T = seq.shape[1]
            pos = torch.arange(shape.maxlen - T, shape.maxlen, device=seq.device)
            x = self.drop(self.items(seq) * shape.hidden ** 0.5 + self.positions(pos))  # (B, T, d)
            # Causal, no attention to padding; every position may attend to itself, so padded
            # positions (whose outputs are never used) never get an all-masked row and NaNs.
            # (Masks from arange comparisons: onnxruntime has no boolean EyeLike.)
            idx = torch.arange(T, device=seq.device)
            later, itself = idx[None, :] > idx[:, None], idx[None, :] == idx[:, None]  # (T, T): key j vs query i
            mask = (later[None] | (seq == 0)[:, None, :]) & ~itself[None]  # (B, T, T)
            for block in self.blocks:
                x = block(x, mask)
            return self.ln(x)

        def encode(self, seq):
            return self.forward(seq)[:, -1]

        def logits(self, h):
            return h @ self.items.weight.T

    return SASRec()


def pad(rows: Sequence[Sequence[int]], maxlen: int) -> np.ndarray:
    """Left-padded int64 (B, T), T the longest row (at most maxlen, at least 1), newest last.

    >>> pad([[3, 4, 5], [7]], 2).tolist()
    [[4, 5], [0, 7]]
    """
    T = max(1, min(maxlen, max((len(r) for r in rows), default=1)))
    out = np.zeros((len(rows), T), dtype=np.int64)
    for i, seq in enumerate(rows):
        seq = list(seq)[-T:]
        if seq:
            out[i, T - len(seq):] = seq
    return out


def export(model, item_ids: Sequence[str], shape: SequentialShape, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Write a model directory (module docstring) from a trained torch `model`."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, seq):
            return self.model.encode(seq)

    example = torch.from_numpy(pad([[1, 2, 3], [2]], shape.maxlen))
    tmp = out_dir / "encoder.tmp.onnx"
    with torch.no_grad():
        torch.onnx.export(Encoder().eval(), (example,), str(tmp), input_names=["seq"], output_names=["user"],
                          dynamic_axes={"seq": {0: "batch", 1: "length"}, "user": {0: "batch"}},
                          opset_version=17, dynamo=False)
    tmp.rename(out_dir / "encoder.onnx")
    np.save(out_dir / "items.npy", model.items.weight.detach().numpy()[1:].astype(np.float32))
    (out_dir / "items.json").write_text(json.dumps(list(item_ids)))
    # The marker last: a directory with it is complete (the registry and the worker look for it).
    (out_dir / META).write_text(json.dumps({**meta, "shape": asdict(shape)}, indent=2, default=str))
    return out_dir


class SequentialRoute:
    """A model directory loaded for serving: `rank` per batch of users (onnxruntime + faiss)."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        """`threads`: onnxruntime's and faiss's (faiss's is per process: the last route loaded sets it)."""
        import faiss
        import onnxruntime as ort

        self.model_dir = model_dir
        self.meta = json.loads((model_dir / META).read_text())
        self.version: str = self.meta["version"]
        self.fusion = Fusion.of(self.meta)
        """The served list's weights, fitted with the model (training/sequential.py `fit_fusion`)."""
        self.shape = SequentialShape(**self.meta["shape"])
        self.ids: list[str] = json.loads((model_dir / "items.json").read_text())
        self.index = {item: i + 1 for i, item in enumerate(self.ids)}
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / "encoder.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.vectors = np.ascontiguousarray(np.load(model_dir / "items.npy"), dtype=np.float32)
        self.row_of = {item: i for i, item in enumerate(self.ids)}
        self.items = faiss.IndexFlatIP(self.vectors.shape[1])
        self.items.add(self.vectors)
        # faiss searches with OpenMP threads that spin while they wait; in a worker they would
        # take the core the Feast pusher and the reasoner need. Its search uses `threads` too.
        faiss.omp_set_num_threads(max(1, threads))

    def user_vectors(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(B, hidden) float32: each history (oldest first) encoded at its newest item; items the
        model does not know are skipped (a history of only those encodes the empty sequence)."""
        rows = [[self.index[i] for i in h if i in self.index] for h in histories]
        return self.session.run(["user"], {"seq": pad(rows, self.shape.maxlen)})[0].astype(np.float32)

    def rank(self, histories: Sequence[Sequence[str]], exclude: Sequence[set[str]],
             k: int) -> list[list[tuple[str, float]]]:
        """Per user: the top k (item, score) by the model, best first, none of `exclude[u]`."""
        if not histories:
            return []
        vectors = np.ascontiguousarray(self.user_vectors(histories))
        depth = min(len(self.ids), k + max((len(e) for e in exclude), default=0))
        scores, found = self.items.search(vectors, depth)
        out = []
        for row_scores, row_items, excluded in zip(scores, found, exclude):
            ranked = [(self.ids[j], float(s)) for j, s in zip(row_items, row_scores)
                      if j >= 0 and self.ids[j] not in excluded]
            out.append(ranked[:k])
        return out

    def personal(self, histories: Sequence[Sequence[str]]) -> PersonalScores:
        """The users' vectors with the item embeddings: the intent route ranks a tag's items for
        each user with them (reasoning/retrieval.py `TagRetriever.retrieve`)."""
        return PersonalScores(self.user_vectors(histories), self.vectors, self.row_of)

    def route_items(self, histories: Sequence[Sequence[str]], exclude: Sequence[set[str]], k: int) -> list[list[dict]]:
        """`rank` as `rec_item` entries of route `sequential`, for the merge."""
        return [[rec_item(item, score, "sequential", EXPLANATION) for item, score in ranked]
                for ranked in self.rank(histories, exclude, k)]


class SequentialServing:
    """The worker's sequential route: the served model (the registry's serving sequential version,
    else sequential.model_dir), looked up at most every `sequential.registry_poll_s` and swapped
    when it changes (a promotion or a rollback reaches the next refresh without a restart); none
    while no model exists. A model that fails to load leaves the previous one serving (logged)."""

    def __init__(self, settings, client) -> None:
        self.settings = settings
        self.client = client
        self.route: SequentialRoute | None = None
        self._dir: Path | None = None
        self._polled = float("-inf")

    def current(self) -> SequentialRoute | None:
        now = time.monotonic()
        if now - self._polled < self.settings.sequential.registry_poll_s:
            return self.route
        self._polled = now
        try:
            model_dir = served_sequential_dir(self.settings, self.client)
        except (redis.RedisError, RegistryError) as exc:  # unreachable, or a refused pointer: keep what is loaded
            log.warning("sequential route: registry lookup failed (%r); serving %s", exc,
                        self.route.version if self.route else "nothing")
            return self.route
        if model_dir != self._dir:
            try:
                self.route = SequentialRoute(model_dir, self.settings.sequential.threads) if model_dir else None
                self._dir = model_dir
                log.info("sequential route: serving %s", self.route.version if self.route else "nothing")
            except Exception:
                log.exception("sequential route: could not load %s; keeping %s", model_dir,
                              self.route.version if self.route else "nothing")
                self._dir = model_dir  # not retried until the pointer moves again
        return self.route

    def merge(self, users: Sequence[Any], results: list[dict], top_k: int) -> bool:
        """Turn each user's behavioural `results` entry into the served list (in place): `fuse`
        with the user's recent items and the route's list at the model's fitted weights. False
        (nothing changed) when no model serves. `users` are reasoning/reasoner.py `UserView`s."""
        route = self.current()
        if route is None or not users:
            return False
        bought = [set(user.bought) for user in users]
        if route.fusion.sequential > 0:
            histories = [[entry[0] for entry in reversed(user.recent)] for user in users]
            routed = route.route_items(histories, bought, top_k)
        else:
            routed = [[] for _ in users]
        for user, result, excluded, items in zip(users, results, bought, routed):
            result["items"] = fuse(route.fusion, user.recent, result["items"], items, excluded, top_k)
            result["model_version"] = f"{result['model_version']}+{route.version}"
            if result.get("fallback_reason") is FallbackReason.no_covisitation and items:
                result["fallback_reason"] = None  # the sequential route had something to say
        return True
