"""`intentstream demo`: the main job, end to end on the real services.

Starts Kafka, Redis and Feast (`up`), trains the sequential route's SASRec on the dataset once
(cached; a promoted sequential version serves instead), starts a worker and a reasoner (intent
reasoning, its own tier: stream/reasoner_service.py), replays the REES46 events through Kafka at
a steady rate while showing live progress (with simulated feedback: impressions of what Redis
serves and the users' later events as actions, logged where `intentstream train --once` reads
them), then prints a summary (events, events/s, dead letters,
users refreshed, freshness percentiles, the share of refreshes sent to reasoning, the reasoner's
throughput and the intent coverage) and the recommendations of a few users, read back from
Redis exactly as a shop would. Each run uses fresh topics and a fresh consumer group, and clears
the previous run's metrics, behavioural model and intent results, so running it again is safe; recommendations
stay in Redis afterwards (`intentstream recs USER`).
"""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import redis
from rich.console import Console
from rich.live import Live
from rich.table import Table

from contracts.keys import RedisKeys
from contracts.settings import Settings
from features.item_model import SharedItemModel
from features.redis_client import connect, delete_matching
from infra import services
from infra.worker_process import ReasonerProcess, WorkerProcess, stop_children_on_sigterm
from intentstream.render import print_recommendations
from offline import datasets
from offline.replay import FeedbackSimulator, replay
from reasoning.registry import served_sequential_dir
from stream.metrics import intent_backlog, intent_coverage, read_metrics, reset_metrics
from stream.producer import EventProducer, delete_topics, ensure_topics
from stream.reader import RecommendationReader

DEMO_TOPIC_PREFIX = "intentstream.demo."


DEMO_SEQUENTIAL_EPOCHS = 20
"""The demo's SASRec budget per dropout of the grid (REES46: ~2-3 s an epoch on 2 cores)."""


def _old_demo_topics(kafka) -> list[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka.client_options())
    try:
        return [t for t in admin.list_topics() if t.startswith(DEMO_TOPIC_PREFIX)]
    finally:
        admin.close()


def _progress_table(sent: int, total: int, m: dict, elapsed: float) -> Table:
    table = Table(title=f"intentstream demo · {elapsed:5.1f}s", show_header=False)
    processed = m.get("events_valid", 0) + m.get("events_dead", 0) + m.get("duplicates", 0)
    table.add_row("replayed into Kafka", f"{sent:,} / {total:,}")
    table.add_row("processed by the worker", f"{processed:,}")
    table.add_row("dead letters", f"{m.get('events_dead', 0):,}")
    table.add_row("refreshes / users", f"{m.get('refreshes', 0):,} / {m.get('users_refreshed', 0):,}")
    return table


def _wait_for_intent(client: redis.Redis, keys: RedisKeys, console: Console, timeout_s: float = 300.0) -> None:
    """Let the reasoner handle the requests the worker sent (it runs behind the stream)."""
    deadline = time.monotonic() + timeout_s
    with console.status("reasoner finishing its backlog ...") as status:
        while time.monotonic() < deadline:
            backlog = intent_backlog(client, keys)
            if not backlog:
                return
            status.update(f"reasoner finishing its backlog: {backlog:,} requests left")
            time.sleep(0.5)
    console.print("[yellow]the reasoner still had requests to handle after 5 minutes[/yellow]")


def run_demo(settings: Settings, dataset: str, rate: float, console: Console) -> None:
    # The demo stops its worker and reasoner in its `finally`, which a SIGTERM skips unless it raises.
    stop_children_on_sigterm()
    started = time.monotonic()
    console.rule("1. services")
    for st in services.up(settings):
        console.print(f"[green]{st.name:6}[/green] {st.detail}")

    data = datasets.load(dataset, settings.data_dir)
    console.print(f"dataset {data.name}: {len(data.events):,} events, {data.events.user_id.nunique():,} users, "
                  f"{len(data.items):,} items")

    delete_topics(settings.kafka, _old_demo_topics(settings.kafka))
    run = uuid.uuid4().hex[:8]
    demo = settings.isolated(f"{DEMO_TOPIC_PREFIX}{run}")
    # The simulated feedback goes to the default log, where `intentstream train --once` reads it.
    demo = demo.model_copy(update={"feedback": demo.feedback.model_copy(update={"log_dir": settings.feedback_dir})})
    keys = RedisKeys(demo.key_prefix)
    client = connect(demo.redis)
    reset_metrics(client, keys)
    SharedItemModel.from_settings(demo, client).reset()
    delete_matching(client, keys.intent("*"))  # the previous run's intent results: coverage is this run's
    ensure_topics(demo.kafka, [demo.kafka.events_topic, demo.kafka.dead_letter_topic, demo.kafka.feedback_topic,
                               demo.kafka.intent_topic])

    served = None
    if settings.sequential.enabled:
        console.rule("sequential model")
        served = served_sequential_dir(demo, client)
        if served is not None:
            console.print(f"using the sequential model at {served}")
        else:  # trained on the events the demo replays, as the intent model is; cached after the first run
            from training.sequential import SequentialConfig, cached_model

            console.print(f"no sequential model promoted: training SASRec on {data.name} for at most "
                          f"{DEMO_SEQUENTIAL_EPOCHS} epochs per dropout (minutes, once; `intentstream train "
                          "--sequential` trains to convergence)")
            budget = SequentialConfig(max_epochs=DEMO_SEQUENTIAL_EPOCHS)
            served = cached_model(data.events, settings.cache_dir, cfg=budget, label=data.name, progress=console.print)
            demo = demo.model_copy(update={"sequential": demo.sequential.model_copy(update={"model_dir": served})})
        meta = orjson.loads((served / "sequential.json").read_bytes())
        console.print(f"sequential route {meta['version']}: validation NDCG@10 {meta['best_val_ndcg@10']:.4f}, fusion "
                      f"weights recent {meta.get('weight_recent', 0.0)} / sequential {meta['merge_weight']} (fitted "
                      "on a per-user holdout of its training events)")

    model_dir = settings.intent.resolved_model_dir(settings.cache_dir)
    if settings.intent.enabled:
        console.rule("intent model")
        if (model_dir / "intent.json").exists():
            console.print(f"using the intent model at {model_dir}")
        else:  # its merge weight is fitted against the sequential route's fusion when that serves
            from reasoning.sequential import SequentialRoute
            from training.sft import train_model

            console.print(f"no intent model at {model_dir}: training one on {data.name} (a few minutes, once)")
            route = SequentialRoute(served) if served is not None else None
            train_model(data, model_dir, settings.cache_dir, progress=console.print, intent=settings.intent,
                        sequential=route)

    console.rule("2. worker and reasoner")
    worker = WorkerProcess(demo, demo.state_dir / "logs" / f"demo-worker-{run}.log")
    worker.start()
    reasoner = None
    if settings.intent.enabled:
        reasoner = ReasonerProcess(demo, demo.state_dir / "logs" / f"demo-reasoner-{run}.log")
        reasoner.start()
    try:
        worker.wait_ready(120)  # joined and consuming: the replay's first events do not wait for the join
        console.print(f"worker ready (log: {worker.log_path})")
        if reasoner is not None:
            reasoner.wait_ready()
            console.print(f"reasoner ready (log: {reasoner.log_path})")

        console.rule(f"3. replay at {rate:,.0f} events/s" if rate else "3. replay")
        sent_box = {"n": 0}
        total = len(data.events)

        simulator = FeedbackSimulator(EventProducer.from_settings(demo, demo.kafka.feedback_topic), client, keys,
                                      demo.feedback.window_s, demo.feedback.impression_every)

        def produce() -> None:
            with EventProducer.from_settings(demo) as producer:
                replay(data, producer, rate, on_progress=lambda n: sent_box.__setitem__("n", sent_box["n"] + n),
                       feedback=simulator)
            simulator.producer.close()

        thread = threading.Thread(target=produce, daemon=True)
        replay_started = time.monotonic()
        thread.start()
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                m = read_metrics(client, keys)
                live.update(_progress_table(sent_box["n"], total, m, time.monotonic() - replay_started))
                processed = m.get("events_valid", 0) + m.get("events_dead", 0) + m.get("duplicates", 0)
                if not thread.is_alive() and processed >= total:
                    break
                if not worker.alive():
                    raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
                if reasoner is not None and not reasoner.alive():
                    raise RuntimeError(f"the reasoner died:\n{reasoner.log_tail()}")
                if time.monotonic() - replay_started > 600:
                    raise RuntimeError("the demo did not finish within 10 minutes")
                time.sleep(0.25)
        time.sleep(demo.trigger.min_interval_s + 0.5)  # debounced refreshes come due
        if settings.intent.enabled:
            _wait_for_intent(client, keys, console)
        deadline = time.monotonic() + 30
        while (int(client.hget(keys.metrics, "feedback_logged") or 0) < simulator.impressions + simulator.actions
               and time.monotonic() < deadline):
            time.sleep(0.5)
        m = read_metrics(client, keys)
        feedback_logged = int(client.hget(keys.metrics, "feedback_logged") or 0)
        users = [str(u) for u in data.events.user_id.unique()]
        coverage = intent_coverage(client, keys, users, demo.intent.every_n_events) if reasoner else None
    finally:
        worker.stop()
        if reasoner is not None:
            reasoner.stop()

    console.rule("4. summary")
    seconds = (m["last_batch_ms"] - m["first_batch_ms"]) / 1000 if m.get("first_batch_ms") else 0.0
    summary = Table(show_header=False)
    summary.add_row("events processed", f"{m.get('events_valid', 0):,}")
    offered = f"replay offered {rate:,.0f}/s" if rate else "replay as fast as possible"
    summary.add_row("worker events/s", f"{m.get('events_valid', 0) / max(seconds, 1e-9):,.0f} "
                    f"(first to last batch, {seconds:.1f}s; {offered})")
    summary.add_row("dead letters", f"{m.get('events_dead', 0):,}")
    summary.add_row("users refreshed", f"{m.get('users_refreshed', 0):,} ({m.get('refreshes', 0):,} refreshes)")
    rf, ff, dl = m["recs_freshness_ms"], m["feature_freshness_ms"], m["recs_debounce_lag_ms"]
    summary.add_row("freshness: event → recs in Redis", f"p50 {rf['p50']:.0f} ms · p99 {rf['p99']:.0f} ms"
                    if rf["n"] else "no samples")
    summary.add_row("debounced refreshes: due → recs", f"{m.get('refreshes_debounced', 0):,} refreshes, "
                    f"p50 {dl['p50']:.0f} ms · p99 {dl['p99']:.0f} ms" if dl["n"] else "none")
    summary.add_row("freshness: event → features in Feast", f"p50 {ff['p50']:.0f} ms · p99 {ff['p99']:.0f} ms"
                    if ff["n"] else "no samples")
    if m.get("intent_users"):
        il, ifr = m["intent_latency_ms"], m["intent_freshness_ms"]
        summary.add_row("share of events that triggered a refresh",
                        f"{m.get('refreshes', 0) / max(m.get('events_valid', 1), 1):.1%}")
        sent, reused = m.get("intent_requested", 0), m.get("intent_recent_reused", 0)
        summary.add_row("refreshes sent to reasoning", f"{sent:,} of {m.get('refreshes', 0):,} "
                        f"({sent / max(m.get('refreshes', 1), 1):.1%}); intent not due (last result merged) "
                        f"{reused:,} (stream/trigger.py intent_due)")
        summary.add_row("reasoner", f"{m['intent_users']:,} users reasoned about in {m.get('intent_batches', 0):,} "
                        f"batches, {m['intent_users'] / max(m.get('intent_time_ms', 1) / 1000, 1e-9):.1f} users/s "
                        f"while reasoning (1 process, intent.threads={demo.intent.threads}), "
                        f"{m.get('intent_tokens', 0) / m['intent_users']:.0f} LM tokens per user; superseded by a "
                        f"newer request {m.get('intent_superseded', 0):,}")
        summary.add_row("intent latency: requested → merged recs", f"p50 {il['p50']:.0f} ms · p99 {il['p99']:.0f} ms")
        summary.add_row("freshness: event → intent recs", f"p50 {ifr['p50']:.0f} ms · p99 {ifr['p99']:.0f} ms")
        summary.add_row("intent fallbacks", f"shed (waited past intent.max_wait_s) {m.get('intent_shed', 0):,} · "
                        f"hung batches' users {m.get('intent_timeouts', 0):,} · failed batches "
                        f"{m.get('intent_errors', 0):,} · not sent {m.get('intent_queue_full', 0):,}")
        if coverage and coverage["users"]:
            summary.add_row("intent coverage", f"{coverage['covered']:,} of {coverage['users']:,} users "
                            f"({coverage['share']:.1%}) hold intent results at most {coverage['max_events_behind']} "
                            f"events behind their list; further behind {coverage['merged_stale']:,}, "
                            f"none yet {coverage['never']:,}")
    if settings.sequential.enabled:
        summary.add_row("sequential route", f"merged into {m.get('sequential_merged', 0):,} of "
                        f"{m.get('refreshes', 0):,} refreshes; errors {m.get('sequential_errors', 0):,}")
    summary.add_row("feedback (simulated: replay --feedback)",
                    f"{simulator.impressions:,} impressions and {simulator.actions:,} actions sent, "
                    f"{feedback_logged:,} logged to {demo.feedback_dir}")
    summary.add_row("wall time", f"{time.monotonic() - started:.0f}s")
    console.print(summary)


    reader = RecommendationReader.from_settings(demo)
    events = data.events
    buyers = events[events.type == "purchase"].user_id.value_counts()
    active = events.user_id.value_counts()
    shown = list(dict.fromkeys([*buyers.index[:1], *active.index[:2]]))
    for user in shown:
        recs = reader.get_recommendations(user)
        if recs is None:
            console.print(f"[red]no recommendations for {user}[/red]")
            continue
        bought = set(events[(events.user_id == user) & (events.type == "purchase")].item_id)
        leaked = bought & {i.item_id for i in recs.items}
        console.print(f"user {user}: {int(active[user])} events, bought {len(bought)} "
                      f"({'none of them recommended' if not leaked else f'LEAKED {sorted(leaked)}'})")
        print_recommendations(recs, limit=5)
    if settings.intent.enabled:
        merged, with_result = None, []
        for user in active.index[:300]:
            recs = reader.get_recommendations(user)
            if recs is None or not recs.intents:  # not merged with an intent result (yet)
                continue
            with_result.append(user)
            if any(i.route == "intent" for i in recs.items):
                merged = recs
                break
        if merged is None and not with_result:
            console.print("[yellow]no active user holds a list the intent route merged yet[/yellow]")
        elif merged is None:
            weights = orjson.loads(client.get(keys.intent(with_result[0])) or b"{}").get("weights")
            if weights and weights[2] == 0:
                why = "its fitted weight is 0, so it does not change the served list"
            else:
                at = f"at its fitted weight {weights[2]:g} (the worker's list: {weights[1]:g}) " if weights else ""
                why = (f"{at}its items rank below the top {demo.recs.top_k}, so it only reorders items the other "
                       "routes hold too")
            console.print(f"[yellow]{len(with_result)} of the 300 most active users' lists are merged with an intent "
                          f"result; none holds an item placed by the intent route: {why} (the weight is fitted on "
                          "held-out users; README, The intent route)[/yellow]")
        else:
            console.print(f"user {merged.user_id}: {int(active[merged.user_id])} events; the intent route's "
                          f"items in the merged list (model {merged.model_version}):")
            merged = merged.model_copy(update={"items": [i for i in merged.items if i.route == "intent"]})
            print_recommendations(merged, limit=5)
    unknown = reader.get_recommendations("no-such-user")
    if unknown is not None:
        console.print(f"an unknown user gets fallback_reason={unknown.fallback_reason} "
                      f"({len(unknown.items)} popular items)")
    console.print("Read any user's recommendations: intentstream recs USER [--json]; train on the logged feedback: "
                  "intentstream train --once; stop services: intentstream down")
