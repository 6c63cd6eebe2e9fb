"""Prometheus metrics of one process (`prometheus-client`), at http://{metrics.host}:{port}/metrics.

Every counter, latency sample and mark a worker or a reasoner records goes through
stream/metrics.py `WorkerMetrics`, which keeps the Redis copy (what the CLI, the demo and the
benchmarks read across processes) and feeds this process's `Exporter`, so the two never
disagree on what is counted. Names follow Prometheus conventions (base units, `_total`):

- `intentstream_<name>_total`: each `WorkerMetrics` counter (`events_valid`, `events_dead`,
  `duplicates`, `events_failed`, `batches`, `refreshes`, `intent_requested`, `intent_users`,
  `intent_shed`, ...); a counter kept in ms (`time_fold_ms`) is `intentstream_time_fold_seconds_total`.
- `intentstream_<stage>_seconds` histograms: `feature_freshness` (event -> features in Feast),
  `recs_freshness` (event -> recs), `intent_freshness` (event -> intent recs), `intent_latency`
  (queued -> intent recs), `recs_debounce_lag`, `batch` (one batch's processing), `event_age`
  (how long a batch's oldest event waited: above worker.shed_lag_s refreshes are shed).
- `intentstream_fallbacks_total{reason}`: lists written with a `FallbackReason`;
  `intentstream_recs_written_total`: every list written.
- `intentstream_consumer_lag{topic}`: messages behind the end of this process's partitions
  (worker: the events topic; reasoner: the intent topic, its backlog).
- `intentstream_reasoner_users_per_second`: the reasoner's measured throughput (moving average).
- `intentstream_model_info{kind, version}`: 1 for the version this process serves.
- `intentstream_trainer_runs_total{status}` and `intentstream_trainer_promotions_total`.
- `intentstream_<mark>_timestamp_seconds`: marks (`first_batch_ms`, `worker_ready_ms`, ...).
- `intentstream_refreshes_pending`: the worker's debounced refreshes waiting (shed ones included).
- `intentstream_refreshes_settling`: its users waiting for trigger.settle_s of quiet.
- `intentstream_users_resident`: users in the worker's table (idle ones are forgotten:
  retention.user_idle_s; counted `intentstream_users_expired_total`).
- `process_*`: the process's resident memory, CPU seconds and open files.

Cost: every latency sample is observed (the Redis copy keeps 200 per batch): 2,000 observations
take 2.5 ms here, against about 1.5 s to process a 2,000-event batch on this 2-core box.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

log = logging.getLogger(__name__)

PREFIX = "intentstream_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def metric_name(name: str, kind: str) -> str:
    """The Prometheus name of a WorkerMetrics name.

    >>> metric_name("events_valid", "counter"), metric_name("time_fold_ms", "counter")
    ('intentstream_events_valid_total', 'intentstream_time_fold_seconds_total')
    >>> metric_name("recs_freshness_ms", "histogram"), metric_name("worker_ready_ms", "mark")
    ('intentstream_recs_freshness_seconds', 'intentstream_worker_ready_timestamp_seconds')
    """
    base = name.removesuffix("_ms")
    if kind == "counter":
        return f"{PREFIX}{base}_seconds_total" if name.endswith("_ms") else f"{PREFIX}{name}_total"
    if kind == "histogram":
        return f"{PREFIX}{base}_seconds"
    if kind == "gauge":
        return f"{PREFIX}{name}"
    return f"{PREFIX}{base}_timestamp_seconds"


class Exporter:
    """This process's metrics in their own registry (several in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, open fds
        self._metrics: dict[str, object] = {}
        self._served: dict[str, str] = {}
        self._lock = threading.Lock()
        self.fallbacks = Counter(f"{PREFIX}fallbacks", "Lists written with a fallback reason",
                                 ["reason"], registry=self.registry)
        self.recs_written = Counter(f"{PREFIX}recs_written", "Lists written to recs:{user_id}", registry=self.registry)
        self.lag = Gauge(f"{PREFIX}consumer_lag", "Messages behind the end of this process's partitions",
                         ["topic"], registry=self.registry)
        self.users_per_s = Gauge(f"{PREFIX}reasoner_users_per_second", "Reasoner throughput (moving average)",
                                 registry=self.registry)
        self.model = Gauge(f"{PREFIX}model_info", "1 for the model version this process serves",
                           ["kind", "version"], registry=self.registry)
        self.trainer_runs = Counter(f"{PREFIX}trainer_runs", "Trainer runs by outcome", ["status"],
                                    registry=self.registry)
        self.promotions = Counter(f"{PREFIX}trainer_promotions", "Versions the trainer promoted",
                                  registry=self.registry)
        self.server = None

    def _get(self, name: str, kind: str):
        full = metric_name(name, kind)
        metric = self._metrics.get(full)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(full)
                if metric is None:
                    help_ = f"WorkerMetrics {kind} {name}"
                    if kind == "counter":
                        metric = Counter(full.removesuffix("_total"), help_, registry=self.registry)
                    elif kind == "histogram":
                        metric = Histogram(full, help_, buckets=LATENCY_BUCKETS, registry=self.registry)
                    else:
                        metric = Gauge(full, help_, registry=self.registry)
                    self._metrics[full] = metric
        return metric

    def count(self, name: str, value: float) -> None:
        counter = self._get(name, "counter")  # a counter that stays 0 is still served
        if value:
            counter.inc(value / 1000 if name.endswith("_ms") else value)

    def observe_ms(self, name: str, values: Iterable[float]) -> None:
        histogram = self._get(name, "histogram")
        for v in values:
            histogram.observe(max(0.0, v) / 1000)

    def mark(self, name: str, value_ms: int) -> None:
        self._get(name, "mark").set(value_ms / 1000)

    def level(self, name: str, value: float) -> None:
        """`intentstream_<name>`: a gauge of this process's current value."""
        self._get(name, "gauge").set(value)

    def serving(self, kind: str, version: str) -> None:
        """`model_info{kind, version}` = 1 for `version` only (the previous version's series goes)."""
        previous = self._served.get(kind)
        if previous == version:
            return
        if previous is not None:
            self.model.remove(kind, previous)
        self.model.labels(kind, version).set(1)
        self._served[kind] = version

    def serve(self, host: str, port: int) -> int | None:
        """Start the HTTP endpoint (a daemon thread); returns its port, None when off (port 0)
        or when the port is taken (logged: the process goes on without it)."""
        if not port:
            return None
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("Prometheus endpoint not started on %s:%d: %s", host, port, exc)
            return None
        log.info("Prometheus metrics at http://%s:%d/metrics", host, port)
        return port


_process: Exporter | None = None


def process_exporter() -> Exporter:
    """The one exporter of this process (what its endpoint serves)."""
    global _process
    if _process is None:
        _process = Exporter()
    return _process
