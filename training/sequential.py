"""Training of the sequential route's SASRec (reasoning/sequential.py) on logged events, the
fit of its merge weight, and its export for serving.

`train_sequential`:

1. Items: every item of the training events gets an index (1..n; 0 is padding).
2. Validation: the given per-user cases (leave-one-out: each user's second-to-last item), else
   a per-user holdout cut from the events (each user with 3+ events holds out the last one; the
   model learns from the others). A time tail would hold few users under per-user splits and
   stop training at random.
3. Each epoch: batches of similar length (`_length_batches`), cross-entropy at every position
   (`cfg.loss`: a full softmax over the catalog, or a sampled softmax over the target and
   `cfg.negatives` uniform negatives, `_sampled_softmax`), Adam; then NDCG@`val_k` of the
   validation items, ranked from each user's history minus what they bought (the `all` list of
   the evaluation).
4. After `patience` epochs without a better validation score, reload the best epoch's weights
   and divide the learning rate by 10 (a fresh Adam), `lr_drops` times; after the last drop,
   `patience` more such epochs stop training (as does `max_epochs`). The best epoch's weights
   are kept.
5. Steps 3-4 run once per dropout of `dropout_grid` (sparse catalogs overfit at 0.2 within a few
   epochs, dense ones underfit at 0.5); the run with the best validation score is kept. No
   choice here looks at test data.

`fit_fusion` then picks the served list's weights (reasoning/sequential.py `Fusion`: the user's
recent unbought items and this route, against the behavioural route at weight 1) on the same
per-user holdout, one list of the evaluation each (NDCG@20 of the validation items; NDCG, not
recall: with one held-out item per user, Recall@20 ties most weights):
  a. the route's weight: the best on the `new` list (minus everything the user interacted
     with), which the recent route cannot reorder (it only adds seen items);
  b. the recent weight, at that route weight: the best on the `all` list (minus what the user
     bought).
A route that does not help a catalog gets 0 there (e.g. re-showing seen items where nobody
revisits); ties go to the smaller weight. `train_and_export` does all of it and writes
a model directory; `cached_model` refits the weights of a cached model fitted by an older rule.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.recs import rec_item
from offline.metrics import ndcg_at
from offline.splits import Split, UserCase
from reasoning.sequential import Fusion, SequentialShape, build_model, export, fuse, pad
from training.data import holdout

log = logging.getLogger(__name__)

SEQUENTIAL_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
RECENT_GRID = SEQUENTIAL_GRID
FUSION_K = 20
FUSION_RULE = "sequential@ndcg20-new,recent@ndcg20-all/2"
"""Names the rule `fit_fusion` follows: a cached model fitted by another rule is refitted."""
WEIGHT_USERS = 5000
"""At most this many validation users (a seeded sample) score each weight of the grids."""


class SequentialLoss(StrEnum):
    """The training objective at each position of a sequence."""

    FULL = "full"
    """Softmax over the whole catalog."""
    SAMPLED = "sampled"
    """Softmax over the target and `SequentialConfig.negatives` items drawn uniformly for that
    position (the objective of the published "SASRec with sampled softmax" rows). Not the
    default: on Beauty's leave-one-out validation items (best NDCG@10, 256 negatives) it scored
    0.0563 at dropout 0.2 and 0.0582 at 0.5 against the full softmax's 0.0601 and 0.0639, best at
    epochs 3 and 4 (benchmarks/sasrec_loss.py)."""


@dataclass
class SequentialConfig:
    shape: SequentialShape = field(default_factory=SequentialShape)
    batch_size: int = 64        # sequences per step (small batches: many more updates per epoch)
    lr: float = 1e-3            # Adam learning rate
    max_epochs: int = 200       # upper bound; early stopping usually ends sooner
    patience: int = 10          # epochs without a better validation score before the lr drops (after the last: the stop)
    lr_drops: int = 2           # times the lr is divided by 10 from the best weights; 0: a constant lr
    # The drops (step 4) were chosen on validation scores only. Beauty's leave-one-out validation
    # items (dropout 0.5): best NDCG@10 0.0659 with two drops at patience 3 against 0.0639 at a
    # constant lr (its peak at epoch 9; then 0.0655 at 1e-4, 0.0659 at 1e-5; 0.0660 with the
    # drops at patience 10, as below, in the `sasrec` row of benchmarks/REPORT.md). Patience 3 cut
    # Taobao's slower, noisier curve (dropout 0.5: 0.1300 against 0.1347 at a constant lr with
    # patience 10), so the drops come after the constant lr's own stopping point: with the same
    # seed the first phase is that run, and the best score can only rise.
    val_k: int = 10             # early stopping watches NDCG@val_k
    dropout_grid: tuple[float, ...] | None = (0.2, 0.5)  # trained each, the best on validation kept; None: shape.dropout
    loss: SequentialLoss = SequentialLoss.FULL
    negatives: int = 256        # uniform negatives per position under the sampled softmax
    seed: int = 42
    threads: int = 2            # torch intra-op threads

    def __post_init__(self) -> None:
        self.loss = SequentialLoss(self.loss)
        for name in ("batch_size", "max_epochs", "patience", "val_k", "negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lr_drops < 0:
            raise ValueError("lr_drops must be >= 0")


@dataclass
class TrainedSequential:
    model: object
    """The torch module (eval mode) with the best validation epoch's weights."""
    item_ids: list[str]
    """Item of index i + 1."""
    shape: SequentialShape
    log: list[dict]
    best_val: float
    validation: list[UserCase]
    learn: pd.DataFrame
    """The events the model learned from (train minus the holdout when it cut one)."""

    @property
    def index(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}


def _length_batches(lengths: np.ndarray, size: int, rng: np.random.Generator, pool: int = 50) -> list[np.ndarray]:
    """One epoch's batches: a random order, cut into pools of `pool` batches, each pool sorted by
    length before it is cut into batches, and the batches shuffled. A batch pads to its longest
    sequence, so similar lengths save most of the padding (Beauty: mean 7, p99 41, max 202 train
    items per user; a random batch of 128 pads to ~50) while every batch is still a random draw
    of the pool's users.

    >>> lengths = np.array([5, 1, 4, 2])
    >>> [lengths[b].tolist() for b in _length_batches(lengths, 2, np.random.default_rng(0))]
    [[4, 5], [1, 2]]
    """
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    for start in range(0, len(order), size * pool):
        chunk = order[start:start + size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _sampled_softmax(model, h, target, negatives: int, generator):
    """Mean cross-entropy of each position's target against `negatives` items drawn uniformly
    from the catalog for that position (indices 1..n; a draw equal to the target is masked out).
    h: (P, hidden) outputs at the P non-padding positions, target: (P,) item indices.

    With every score 0 the loss is log(1 + the negatives kept); a one-item catalog draws only
    the target, which is masked:

    >>> import math, torch
    >>> from reasoning.sequential import SequentialShape, build_model
    >>> shape, h = SequentialShape(hidden=4, blocks=1, heads=1), torch.zeros(2, 4)
    >>> loss = lambda n_items, target: _sampled_softmax(
    ...     build_model(n_items, shape), h, torch.tensor(target), 4, torch.Generator().manual_seed(0)).item()
    >>> round(loss(10_000, [1, 3]), 4) == round(math.log(5), 4)
    True
    >>> loss(1, [1, 1])
    0.0
    """
    import torch
    import torch.nn.functional as F

    # The scores are gathered from the catalog's logits: one (P, n) matrix product costs a third
    # of gathering P x negatives embeddings for a batched product (Beauty: 45 vs 70 s an epoch).
    logits = model.logits(h)
    drawn = torch.randint(1, logits.shape[1], (len(target), negatives), generator=generator)
    scores = logits.gather(1, torch.cat([target[:, None], drawn], 1))
    scores[:, 1:] = scores[:, 1:].masked_fill(drawn == target[:, None], -torch.inf)
    return F.cross_entropy(scores, torch.zeros_like(target))


def scores(model, index: dict[str, int], histories: Sequence[Sequence[str]], maxlen: int):
    """(B, n_items + 1) torch scores of the next item after each history (padding index -inf)."""
    import torch

    with torch.no_grad():
        rows = [[index[i] for i in h if i in index] for h in histories]
        logits = model.logits(model.encode(torch.from_numpy(pad(rows, maxlen))))
        logits[:, 0] = -torch.inf
        return logits


def validation_ndcg(model, index: dict[str, int], items: np.ndarray, cases: Sequence[UserCase], k: int,
                    maxlen: int) -> float:
    """Mean NDCG@k of the cases' targets, ranked from their history minus what they bought."""
    if not cases:
        return 0.0
    values = []
    ordered = sorted(cases, key=lambda c: len(c.history))  # similar lengths pad least; the mean is the same
    for start in range(0, len(ordered), 256):
        chunk = ordered[start:start + 256]
        logits = scores(model, index, [c.history for c in chunk], maxlen)
        for row, c in enumerate(chunk):
            bought = [index[i] for i in c.bought if i in index]
            logits[row, bought] = -float("inf")
        top = logits.topk(k, dim=1).indices.numpy()
        values += [ndcg_at(items[row].tolist(), c.targets, k) for row, c in zip(top, chunk)]
    return float(np.mean(values))


def train_sequential(train: pd.DataFrame, validation: Sequence[UserCase] | None = None,
                     cfg: SequentialConfig | None = None,
                     progress: Callable[[str], None] | None = None) -> TrainedSequential:
    """Train SASRec on `train` (events in time order), once per dropout of `cfg.dropout_grid`;
    the run with the best validation score is kept (its log holds every run's epochs)."""
    cfg = cfg or SequentialConfig()
    runs = [_train_one(train, validation, replace(cfg, shape=replace(cfg.shape, dropout=d)), progress)
            for d in (cfg.dropout_grid or (cfg.shape.dropout,))]
    best = max(runs, key=lambda r: r.best_val)
    best.log = [entry for run in runs for entry in run.log]
    return best


def _train_one(train: pd.DataFrame, validation: Sequence[UserCase] | None, cfg: SequentialConfig,
               progress: Callable[[str], None] | None) -> TrainedSequential:
    """One training run; steps in the module docstring."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    draws = torch.Generator().manual_seed(cfg.seed)  # the sampled softmax's negatives
    # 1. Items.
    item_ids = sorted(set(train.item_id))
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    items = np.asarray([""] + item_ids, dtype=object)
    # 2. Validation.
    learn, val_cases = holdout(train, validation)
    sequences = [[index[i] for i in g] for _, g in learn.groupby("user_id", sort=False).item_id]
    sequences = [s for s in sequences if len(s) >= 2]
    if not sequences:
        raise ValueError("no user has two training events: nothing to learn a sequence from")
    lengths = np.fromiter((min(len(s), cfg.shape.maxlen + 1) for s in sequences), np.int64, len(sequences))
    model = build_model(len(item_ids), cfg.shape)
    lr, drops_left = cfg.lr, cfg.lr_drops
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, bad_epochs, history = -1.0, None, 0, []
    for epoch in range(cfg.max_epochs):
        # 3. One epoch, then the validation score.
        started = time.perf_counter()
        model.train()
        total = 0.0
        for batch in _length_batches(lengths, cfg.batch_size, rng):
            rows = [sequences[i] for i in batch]
            seq = torch.from_numpy(pad([r[:-1] for r in rows], cfg.shape.maxlen))
            target = torch.from_numpy(pad([r[1:] for r in rows], cfg.shape.maxlen))
            h = model(seq)
            mask = target != 0
            if cfg.loss is SequentialLoss.FULL:
                loss = F.cross_entropy(model.logits(h[mask]), target[mask])
            else:
                loss = _sampled_softmax(model, h[mask], target[mask], cfg.negatives, draws)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
        model.eval()
        score = validation_ndcg(model, index, items, val_cases, cfg.val_k, cfg.shape.maxlen)
        history.append({"dropout": cfg.shape.dropout, "epoch": epoch + 1, "lr": lr, "loss": total / len(sequences),
                        f"val_ndcg@{cfg.val_k}": score, "seconds": time.perf_counter() - started})
        if progress:
            progress(f"sasrec (dropout {cfg.shape.dropout}) epoch {epoch + 1}: loss {total / len(sequences):.3f}, "
                     f"val NDCG@{cfg.val_k} {score:.4f}")
        # 4. Learning-rate drops, then early stopping.
        if score > best:
            best, best_state, bad_epochs = score, copy.deepcopy(model.state_dict()), 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                if not drops_left:
                    break
                drops_left, lr, bad_epochs = drops_left - 1, lr / 10, 0
                model.load_state_dict(best_state)
                optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainedSequential(model.eval(), item_ids, cfg.shape, history, best, val_cases, learn)


def fit_fusion(trained: TrainedSequential, k: int = FUSION_K, seed: int = 0) -> dict:
    """The served list's fusion weights (module docstring, steps a-b): {"weight_recent",
    "merge_weight" (the route's), "grid" (each step's scores), "users", "metric", "fusion_rule"}."""
    from offline.methods import ItemKNN

    cases = list(trained.validation)
    if len(cases) > WEIGHT_USERS:
        pick = np.random.default_rng(seed).choice(len(cases), WEIGHT_USERS, replace=False)
        cases = [cases[i] for i in sorted(pick)]
    if not cases:
        return {"weight_recent": 0.0, "merge_weight": 1.0, "grid": {}, "users": 0, "fusion_rule": FUSION_RULE}
    learn = trained.learn
    knn = ItemKNN()
    knn.fit(Split("holdout", learn, learn.iloc[:0], cases), [])
    depth = 100
    index, items = trained.index, np.asarray([""] + trained.item_ids, dtype=object)
    recent = [[[item] for item in reversed(c.history)] for c in cases]  # state entries, newest first
    behavioural = [[rec_item(item, s, "covisit", "") for item, s, _ in
                    knn.reasoner.score(knn.recent.get(c.user_id, []), c.bought, depth)] for c in cases]
    sequential: list[list[dict]] = []
    for start in range(0, len(cases), 256):
        chunk = cases[start:start + 256]
        logits = scores(trained.model, index, [c.history for c in chunk], trained.shape.maxlen)
        top = logits.topk(min(depth + 50, len(items) - 1), dim=1).indices.numpy()
        sequential += [[rec_item(i, 1.0, "sequential", "") for i in items[row].tolist() if i not in c.bought][:depth]
                       for row, c in zip(top, chunk)]

    def score(fusion: Fusion, new: bool) -> float:
        values = []
        for c, h, b, s in zip(cases, recent, behavioural, sequential):
            if new and not c.new_targets:
                continue
            ranked = [e["item_id"] for e in fuse(fusion, h, b, s, c.bought, depth)]
            values.append(ndcg_at([i for i in ranked if i not in c.seen], c.new_targets, k) if new
                          else ndcg_at(ranked, c.targets, k))
        return float(np.mean(values)) if values else 0.0

    # a. The route's weight on the `new` list; b. the recent weight on the `all` list.
    on_new = {w: score(Fusion(0.0, w), new=True) for w in SEQUENTIAL_GRID}
    w_seq = max(SEQUENTIAL_GRID, key=lambda w: (on_new[w], -w))
    on_all = {w: score(Fusion(w, w_seq), new=False) for w in RECENT_GRID}
    w_recent = max(RECENT_GRID, key=lambda w: (on_all[w], -w))
    return {"weight_recent": w_recent, "merge_weight": w_seq,
            "grid": {"sequential_on_new": {str(w): v for w, v in on_new.items()},
                     "recent_on_all": {str(w): v for w, v in on_all.items()}},
            "users": len(cases), "users_new": sum(bool(c.new_targets) for c in cases),
            "metric": f"ndcg@{k}", "fusion_rule": FUSION_RULE}


def train_and_export(train: pd.DataFrame, out_dir: Path, version: str, cfg: SequentialConfig | None = None,
                     validation: Sequence[UserCase] | None = None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Train, fit the merge weight, write the model directory (with the torch weights,
    `model.pt`, for `load_trained`); returns its metadata."""
    import torch

    cfg = cfg or SequentialConfig()
    started = time.perf_counter()
    trained = train_sequential(train, validation, cfg, progress)
    trained_s = time.perf_counter() - started
    weight = fit_fusion(trained)
    meta = {"version": version, "kind": "sequential", "trained_at": datetime.now(timezone.utc).isoformat(),
            "train_events": len(train), "items": len(trained.item_ids), "epochs": len(trained.log),
            f"best_val_ndcg@{cfg.val_k}": trained.best_val, "train_seconds": round(trained_s, 1),
            "config": {k: v for k, v in asdict(cfg).items() if k != "shape"}, "log": trained.log, **weight}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), out_dir / "model.pt")
    export(trained.model, trained.item_ids, trained.shape, out_dir, meta)
    log.info("sequential model %s: %d epochs, val %.4f, fusion recent %s / sequential %s", version,
             len(trained.log), trained.best_val, weight["weight_recent"], weight["merge_weight"])
    return meta


def training_key(train: pd.DataFrame, validation: Sequence[UserCase] | None, cfg: SequentialConfig) -> str:
    """What a model depends on: the training events, the validation cases and the config."""
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(train[["user_id", "item_id", "type", "ts"]], index=False).values.tobytes())
    for case in validation or ():
        h.update(f"{case.user_id}\x1f{'|'.join(case.history)}\x1f{'|'.join(sorted(case.targets))}\x1e".encode())
    h.update(json.dumps(asdict(cfg), sort_keys=True, default=str).encode())
    h.update(b"format-1")
    return h.hexdigest()[:16]


def cached_model(train: pd.DataFrame, cache_dir: Path, validation: Sequence[UserCase] | None = None,
                 cfg: SequentialConfig | None = None, label: str = "eval",
                 progress: Callable[[str], None] | None = None) -> Path:
    """A model directory trained on exactly these events, validation cases and config: reused
    from `<cache_dir>/models/sequential-cache/<key>` when it exists, else trained there (the
    evaluation's `sasrec` baseline and the replay method's served route share it)."""
    cfg = cfg or SequentialConfig()
    key = training_key(train, validation, cfg)
    target = cache_dir / "models" / "sequential-cache" / key
    if not (target / "sequential.json").exists():
        train_and_export(train, target, f"sasrec-{label}-{key[:8]}", cfg, validation, progress)
        return target
    if progress:
        progress(f"sequential model {key} reused from {target}")
    meta = json.loads((target / "sequential.json").read_text())
    if meta.get("fusion_rule") != FUSION_RULE:  # weights fitted by an older rule: refit (the model is the same)
        model, item_ids, shape, _ = load_trained(target)
        learn, cases = holdout(train, validation)
        trained = TrainedSequential(model, item_ids, shape, meta.get("log", []), meta[f"best_val_ndcg@{cfg.val_k}"],
                                    cases, learn)
        meta.update(fit_fusion(trained))
        tmp = target / "sequential.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        tmp.rename(target / "sequential.json")
        if progress:
            progress(f"sequential model {key}: fusion refitted (recent {meta['weight_recent']}, "
                     f"sequential {meta['merge_weight']})")
    return target


def load_trained(model_dir: Path) -> tuple[object, list[str], SequentialShape, dict]:
    """(torch model in eval mode, item ids, shape, metadata) of a directory `train_and_export` wrote."""
    import torch

    meta = json.loads((model_dir / "sequential.json").read_text())
    shape = SequentialShape(**meta["shape"])
    item_ids = json.loads((model_dir / "items.json").read_text())
    model = build_model(len(item_ids), shape)
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    return model.eval(), item_ids, shape, meta
