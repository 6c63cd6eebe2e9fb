"""`intentstream`: the single entry point. Each command builds objects from settings and starts them."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from contracts.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each prints one JSON object.")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def up(feast_only: bool = typer.Option(False, help="Only `feast apply` (Kafka and Redis run elsewhere, e.g. compose)")) -> None:
    """Start Kafka (KRaft) and Redis, then `feast apply`. Safe to run again."""
    from features import feast_store
    from features.errors import FeatureStoreError
    from infra import services
    from infra.errors import ServiceError

    try:
        if feast_only:
            console.print(f"[green]feast [/green] {feast_store.apply(Settings())}")
            return
        for st in services.up(Settings()):
            console.print(f"[green]{st.name:6}[/green] {st.detail}")
    except (ServiceError, FeatureStoreError) as exc:
        _fail(str(exc))


@app.command()
def down() -> None:
    """Stop the services `up` started; their data stays in the state dir."""
    from infra import services

    for st in services.down(Settings()):
        console.print(f"{st.name:6} {st.detail}")


@app.command()
def status() -> None:
    """Health of Kafka, Redis and Feast; exits 1 when one is down."""
    from infra import services

    statuses = services.status(Settings())
    for st in statuses:
        mark = "[green]up  [/green]" if st.healthy else "[red]down[/red]"
        console.print(f"{st.name:6} {mark} {st.detail}")
    if not all(st.healthy for st in statuses):
        raise typer.Exit(1)


@app.command("settings")
def settings_cmd() -> None:
    """Print every setting with its meaning and default (the text of .env.example)."""
    from contracts.settings import env_example

    print(env_example(), end="")


@app.command()
def acl(out: Path = typer.Option(..., help="Folder for users.acl and one <role>.env per role (mode 0600)")) -> None:
    """Write a Redis ACL file with one user per role (worker, reasoner, reader, trainer, admin;
    infra/redis_acl.py), random passwords. Load it with INTENTSTREAM_SERVICES__REDIS_ACL_FILE and
    give each process its role's .env."""
    from infra.redis_acl import ROLES, write_acl

    settings = Settings()
    write_acl(out, settings.key_prefix, settings.feast.project)
    console.print(f"[green]wrote[/green] {out / 'users.acl'} and {', '.join(f'{r}.env' for r in ROLES)} "
                  f"(passwords only there); start Redis with INTENTSTREAM_SERVICES__REDIS_ACL_FILE={out / 'users.acl'}")


@app.command()
def worker(loglevel: str = typer.Option("info", help="Faust log level")) -> None:
    """Run the stream worker (Faust) until interrupted."""
    from stream.app import run_worker

    sys.argv = [sys.argv[0]]  # faust's Worker reads argv; ours are already parsed
    run_worker(Settings(), loglevel=loglevel)


@app.command()
def reasoner(loglevel: str = typer.Option("info", help="Log level")) -> None:
    """Run a reasoner (intent reasoning on the intent topic; stream/reasoner_service.py) until
    interrupted. Start as many as the intent topic has partitions; they share one consumer group."""
    import logging

    from reasoning.errors import ModelNotFound
    from stream.errors import BrokerUnavailable
    from stream.reasoner_service import run_reasoner

    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    try:
        run_reasoner(Settings())
    except (ModelNotFound, BrokerUnavailable) as exc:
        _fail(str(exc))


@app.command()
def emit(
    json_event: Optional[str] = typer.Option(None, "--json", help="The whole event as JSON"),
    user: Optional[str] = typer.Option(None, help="user_id"),
    item: Optional[str] = typer.Option(None, help="item_id"),
    type_: str = typer.Option("view", "--type", help="view, click, cart, fav or purchase"),
    price: Optional[float] = typer.Option(None),
    category: Optional[str] = typer.Option(None, help="context.category"),
    brand: Optional[str] = typer.Option(None, help="context.brand"),
) -> None:
    """Emit one event (validated against the contract first)."""
    from pydantic import ValidationError

    from contracts.events import Event
    from stream.producer import EventProducer

    if json_event:
        data = orjson.loads(json_event)
    else:
        if not user or not item:
            _fail("give --json or both --user and --item")
        context = {k: v for k, v in {"category": category, "brand": brand}.items() if v}
        data = {"user_id": user, "item_id": item, "type": type_, "price": price, "context": context}
    data.setdefault("event_id", uuid.uuid4().hex)
    data.setdefault("ts", int(time.time() * 1000))
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        _fail(f"invalid event: {exc}")
    settings = Settings()
    with EventProducer.from_settings(settings) as producer:
        producer.emit(event)
    console.print(f"emitted {event.event_id} to {settings.kafka.events_topic}")


@app.command()
def replay(
    dataset: str = typer.Argument(..., help="Dataset folder or name (rees46, taobao, beauty)"),
    fmt: str = typer.Option("auto", "--format", help="generic, rees46, taobao or auto"),
    rate: float = typer.Option(0.0, help="Events per second (0: as fast as possible)"),
    limit: int = typer.Option(0, help="Only the first N events (0: all)"),
    user_prefix: str = typer.Option("", help="Prefix added to every user_id"),
    feedback: bool = typer.Option(False, help="Also emit simulated impressions (the recommendations Redis holds "
                                              "at a user's every feedback.impression_every-th event) and actions "
                                              "(their later events within feedback.window_s) to the feedback topic"),
) -> None:
    """Replay a dataset's events into Kafka, in time order, with a progress bar."""
    from contracts.errors import IntentstreamError
    from offline import datasets
    from offline.replay import replay as run_replay
    from stream.producer import EventProducer

    settings = Settings()
    try:
        data = datasets.load(dataset, settings.data_dir, fmt)
        if limit:
            data = data.head(limit)
        with EventProducer.from_settings(settings) as producer, _progress() as bar:
            task = bar.add_task("replay", total=len(data.events))
            simulator = _feedback_simulator(settings) if feedback else None
            sent, seconds = run_replay(data, producer, rate, user_prefix,
                                       on_progress=lambda n: bar.advance(task, n), feedback=simulator)
            if simulator is not None:
                simulator.producer.close()
    except IntentstreamError as exc:
        _fail(str(exc))
    console.print(f"replayed {sent} events of {data.name} in {seconds:.1f}s ({sent / max(seconds, 1e-9):,.0f}/s)")
    if simulator is not None:
        console.print(f"feedback: {simulator.impressions} impressions, {simulator.actions} actions")


def _feedback_simulator(settings: Settings):
    from contracts.keys import RedisKeys
    from features.redis_client import connect
    from offline.replay import FeedbackSimulator
    from stream.producer import EventProducer

    r = settings.redis
    return FeedbackSimulator(EventProducer.from_settings(settings, settings.kafka.feedback_topic),
                             connect(r), RedisKeys(settings.key_prefix),
                             settings.feedback.window_s, settings.feedback.impression_every)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), console=console)


@app.command()
def recs(user: str, as_json: bool = typer.Option(False, "--json", help="Print the stored JSON")) -> None:
    """Show a user's recommendations from Redis."""
    from intentstream.render import print_recommendations
    from stream.reader import RecommendationReader

    result = RecommendationReader.from_settings(Settings()).get_recommendations(user)
    if result is None:
        _fail("no recommendations yet (is the worker running?)")
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    print_recommendations(result, limit=10)


@app.command()
def demo(
    rate: float = typer.Option(500.0, help="Replay rate in events/s (0: as fast as possible); the default stays inside what one worker sustains on 2 cores"),
    dataset: str = typer.Option("rees46", help="Dataset to replay"),
) -> None:
    """The main job: services up, worker running, REES46 replayed live, then the summary."""
    from intentstream.demo import run_demo

    run_demo(Settings(), dataset=dataset, rate=rate, console=console)


@app.command()
def train(
    sft: bool = typer.Option(False, "--sft", help="Supervised fine-tuning of the intent model on an event log"),
    sequential: bool = typer.Option(False, "--sequential", help="Train the sequential route's SASRec on an event "
                                    "log, export it (ONNX + faiss), register and promote it: workers serve it "
                                    "from their next registry poll"),
    dataset: str = typer.Option("rees46", help="Dataset folder or name (rees46, taobao, beauty) to train on"),
    fmt: str = typer.Option("auto", "--format", help="generic, rees46, taobao or auto"),
    out: Optional[Path] = typer.Option(None, help="Model directory (default: --sft intent.model_dir, what the "
                                                  "reasoners load; --sequential a new registry version, inside trainer.versions_dir)"),
    base: str = typer.Option("tiny", help="--sft: the LM to start from: tiny (the project's small Llama, from "
                                          "scratch) or smollm2 (SmolLM2-135M-Instruct, LoRA)"),
    lm_steps: Optional[int] = typer.Option(None, help="Stage-1 steps (default: SFTConfig)"),
    adaptor_steps: Optional[int] = typer.Option(None, help="Stage-2 steps (default: SFTConfig)"),
    once: bool = typer.Option(False, "--once", help="One periodic-trainer run: GRPO on the feedback logged since "
                                                   "the serving version, promoted if it beats it on held-out users"),
    every: Optional[str] = typer.Option(None, "--every", help="Run the periodic trainer every period (e.g. 15m, "
                                                              "1h; 'default': trainer.every) until stopped"),
) -> None:
    """Train the intent model: `--sft` (tokenizer, LM on full-text contexts, then the atom
    adaptor), or the RL trainer on logged feedback (`--once`, `--every 15m`); or the sequential
    route (`--sequential`)."""
    if sum(bool(x) for x in (sft, sequential, once, every)) != 1:
        _fail("say what to train: --sft, --sequential, --once or --every PERIOD (one of them)")
    if once or every:
        _train_rl(once, every)
        return
    if sequential:
        _train_sequential(dataset, fmt, out)
        return
    from contracts.errors import IntentstreamError
    from offline import datasets
    from training.sft import SFTConfig, train_model

    settings = Settings()
    try:
        data = datasets.load(dataset, settings.data_dir, fmt)
    except IntentstreamError as exc:
        _fail(str(exc))
    overrides = {k: v for k, v in {"lm_steps": lm_steps, "adaptor_steps": adaptor_steps}.items() if v}
    target = out or settings.intent.resolved_model_dir(settings.cache_dir)
    try:
        cfg = SFTConfig.for_base(base, **overrides)
    except ValueError as exc:
        _fail(str(exc))
    try:
        model = train_model(data, target, settings.cache_dir, cfg, progress=console.print)
    except IntentstreamError as exc:  # e.g. the smollm2 base is not installed
        _fail(str(exc))
    console.print(f"[green]intent model {model.version}[/green] written to {target}")


def _train_sequential(dataset: str, fmt: str, out: Optional[Path]) -> None:
    from contracts.errors import IntentstreamError
    from offline import datasets
    from reasoning.registry import ModelRegistry, RegistryError
    from training.sequential import train_and_export

    settings = Settings()
    try:
        data = datasets.load(dataset, settings.data_dir, fmt)
        registry = ModelRegistry.from_settings(settings, kind="sequential")
        version, target = registry.new_version(f"sasrec-{data.name}")
        target = registry.confined(out) if out else target  # it serves only its versions directory
        meta = train_and_export(data.events, target, version, progress=console.print)
        entry = registry.promote(version, target, train_events=meta["train_events"],
                                 best_val=meta["best_val_ndcg@10"], merge_weight=meta["merge_weight"], weight_recent=meta["weight_recent"])
    except (IntentstreamError, RegistryError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"[green]sequential model {entry['version']}[/green] at {target}: {meta['epochs']} epochs, "
                  f"validation NDCG@10 {meta['best_val_ndcg@10']:.4f}, fusion weights recent {meta['weight_recent']} / "
                  f"sequential {meta['merge_weight']}; promoted")


def _train_rl(once: bool, every: Optional[str]) -> None:
    from reasoning.registry import RegistryError
    from training.trainer import parse_period, run_every, run_once

    settings = Settings()
    try:
        if once:
            report = run_once(settings, progress=console.print)
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())
            return
        period = parse_period(settings.trainer.every if every == "default" else every)
    except (RegistryError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"trainer: a run every {period:.0f} s (Ctrl-C stops)")
    run_every(settings, period, progress=console.print)


model_app = typer.Typer(no_args_is_help=True, help="The model registries (versions, serving pointer): intent "
                                                    "and sequential.")
app.add_typer(model_app, name="model")


KIND_HELP = "intent (the reasoners' LM) or sequential (the workers' SASRec route)"


@model_app.command("status")
def model_status(kind: str = typer.Option("intent", help=KIND_HELP)) -> None:
    """The serving version and every version promoted so far."""
    from reasoning.registry import ModelRegistry

    try:
        registry = ModelRegistry.from_settings(Settings(), kind=kind)
    except ValueError as exc:
        _fail(str(exc))
    current = registry.current()
    if current is None:
        console.print(f"nothing promoted: {kind}.model_dir serves (if a model is there)")
        return
    console.print(f"serving [bold]{current['version']}[/bold] ({current['path']})")
    for entry in registry.history():
        console.print(f"  {entry['version']}" + (f" (rollback from {entry['rolled_back_from']})"
                                                   if "rolled_back_from" in entry else ""))


@model_app.command("rollback")
def model_rollback(kind: str = typer.Option("intent", help=KIND_HELP)) -> None:
    """Serve the previously promoted version again (reasoners and workers pick it up without a restart)."""
    from reasoning.registry import ModelRegistry, RegistryError

    try:
        entry = ModelRegistry.from_settings(Settings(), kind=kind).rollback()
    except (RegistryError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"serving [bold]{entry['version']}[/bold] again (rolled back from {entry['rolled_back_from']})")


@app.command("eval")
def eval_(
    dataset: str = typer.Option(..., "--dataset", help="Dataset folder or name (rees46, taobao, beauty)"),
    fmt: str = typer.Option("auto", "--format", help="generic, rees46, taobao or auto"),
    split: str = typer.Option("global-time", help="global-time, per-user-last or leave-one-out"),
    k: str = typer.Option("10,20", help="Cut-offs, comma-separated (leave-one-out adds 5 and 10)"),
    methods: str = typer.Option("", help="Methods to run, comma-separated (default: popularity, popularity_global, "
                                         "recent_history, itemknn, sasrec, replay (the system; trains the "
                                         "models it serves on the split, the intent model too when the intent "
                                         "route is on), oracle, random); also: intent "
                                         "(trains the intent model), intent_served (the same, served context "
                                         "mode only), replay2 (the replay method with two workers "
                                         "on one group)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """Evaluate recommendation methods on a dataset under one protocol."""
    from contracts.errors import IntentstreamError
    from evaluation.harness import METHODS, OPTIONAL_METHODS, evaluate
    from offline import datasets

    settings = Settings()
    names = [m.strip() for m in methods.split(",") if m.strip()] or list(METHODS)
    unknown = [m for m in names if m not in METHODS + OPTIONAL_METHODS]
    if unknown:
        _fail(f"unknown methods {unknown}; choose from {list(METHODS + OPTIONAL_METHODS)}")
    try:
        ks = sorted({int(x) for x in k.split(",")})
        data = datasets.load(dataset, settings.data_dir, fmt)
    except (IntentstreamError, ValueError) as exc:
        _fail(str(exc))
    if {"replay", "replay2"} & set(names):
        from infra import services

        services.up(settings)
    result = evaluate(data, split, ks, names, settings,
                      on_method=None if as_json else lambda n: console.print(f"running {n} ..."),
                      progress=lambda message: console.print(message))
    from benchmarks.ingest import commit, machine

    result["command"] = "intentstream eval " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "intentstream eval"
    result["machine"], result["commit"] = machine(), commit()
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        print(text)
        return
    c = result["counts"]
    table = Table(title=f"{result['dataset']} · {split} · {c['users_evaluated']} users "
                        f"({c['users_with_new_targets']} with new targets) · {c['items']} items")
    table.add_column("method")
    for kk in ks:
        table.add_column(f"R@{kk} all/new")
        table.add_column(f"NDCG@{kk} all/new")
    table.add_column("catHR@20")
    table.add_column("cov@20")
    for name, r in result["methods"].items():
        row = [name]
        for kk in ks:
            row.append(f"{r['all'][f'recall@{kk}']:.3f} / {r['new'][f'recall@{kk}']:.3f}")
            row.append(f"{r['all'][f'ndcg@{kk}']:.3f} / {r['new'][f'ndcg@{kk}']:.3f}")
        row.append(f"{r['all'].get('category_hr@20', float('nan')):.3f}")
        row.append(f"{r['coverage@20']:.3f}")
        table.add_row(*row)
    Console().print(table)


@bench_app.command("ingest")
def bench_ingest(
    events: int = typer.Option(200_000, help="Events to drive through the worker"),
    users: int = typer.Option(20_000, help="Distinct users the events are spread over"),
    active: int = typer.Option(1000, help="Shoppers active at any moment (sessions of ~10 events)"),
    offered_rate: float = typer.Option(2000.0, help="Offered load (events/s) for the freshness phase"),
    freshness_seconds: float = typer.Option(15.0, help="Length of the freshness phase"),
    workers: str = typer.Option("1,2", help="Worker counts of the throughput phase (one group each)"),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON result"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """Throughput of 1 and N workers against a plain aiokafka consumer, freshness, Feast writes."""
    from benchmarks.ingest import run_ingest_benchmark

    counts = tuple(int(n) for n in workers.split(",") if n.strip())
    if not counts or min(counts) < 1:
        _fail(f"--workers takes worker counts like 1,2 (got {workers!r})")
    result = run_ingest_benchmark(Settings(), events=events, users=users, offered_rate=offered_rate,
                                  freshness_seconds=freshness_seconds, active=active, workers=counts,
                                  console=None if as_json else console)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


@bench_app.command("rl")
def bench_rl(
    dataset: str = typer.Option("rees46", help="Dataset folder name under the data dir."),
    steps: int = typer.Option(0, help="GRPO steps per run (0: GRPOConfig's default)."),
    fresh_share: float = typer.Option(0.0, help="SFT on the train events before the last this share of them (in "
                                                "time order), GRPO on episodes from that last part (0: both on all)"),
    validation_share: float = typer.Option(0.0, help="Keep the last this share of the train events from GRPO and "
                                                     "measure on the users with events on both sides of it (0: none)"),
    seeds: int = typer.Option(1, help="GRPO seeds per run (its HR@30 is their mean)"),
    lr: float = typer.Option(0.0, help="GRPO learning rate (0: GRPOConfig's default)."),
    runs: str = typer.Option("", help="Comma-separated runs to train, of grpo_sum, grpo_crs, grpo_crs_pointwise_rm, "
                                      "grpo_crs_experts_acc (empty: all)."),
    eval_every: int = typer.Option(0, help="Also measure the validation users every this many GRPO steps "
                                           "(0: at the end only; needs --validation-share)."),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """The RL ablation: category HR@30 after SFT, GRPO (summed rewards) and GRPO (CRS, listwise
    and pointwise reward model; and with a plan's accuracy over what its experts emit), where the
    users' categories were lost (personas, experts, arbiter), violation rates, reward-model
    agreement, throughput."""
    from benchmarks.rl import run_rl_benchmark

    _print_result(run_rl_benchmark(Settings(), dataset, steps or None, progress=lambda m: console.print(m),
                                   fresh_share=fresh_share, validation_share=validation_share, seeds=seeds,
                                   lr=lr or None, runs=[r.strip() for r in runs.split(",")] if runs else None,
                                   eval_every=eval_every), out)


@bench_app.command("loop")
def bench_loop(
    dataset: str = typer.Option("rees46", help="Dataset folder name under the data dir."),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """The feedback loop on the real services: Recall@20 served through the replay method before
    and after one trainer run (with the trainer's report)."""
    from benchmarks.loop import run_loop_benchmark

    _print_result(run_loop_benchmark(Settings(), dataset, progress=lambda m: console.print(m)), out)


@bench_app.command("intent")
def bench_intent(
    dataset: str = typer.Option("taobao", help="Dataset folder or name (rees46, taobao, beauty)"),
    sasrec: bool = typer.Option(True, help="Also run SASRec (minutes) for the comparison in the same run"),
    bases: str = typer.Option("tiny", help="Backbones of the intent model, comma-separated: tiny, smollm2 "
                                           "(the ablation: each trained and scored on the same split)"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """The intent route under the evaluation protocol, against its baselines, plus faiss recall."""
    from benchmarks.intent import run_intent_benchmark
    from training.backbone import BASES

    chosen = [b.strip() for b in bases.split(",") if b.strip()]
    if not chosen or any(b not in BASES for b in chosen):
        _fail(f"--bases takes a comma-separated list of {', '.join(BASES)}")
    _print_result(run_intent_benchmark(Settings(), dataset, sasrec, progress=lambda m: console.print(m),
                                       bases=chosen), out)


@bench_app.command("explanations")
def bench_explanations(
    dataset: str = typer.Option("rees46", help="Dataset folder or name (rees46, taobao, beauty)"),
    model: Path = typer.Option(..., help="Intent model directory (e.g. one trained with --base smollm2)"),
    users: int = typer.Option(40, help="Test users of the global-time split to reason about"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """LLM-written explanations through the faithfulness gate: pass rate, diversity, cost."""
    from benchmarks.explanations import run_explanation_benchmark

    _print_result(run_explanation_benchmark(Settings(), dataset, model, users), out)


@bench_app.command("reasoner")
def bench_reasoner(
    dataset: str = typer.Option("rees46", help="Dataset folder or name (rees46, taobao, beauty)"),
    factors: str = typer.Option("1,10,100", help="Replay rates as multiples of the log's real-time rate"),
    seconds: float = typer.Option(60.0, help="Wall seconds each rate is replayed for"),
    users: int = typer.Option(256, help="Users in the throughput measurement"),
    isolation_rounds: int = typer.Option(3, min=1, help="Pairs of runs without / with the reasoner at the "
                                                            "fastest rate (the median p99s are compared)"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """The reasoning tier: users/s per core, intent coverage and latency at x1/x10/x100 real time,
    and the stream's event -> recs with the reasoner beside it vs without."""
    from benchmarks.reasoner import run_reasoner_benchmark

    scale = tuple(float(f) for f in factors.split(","))
    _print_result(run_reasoner_benchmark(Settings(), dataset, scale, seconds, users,
                                         progress=lambda m: console.print(m),
                                         isolation_rounds=isolation_rounds), out)


@bench_app.command("chaos")
def bench_chaos(
    loops: int = typer.Option(3, help="Times the Taobao samples are sent (89,123 events each; users remapped)"),
    rate: float = typer.Option(2000.0, help="Events per second offered"),
    kill_every_s: float = typer.Option(10.0, help="The worker is SIGKILLed this long after each time it is ready"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """Worker SIGKILLs, a broker restart, a Redis restart and stall, a reasoner kill while events
    flow; then events lost and double counted (Feast and the item model), recovery times."""
    from benchmarks.chaos import run_chaos

    _print_result(run_chaos(Settings(), loops, rate, kill_every_s, progress=lambda m: console.print(m)), out)


@bench_app.command("overload")
def bench_overload(
    factor: float = typer.Option(5.0, help="Offered load as a multiple of the sustained rate measured first"),
    seconds: float = typer.Option(60.0, help="How long the overload lasts"),
    users: int = typer.Option(20_000, help="Synthetic users (1,000 shopping at once)"),
    compare: bool = typer.Option(True, help="Also run with shedding off (worker.shed_lag_s 0) first, on its own topics"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """factor x the sustained rate for `seconds`, then a normal load: the worker's RSS, what it
    shed and why, how long its lag takes to drain, and nothing lost or counted twice."""
    from benchmarks.overload import run_overload

    _print_result(run_overload(Settings(), factor, seconds, users, compare=compare,
                               progress=lambda m: console.print(m)), out)


@bench_app.command("soak")
def bench_soak(
    users: int = typer.Option(1_000_000, help="Synthetic users, arriving in order"),
    items: int = typer.Option(500_000, help="Item ids (half the events uniform over them, half Zipf)"),
    rate: float = typer.Option(1300.0, help="Events per second offered (about what one worker sustains here with nearly every user new)"),
    user_idle_s: float = typer.Option(60.0, help="retention.user_idle_s for the run (short, so forgetting shows)"),
    item_idle_s: float = typer.Option(120.0, help="retention.item_idle_s for the run"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here"),
) -> None:
    """A million users and half a million items through one worker: its RSS, Redis memory and the
    changelog's size over time, and whether each levels off."""
    from benchmarks.soak import run_soak

    _print_result(run_soak(Settings(), users, items, rate, user_idle_s=user_idle_s, item_idle_s=item_idle_s,
                           progress=lambda m: console.print(m)), out)


def _print_result(result: dict, out: Optional[Path]) -> None:
    """A benchmark's JSON on stdout, and in `out` when given."""
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    app()
