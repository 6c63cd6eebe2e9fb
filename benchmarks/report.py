"""Render benchmarks/REPORT.md and its plots from the JSON under benchmarks/results/.

    python -m benchmarks.report      # (make bench runs it after the benchmarks)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _eval_table(result: dict) -> list[str]:
    ks = result["protocol"]["ks"]
    head = "| method | " + " | ".join(f"R@{k} all / new | NDCG@{k} all / new" for k in ks) + \
           " | catHR@20 all | coverage@20 | novelty@20 | users (new) |"
    lines = [head, "|" + "---|" * (2 * len(ks) + 5)]
    for name, r in result["methods"].items():
        cells = []
        for k in ks:
            cells.append(f"{r['all'][f'recall@{k}']:.3f} / {r['new'][f'recall@{k}']:.3f}")
            cells.append(f"{r['all'][f'ndcg@{k}']:.3f} / {r['new'][f'ndcg@{k}']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {r['all']['category_hr@20']:.3f} | {r['coverage@20']:.3f} | {r['novelty@20']:.3f}"
                     f" | {r['users']} ({r['users_new']}) |")
    return lines


def _eval_plot(result: dict, path: Path) -> None:
    ks = result["protocol"]["ks"]
    names = [n for n in result["methods"] if n != "oracle"]  # ~1.0 by construction; it flattens the rest
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, which in zip(axes, ("all", "new")):
        width = 0.8 / (2 * len(ks))
        for j, k in enumerate(ks):
            for m, metric in enumerate(("recall", "ndcg")):
                offset = (2 * j + m) * width
                values = [result["methods"][n][which][f"{metric}@{k}"] for n in names]
                ax.bar([i + offset for i in range(len(names))], values, width, label=f"{metric}@{k}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right")
        ax.set_title(f"{result['dataset']}: {which} targets (oracle omitted)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ingest_plot(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].bar(["worker", "aiokafka ceiling"], [result["events_per_s"], result["ceiling_events_per_s"]],
                color=["tab:blue", "tab:gray"])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("events/s (log)")
    axes[0].set_title(f"throughput (ratio {result['ratio']:.4f})")
    pct = ["p50", "p90", "p99"]
    axes[1].bar(pct, [result[f"freshness_{p}_ms"] for p in pct])
    axes[1].set_ylabel("ms")
    axes[1].set_title(f"feature freshness at {result['freshness_offered_events_per_s']:.0f} events/s offered")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scale_plot(result: dict, path: Path) -> None:
    rows = result["scale_out"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([r["workers"] for r in rows], [r["events_per_s"] for r in rows], marker="o")
    ax.set_xticks([r["workers"] for r in rows])
    ax.set_xlabel("workers on one consumer group")
    ax.set_ylabel("events/s (all workers)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{result['machine']['cpus']}-core machine, Kafka and Redis on it too")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ITEM_STEPS = {"product": "product: the sequential model's probability x the relevance of the item's tags",
              "mixture": "mixture: the tags' relevance x the sequential model's softmax within each tag",
              "round_robin": "round robin: each tag's trail, then the sequential model's ranking, tags interleaved",
              "popularity_within_tags": "round robin with each tag's items by popularity (no sequential model)"}


def _route_alone_table(st: dict, served: str) -> list[str]:
    """The intent route alone (R@20 all / new of its own list) under each item step the run
    scored: the served one (`intent_route_alone_*`) and the variants (`intent_route_alone_<step>_*`)."""
    lines = ["| item step | R@20 all | R@20 new |", "|---|---|---|"]
    for step, text in ITEM_STEPS.items():
        key = "intent_route_alone" + ("" if step == served else f"_{step}")
        if f"{key}_recall@20_all" in st:
            lines.append(f"| {text}{' (served)' if step == served else ''} | {st[f'{key}_recall@20_all']:.3f} | "
                         f"{st.get(f'{key}_recall@20_new', 0):.3f} |")
    return lines


def _item_step_section(results: list[dict]) -> list[str]:
    """The item steps on held-out train users (benchmarks/item_step.py): how the default was chosen."""
    lines = ["## The intent route's item step, chosen on held-out train users", "",
             "`python -m benchmarks.item_step --dataset D --split S`: the users the intent weight is fitted on "
             "(a sample of the split's train part held out: leave-one-out's validation items, else each user's "
             "last train event; no test case), the same model and tags, each item step of "
             "reasoning/retrieval.py. Route alone: Recall@20 of the intent route's own list; its top-20 hits, "
             "and in brackets those in none of the recent, co-visitation and sequential routes' own top 20; "
             "exclusive recall at the routes: those over the hits of the four top 20s together; weight: what "
             "the intent-weight fit would choose with that step (the served merge's NDCG@20 at weight 0); "
             "explanation diversity: 1 - mean pairwise ROUGE-L among the explanations of one item in the "
             "route's top 20s ('-': a run before it was measured).", "",
             "| dataset (cases) | item step | route alone R@20 all / new | route top-20 hits (in no other top 20) | "
             "exclusive recall at the routes | fitted intent weight | NDCG@20 all / new at 0 | explanation diversity "
             "| s | commit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for step, f in r["steps"].items():
            at0 = f["grid"].get("0.0", {})
            new = f.get("intent_route_alone_recall@20_new")
            lines.append(
                f"| {r['dataset']} ({r['users']} {r['cases']}) | {step}{' (default)' if step == r['served_default'] else ''} | "
                f"{f['intent_route_alone_recall@20_all']:.3f} / {'-' if new is None else f'{new:.3f}'} | "
                f"{f['intent_top20_hits']} ({f['intent_top20_hits_in_no_other_top20']}) | "
                f"{100 * f.get('exclusive_recall_routes', 0):.1f}% | {f['weight_intent']} | "
                f"{at0.get('ndcg@20_all', 0):.4f} / {at0.get('ndcg@20_new', 0):.4f} | "
                f"{'-' if f.get('explanation_diversity') is None else format(f['explanation_diversity'], '.3f')} | "
                f"{f['seconds']} | `{r['commit']}` |")
    notes = [r["note"] for r in results if r.get("note")]
    return lines + [""] + [n + "\n" for n in notes]


def _backbone_section(result: dict) -> list[str]:
    """The ablation of the intent model's backbone (`bench intent --bases tiny,smollm2`, or
    benchmarks/intent_row.py `--bases` on a sample of the test users)."""
    rows = [(name, r) for name, r in result["methods"].items() if name.startswith("intent")]
    sample, split = result.get("sample"), result["protocol"]["split"]
    loo = split == "leave-one-out"
    lines = [f"## Intent model backbones: {result['dataset']}", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`, {result['seconds']:.0f} s in all). "
             f"Split {split}. Same split, tags, atoms, prompts, constrained decoding and merge for every backbone; "
             "each trained on the split's train events only (SFT, `SFTConfig.for_base`); reasoning in the served "
             "context mode, batches of the reasoner's size, CPU only."
             + (f" Scored on a seeded random sample of {sample['users']:,} of the {sample['of']:,} test users (seed "
                f"{sample['seed']}), the same users for every backbone." if sample else "")
             + ("" if result.get("sequential_route", True) else
                " The sequential route is off in this run (no SASRec: the tags' items ranked by the round-robin step)."),
             "",
             "| backbone | parameters | SFT steps (stage 1 / 2) x batch | train s | category HR@30 | exclusive recall "
             "(served list / at the routes) | intent route alone R@20 all / new | served "
             + ("R@10 / N@10" if loo else "R@20 all / new") + " | explanation diversity | users/s | LM tokens per user |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        st = r["stats"]
        mode = st[st.get("served_mode", "hybrid")]
        sft = st.get("sft", {})
        routes = st.get("exclusive_recall_routes")
        diversity = (st.get("explanations") or {}).get("diversity_1_minus_rouge_l")
        served = (f"{r['all']['recall@10']:.4f} / {r['all']['ndcg@10']:.4f}" if loo
                  else f"{r['all']['recall@20']:.3f} / {r['new']['recall@20']:.3f}")
        lines.append(
            f"| {st.get('base', 'tiny')} | {st['parameters'] / 1e6:.1f}M | {sft.get('lm_steps', '?')} / "
            f"{sft.get('adaptor_steps', '?')} x {sft.get('batch_size', '?')} | {st['train_seconds']:.0f} | "
            f"{mode['category_hr@30']:.3f} | {100 * st.get('exclusive_recall', 0):.2f}% / "
            f"{'-' if routes is None else f'{100 * routes:.1f}%'} | "
            f"{st.get('intent_route_alone_recall@20_all', 0):.3f} / {st.get('intent_route_alone_recall@20_new', 0):.3f} | "
            f"{served} | {'-' if diversity is None else f'{diversity:.3f}'} | {mode['users_per_s']:.2f} | "
            f"{mode['tokens_per_refresh']:.0f} |")
    for name in ("recent_history", "itemknn", "sasrec"):
        r = result["methods"].get(name)
        if r:
            lines.append(f"| ({name}) | | | | | | | {r['all']['recall@20']:.3f} / {r['new']['recall@20']:.3f} | | | |")
    if result.get("note"):
        lines += ["", result["note"]]
    return lines + [""]


def _explanations_section(result: dict) -> list[str]:
    """`bench explanations`: the LLM writing explanations through the faithfulness gate."""
    lines = [f"## LLM-written explanations ({result['base']} backbone)", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`, {result['seconds']:.0f} s). "
             f"{result['users']} users, the first {result['per_user']} intent items of each explained by the model.", "",
             "| LLM attempts | passed the gate | served LLM sentences | diversity (LLM sentences, items) | "
             "diversity (all served, items) | served and unfaithful | s per LLM explanation |", "|---|---|---|---|---|---|---|",
             f"| {result['llm_attempts']} | {100 * (result['llm_pass_rate'] or 0):.1f}% | {result['served_llm']} | "
             f"{result['diversity_llm'] or 0:.3f} ({result['llm_items_with_2_or_more']}) | "
             f"{result['diversity_all'] or 0:.3f} ({result['items_with_2_or_more']}) | {result['served_unfaithful']} | "
             f"{result['seconds_per_llm_explanation'] or 0:.2f} |"]
    if result.get("note"):
        lines += ["", result["note"]]
    return lines + [""]


def _chaos_section(result: dict) -> list[str]:
    """`bench chaos`: faults while events flow, then exactly-once in Feast and the item model."""
    rec = result["worker_recovery_s"]
    lines = ["## Chaos: worker kills, broker and Redis restarts, a Redis stall, a reasoner kill", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`). {result['dataset']}: "
             f"{result['events_sent']:,} events and {result['malformed_sent']} malformed messages sent in "
             f"{result['sending_s']:.0f} s, drained {result['drain_s']:.0f} s after the last one; reasoner "
             f"{'on' if result['reasoner'] else 'off (no intent model)'}.", "",
             "| events lost (Feast users) | double counted (Feast users) | item counts lost | item counts double | "
             "users / items off | dead letters (distinct messages) / malformed sent | lists at the user's last state |",
             "|---|---|---|---|---|---|---|",
             f"| {result['user_events_lost']} | {result['user_events_double_counted']} | {result['item_counts_lost']} | "
             f"{result['item_counts_double_counted']} | {result['users_off']} / {result['items_off']} | "
             f"{result['dead_letters']['written']} ({result['dead_letters']['distinct_messages']}) / {result['malformed_sent']} | "
             f"{result['recs']['at_last_state']} of {result['recs']['users']} ({result['recs']['with_list']} with a list) |", "",
             "| fault | at (s) | lasted (s) | recovery (s): until the count moves again |", "|---|---|---|---|"]
    lines += [f"| {f['fault']} | {f['at_s']} | {f['lasted_s']} | {f['recovery_s']} ({f.get('recovered', 'worker messages handled')}) |"
              for f in result["faults"]]
    lines.append(f"| worker SIGKILL + restart, x{result['worker_kills']} | | | p50 {rec.get('p50')}, max {rec.get('max')}"
                 f" ({rec.get('never_recovered', 0)} not measured) |")
    lines += ["", f"Processes that exited by themselves and were restarted (as compose's restart policy would): "
                  f"{result['exits_restarted']}."]
    if result.get("note"):
        lines += ["", result["note"]]
    return lines + [""]


def _overload_plot(result: dict, path: Path) -> None:
    """Lag and worker RSS over time, one line per mode."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for mode in result["modes"]:
        samples = mode["samples"]
        t = [x["t_s"] for x in samples]
        axes[0].plot(t, [x["lag"] for x in samples], label=mode["mode"])
        axes[1].plot(t, [x["worker_rss_mb"] for x in samples], label=mode["mode"])
        over = [x["t_s"] for x in samples if x["phase"] == "overload"]
        if over:
            for ax in axes:
                ax.axvspan(over[0], over[-1], alpha=0.08, color="C3")
    axes[0].set(xlabel="seconds (shaded: the overload)", ylabel="events sent, not yet handled", title="lag")
    axes[1].set(xlabel="seconds", ylabel="MB", title="worker RSS (with its pusher child)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _overload_section(result: dict) -> list[str]:
    """`bench overload`: factor x the sustained rate, what was shed, the drain, nothing lost."""
    lines = [f"## Overload: {result['factor']:g}x the sustained rate for {result['seconds']:g} s", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`). {result['traffic']}. Per mode, on "
             f"fresh topics: the sustained rate S is the worker's events/s draining a backlog; then "
             f"{result['normal_share']:g} x S for 20 s, {result['factor']:g} x S for {result['seconds']:g} s, and "
             f"{result['normal_share']:g} x S again; recovery = from the end of the overload until everything "
             "sent by then is handled. `no-shed`: worker.shed_lag_s 0; `shed`: the default (stream/processor.py).", "",
             "| mode | S / backlog drained (events/s) | offered / achieved in the overload | handled in the overload | "
             "backlog at its end | recovery (s) / lists in full again (s) | RSS MB: after S, max, end | refreshes built / shed / built degraded "
             "in the overload | intent shed | lost / double counted | lists at the last state |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in result["modes"]:
        o, d, rss = m["phases"]["overload"], m["during_overload"], m["worker_rss_mb"]
        lines.append(
            f"| {m['mode']} | {m['sustained_events_per_s']:,} / {m['backlog_drain_events_per_s']:,} | "
            f"{o['offered_rate']:,} / {o['achieved_rate']:,} | "
            f"{d['events_valid']:,} | {m['phases']['recovery']['backlog_at_end']:,} | {m['phases']['recovery']['recovery_s']} / "
            f"{m['phases']['recovery'].get('full_lists_again_s') if m['shed_lag_s'] else 'n/a'} | "
            f"{rss['after_sustained']:.0f}, {rss['max']:.0f}, {rss['end']:.0f} | {d['refreshes']:,} / {d['refreshes_shed']:,} / "
            f"{d['refreshes_overloaded']:,} | {m['whole_run']['intent_shed']:,} | "
            f"{m['user_events_lost'] + m['item_counts_lost']} / {m['user_events_double_counted'] + m['item_counts_double_counted']} | "
            f"{m['recs']['at_last_state']:,} of {m['recs']['users']:,} |")
    lines += ["", "Served lists by fallback_reason (all users sent events), at the end of the overload and at the end:", ""]
    for m in result["modes"]:
        if "fallbacks_at_overload_end" in m:
            lines.append(f"- {m['mode']}: " + ", ".join(f"{k} {v:,}" for k, v in m["fallbacks_at_overload_end"].items())
                         + "; then " + ", ".join(f"{k} {v:,}" for k, v in m["fallbacks_at_end"].items()))
    if "recovery_ratio_no_shed_to_shed" in result:
        lines += ["", f"Recovery without shedding / with it: {result['recovery_ratio_no_shed_to_shed']}x (same run)."]
    _overload_plot(result, HERE / "overload.png")
    lines += ["", "![overload](overload.png)"]
    if result.get("note"):
        lines += ["", result["note"]]
    return lines + [""]


def _soak_plot(result: dict, path: Path) -> None:
    """Worker RSS, Redis memory, changelog bytes and resident users over the run."""
    samples = result["samples"]
    t = [x["t_s"] for x in samples]
    panels = [("worker_rss_mb", "worker RSS (MB, with its pusher)"), ("redis_used_mb", "Redis used memory (MB)"),
              ("changelog_mb", "changelog on the broker's disk (MB)"), ("users_resident", "users in the worker's table")]
    end = max((x["t_s"] for x in samples if x["phase"] == "sending"), default=None)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for ax, (name, title) in zip(axes, panels):
        ax.plot(t, [x[name] for x in samples])
        if end is not None:
            ax.axvline(end, color="C3", alpha=0.4)
        ax.set(title=title, xlabel="seconds (red: last event sent)")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _soak_section(result: dict) -> list[str]:
    """`bench soak`: does state level off with a million users and half a million items?"""
    r, p, end = result["retention"], result["plateau"], result["at_end"]
    lines = ["## Soak: does state level off? (one worker)", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`). {result['traffic']}. Routes: "
             f"{result['routes']}. Retention for the run (short, so that forgetting happens within it; the defaults "
             f"are 30 days and 64 MiB): users idle {r['user_idle_s']:g} s, items idle {r['item_idle_s']:g} s, "
             f"changelog segments {r['changelog_segment_mb']} MiB, popularity set {r['popular_max']:,} items. Sent in "
             f"{result['sending_s']:,.0f} s, drained {result['drain_after_sending_s']:,.0f} s later "
             f"({result['events_valid']:,} valid events handled, {result['users_expired']:,} users forgotten), then "
             "no events for the idle phase. Plateau: the largest value in the last quarter of the sending phase at "
             "most 10% above the largest in its second quarter (decided before the run).", "",
             "| series | second quarter max | last quarter max | growth | plateau | medians: second / last quarter | "
             "at the end (idle) |",
             "|---|---|---|---|---|---|---|"]
    for name in ("worker_rss_mb", "redis_used_mb", "redis_keys", "changelog_mb", "users_resident", "popular_items"):
        q = p[name]
        lines.append(f"| {name} | {q.get('second_quarter_max', 0):,} | {q.get('last_quarter_max', 0):,} | "
                     f"{q.get('growth')} | {'yes' if q.get('plateaued') else 'NO'} | "
                     f"{q.get('second_quarter_median', 0):,.0f} / {q.get('last_quarter_median', 0):,.0f} | {end[name]:,} |")
    _soak_plot(result, HERE / "soak.png")
    lines += ["", "![soak](soak.png)"]
    if result.get("note"):
        lines += ["", result["note"]]
    return lines + [""]


def _intent_section(result: dict) -> list[str]:
    name = result["dataset"]
    intent = result["methods"]["intent"]
    st = intent["stats"]
    c = result["counts"]
    lines = [f"## Intent route: {name}", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`, {result['seconds']:.0f} s). Split "
             f"{result['protocol']['split']}, {c['users_evaluated']} users ({c['users_with_new_targets']} with new "
             f"targets). Model `{st['model']}`: {st['parameters'] / 1e6:.2f}M-parameter Llama, {st['tags']} tags in "
             f"{st['personas']} personas, K/M/N = {'/'.join(map(str, st['k_m_n']))}, trained on the train events "
             f"only. `intent` is the merged list the worker serves (recent unbought items, behavioural route and "
             f"intent route by weighted reciprocal-rank fusion, weights recent / behavioural / intent = "
             f"{st['merge_weights']['recent']} / {st['merge_weights']['behavioural']} / {st['merge_weights']['intent']}; "
             f"the first two fitted on a held-out tail of the train events, "
             + (f"the intent weight on {iv['users']} users whose last train event the intent model never learned "
                f"from, against the {iv['against']} list (grid and scores in the JSON)"
                if (iv := st.get("intent_weight_validation")) and iv.get("grid")
                else "the intent weight a setting (the model carries no fitted one)")
             + "; see training/merge_weights.py"
             + ("; with the sequential route serving, the behavioural route is the worker's fusion of the recent, "
                "co-visitation and sequential routes, whose recent weight replaces the first" if st.get("sequential_model")
                else "") + ").", "",
             "| method | R@20 all / new | NDCG@20 all / new |", "|---|---|---|"]
    for method, r in result["methods"].items():
        lines.append(f"| {method} | {r['all']['recall@20']:.3f} / {r['new']['recall@20']:.3f} | "
                     f"{r['all']['ndcg@20']:.3f} / {r['new']['ndcg@20']:.3f} |")
    if "sasrec" not in result["methods"]:
        earlier = _load(f"eval-{name}.json")
        if earlier and "sasrec" in earlier["methods"]:
            r = earlier["methods"]["sasrec"]
            lines.append(f"| sasrec (from `{earlier.get('command', 'intentstream eval')}`, same split) | "
                         f"{r['all']['recall@20']:.3f} / {r['new']['recall@20']:.3f} | "
                         f"{r['all']['ndcg@20']:.3f} / {r['new']['ndcg@20']:.3f} |")
    h, t, mr = st["hybrid"], st["text"], st["multi_route"]
    lines += ["", "| figure | hybrid context (atoms) | full-text context |", "|---|---|---|",
              f"| category HR@30 of the arbiter's tags | {h['category_hr@30']:.3f} | {t['category_hr@30']:.3f} |",
              f"| context tokens per refresh | {h['context_tokens_per_refresh']:.1f} | {t['context_tokens_per_refresh']:.1f} |",
              f"| all LM tokens per refresh (context, planner, experts, arbiter) | {h['tokens_per_refresh']:.0f} | {t['tokens_per_refresh']:.0f} |",
              f"| reasoning seconds per user (batches of 32, 1 thread) | {h['seconds_per_user']:.3f} | {t['seconds_per_user']:.3f} |",
              f"| users per second | {h['users_per_s']:.1f} | {t['users_per_s']:.1f} |", "",
              f"Context tokens: text / hybrid = {st['context_token_ratio_text_over_hybrid']:.2f}x "
              f"(all tokens: {st['token_ratio_text_over_hybrid']:.2f}x); category HR@30 relative change hybrid vs text: "
              f"{100 * st['category_hr@30_relative_change_hybrid_vs_text']:+.1f}%.", "",
              f"Duplication: the hierarchy's experts proposed {100 * h['expert_duplication']:.1f}% duplicates "
              f"(each expert decodes within its persona's tags); the multi-route baseline ({st['k_m_n'][0]} independent "
              f"routes re-reading the context, sampling {st['k_m_n'][1]} tags each) {100 * mr['duplication']:.1f}%, "
              f"{mr['tokens_per_refresh']:.0f} tokens per refresh, category HR@30 of its union {mr['category_hr@30']:.3f}.", "",
              f"Exclusive recall (hits in the merged top 20 found by the intent route's own top 20 and by neither the "
              f"recent nor the behavioural route's top 20): "
              f"{100 * st.get('exclusive_recall', 0):.2f}% ({st.get('exclusive_counts', {}).get('intent_only', 0)} of "
              f"{st.get('exclusive_counts', {}).get('hits', 0)})"
              + (f"; at the routes, before the merge (targets in the intent route's top 20 and in none of the "
                 f"recent, co-visitation and sequential routes' own top 20, over the targets any of them holds): "
                 f"{100 * st['exclusive_recall_routes']:.2f}% ({st['exclusive_counts']['routes_intent_only']} of "
                 f"{st['exclusive_counts']['routes_hits']})" if "exclusive_recall_routes" in st else "")
              + "; the intent route alone, by item step "
              f"(reasoning/retrieval.py; the same tags; sequential model {st.get('sequential_model')}):", "",
              *_route_alone_table(st, result.get("intent_settings", {}).get("item_step", "round_robin")), ""]
    ex = st["explanations"]
    if ex.get("diversity_1_minus_rouge_l") is not None:
        lines += [f"Explanations: diversity (1 − mean pairwise ROUGE-L among explanations of the same item, "
                  f"{ex['items_with_2_or_more']} items) {ex['diversity_1_minus_rouge_l']:.3f}; faithfulness check "
                  f"passed {100 * ex['faithful_share']:.1f}% ({ex['rejected']} rejected, never served).", ""]
    if result.get("faiss"):
        f = result["faiss"]
        lines += [f"faiss HNSW over the catalog's {f['vectors']:,} MiniLM item atoms ({f['dim']} dims): recall@10 "
                  f"vs exact {f['recall_at_k']:.3f} ({f['queries']} queries, ties counted), {f['ms_per_query']:.2f} ms "
                  f"per query; the ONNX embedder encodes {f['embedder_strings_per_s']:.0f} strings/s in batches.", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    return lines


def _violations(run: dict) -> str:
    first, last = run["violation_rate_first_tenth"], run["violation_rate_last_tenth"]
    return " / ".join(f"{first[k]:.2f} -> {last[k]:.2f}" for k in ("align", "div", "len"))


def _rl_runs_by_stage(result: dict) -> list[str]:
    """The RL table of a run with seeds and stage figures (benchmarks/rl.py), and what the
    stages bound.

    >>> stages = {"personas": 0.7, "experts": 0.65, "final": 0.6}
    >>> seeds = [{"test": {**stages, "final": f}, "validation": {**stages, "final": 0.5}} for f in (0.62, 0.64)]
    >>> run = {"reward": "crs", "rm_loss": "listwise", "plan_accuracy": "personas", "category_hr@30": 0.63,
    ...        "violation_rate_first_tenth": {"align": 0.7, "div": 0, "len": 0}, "groups": 10,
    ...        "violation_rate_last_tenth": {"align": 0.5, "div": 0, "len": 0}, "zero_advantage_groups": 9,
    ...        "seconds_per_step": 1.0, "seeds": seeds}
    >>> lines = _rl_runs_by_stage({"stages": {"sft": {"test": stages, "validation": {**stages, "final": 0.55}}},
    ...                            "runs": {"grpo_crs": run}, "category_hr@30": {"sft": 0.6, "grpo_crs": 0.63}})
    >>> print(lines[2]); print(lines[3])
    | SFT | 0.6000 | | 0.5500 | | 0.70 / 0.65 / 0.60 | | | |
    | grpo_crs (crs, listwise RM, plan R_acc over personas) | 0.6300 (0.6200-0.6400) | +5.0% | 0.5000 | -9.1% | 0.70 / 0.65 / 0.63 | 0.70 -> 0.50 / 0.00 -> 0.00 / 0.00 -> 0.00 | 9 / 10 | 1.0 |
    >>> lines[-1]
    "SFT's planner picks personas whose tags hold a test user's categories for 70.0% of the test users, its experts emit tags of them for 65.0%, the arbiter keeps them in its 30 for 60.0%. The experts and the arbiter keep at most what the personas hold: with the planner's personas as they are, category HR@30 can rise by at most +16.7% relative."
    """
    sft = result["stages"]["sft"]
    base = result["category_hr@30"]["sft"]
    base_val = sft.get("validation", {}).get("final")

    def stages(hits: dict) -> str:
        return f"{hits['personas']:.2f} / {hits['experts']:.2f} / {hits['final']:.2f}"

    def mean_stages(run: dict, part: str) -> dict:
        return {k: sum(s[part][k] for s in run["seeds"]) / len(run["seeds"]) for k in ("personas", "experts", "final")}

    has_val = base_val is not None
    lines = ["| model | category HR@30 test (seeds' range) | vs SFT | " + ("validation | vs SFT | " if has_val else "")
             + "test: personas / experts / arbiter's 30 | violations align/div/len, first -> last tenth | "
             "zero-advantage groups | s/step |",
             "|---|---|---|" + ("---|---|" if has_val else "") + "---|---|---|---|",
             f"| SFT | {base:.4f} | | " + (f"{base_val:.4f} | | " if has_val else "") + f"{stages(sft['test'])} | | | |"]
    for name, run in result["runs"].items():
        finals = [s["test"]["final"] for s in run["seeds"]]
        spread = f" ({min(finals):.4f}-{max(finals):.4f})" if len(finals) > 1 else ""
        val = ""
        if has_val:
            v = mean_stages(run, "validation")["final"]
            val = f"{v:.4f} | " + (f"{100 * (v - base_val) / base_val:+.1f}% | " if base_val else " | ")
        hr = run["category_hr@30"]
        lines.append(f"| {name} ({run['reward']}, {run['rm_loss']} RM, plan R_acc over {run['plan_accuracy']}) | "
                     f"{hr:.4f}{spread} | {100 * (hr - base) / base:+.1f}% | {val}"
                     f"{stages(mean_stages(run, 'test'))} | {_violations(run)} | "
                     f"{run['zero_advantage_groups']} / {run['groups']} | {run['seconds_per_step']:.1f} |")
    test = sft["test"]
    lines += ["", f"SFT's planner picks personas whose tags hold a test user's categories for {100 * test['personas']:.1f}% "
              f"of the test users, its experts emit tags of them for {100 * test['experts']:.1f}%, the arbiter keeps "
              f"them in its 30 for {100 * test['final']:.1f}%. The experts and the arbiter keep at most what the "
              f"personas hold: with the planner's personas as they are, category HR@30 can rise by at most "
              f"{100 * (test['personas'] - test['final']) / test['final']:+.1f}% relative."]
    if "context_novel" in result:
        lines[-1] += (f" {100 * result['context_novel']['test']:.1f}% of the test users want categories none of "
                      f"which is one of their context items' categories (a planner reading the context reaches them "
                      f"only by guessing), {100 * result['uncategorised']['test']:.1f}% none with a category (no "
                      f"stage can hit them).")
    return lines


def _rl_curve(result: dict) -> list[str]:
    """The validation figures as GRPO trained (`bench rl --eval-every`), each run's mean over its
    seeds.

    >>> seeds = [{"curve": [{"step": 40, "personas": 0.8, "experts": 0.7, "final": f},
    ...                     {"step": 80, "personas": 0.8, "experts": 0.7, "final": f + 0.1}]} for f in (0.5, 0.6)]
    >>> lines = _rl_curve({"runs": {"grpo_crs": {"seeds": seeds}}, "stages": {"sft": {"validation":
    ...                    {"personas": 0.8, "experts": 0.7, "final": 0.5}}}})
    >>> print("\\n".join(lines[2:]))
    | grpo_crs | 0 | 0.80 / 0.70 / 0.5000 | |
    | grpo_crs | 40 | 0.80 / 0.70 / 0.5500 | +10.0% |
    | grpo_crs | 80 | 0.80 / 0.70 / 0.6500 | +30.0% |
    """
    sft = result["stages"]["sft"]["validation"]
    lines = ["| run | GRPO steps | validation: personas / experts / arbiter's 30 (mean of seeds) | vs SFT |",
             "|---|---|---|---|"]
    for name, run in result["runs"].items():
        curves = [seed["curve"] for seed in run["seeds"] if seed.get("curve")]
        if not curves:
            continue
        lines.append(f"| {name} | 0 | {sft['personas']:.2f} / {sft['experts']:.2f} / {sft['final']:.4f} | |")
        for points in zip(*curves):
            mean = {k: sum(p[k] for p in points) / len(points) for k in ("personas", "experts", "final")}
            lines.append(f"| {name} | {points[0]['step']} | {mean['personas']:.2f} / {mean['experts']:.2f} / "
                         f"{mean['final']:.4f} | {100 * (mean['final'] - sft['final']) / sft['final']:+.1f}% |")
    return lines


def _replay_timing_row(name: str, result: dict) -> str:
    """One row of the replay-timing table: a replay run's scores and when its lists were built.

    >>> stats = {"refreshes": 10, "refreshes_overloaded": 4, "intent_remerged": 2,
    ...          "served": {"items": {"recent": 5, "popular": 3}, "lists": {"none": 2}}}
    >>> r = {"commit": "abc", "run": {"intent_route": "off", "worker": "default"},
    ...      "methods": {"replay": {"all": {"recall@20": 0.3}, "new": {"recall@20": 0.08}, "stats": stats}}}
    >>> _replay_timing_row("ontime-1", r)
    '| ontime-1 | `abc` | off | default | 0.3000 | 0.0800 | 10 | 4 | 1.5 | 2 |'
    """
    replay = result["methods"]["replay"]
    st = replay["stats"]
    popular = st["served"]["items"].get("popular", 0) / max(1, sum(st["served"]["lists"].values()))
    return (f"| {name} | `{result['commit']}` | {result['run']['intent_route']} | {result['run']['worker']} | "
            f"{replay['all']['recall@20']:.4f} | {replay['new']['recall@20']:.4f} | {st.get('refreshes')} | "
            f"{st.get('refreshes_overloaded', 0)} | {popular:.1f} | {st.get('intent_remerged', '')} |")


def _replay_timing_section(paths: list[Path]) -> list[str]:
    runs = {path.stem.removeprefix("replay-timing-rees46-"): json.loads(path.read_text()) for path in paths}
    base = next((r for r in runs.values() if "itemknn" in r["methods"]), None)
    mch = next(iter(runs.values()))["machine"]
    lines = ["### When the served lists are built: REES46 replays on a worker that keeps up", "",
             "`intentstream eval --dataset rees46 --methods replay` (global-time split, 283 test users; the "
             "commands with their environment and the code of each run are in the JSONs "
             "`replay-timing-rees46-*.json`), one run at a time on this machine. The replay scores what Redis "
             "holds for each user at the end of the train period: the list of the user's last refresh. A worker "
             "that falls behind during the replay (`refreshes_overloaded`: built while behind, the full refresh "
             "deferred) builds every user's last list after the replay from their whole state; one that keeps "
             "up refreshes a user at a reason only (a purchase, a new dominant category, every 5 events), so "
             "without the settle refresh (INTENTSTREAM_TRIGGER__SETTLE_S, added after these `ontime` runs) a "
             "user's last 1 to 4 events never reached their list. `atend` forces the deferred way "
             "(INTENTSTREAM_WORKER__SHED_LAG_S=0.001); `every1` refreshes at every event; `settled` is the "
             "worker with the settle refresh (10 s). The REES46 replay figures of the section below were made "
             "the deferred way by a slower machine falling behind (ad9f636: 2,347 refreshes built while behind; "
             "fccc37d's intent-on run recorded no such count, and scores as the deferred runs do). `intent-*`: "
             "the route on with no shedding (INTENTSTREAM_INTENT__MAX_WAIT_S=900: every requested user reasoned "
             "about), its model and weight (0.1) trained and fitted on the split's train part. Machine: "
             f"{mch['cpus']} cores ({mch['cpu']}).", "",
             "| run | commit | intent route | worker | R@20 all | R@20 new | refreshes | built while behind | "
             "popular items in the top 10 per list | intent results merged into a newer list |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_replay_timing_row(name, r) for name, r in sorted(runs.items())]
    if base:
        knn = base["methods"]["itemknn"]
        for prefix, what in (("ontime", "without the settle refresh"), ("settled-", "with the settle refresh")):
            group = [r["methods"]["replay"] for name, r in runs.items()
                     if name.startswith(prefix) and r["run"]["intent_route"] == "off"]
            if not group:
                continue
            lo_hi = {w: (min(m[w]["recall@20"] for m in group), max(m[w]["recall@20"] for m in group))
                     for w in ("all", "new")}
            ahead = {w: sum(m[w]["recall@20"] > knn[w]["recall@20"] for m in group) for w in ("all", "new")}
            lines += ["", f"On time {what} ({len(group)} runs, intent route off): R@20 all {lo_hi['all'][0]:.3f}-"
                      f"{lo_hi['all'][1]:.3f}, new {lo_hi['new'][0]:.3f}-{lo_hi['new'][1]:.3f}; ahead of item-kNN "
                      f"on all in {ahead['all']} of {len(group)} runs, on new in {ahead['new']}."]
    if base:
        b = base["methods"]
        lines += ["", "Baselines of the same split, in the `intent-after` run: " + ", ".join(
            f"{name} {b[name]['all']['recall@20']:.4f} / {b[name]['new']['recall@20']:.4f}"
            for name in ("recent_history", "itemknn", "sasrec") if name in b) + " (R@20 all / new)."]
    return lines + [""]


def _rl_section(result: dict) -> list[str]:
    hr = result["category_hr@30"]
    rel = result["relative_to_sft"]
    rm = result["reward_models"]
    g = result["grpo_config"]
    fresh = result.get("fresh_share") or 0
    title = (f"RL on data the SFT model did not see: {result['dataset']}" if fresh
             else f"Feedback loop and RL: {result['dataset']}")
    measured_as_trained = any(seed.get("curve") for run in result["runs"].values() for seed in run["seeds"])
    if measured_as_trained:
        title += f", {g['steps']} GRPO steps at lr {g['lr']:g}, measured as they train"
    lines = [f"## {title}", ""]
    validation = result.get("validation_share") or 0
    if fresh:
        part = (f"the last {100 * fresh:.0f}% less the last {100 * validation:.0f}%" if validation
                else f"the last {100 * fresh:.0f}%")
        lines += [f"The SFT model here was trained on the first {result['sft_train_events']:,} train events "
                  f"(all but the last {100 * fresh:.0f}%); GRPO's episodes come from {part} (their "
                  f"contexts include the earlier history), as feedback arrives after a model is deployed. Held-out "
                  f"users and targets as above.", ""]
    if validation:
        lines += [f"Validation users: the {result['validation_users']} users with train events on both sides of the "
                  f"last {100 * validation:.0f}% of the train events (contexts from before that cut, targets the "
                  f"categories after it; no model learned from those events): shaped like the test users, so an RL "
                  f"setting can be chosen on them rather than on the test.", ""]
    if result.get("seeds", 1) > 1:
        lines += [f"Each run trained with {result['seeds']} seeds (GRPOConfig.seed 0-{result['seeds'] - 1}); its "
                  f"figures are their mean, the test HR@30 of each seed in brackets as a range.", ""]
    lines += [
        f"Command: `{result['command']}` (commit `{result['commit']}`). Held-out users: the {result['held_out_users']} "
        f"test users of the global-time split (contexts from their train events, targets the categories of their "
        f"test events); GRPO on {result['train_episodes']:,} train episodes (context + categories of the next 5 "
        f"events). GRPO: {g['steps']} steps x {g['contexts_per_step']} contexts (a plan and an expert input each) x "
        f"G={g['group_size']}, lr {g['lr']}, clip {g['clip_eps']}, KL {g['kl_coef']}, gates align/div/len "
        f"{g['gates']['align']}/{g['gates']['div']}/{g['gates']['len']}.", "",
    ]
    if "stages" in result:
        lines += _rl_runs_by_stage(result)
        curve = _rl_curve(result) if "validation" in result["stages"]["sft"] else []
        if len(curve) > 2:
            lines += ["", "Validation users as GRPO trained (`--eval-every`): the policy after each checkpoint's "
                      "steps, the last row the end of the run.", "", *curve]
    else:
        lines += [
            "| model | category HR@30 | vs SFT | violations align/div/len, first -> last tenth | zero-advantage groups | s/step |",
            "|---|---|---|---|---|---|",
            f"| SFT | {hr['sft']:.4f} | | | | |"]
        for name, run in result["runs"].items():
            plan = f", plan R_acc over {run['plan_accuracy']}" if "plan_accuracy" in run else ""
            lines.append(f"| {name} ({run['reward']}, {run['rm_loss']} RM{plan}) | {run['category_hr@30']:.4f} | "
                         f"{100 * rel[name]:+.1f}% | {_violations(run)} | {run['zero_advantage_groups']} / {run['groups']} | "
                         f"{run['seconds_per_step']:.1f} |")
    lines += ["", f"Reward models distilled from {rm['judged_tags']:,} judged tags in {rm['groups']} groups "
              f"(judge grades B/A/S {rm['grades'].get('B', 0):.2f}/{rm['grades'].get('A', 0):.2f}/{rm['grades'].get('S', 0):.2f}): "
              + "; ".join(f"{loss}: pairwise agreement with the judge {rm[loss]['pairwise_agreement']:.3f}, Bad-vs-rest "
                          f"balanced accuracy {rm[loss]['bad_vs_rest_accuracy']:.3f}" for loss in ("listwise", "pointwise")
                          if loss in rm) + " (held-out judged groups).", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    if measured_as_trained:  # the step timings that follow are in the sections before this one already
        return lines
    lines += ["s/step is wall time on the machine that ran the command. A GRPO update only reads the samples "
              "of groups with some advantage: under CRS most groups have none, so its steps are cheaper than "
              "the summed reward's (few zero-advantage groups, every sample trained on).", ""]
    here = _load("grpo-step-cpu.json")
    if here:
        cpu = here["results"][0]
        lines += [f"One GRPO step on this machine alone (`{here['command']}`, {here['machine']['cpus']} cores, "
                  f"{cpu['torch_threads']} torch threads): {cpu['seconds_per_step']:.2f} s/step, "
                  f"{cpu['contexts_per_s']:.1f} contexts/s, {cpu['samples_per_s']:.0f} sampled outputs/s; "
                  f"{100 * cpu['sampling_share']:.0f}% of it constrained sampling.", ""]
    step = _load("grpo-step-h200.json")
    if step:
        cpu, gpu = step["results"][0], step["results"][-1]
        lines += [f"One GRPO step on another machine (`{step['command']}`, {step['machine']['cpus']} CPU cores, "
                  f"{step['machine']['gpu']}): CPU {cpu['seconds_per_step']:.2f} s/step ({cpu['contexts_per_s']:.1f} "
                  f"contexts/s), GPU {gpu['seconds_per_step']:.2f} s/step ({gpu['contexts_per_s']:.1f} contexts/s); "
                  f"{100 * gpu['sampling_share']:.0f}% of a step is constrained sampling, a Python trie walk per token.", ""]
    return lines


def _sft_step_section(result: dict) -> list[str]:
    lines = ["## SFT: one stage-1 step before and after", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`, {result['torch_threads']} torch thread). "
             "The same batches of full-text examples, forward and backward, timed three ways: `labels` the "
             "model's own loss over every position of the right-padded batch (before), `answer_only` the LM head "
             "at the answer positions only, `chunked` that loss in length-sorted chunks (what trains; same "
             "gradient, unit test). Median seconds per step.", "",
             "| dataset | tokens per example p50 / p90 / max | labels s | answer_only s | chunked s | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in result["results"]:
        m = r["median_step_s"]
        lines.append(f"| {r['dataset']} | {' / '.join(str(n) for n in r['tokens_per_example_p50_p90_max'])} | "
                     f"{m['labels']} | {m['answer_only']} | {m['chunked']} | {r['speedup_vs_labels']['chunked']}x |")
    return lines + [""]


def _loop_section(result: dict) -> list[str]:
    t = result["trainer"]
    before = result["before"]
    lines = [f"## The loop on the real services: {result['dataset']}", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`). The replay method with the intent route "
             f"on: the train events through Kafka -> worker -> Redis (the second half with simulated feedback, "
             f"{before['worker'].get('feedback_logged')} records logged), Recall@20 of what Redis serves on the "
             f"{result['users']} test users; then one `train --once` run on that feedback; then the replay method "
             f"again serving the trainer's candidate.", "",
             "| | model | R@20 all | R@20 new |", "|---|---|---|---|",
             f"| before | SFT | {before['all']['recall@20']:.4f} | {before['new']['recall@20']:.4f} |"]
    if "after" in result:
        a = result["after"]
        lines.append(f"| after ({'promoted' if a['promoted'] else 'not promoted: the gate said no'}) | {a['model']} | "
                     f"{a['all']['recall@20']:.4f} | {a['new']['recall@20']:.4f} |")
    hr = t.get("category_hr@30", {})
    lines += ["", f"Trainer: {t.get('episodes')} episodes from {t.get('impressions')} impressions and {t.get('actions')} "
              f"actions ({t.get('train_episodes')} train / {t.get('held_out_episodes')} held out); held-out category "
              f"HR@30 serving {hr.get('serving', float('nan')):.4f} vs candidate {hr.get('candidate', float('nan')):.4f}: "
              f"{t.get('status')}; {t.get('seconds')} s for the run, {t.get('seconds_per_step', float('nan')):.2f} s per "
              f"GRPO step.", ""]
    return lines


def _reasoner_section(result: dict) -> list[str]:
    t = result["throughput"]
    b = t.get("before_row_walk_concatenated_cache") or t["before_concatenated_cache"]
    a = t.get("after_tensor_walk_reserved_cache") or t["after_reserved_cache"]
    lines = [f"## The reasoning tier: {result['dataset']}", "",
             f"Command: `{result['command']}` (commit `{result['commit']}`; benchmarks/reasoner.py). "
             f"The dataset's real-time rate: {result['real_time_events_per_s']} events/s over "
             f"{result['span_hours']} h.", "",
             f"Throughput of model `{t['model']}` on {t['users']} users, batches of {t['batch_size']}, one torch "
             f"thread (rounds before/after: {t['rounds_users_per_s']}; same lists: {t['same_lists']}):", "",
             "| decoding | users/s | users/s per core | LM tokens per user | experts share | arbiter share |",
             "|---|---|---|---|---|---|"]
    for name, r in (("before: trie walked per row, cache concatenated each step", b),
                    ("after: trie walked as tensors, cache into reserved room", a)):
        lines.append(f"| {name} | {r['users_per_s']} | {r['users_per_s_per_core']} | {r['lm_tokens_per_user']} | "
                     f"{r['stage_share'].get('experts', 0):.2f} | {r['stage_share'].get('arbiter', 0):.2f} |")
    lines += ["", f"Speed-up {t['speedup']}x.", ""]
    ar = t.get("arithmetic")
    if ar:
        lines += [f"What bounds it (benchmarks/reasoner.py `arithmetic`, {ar['users']} users, one thread): the LM's "
                  f"matmuls execute {ar['executed_gflop_per_user']} GFLOP per user (torch's profiler: padding, "
                  f"finished rows and every position's logits included; the real tokens' own share "
                  f"{ar['real_token_gflop_per_user']} GFLOP) at {ar['achieved_gflop_s']} GFLOP/s "
                  f"({ar['users_per_s_unprofiled']} users/s). This core's fp32 matmul: {ar['matmul_peak_gflop_s']} "
                  f"GFLOP/s on a square 2048 product, {ar['decode_step_matmul_gflop_s']} GFLOP/s at a decoding "
                  f"step's shape. Ceiling at that peak for the real tokens alone: {ar['ceiling_users_per_s']} "
                  f"users/s, against the target's 120.", ""]
    lines += ["Coverage: a worker and a reasoner while the events are replayed in time order at a constant rate; "
              "covered = the served list carries intent results at most "
              "`intent.every_n_events` events behind the state it was built from.", "",
              "| rate | events/s | events | sent to reasoning | reasoned | shed | superseded | coverage live | "
              "after drain | event -> intent recs p50 / p99 ms | event -> recs p99 ms | cores worker / reasoner |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["coverage"].items():
        live, drained = r["coverage_live"], r["coverage_after_drain"]
        ir, er = r["event_to_intent_recs_ms"], r["event_to_recs_ms"]
        fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        lines.append(f"| {name} | {r['offered_events_per_s']} | {r['events']} | {r['refreshes_sent_to_reasoning']} "
                     f"({r['share_sent']:.0%}) | {r['reasoned']} | {r['shed']} | {r['superseded']} | "
                     f"{live['share'] or 0:.1%} of {live['users']} | {drained['share'] or 0:.1%} | "
                     f"{fmt(ir['p50'])} / {fmt(ir['p99'])} | {fmt(er['p99'])} | "
                     f"{r['cores']['worker']} / {r['cores']['reasoner']} |")
    iso = result["isolation"]
    rounds = (f"medians of {iso['rounds']} rounds (p99s with {[round(v) for v in iso['p99_rounds']['with']]}, "
              f"without {[round(v) for v in iso['p99_rounds']['without']]} ms): " if iso.get("rounds") else "")
    lines += ["", f"The stream beside the reasoner (x{iso['factor']:g}): {rounds}event -> recs p50 / p99 "
              f"{iso['with_reasoner']['p50']:.0f} / {iso['with_reasoner']['p99']:.0f} ms with it, "
              f"{iso['without_reasoner']['p50']:.0f} / {iso['without_reasoner']['p99']:.0f} ms without "
              f"(p99 ratio {iso['p99_ratio']}); cores with {iso['cores_with']}, without {iso['cores_without']}"
              + (f"; Redis forks (snapshots, AOF rewrites) during the runs with {iso['redis_forks']['with']}, "
                 f"without {iso['redis_forks']['without']}" if iso.get("redis_forks") else "") + ".", "",
              f"Targets: {result['targets']}.", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    return lines


PUBLISHED_BEAUTY = [
    # (model, R@5, N@5, R@10, N@10, source): the table of ../shared/data/amazon-beauty-5core/README.md
    ("P5", 0.0163, 0.0107, 0.0254, 0.0136, "TIGER paper (NeurIPS 2023)"),
    ("BERT4Rec", 0.0203, 0.0124, 0.0347, 0.0170, "TIGER paper"),
    ("SASRec (as usually cited)", 0.0387, 0.0249, 0.0605, 0.0318, "TIGER paper"),
    ("TIGER", 0.0454, 0.0321, 0.0648, 0.0384, "TIGER paper"),
    ("ActionPiece", None, None, 0.0775, 0.0424, "eSASRec benchmark (blondered/transformer_benchmark)"),
    ("SASRec with sampled softmax", None, None, 0.0921, 0.0531, "eSASRec benchmark"),
    ("eSASRec", None, None, 0.0928, 0.0523, "eSASRec benchmark (RecSys 2025)"),
]


def _sasrec_loss_section(result: dict | None) -> list[str]:
    """SASRec's objective, full vs sampled softmax, on validation only (benchmarks/sasrec_loss.py)."""
    if not result:
        return []
    val = next(k for k in result if k.startswith("best_val_")).removeprefix("best_")
    rows = [f"| {loss} | {d} | {r['epochs']} | {r['best_epoch']} | {r['best_' + val]:.4f} | {r['seconds']:.0f} | "
            f"{res['source']} |"
            for loss, res in result["losses"].items() for d, r in res["runs"].items()]
    return ["SASRec's objective on the validation items (no test case read): "
            f"`{result['command']}` (commit `{result['commit']}`, {result['seconds']:.0f} s; "
            f"{result['config']['negatives']} uniform negatives per position for the sampled softmax, the "
            "published setting; everything else the `sasrec` row's config at that commit)."
            + (f" {result['note']}" if result.get("note") else ""), "",
            f"| loss | dropout | epochs | best epoch | {val} | s | source |", "|---|---|---|---|---|---|---|",
            *rows, "", f"Kept: `{result['chosen']}` (SequentialConfig.loss).", ""]


def _served_sentence(served: dict | None) -> str:
    """What a replay's scored lists were made of (evaluation/replay_method.py `stats["served"]`).

    >>> _served_sentence({"k": 10, "lists": {"none": 3}, "items": {"covisit": 20, "intent": 10}, "hits": {}})
    ' Scored lists by fallback reason (`none`: every route ran): none 3; the routes of their top 10 items: covisit 20, intent 10; of the test hits there: none.'
    """
    if not served:
        return ""
    count = lambda d: ", ".join(f"{k} {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"  # noqa: E731
    return (f" Scored lists by fallback reason (`none`: every route ran): {count(served['lists'])}; the routes of "
            f"their top {served['k']} items: {count(served['items'])}; of the test hits there: {count(served['hits'])}.")


def _beauty_section(result: dict, replay: dict | None = None, intent: dict | None = None,
                    backbones: dict | None = None) -> list[str]:
    """Our leave-one-out rows next to the published ones (same protocol: last item test, second
    to last validation, full ranking minus the user's history); `backbones`' rows (intent_row.py
    `--bases`, a sample of the test users) marked as such."""
    c = result["counts"]
    lines = ["## Against the literature: Amazon Beauty 5-core, leave-one-out", "",
             f"Command: `{result.get('command', 'intentstream eval')}` (commit `{result.get('commit', '?')}`). "
             f"{c['users_evaluated']:,} users, {c['items']:,} items, {c['train_events']:,} train events; the test "
             "item is each user's last row (file order: ties on the last day kept), the validation item the one "
             "before it (SASRec's early stopping only), ranking over the full catalog minus the user's history "
             "(every Beauty event is a purchase, so the `all` and `new` lists are the same). Published rows from "
             "the dataset README (sources named); ours measured on this machine, no GPU."
             + (f" {result['note']}" if result.get("note") else ""), "",
             "| model | R@5 | N@5 | R@10 | N@10 | source | fit s |", "|---|---|---|---|---|---|---|"]
    fmt = lambda x: "" if x is None else f"{x:.4f}"  # noqa: E731
    for name, r5, n5, r10, n10, source in PUBLISHED_BEAUTY:
        lines.append(f"| {name} | {fmt(r5)} | {fmt(n5)} | {fmt(r10)} | {fmt(n10)} | {source} | |")
    for name, r in result["methods"].items():
        a = r["all"]
        lines.append(f"| **{name}** (ours) | {a['recall@5']:.4f} | {a['ndcg@5']:.4f} | {a['recall@10']:.4f} | "
                     f"{a['ndcg@10']:.4f} | this repo | {r['fit_seconds']} |")
    notes: list[str] = []  # the paragraphs under the rows, after the table's last row
    if replay:
        for name, r in replay["methods"].items():
            a = r["all"]
            lines.append(f"| **{name}**: the deployed system (ours) | {a['recall@5']:.4f} | {a['ndcg@5']:.4f} | "
                         f"{a['recall@10']:.4f} | {a['ndcg@10']:.4f} | this repo | {r['fit_seconds']} |")
        stats = next(iter(replay["methods"].values())).get("stats", {})
        notes += ["", f"The deployed system: `{replay.get('command')}` (commit `{replay.get('commit', '?')}`): the "
                  "train and validation events through Kafka, the worker and Redis in file order, scoring what "
                  "Redis serves each test user: the behavioural route fused with the sequential route (the "
                  f"SASRec of the `sasrec` row, trained on the train part and served from ONNX + faiss; model "
                  f"`{stats.get('sequential_model')}`, merged into {stats.get('sequential_merged', 0):,} of "
                  f"{stats.get('refreshes', 0):,} refreshes). "
                  + (f"The intent route served `{stats['intent_model']}`, trained on the train part "
                     f"({stats.get('intent_users', 0):,} users reasoned, {stats.get('intent_shed', 0):,} requests "
                     f"shed past the wait limit, {stats.get('intent_requested', 0):,} requested)."
                     if stats.get("intent_model") else
                     "The intent route was off in this run (the replay method of that commit would have served the "
                     "cache's intent model, trained on another dataset; it now trains one on the split).")
                  + _served_sentence(stats.get("served"))
                  + (f" {replay['note']}" if replay.get("note") else "")]
        best_ours = next(iter(replay["methods"].values()))["all"]
        for name, _, _, r10, n10, _ in PUBLISHED_BEAUTY:
            if name in ("TIGER", "eSASRec", "SASRec with sampled softmax"):
                notes.append(f"- vs {name}: R@10 {100 * (best_ours['recall@10'] / r10 - 1):+.1f}%, "
                             f"N@10 {100 * (best_ours['ndcg@10'] / n10 - 1):+.1f}%.")
    if intent:
        for name, r in intent["methods"].items():
            a, st = r["all"], r.get("stats", {})
            lines.append(f"| **{name}**: served merge with the intent route (ours) | {a['recall@5']:.4f} | "
                         f"{a['ndcg@5']:.4f} | {a['recall@10']:.4f} | {a['ndcg@10']:.4f} | this repo | "
                         f"{r['fit_seconds']} |")
            ex, expl, served = st.get("exclusive_counts", {}), st.get("explanations", {}), st.get(st.get("served_mode"))
            weights = st.get("merge_weights", {})
            notes += ["", f"The intent row: `{intent.get('command')}` (commit `{intent.get('commit', '?')}`): the "
                      f"tiny intent model `{st.get('model')}` ({st.get('tags')} tags in {st.get('personas')} personas, "
                      f"trained on the train part in {st.get('train_seconds')} s), each user's list the served "
                      f"merge of their recent items, the behavioural and sequential fusion and the intent route at "
                      f"the weights fitted on held-out train users (recent / behavioural / intent "
                      f"{weights.get('recent')} / {weights.get('behavioural')} / {weights.get('intent')})"
                      + (f"; {served['users_per_s']:.1f} users/s reasoned, category HR@30 "
                         f"{served.get('category_hr@30', 0):.3f}" if served else "")
                      + f". Intent route alone R@20 {st.get('intent_route_alone_recall@20_all', 0):.4f}; exclusive "
                      f"recall {100 * st.get('exclusive_recall', 0):.1f}% ({ex.get('intent_only', 0)} of "
                      f"{ex.get('hits', 0)} hits in the top 20 found by the intent route alone); explanation diversity "
                      f"{expl.get('diversity_1_minus_rouge_l', 0):.3f} (served explanations: each passed the "
                      f"faithfulness gate, which passed {100 * (expl.get('faithful_share') or 0):.1f}% of those "
                      "written)." + (f" {intent['note']}" if intent.get("note") else "")]
    if backbones:
        sample = backbones.get("sample") or {}
        where = (f"{sample['users']} sampled test users" if sample else "all test users") + (
            "" if backbones.get("sequential_route", True) else ", sequential route off")
        for name, r in backbones["methods"].items():
            a = r["all"]
            lines.append(f"| **{name}** ({r['stats'].get('base', 'tiny')} backbone; {where}) (ours) | "
                         f"{a['recall@5']:.4f} | {a['ndcg@5']:.4f} | {a['recall@10']:.4f} | {a['ndcg@10']:.4f} | "
                         f"this repo | {r['fit_seconds']} |")
        notes += ["", "The backbone rows: `intent_row.py --bases` on a sample of the test users (not comparable with "
                  "the full-set rows above; see \"Intent model backbones\" below for the sample, the setup and "
                  "the comparison)."]
    lines += notes
    sasrec = result["methods"].get("sasrec")
    if sasrec and sasrec.get("log"):
        log = sasrec["log"]
        val = next(k for k in log[0] if k.startswith("val_"))
        best = max(log, key=lambda e: e[val])
        runs = {}
        for entry in log:
            runs[entry.get("dropout")] = runs.get(entry.get("dropout"), 0) + 1
        stats = sasrec.get("stats", {})
        weight = stats.get("fusion", {}).get("sequential", stats.get("merge_weight"))
        lines += ["", f"SASRec: {len(log)} epochs in all ({sum(e['seconds'] for e in log) / len(log):.1f} s each), "
                  f"one run per dropout ({', '.join(f'{d}: {n} epochs' for d, n in runs.items())}); kept: dropout "
                  f"{best.get('dropout')}, epoch {best['epoch']} ({val} {best[val]:.4f}). Its merge weight against "
                  f"the behavioural route, fitted on the validation items: {weight}. Against the published SASRec "
                  f"with sampled softmax: R@10 {100 * (sasrec['all']['recall@10'] / 0.0921 - 1):+.1f}%, N@10 "
                  f"{100 * (sasrec['all']['ndcg@10'] / 0.0531 - 1):+.1f}%. `recent_history` scores 0 by construction "
                  "(no Beauty user buys an item twice, and the history is taken out of the ranking)."]
    return lines + [""]


def render() -> Path:
    ingest = _load("ingest.json")
    evals = [r for r in (_load("eval-taobao.json"), _load("eval-rees46.json")) if r]
    reasoner = _load("reasoner-rees46.json")
    lines = ["# intentstream benchmark report", "",
             "Generated by `make bench` (`python -m benchmarks.report` over `benchmarks/results/*.json`).", ""]
    if ingest:
        mch = ingest["machine"]
        lines += ["## Machine", "",
                  f"{mch['cpus']} cores ({mch['cpu']}), {mch['memory_gib']} GiB, Python {mch['python']}, "
                  f"{mch['platform']}; Kafka, Redis and the worker on the same machine. Commit `{ingest['commit']}`.", "",
                  "## Ingest", "", f"Command: `{ingest['command']}`", "",
                  "| figure | value |", "|---|---|"]
        for key in ("events", "events_per_s", "ceiling_events_per_s", "ratio", "worker_batches", "refreshes",
                    "freshness_offered_events_per_s", "freshness_p50_ms", "freshness_p90_ms", "freshness_p99_ms",
                    "recs_freshness_p50_ms", "recs_freshness_p90_ms", "recs_freshness_p99_ms",
                    "recs_debounced_lag_p50_ms", "recs_debounced_lag_p99_ms", "recs_debounced_samples",
                    "freshness_readback_users_with_features", "feast_write_rows", "feast_push_rows_per_s",
                    "feast_write_to_online_store_rows_per_s", "feast_write_to_online_store_skip_dedup_rows_per_s",
                    "feast_write_to_online_store_async_skip_dedup_rows_per_s", "feast_write_chosen",
                    "feast_fastest", "feast_ratio_fastest_vs_push"):
            if key in ingest:
                lines.append(f"| {key} | {ingest[key]} |")
        _ingest_plot(ingest, HERE / "ingest.png")
        lines += ["", "![ingest](ingest.png)", ""]
        if ingest.get("scale_out"):
            lines += ["### Workers on one consumer group", "",
                      "Same topic, one new group per worker count; events/s from the first batch of any worker to "
                      "the last. On this 2-core machine the workers share the cores with Kafka, Redis and their "
                      "Feast pusher children: the CPU share is each worker's process tree (start-up included) "
                      "over the window.", "",
                      "| workers | events/s | vs one worker | CPU share per worker | batches | refreshes |",
                      "|---|---|---|---|---|---|"]
            base = ingest["scale_out"][0]["events_per_s"] or 1
            for row in ingest["scale_out"]:
                lines.append(f"| {row['workers']} | {row['events_per_s']} | {row['events_per_s'] / base:.2f} | "
                             f"{', '.join(str(c) for c in row['cpu_share_per_worker'])} | {row['batches']} | "
                             f"{row['refreshes']} |")
            _scale_plot(ingest, HERE / "ingest-workers.png")
            lines += ["", "![events/s vs workers](ingest-workers.png)", ""]
        for extra in sorted(RESULTS.glob("ingest-offered-*.json")):
            r = json.loads(extra.read_text())
            lines += [f"Freshness at a lower offered load (`{r['command']}`, commit `{r['commit']}`): "
                      f"{r['freshness_offered_events_per_s']:.0f} events/s offered, p50 {r['freshness_p50_ms']:.0f} ms, "
                      f"p90 {r['freshness_p90_ms']:.0f} ms, p99 {r['freshness_p99_ms']:.0f} ms "
                      f"({r['freshness_samples']} samples); throughput in that run {r['events_per_s']} events/s.", ""]
    compare = sorted(RESULTS.glob("ingest-compare-*.json"))
    if compare:
        first = json.loads(compare[0].read_text())
        lines += ["### Before and after a change, same command and machine", "",
                  f"Command: `{first['command']}` (with `--events` as in the events column). Runs of one "
                  "worker vary a lot on this 2-core machine (Kafka, Redis, the Feast pusher and the worker share "
                  "the cores): read the spread, not one run; compare runs with the same number.", "",
                  "| run | commit | events | events/s | ratio to aiokafka | freshness p50 ms | p90 ms | p99 ms | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for path in compare:
            r = json.loads(path.read_text())
            lines.append(f"| {path.stem.removeprefix('ingest-compare-')} | `{r['commit']}` | {r['events']} | "
                         f"{r['events_per_s']} | {r['ratio']} | {r['freshness_p50_ms']:.0f} | "
                         f"{r['freshness_p90_ms']:.0f} | {r['freshness_p99_ms']:.0f} | {r.get('note', '')} |")
        lines.append("")
    scale = sorted(RESULTS.glob("scale-replay-*.json"))
    if scale:
        lines += ["### One worker vs two: what the system serves", "",
                  "`intentstream eval --dataset D --methods replay,replay2`: the train events through one "
                  "worker (`replay`) and through two workers on one group (`replay2`), global-time split. The "
                  "replay scores each user's last refresh, whose timing (debounce, batch boundaries, how much "
                  "of the other users' traffic the shared model had at that moment) varies from run to run: "
                  "compare the one-worker runs with each other too.", "",
                  "| file | dataset | method | R@20 all | R@20 new | NDCG@20 all | refreshes | fit s |",
                  "|---|---|---|---|---|---|---|---|"]
        for path in scale:
            r = json.loads(path.read_text())
            for name, m in r["methods"].items():
                lines.append(f"| {path.stem} | {r['dataset']} | {name} | {m['all']['recall@20']:.4f} | "
                             f"{m['new']['recall@20']:.4f} | {m['all']['ndcg@20']:.4f} | "
                             f"{m.get('stats', {}).get('refreshes')} | {m['fit_seconds']} |")
        lines.append("")
    timing = sorted(RESULTS.glob("replay-timing-rees46-*.json"))
    if timing:
        lines += _replay_timing_section(timing)
    for result in evals:
        c = result["counts"]
        name = result["dataset"]
        lines += [f"## Offline evaluation: {name}", "",
                  f"Command: `{result.get('command', 'intentstream eval')}`. Split {result['protocol']['split']}; "
                  f"{c['train_events']:,} train / {c['test_events']:,} test events, {c['users_evaluated']} users "
                  f"evaluated ({c['users_with_new_targets']} with new targets), {c['items']:,} items. "
                  f"Recall@K = hits in the top K / min(|targets|, K)."
                  + (f" Commit `{result['commit']}`." if result.get("commit") else "")
                  + (f" {result['note']}" if result.get("note") else ""), ""]
        lines += _eval_table(result)
        _eval_plot(result, HERE / f"eval-{name}.png")
        lines += ["", f"![{name}](eval-{name}.png)", ""]
    beauty, replay = _load("eval-beauty-loo.json"), _load("eval-beauty-loo-replay.json")
    if beauty:
        lines += _beauty_section(beauty, replay, _load("eval-beauty-loo-intent.json"), _load("intent-beauty-backbones.json"))
        lines += _sasrec_loss_section(_load("sasrec-loss-beauty.json"))
    for name in ("taobao", "rees46"):
        result = _load(f"intent-{name}.json")
        if result:
            lines += _intent_section(result)
    steps = sorted(RESULTS.glob("item-step-*.json"))
    if steps:
        lines += _item_step_section([json.loads(path.read_text()) for path in steps])
    for name in ("rees46", "taobao", "beauty"):
        result = _load(f"intent-{name}-backbones.json")
        if result:
            lines += _backbone_section(result)
        result = _load(f"explanations-{name}-smollm2.json")
        if result:
            lines += _explanations_section(result)
    sft_step = _load("sft-step.json")
    if sft_step:
        lines += _sft_step_section(sft_step)
    for name in ("rees46", "taobao"):
        for variant in (f"rl-{name}.json", f"rl-{name}-fresh.json", f"rl-{name}-fresh-budget.json"):
            result = _load(variant)
            if result:
                lines += _rl_section(result)
        result = _load(f"loop-{name}.json")
        if result:
            lines += _loop_section(result)
    if reasoner:
        lines += _reasoner_section(reasoner)
    chaos = _load("chaos.json")
    if chaos:
        lines += _chaos_section(chaos)
    overload = _load("overload.json")
    if overload:
        lines += _overload_section(overload)
    soak = _load("soak.json")
    if soak:
        lines += _soak_section(soak)
    out = HERE / "REPORT.md"
    out.write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    print(render())
