"""`intentstream bench reasoner`: the reasoning tier's figures, as one JSON object.

1. throughput: the served intent model (the registry's serving version, else intent.model_dir)
   reasons about the first `users` users of the dataset (their newest 20 events each) in
   batches of intent.batch_size with one torch thread, in this process: users/s and users/s per
   core (process CPU time over wall time), and where a batch's time goes (pipeline stages);
   before (the decoding of the start of this round: a per-row Python trie walk, the KV cache
   concatenated each step as transformers does) and after (reasoning/decoding.py: the tries
   walked as tensors, the cache decoded into reserved room), interleaved twice, and whether both
   gave the same lists; then what bounds it (`arithmetic`): the LM FLOPs per user, the rate they
   ran at and this core's fp32 matmul peak, hence the users/s no decoding of this model passes here.
2. coverage: a worker and a reasoner (`intentstream worker`, `intentstream reasoner` child
   processes, fresh topics and key prefix each run) while the dataset's events are replayed in
   time order at x1, x10, x100 its real-time rate (events over the log's time span; a constant
   rate, not the log's inter-arrival pattern) for `seconds` each: the share of triggered users
   whose served list carries intent results at most intent.every_n_events events behind the
   state the list was built from (stream/metrics.py intent_coverage), at the end of the replay
   (live) and after the reasoner drained its backlog; event -> intent recs p50/p99; the share
   of refreshes sent to reasoning; requests shed and superseded; CPU cores of each process.
3. isolation: at the fastest rate, the stream's event -> recs p50/p99 with the reasoner beside
   the worker vs a run without the intent route (same events, same rate), `isolation_rounds`
   pairs in alternating order (the coverage run is the first "with"); the ratio of the median
   p99s. One pair is not enough: on this shared 2-core VM single pairs gave ratios of 0.88 to
   17.6, and runs without the reasoner alone gave p99s of 89 to 170 ms.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from benchmarks.ingest import commit, cpu_seconds, machine
from contracts.keys import RedisKeys
from contracts.settings import Settings
from contracts.topics import worker_topics
from features.item_model import SharedItemModel
from features.redis_client import connect, delete_matching
from infra.worker_process import ReasonerProcess, WorkerProcess
from offline import datasets
from offline.replay import replay
from reasoning.registry import served_model_dir
from stream.metrics import intent_backlog, intent_coverage, read_metrics
from stream.producer import EventProducer, delete_topics, ensure_topics


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)


def throughput(settings: Settings, data: datasets.Dataset, users: int) -> dict[str, Any]:
    """Users/s of the pipeline (reasoning/pipeline.py `reason`) in this process, one torch thread,
    with the decoding before and after this round (two interleaved rounds; the better of each)."""
    import torch

    from reasoning.engine import IntentEngine
    from reasoning.pipeline import IntentInput, reason

    model_dir = served_model_dir(settings)
    cfg = settings.intent.model_copy(update={"threads": 1})
    engine = IntentEngine(model_dir, cfg, settings.cache_dir)
    torch.set_num_threads(1)
    events = data.events.sort_values("ts", kind="stable")
    inputs = []
    for user_id, group in events.groupby("user_id", sort=False):
        recent = [[str(r.item_id), str(r.type), int(r.ts)] for r in group.iloc[::-1].head(20).itertuples()]
        inputs.append(IntentInput(str(user_id), recent, frozenset()))
        if len(inputs) >= users:
            break
    batch = cfg.batch_size
    decoder = engine.backend.decoder
    reason(engine, inputs[:batch], {}, settings.recs.top_k)  # warm: first-call allocations

    def one_pass(after: bool) -> dict[str, Any]:
        decoder.reserve_cache = decoder.tensor_walk = after
        stages: dict[str, float] = {}
        tokens, lists = 0, []
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(inputs), batch):
            results, stats = reason(engine, inputs[start:start + batch], {}, settings.recs.top_k)
            lists += [(r.tags, [e["item_id"] for e in r.items]) for r in results]
            tokens += stats.tokens
            for name, value in stats.seconds.items():
                stages[name] = stages.get(name, 0.0) + value
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {"seconds": round(wall, 2), "users_per_s": round(len(inputs) / wall, 2),
                "cores": round(cpu / wall, 2), "users_per_s_per_core": round(len(inputs) / cpu, 2),
                "lm_tokens_per_user": round(tokens / len(inputs), 1),
                "stage_share": {k: round(v / sum(stages.values()), 3) for k, v in stages.items()}, "_lists": lists}

    rounds = [(one_pass(False), one_pass(True)) for _ in range(2)]
    decoder.reserve_cache = decoder.tensor_walk = True
    bound = arithmetic(engine, inputs, batch, settings.recs.top_k)  # the decoding as served
    before = max((r[0] for r in rounds), key=lambda r: r["users_per_s"])
    after = max((r[1] for r in rounds), key=lambda r: r["users_per_s"])
    same = all(b["_lists"] == a["_lists"] for b, a in rounds)
    for r in (before, after):
        r.pop("_lists")
    return {"model": engine.version, "model_dir": str(model_dir), "users": len(inputs), "batch_size": batch,
            "torch_threads": 1, "before_row_walk_concatenated_cache": before,
            "after_tensor_walk_reserved_cache": after,
            "speedup": round(after["users_per_s"] / before["users_per_s"], 2), "same_lists": same,
            "rounds_users_per_s": [[b["users_per_s"], a["users_per_s"]] for b, a in rounds],
            "users_per_s": after["users_per_s"], "users_per_s_per_core": after["users_per_s_per_core"],
            "arithmetic": bound}


def lm_flops_per_token(config) -> int:
    """Multiply-adds x 2 of one token through a Llama decoder and its LM head (the projections, the
    SwiGLU and the head; attention's own score and mix products, which grow with the length, left
    out), from its Hugging Face config."""
    h, layers, inter, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    return 2 * (layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * vocab)


def matmul_gflops(rows: int, inner: int, cols: int, seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of `[rows, inner] @ [inner, cols]` in this process's torch threads (repeated
    for about `seconds`)."""
    import torch

    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    torch.mm(a, b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * rows * inner * cols * n / (time.perf_counter() - started) / 1e9


def arithmetic(engine, inputs: list, batch: int, top_k: int, users: int = 64) -> dict[str, Any]:
    """What bounds the throughput on this core: the LM arithmetic per user and this core's fp32
    matmul rate (one thread).

    1. Reason about `users` users in batches of `batch` under torch's profiler: the matmul FLOPs
       executed per user (padding, finished rows and every position's logits included).
    2. The same users again without the profiler: the GFLOP/s the reasoning ran at.
    3. The real tokens' own arithmetic per user (`lm_flops_per_token` x LM tokens per user).
    4. This core's matmul rate: a square 2048 product (its peak) and the shape of a decoding step
       (one row per persona branch of a batch, the model's width into its SwiGLU width).
    5. The ceiling: the peak over the real tokens' arithmetic per user, the users/s no decoding of
       this model on this core passes without computing less (fewer tokens, or cheaper ones)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from reasoning.pipeline import reason

    part = inputs[:users]
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for start in range(0, len(part), batch):
            reason(engine, part[start:start + batch], {}, top_k)
    executed = sum(e.flops for e in prof.key_averages() if e.flops)
    tokens, started = 0, time.perf_counter()
    for start in range(0, len(part), batch):
        tokens += reason(engine, part[start:start + batch], {}, top_k)[1].tokens
    wall = time.perf_counter() - started
    config = engine.backend.model.lm.config
    real = lm_flops_per_token(config) * tokens / len(part)
    peak = matmul_gflops(2048, 2048, 2048)
    step = matmul_gflops(batch * engine.config.personas, config.hidden_size, config.intermediate_size)
    return {
        "users": len(part), "executed_gflop_per_user": round(executed / len(part) / 1e9, 3),
        "real_token_gflop_per_user": round(real / 1e9, 3), "achieved_gflop_s": round(executed / wall / 1e9, 1),
        "users_per_s_unprofiled": round(len(part) / wall, 2),
        "matmul_peak_gflop_s": round(peak, 1), "decode_step_matmul_gflop_s": round(step, 1),
        "ceiling_users_per_s": round(peak * 1e9 / real, 1), "torch_threads": torch.get_num_threads(),
    }


def _run(settings: Settings, data: datasets.Dataset, rate: float, seconds: float, with_reasoner: bool,
         log_dir, progress) -> dict[str, Any]:
    """One replay of `rate * seconds` events at `rate` through a fresh worker (and reasoner)."""
    run = uuid.uuid4().hex[:8]
    s = settings.isolated(f"intentstream.bench.reasoner.{run}", key_prefix=f"bench:{run}:")
    if not with_reasoner:
        s = s.model_copy(update={"intent": s.intent.model_copy(update={"enabled": False})})
    k, keys = s.kafka, RedisKeys(s.key_prefix)
    client = connect(s.redis)
    SharedItemModel.from_settings(s, client).reset()
    ensure_topics(k, [k.events_topic, k.dead_letter_topic, k.feedback_topic, k.intent_topic])
    n = max(1, int(rate * seconds))
    part = datasets.Dataset(data.name, data.events.iloc[:n], data.items)
    processes = [WorkerProcess(s, log_dir / f"reasoner-bench-worker-{run}.log")]
    if with_reasoner:
        processes.append(ReasonerProcess(s, log_dir / f"reasoner-bench-reasoner-{run}.log"))
    for p in processes:
        p.start()
    try:
        processes[0].wait_ready()  # events sent before the join would wait for it
        if with_reasoner:
            processes[1].wait_ready()
        cpu0 = [cpu_seconds(p.proc.pid) for p in processes]
        forks0 = client.info("stats")["total_forks"]
        started = time.monotonic()
        with EventProducer.from_settings(s) as producer:
            sent, _ = replay(part, producer, rate, user_prefix=s.key_prefix)
        processes[0].wait_processed(sent, 120)
        time.sleep(2.0)  # the refreshes of the last events, and reasoning already under way
        window = time.monotonic() - started
        cpu = [round((cpu_seconds(p.proc.pid) - c) / window, 2) for p, c in zip(processes, cpu0)]
        # Redis blocks while it forks (an RDB snapshot, an AOF rewrite; infra/redis/redis.conf) and
        # the child takes a core for seconds: counted so a run's tail can be read against them.
        forks = client.info("stats")["total_forks"] - forks0
        users = [s.key_prefix + str(u) for u in part.events.user_id.unique()]
        live = intent_coverage(client, keys, users, s.intent.every_n_events) if with_reasoner else None
        drained, drain_s = None, None
        if with_reasoner:
            t = time.monotonic()
            while intent_backlog(client, keys) and time.monotonic() - t < 300:
                time.sleep(0.5)
            drain_s = round(time.monotonic() - t, 1)
            drained = intent_coverage(client, keys, users, s.intent.every_n_events)
        m = read_metrics(client, keys)
    finally:
        for p in processes:
            p.stop()
        delete_topics(k, worker_topics(s))
        delete_matching(client, f"{s.key_prefix}*")
    out: dict[str, Any] = {
        "offered_events_per_s": round(rate, 2), "events": sent, "seconds": round(window, 1),
        "cores": {"worker": cpu[0], **({"reasoner": cpu[1]} if with_reasoner else {})},
        "refreshes": m.get("refreshes", 0), "redis_forks": forks,
        "event_to_recs_ms": {q: m["recs_freshness_ms"][q] for q in ("p50", "p99", "n")},
    }
    if with_reasoner:
        out.update({
            "coverage_live": live, "coverage_after_drain": drained, "drain_seconds": drain_s,
            "event_to_intent_recs_ms": {q: m["intent_freshness_ms"][q] for q in ("p50", "p99", "n")},
            "requested_to_intent_recs_ms": {q: m["intent_latency_ms"][q] for q in ("p50", "p99", "n")},
            "refreshes_sent_to_reasoning": m.get("intent_requested", 0),
            "share_sent": round(m.get("intent_requested", 0) / max(m.get("refreshes", 0), 1), 3),
            "reasoned": m.get("intent_users", 0), "shed": m.get("intent_shed", 0),
            "superseded": m.get("intent_superseded", 0), "errors": m.get("intent_errors", 0),
            "reasoner_users_per_s_while_reasoning": round(
                m.get("intent_users", 0) / max(m.get("intent_time_ms", 0) / 1000, 1e-9), 2),
        })
    _say(progress, f"x{rate:.1f}/s: {out}")
    return out


def run_reasoner_benchmark(settings: Settings, dataset: str, factors: tuple[float, ...], seconds: float,
                           users: int, progress=None, isolation_rounds: int = 3) -> dict[str, Any]:
    if served_model_dir(settings) is None:
        raise RuntimeError(f"no intent model at {settings.intent.resolved_model_dir(settings.cache_dir)}: "
                           "run `make demo` or `intentstream train --sft` first")
    data = datasets.load(dataset, settings.data_dir)
    data = datasets.Dataset(data.name, data.events.sort_values("ts", kind="stable").reset_index(drop=True), data.items)
    span_s = (data.events.ts.max() - data.events.ts.min()) / 1000
    real_rate = len(data.events) / span_s
    log_dir = settings.state_dir / "logs"
    started = time.perf_counter()
    _say(progress, "throughput ...")
    result: dict[str, Any] = {
        "command": f"intentstream bench reasoner --dataset {dataset} --factors {','.join(f'{f:g}' for f in factors)} "
                   f"--seconds {seconds:g} --users {users} --isolation-rounds {isolation_rounds}",
        "machine": machine(), "commit": commit(), "dataset": dataset,
        "real_time_events_per_s": round(real_rate, 3), "span_hours": round(span_s / 3600, 2),
        "throughput": throughput(settings, data, users),
        "intent_settings": settings.intent.model_dump(mode="json"),
    }
    coverage = {}
    for factor in factors:
        _say(progress, f"coverage at x{factor:g} real time ({factor * real_rate:.1f} events/s) ...")
        coverage[f"x{factor:g}"] = _run(settings, data, factor * real_rate, seconds, True, log_dir, progress)
    result["coverage"] = coverage
    top = max(factors)
    withs, withouts = [coverage[f"x{top:g}"]], []
    for n in range(isolation_rounds):
        order = (False, True) if n % 2 == 0 else (True, False)
        for with_reasoner in order:
            if with_reasoner and len(withs) > n:  # the coverage run stands for the first round's
                continue
            _say(progress, f"isolation round {n + 1}/{isolation_rounds}: x{top:g} "
                           f"{'with' if with_reasoner else 'without'} the intent route ...")
            (withs if with_reasoner else withouts).append(
                _run(settings, data, top * real_rate, seconds, with_reasoner, log_dir, progress))
    median = lambda runs, q: float(np.median([r["event_to_recs_ms"][q] for r in runs]))  # noqa: E731
    result["isolation"] = {
        "factor": top, "rounds": isolation_rounds,
        "without_reasoner": {q: median(withouts, q) for q in ("p50", "p99")},
        "with_reasoner": {q: median(withs, q) for q in ("p50", "p99")},
        "p99_rounds": {"without": [r["event_to_recs_ms"]["p99"] for r in withouts],
                       "with": [r["event_to_recs_ms"]["p99"] for r in withs]},
        "p99_ratio": round(median(withs, "p99") / median(withouts, "p99"), 3) if median(withouts, "p99") else None,
        "cores_without": [r["cores"] for r in withouts], "cores_with": [r["cores"] for r in withs],
        "redis_forks": {"without": [r["redis_forks"] for r in withouts], "with": [r["redis_forks"] for r in withs]},
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    targets = coverage.get("x10")
    result["targets"] = {
        "throughput_10x_of_12_users_per_s": result["throughput"]["users_per_s"] >= 120,
        "x10_coverage_95": bool(targets and targets["coverage_live"]["share"] is not None
                                and targets["coverage_live"]["share"] >= 0.95),
        "x10_event_to_intent_recs_p99_2s": bool(targets and targets["event_to_intent_recs_ms"]["p99"] is not None
                                                and targets["event_to_intent_recs_ms"]["p99"] <= 2000),
        "stream_p99_within_20pct": bool(result["isolation"]["p99_ratio"] is not None
                                        and result["isolation"]["p99_ratio"] <= 1.2),
    }
    return result

