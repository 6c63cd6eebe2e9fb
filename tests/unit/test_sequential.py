"""The sequential route (reasoning/sequential.py, training/sequential.py): what onnxruntime and
faiss serve is what the trained torch model scores, and training learns an obvious sequence."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from reasoning.sequential import Fusion, SequentialRoute, SequentialShape, export, pad
from training.sequential import (FUSION_RULE, RECENT_GRID, SEQUENTIAL_GRID, SequentialConfig, SequentialLoss,
                                 fit_fusion, scores, train_and_export, train_sequential, validation_ndcg)


def cyclic_log(users: int = 120, length: int = 8, items: int = 30) -> pd.DataFrame:
    """Each user walks the catalog in order from a random start: the next item is always +1."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(users):
        start = int(rng.integers(items))
        rows += [(f"u{u}", f"i{(start + t) % items}", "view", 1000 * (u * length + t)) for t in range(length)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "type", "ts"]).assign(category=None)


CFG = SequentialConfig(shape=SequentialShape(hidden=32, maxlen=10), batch_size=16, max_epochs=25, patience=25,
                       dropout_grid=None, threads=1)


@pytest.mark.parametrize("loss", list(SequentialLoss))
def test_training_learns_the_next_item(loss):
    trained = train_sequential(cyclic_log(), cfg=replace(CFG, loss=loss, negatives=8))  # 8 of the 30 items
    assert trained.best_val > 0.8  # NDCG@10 of the held-out next item: the +1 item is nearly always first
    logits = scores(trained.model, trained.index, [["i3", "i4", "i5"]], 10)
    assert trained.item_ids[int(logits.argmax()) - 1] == "i6"


def test_a_stalled_run_drops_the_learning_rate_from_its_best_weights_then_stops():
    trained = train_sequential(cyclic_log(), cfg=replace(CFG, patience=1, lr_drops=2, max_epochs=60))
    lrs = [e["lr"] for e in trained.log]
    assert lrs == sorted(lrs, reverse=True) and sorted(set(lrs)) == pytest.approx([1e-5, 1e-4, 1e-3])
    assert len(lrs) < 60  # the stall at the last rate stopped it
    last = [e["val_ndcg@10"] for e in trained.log if e["lr"] == min(lrs)]
    assert last[-1] <= trained.best_val == max(e["val_ndcg@10"] for e in trained.log)
    # The kept weights are the best epoch's, not the last one's.
    kept = validation_ndcg(trained.model, trained.index, np.asarray([""] + trained.item_ids, dtype=object),
                           trained.validation, 10, trained.shape.maxlen)
    assert kept == pytest.approx(trained.best_val)


def test_the_drops_start_where_a_constant_rate_stops_so_the_best_score_can_only_rise():
    cfg = replace(CFG, patience=2, max_epochs=60)
    constant = train_sequential(cyclic_log(), cfg=replace(cfg, lr_drops=0))
    dropped = train_sequential(cyclic_log(), cfg=replace(cfg, lr_drops=2))
    assert {e["lr"] for e in constant.log} == {1e-3} and len(constant.log) < 60
    first = [(e["epoch"], e["val_ndcg@10"]) for e in constant.log]
    assert [(e["epoch"], e["val_ndcg@10"]) for e in dropped.log][:len(first)] == first
    assert len(dropped.log) > len(first) and dropped.best_val >= constant.best_val


def test_onnx_and_faiss_serve_what_torch_scores(tmp_path):
    shape = SequentialShape(hidden=16, blocks=2, heads=2, maxlen=10)
    trained = train_sequential(cyclic_log(), cfg=SequentialConfig(shape=shape, max_epochs=2, threads=1))
    runs = {d: max(e["val_ndcg@10"] for e in trained.log if e["dropout"] == d) for d in (0.2, 0.5)}
    assert trained.best_val == max(runs.values()) and trained.shape.dropout == max(runs, key=runs.get)
    shape = trained.shape
    export(trained.model, trained.item_ids, shape, tmp_path / "model", {"version": "test-v1", "merge_weight": 0.5})
    route = SequentialRoute(tmp_path / "model")
    assert (route.version, route.fusion, route.shape) == ("test-v1", Fusion(recent=0.0, sequential=0.5), shape)
    # Longer than maxlen; an unknown item; nothing at all.
    histories = [["i1", "i2"], ["i7"], [f"i{n}" for n in range(9, 21)], ["new-item"], []]
    index = trained.index
    with torch.no_grad():
        rows = [[index[i] for i in h if i in index] for h in histories]
        expected = trained.model.encode(torch.from_numpy(pad(rows, shape.maxlen))).numpy()
    np.testing.assert_allclose(route.user_vectors(histories), expected, rtol=1e-4, atol=1e-5)
    exclude = [{"i3"}, set(), set(), set(), set()]
    served = route.rank(histories, exclude, 5)
    logits = scores(trained.model, index, histories, shape.maxlen)
    for row, (ranked, excluded) in enumerate(zip(served, exclude)):
        order = [trained.item_ids[j - 1] for j in logits[row].argsort(descending=True).tolist() if j > 0]
        assert [i for i, _ in ranked] == [i for i in order if i not in excluded][:5]
    assert all(e["route"] == "sequential" for e in route.route_items(histories[:1], exclude[:1], 5)[0])


def test_train_and_export_fits_the_fusion_on_the_holdout(tmp_path):
    meta = train_and_export(cyclic_log(), tmp_path / "m", "v-test", CFG)
    assert meta["users"] > 0 and len(meta["grid"]["sequential_on_new"]) == len(SEQUENTIAL_GRID)
    assert len(meta["grid"]["recent_on_all"]) == len(RECENT_GRID)
    # Each weight is its step's best (ties: the smaller one). Nobody comes back to an item in
    # this log: re-showing the recent ones only takes slots, so their weight is 0.
    on_new, on_all = meta["grid"]["sequential_on_new"], meta["grid"]["recent_on_all"]
    assert on_new[str(meta["merge_weight"])] == max(on_new.values())
    assert min(float(w) for w, v in on_new.items() if v == max(on_new.values())) == meta["merge_weight"]
    assert meta["weight_recent"] == 0.0 and on_all["0.0"] > on_all["4.0"]
    assert SequentialRoute(tmp_path / "m").fusion == Fusion(0.0, meta["merge_weight"])


def revisit_log(users: int = 150, length: int = 6, items: int = 300) -> pd.DataFrame:
    """Each user views `length` random items and then comes back to one of them."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(users):
        viewed = [f"i{j}" for j in rng.choice(items, length, replace=False)]
        walk = viewed + [viewed[int(rng.integers(length))]]
        rows += [(f"u{u}", item, "view", 1000 * (u * 10 + t)) for t, item in enumerate(walk)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "type", "ts"]).assign(category=None)


def test_fusion_weights_the_recent_items_where_shoppers_come_back():
    fitted = fit_fusion(train_sequential(revisit_log(), cfg=replace(CFG, max_epochs=2)))
    assert fitted["weight_recent"] > 0 and fitted["fusion_rule"] == FUSION_RULE
    on_all = fitted["grid"]["recent_on_all"]
    assert on_all[str(fitted["weight_recent"])] > on_all["0.0"]


def test_a_model_is_trained_once_per_events_validation_and_config(tmp_path):
    from training.sequential import cached_model, load_trained

    log = cyclic_log()
    cfg = SequentialConfig(shape=SequentialShape(hidden=16, maxlen=10), max_epochs=2, threads=1)
    first = cached_model(log, tmp_path, cfg=cfg)
    stamp = (first / "sequential.json").stat().st_mtime_ns
    assert cached_model(log, tmp_path, cfg=cfg) == first and (first / "sequential.json").stat().st_mtime_ns == stamp
    assert cached_model(log.iloc[:-1], tmp_path, cfg=cfg) != first  # other events: another model
    model, item_ids, shape, meta = load_trained(first)
    route = SequentialRoute(first)
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(pad([[index["i1"], index["i2"]]], shape.maxlen))).numpy()
    np.testing.assert_allclose(route.user_vectors([["i1", "i2"]]), expected, rtol=1e-4, atol=1e-5)
    assert len(meta["log"]) == meta["epochs"] == 4  # two epochs for each dropout of the grid


def test_a_cached_model_fitted_by_an_older_rule_gets_its_fusion_refitted(tmp_path):
    from training.sequential import cached_model

    cfg = SequentialConfig(shape=SequentialShape(hidden=16, maxlen=10), max_epochs=2, threads=1)
    first = cached_model(cyclic_log(), tmp_path, cfg=cfg)
    meta = json.loads((first / "sequential.json").read_text())
    old = {k: v for k, v in meta.items() if k not in ("weight_recent", "fusion_rule")}
    (first / "sequential.json").write_text(json.dumps({**old, "merge_weight": 123.0}))
    weights = (first / "model.pt").stat().st_mtime_ns
    assert SequentialRoute(first).fusion == Fusion(0.0, 123.0)  # as such a directory was served
    assert cached_model(cyclic_log(), tmp_path, cfg=cfg) == first
    refitted = json.loads((first / "sequential.json").read_text())
    assert refitted["fusion_rule"] == FUSION_RULE and refitted["merge_weight"] == meta["merge_weight"]
    assert (first / "model.pt").stat().st_mtime_ns == weights  # the model itself is not retrained
