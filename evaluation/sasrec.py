"""SASRec (Kang & McAuley, ICDM 2018) in torch, trained with full cross-entropy over all items.

The original binary loss with one sampled negative undertrains badly; "Turning Dross Into Gold
Loss: is BERT4Rec really better than SASRec?" (Klenitskiy & Vasilev, RecSys 2023) and gSASRec
(Petrov & Macdonald, RecSys 2023) show that a softmax over the catalog makes SASRec a strong
baseline, so that is what we train. Causal self-attention over the item sequence, learned
positions, shared input/output item embeddings, a prediction at every position.

Early stopping uses a validation slice cut from the training period: the last
`val_share` of the train time span. The model trains on the events before it; each epoch it
ranks the validation users' next items from their history, and the best epoch's weights are
kept. Scoring then reads each user's whole train history.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from offline.metrics import recall_at
from offline.splits import Split, UserCase, global_time


@dataclass
class SASRecConfig:
    # model
    hidden: int = 64            # embedding and model width
    blocks: int = 2             # transformer blocks
    heads: int = 1              # attention heads
    dropout: float = 0.2        # on embeddings, attention and feed-forward
    maxlen: int = 200           # most recent items read per user
    # optimisation
    batch_size: int = 64        # sequences per step (small batches: many more updates per epoch)
    lr: float = 1e-3            # Adam learning rate
    max_epochs: int = 40        # upper bound; early stopping usually ends sooner
    patience: int = 5           # epochs without validation improvement before stopping
    val_share: float = 0.1      # share of the train time span held out for early stopping
    val_k: int = 20             # early stopping watches Recall@val_k
    seed: int = 42
    threads: int = 2            # torch intra-op threads

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError("hidden must be divisible by heads")
        if not 0 < self.val_share < 1:
            raise ValueError("val_share must be in (0, 1)")
        for name in ("hidden", "blocks", "heads", "maxlen", "batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def _model(n_items: int, cfg: SASRecConfig):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(cfg.hidden)
            self.attn = nn.MultiheadAttention(cfg.hidden, cfg.heads, dropout=cfg.dropout, batch_first=True)
            self.ln2 = nn.LayerNorm(cfg.hidden)
            self.ff = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                    nn.Linear(cfg.hidden, cfg.hidden), nn.Dropout(cfg.dropout))

        def forward(self, x, mask):
            h = self.ln1(x)
            a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
            x = x + a
            return x + self.ff(self.ln2(x))

    class SASRec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
            self.positions = nn.Embedding(cfg.maxlen, cfg.hidden)
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.blocks))
            self.ln = nn.LayerNorm(cfg.hidden)
            self.register_buffer("causal", torch.triu(torch.ones(cfg.maxlen, cfg.maxlen, dtype=torch.bool), 1))
            # Small initial embeddings: with N(0, 1) the tied output layer starts with logits in
            # the tens and cross-entropy near 50 instead of ln(n_items).
            nn.init.normal_(self.items.weight, std=0.02)
            nn.init.normal_(self.positions.weight, std=0.02)
            with torch.no_grad():
                self.items.weight[0].zero_()

        def forward(self, seq):  # seq: (B, T) item indices, 0 = padding (left)
            T = seq.shape[1]
            pos = torch.arange(T, device=seq.device)
            x = self.drop(self.items(seq) * cfg.hidden ** 0.5 + self.positions(pos))  # (B, T, d)
            # Causal, no attention to padding; every position may attend to itself, so padded
            # positions (whose outputs are never used) never get an all-masked row and NaNs.
            eye = torch.eye(T, dtype=torch.bool, device=seq.device)
            mask = (self.causal[:T, :T][None] | (seq == 0)[:, None, :]) & ~eye  # (B, T, T)
            mask = mask.repeat_interleave(cfg.heads, dim=0)
            for block in self.blocks:
                x = block(x, mask)
            return self.ln(x)  # (B, T, d)

        def logits(self, h):  # (N, d) -> (N, n_items + 1)
            return h @ self.items.weight.T

    return SASRec()


class SASRecMethod:
    name = "sasrec"

    def __init__(self, cfg: SASRecConfig | None = None) -> None:
        self.cfg = cfg or SASRecConfig()
        self.log: list[dict] = []

    # -- data ----------------------------------------------------------------------------------
    def _encode(self, items: Sequence[str]) -> list[int]:
        return [self.index[i] for i in items if i in self.index]

    def _pad(self, rows: list[list[int]]):
        import torch

        T = self.cfg.maxlen
        out = np.zeros((len(rows), T), dtype=np.int64)
        for r, seq in enumerate(rows):
            seq = seq[-T:]
            if seq:
                out[r, T - len(seq):] = seq
        return torch.from_numpy(out)

    # -- training -------------------------------------------------------------------------------
    def fit(self, split: Split, catalog: Sequence[str]) -> None:
        import torch
        import torch.nn.functional as F

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        rng = np.random.default_rng(cfg.seed)
        items = sorted(set(split.train.item_id))
        self.index = {item: i + 1 for i, item in enumerate(items)}
        self.items = np.asarray([""] + items, dtype=object)

        inner = global_time(split.train, test_share=cfg.val_share)  # validation cut from train
        sequences = [self._encode(g.item_id.tolist()) for _, g in inner.train.groupby("user_id", sort=False)]
        sequences = [s for s in sequences if len(s) >= 2]
        val_cases = inner.cases

        model = _model(len(items), cfg)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        best, best_state, bad_epochs = -1.0, None, 0
        for epoch in range(cfg.max_epochs):
            started = time.perf_counter()
            model.train()
            order = rng.permutation(len(sequences))
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                rows = [sequences[i] for i in order[start:start + cfg.batch_size]]
                seq = self._pad([r[:-1] for r in rows])   # (B, T) inputs
                target = self._pad([r[1:] for r in rows])  # (B, T) next items
                h = model(seq)
                mask = target != 0
                loss = F.cross_entropy(model.logits(h[mask]), target[mask])  # full softmax
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(rows)
            score = self._evaluate(model, val_cases)
            self.log.append({"epoch": epoch + 1, "loss": total / max(len(sequences), 1),
                             f"val_recall@{cfg.val_k}": score, "seconds": time.perf_counter() - started})
            if score > best:
                best, best_state, bad_epochs = score, copy.deepcopy(model.state_dict()), 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        self.model = model.eval()
        self.best_val = best

    def _scores(self, model, histories: list[list[str]]):
        import torch

        with torch.no_grad():
            model.eval()
            h = model(self._pad([self._encode(hist) for hist in histories]))[:, -1]  # (B, d)
            logits = model.logits(h)
            logits[:, 0] = -torch.inf
            return logits

    def _evaluate(self, model, cases: list[UserCase]) -> float:
        if not cases:
            return 0.0
        k = self.cfg.val_k
        recalls = []
        for start in range(0, len(cases), 256):
            chunk = cases[start:start + 256]
            top = self._scores(model, [c.history for c in chunk]).topk(k, dim=1).indices.numpy()
            recalls += [recall_at(self.items[row].tolist(), c.targets, k) for row, c in zip(top, chunk)]
        return float(np.mean(recalls))

    def rank(self, case: UserCase, n: int) -> list[str]:
        n = min(n, len(self.items) - 1)
        top = self._scores(self.model, [case.history]).topk(n, dim=1).indices[0].numpy()
        return self.items[top].tolist()
