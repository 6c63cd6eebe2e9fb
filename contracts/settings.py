"""Settings of every intentstream process (CLI, worker, benchmarks), read from the environment.

One class, built once at the entry point and passed down. Every field is documented here and
listed in `.env.example`. Environment variables use the prefix `INTENTSTREAM_` and `__` between
a group and its field, e.g. `INTENTSTREAM_KAFKA__PORT=9092` or `INTENTSTREAM_TRIGGER__EVERY_N_EVENTS=5`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_FRAME_MAX_BYTES = 100 * 1024 * 1024
"""The largest network frame a kafka-python client accepts (KafkaSettings.client_options)."""


class KafkaSettings(BaseModel):
    """The broker: where clients find it and how `intentstream up` runs it."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Host clients connect to (and the embedded broker binds)."""
    port: int = 9092
    """Client listener port."""
    controller_port: int = 9093
    """KRaft controller listener port of the embedded broker."""
    version: str = "3.9.1"
    """Apache Kafka version fetched from Maven Central (org.apache.kafka:kafka_2.13)."""
    heap: str = "768m"
    """Java heap (-Xmx) of the embedded broker."""
    events_topic: str = "intentstream.events"
    """Topic the shop emits events to, keyed by user_id."""
    dead_letter_topic: str = "intentstream.dead-letters"
    """Topic invalid events (and invalid feedback) go to, each with its reason."""
    feedback_topic: str = "intentstream.feedback"
    """Topic the shop emits feedback to (impressions and actions on recommended items), keyed by user_id."""
    intent_topic: str = "intentstream.intent-requests"
    """Topic the worker sends refreshes to reasoning on, keyed by user_id; `intentstream reasoner`
    processes consume it (one consumer group; reasoners beyond its partitions idle)."""
    partitions: int = Field(default=4, ge=1)
    """Partitions of topics the project creates (events, dead letters, changelogs)."""
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the broker (and the embedded broker listens): SASL_* authenticate
    with SCRAM (username, password), *SSL encrypts (the broker's certificate checked against
    ssl_cafile)."""
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-256"
    """SCRAM variant of the SASL_* protocols."""
    username: str | None = None
    """SCRAM user of this process (SASL_*); the embedded broker creates it when it formats its
    storage and uses it between its own listeners."""
    password: SecretStr | None = None
    """Password of that user (never logged nor printed)."""
    ssl_cafile: Path | None = None
    """CA certificate (PEM) clients verify the broker with (*SSL); unset: the system's CAs. The
    embedded broker's own certificate: services.tls_dir."""

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def ssl_context(self):
        """The TLS context of the aiokafka clients (faust), None without TLS."""
        if not self.tls:
            return None
        import ssl

        return ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)

    def client_options(self) -> dict:
        """kafka-python keyword arguments for these settings: bootstrap, protocol, credentials,
        and the largest network frame a client accepts.

        kafka-python 2.3.3 rejects a frame over `receive_message_max_bytes`, 1,000,000 bytes by
        default, while one fetch may bring 1 MiB from each assigned partition (up to the
        consumer's fetch_max_bytes, 50 MiB): a reasoner reading a backlog of the intent topic's 4
        partitions logged `InvalidReceiveError: Invalid frame length: 4194513` and reconnected.
        100 MiB, above any fetch, is the value of the upstream fix (dpkp/kafka-python#3074, PR
        #3075; not in 2.3.3, installed here); tests/integration/test_intent_route.py holds it.

        >>> KafkaSettings().client_options()
        {'bootstrap_servers': '127.0.0.1:9092', 'security_protocol': 'PLAINTEXT', 'receive_message_max_bytes': 104857600}
        """
        out: dict = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol,
                     "receive_message_max_bytes": KAFKA_FRAME_MAX_BYTES}
        if self.sasl:
            if not self.username or self.password is None:
                raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.username and kafka.password")
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password.get_secret_value())
        if self.tls:
            out.update(ssl_check_hostname=True, **({"ssl_cafile": str(self.ssl_cafile)} if self.ssl_cafile else {}))
        return out


class RedisSettings(BaseModel):
    """Redis: Feast's online store and the recommendation cache."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Host of the Redis server (Feast online store and recommendation cache)."""
    port: int = 6379
    """Port of the Redis server."""
    db: int = 0
    """Redis database number."""
    timeout_s: float = Field(default=2.0, gt=0)
    """Connect and read timeout (seconds) of every Redis call: a stalled Redis raises instead of
    blocking the worker's loop."""
    retries: int = Field(default=2, ge=0)
    """Retries of a Redis call that timed out or lost its connection (backoff 0.1 s, doubling).
    With the defaults one call gives up after about 6.3 s, inside the group session timeout."""
    username: str | None = None
    """ACL user of this process (infra/redis_acl.py: worker, reasoner, reader, trainer, admin);
    unset: Redis's default user."""
    password: SecretStr | None = None
    """Password of that user (never logged nor printed; no `,`: Feast's connection string)."""
    tls: bool = False
    """Connect over TLS (the embedded Redis then listens with TLS only: services.tls_dir)."""
    ssl_ca_certs: Path | None = None
    """CA certificate (PEM) the server is verified with when tls is on; unset: the system's CAs."""

    @field_validator("password")
    @classmethod
    def _no_comma(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and "," in value.get_secret_value():
            raise ValueError("the Redis password must not contain ',' (it goes into Feast's connection string)")
        return value

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"

    def client_options(self) -> dict:
        """redis-py keyword arguments for the credentials and TLS (empty by default).

        >>> RedisSettings().client_options()
        {}
        """
        out: dict = {}
        if self.username:
            out["username"] = self.username
        if self.password is not None:
            out["password"] = self.password.get_secret_value()
        if self.tls:
            out["ssl"] = True
            if self.ssl_ca_certs:
                out["ssl_ca_certs"] = str(self.ssl_ca_certs)
        return out


class FeastSettings(BaseModel):
    """The Feast feature store (online store: the Redis above)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    repo_path: Path = REPO_ROOT / "feature_repo"
    """Folder with feature_store.yaml and the feature declarations."""
    project: str = "intentstream"
    """Feast project: namespaces the registry and the online-store keys."""


class WorkerSettings(BaseModel):
    """The Faust stream worker."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    app_id: str = "intentstream-worker"
    """Faust app id: the consumer group and the prefix of the state-table changelog topic."""
    batch_max: int = Field(default=2000, ge=1)
    """Most events folded in one micro-batch."""
    batch_within_s: float = Field(default=0.05, gt=0)
    """Longest wait (seconds) to fill a micro-batch; bounds the added latency."""
    max_event_bytes: int = Field(default=65536, ge=256)
    """Events larger than this (bytes) are dead-lettered as oversized."""
    max_future_s: float = Field(default=86_400.0, ge=0)
    """Events whose ts lies more than this many seconds after the worker's clock are
    dead-lettered (the other bounds of an event: contracts/events.py)."""
    batch_attempts: int = Field(default=3, ge=1)
    """Tries of a batch whose processing raised. A retryable error (Redis, Kafka, Feast
    unreachable) that outlasts them and outage_wait_s stops the worker loudly (its events come again after the
    restart); any other error is then narrowed to the events that raise alone, which are
    dead-lettered (reason processing_failed) while the rest of the batch goes on."""
    retry_backoff_s: float = Field(default=0.5, gt=0)
    """Wait before the second try of a failed batch (seconds), doubled before each later try
    (at most 5 s); the reasoner waits an outage out with the same backoff."""
    outage_wait_s: float = Field(default=60.0, ge=0)
    """How long a batch that fails because Redis, Kafka or Feast is unreachable keeps being
    retried (the waits added up) before the worker stops for a restart: a restarted or stalled
    Redis is waited out. Below the group's max poll interval (300 s). The reasoner's take is
    retried for as long (stream/reasoner_service.py, Outages)."""
    recovery_seek_delay_s: float = Field(default=0.0, ge=0)
    """Tests only: sleep this long (seconds) inside the post-recovery seek, to widen the window
    in which faust 0.15.3 lost records (stream/fast_consumer.py SeekFirstRecovery)."""
    recovery_stall_s: float = Field(default=15.0, gt=0)
    """A changelog partition that a table recovery still needs records of and that delivered
    none for this long (seconds) is fetched again from the offset the recovery has reached
    (stream/fast_consumer.py SeekFirstRecovery); the worker otherwise waits in recovery forever."""
    recovery_drop_changelog: bool = False
    """Tests only: each recovery marks its active changelog partitions as read to their end, so
    faust drops their records as already read (the stall `recovery_stall_s` ends)."""
    recent_items: int = Field(default=50, ge=1)
    """Recent interactions kept per user."""
    dedupe_window: int = Field(default=256, ge=1)
    """Recent event_ids kept per user to drop redelivered duplicates (at-least-once input)."""
    top_affinities: int = Field(default=20, ge=1)
    """Category and brand affinities kept per user."""
    affinity_half_life_events: float = Field(default=20.0, gt=0)
    """Affinities decay by half every this many of the user's events."""
    session_timeout_s: float = Field(default=10.0, gt=0)
    """Kafka group session timeout (seconds); group joins take about half of it."""
    instance_id: str | None = None
    """Static group membership: a stable id per worker process, unique in the group ("{hostname}"
    is replaced by the host name, one per compose replica). A worker restarted with its id within
    session_timeout_s gets its partitions back without a group rebalance; a stopped one's
    partitions move to the others only after session_timeout_s (static members do not leave the
    group). Unset: dynamic membership (a clean stop hands its partitions over at once)."""
    drain_timeout_s: float = Field(default=15.0, gt=0)
    """At a stop (SIGTERM) the worker runs its debounced refreshes, finishes its Feast pushes and
    commits what they acknowledged, for at most this long (seconds); events still unacknowledged
    then come again to the partitions' next owner. Keep it under the supervisor's grace period
    (compose: stop_grace_period 30s)."""
    item_push_interval_s: float = Field(default=1.0, ge=0)
    """Item features are pushed to Feast at most this often (seconds); user features go with
    the next push (features/pusher.py)."""
    popular_interval_s: float = Field(default=10.0, gt=0)
    """How often (seconds) the popularity fallback list (recs-popular) is rewritten, by the worker
    that owns events partition 0."""
    shed_lag_s: float = Field(default=5.0, ge=0)
    """Load shedding: a batch whose oldest event waited longer than this (seconds, from its broker
    timestamp to the batch's start) finds the worker behind. Every event is still folded and
    its features pushed; of the refreshes only a user's first events and purchases are built
    now, by the behavioural routes alone (no sequential route, no intent request;
    fallback_reason `overloaded`), and every due refresh waits as a debounced one for its full
    build until a batch is on time again (the others counted `refreshes_shed`;
    stream/processor.py). 0: never shed."""
    web_enabled: bool = False
    """Start Faust's web server (it binds 0.0.0.0:web_port)."""
    web_port: int = 6066
    """Port of Faust's web server when enabled."""


class TriggerSettings(BaseModel):
    """When a user's state changed enough to refresh recommendations."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    every_n_events: int = Field(default=5, ge=1)
    """Refresh after this many events since the last refresh."""
    on_purchase: bool = True
    """Refresh after a purchase."""
    category_hysteresis: float = Field(default=0.25, ge=0)
    """A new dominant category must beat the old one's affinity by this fraction."""
    min_interval_s: float = Field(default=1.0, ge=0)
    """Debounce: at most one refresh per user per this many seconds; later triggers wait."""
    settle_s: float = Field(default=10.0, ge=0)
    """A user whose latest events gave no reason to refresh (fewer than every_n_events since the
    last refresh) is refreshed once none of theirs came for this many seconds (trigger
    `settled`), so the list holds a session's last events; 0: never."""


class RecsSettings(BaseModel):
    """Recommendations written to Redis."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    top_k: int = Field(default=100, ge=1)
    """Items kept in recs:{user_id}."""
    covisit_window: int = Field(default=5, ge=1)
    """A new item is co-visited with this many of the user's preceding items."""
    covisit_max_neighbors: int = Field(default=100, ge=1)
    """Neighbours kept per item in the co-visitation model."""
    popularity_half_life_s: float = Field(default=3600.0, gt=0)
    """Half-life (seconds of event time) of the popularity counts."""
    model_refresh_s: float = Field(default=1.0, gt=0)
    """How long (seconds) a worker serves its local copy of an item's co-visitation row and labels
    before reading the shared item model again (other workers' increments show after this)."""
    updates_stream_maxlen: int = Field(default=100_000, ge=1)
    """Approximate length cap of the recs update stream."""
    model_version: str = "behavioural-1"
    """Version tag written with every recommendation."""


UNFITTED_INTENT_WEIGHT = 0.3
"""The intent route's merge weight when its model carries no fitted one: 0.3, chosen by hand
when the weight was a setting (at 1.0 its category-level picks displaced stronger co-visited
items on REES46's test lists: benchmarks/REPORT.md)."""


class ItemStep(StrEnum):
    """How the intent route turns a user's final tags into items (reasoning/retrieval.py)."""

    MIXTURE = "mixture"
    """P(item) = sum over tags of P(tag) * P(item | tag, user): the arbiter's relevance, the
    sequential model's softmax within the tag (round robin without a sequential model)."""
    PRODUCT = "product"
    """score(item) = the sequential model's probability of the item (over the whole catalog) times
    the summed relevance of the user's tags that hold it (round robin without a sequential model)."""
    ROUND_ROBIN = "round_robin"
    """Each tag's items (co-visitation trail, sequential ranking, popularity), tags interleaved."""


class IntentSettings(BaseModel):
    """The intent route: LM reasoning (planner -> experts -> arbiter), retrieval and merge."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    enabled: bool = True
    """Send refreshes to reasoning (the intent topic, served by `intentstream reasoner`) when a
    model exists at model_dir or in the registry (else behavioural only, with a warning in the log)."""
    model_dir: Path | None = None
    """The intent model directory (Hugging Face format); default: <cache_dir>/models/intent."""
    backend: str = "local"
    """LM backend of the reasoner: local (in-process transformers) or openai (an OpenAI-compatible server)."""
    openai_url: str = "http://127.0.0.1:8000"
    """Base URL of the OpenAI-compatible server (vllm serve / transformers serve)."""
    openai_api_key: SecretStr | None = None
    """API key sent as `Authorization: Bearer` to the server (vLLM: `--api-key`, the compose
    file's VLLM_API_KEY); unset: no header. Never logged nor printed."""
    openai_model: str = ""
    """Model name the server knows the checkpoint by (vLLM: --served-model-name; transformers
    serve: the model path); default: the model_dir path."""
    openai_structured: str = "none"
    """Constrain server answers to the vocabulary: vllm (structured_outputs regex) or none
    (answers are parsed and phrases outside the vocabulary dropped)."""
    openai_prompt_embeds: bool = False
    """Send the hybrid context as prompt_embeds (vLLM with --enable-prompt-embeds)."""
    mode: str = "hybrid"
    """Context form: hybrid (one embedding atom per item) or text (items spelled out)."""
    max_items: int = Field(default=20, ge=1)
    """Recent items in the context."""
    personas: int = Field(default=4, ge=1)
    """K: personas the planner proposes."""
    tags_per_persona: int = Field(default=10, ge=1)
    """M: tags each persona's expert proposes."""
    final_tags: int = Field(default=30, ge=1)
    """N: tags the arbiter keeps."""
    arbiter_diversity: float = Field(default=0.3, ge=0)
    """Weight of the arbiter's redundancy penalty (max cosine to a kept tag)."""
    items_per_tag: int = Field(default=8, ge=1)
    """Items retrieved per tag by category match (plus half as many by faiss for text catalogs)."""
    item_step: ItemStep = ItemStep.PRODUCT
    """How tags become items: product (the sequential model's probability of the item times its
    tags' relevance), mixture (the tags' relevance times that model's softmax within each tag) or
    round_robin (tags interleaved by rank); see reasoning/retrieval.py."""
    complement_top: int = Field(default=20, ge=0)
    """The intent route leaves out the items the other routes already show the user: the first
    complement_top of the behavioural list (with a sequential model, the fusion of the recent,
    co-visitation and sequential routes) and of the recent items merged beside it, so its slots
    go to items they miss (reasoning/pipeline.py `IntentInput.shown`). 0: it leaves out only what
    the user bought. Default: the length of list a shop shows (the evaluation's K); see
    benchmarks/REPORT.md for the figures on held-out train users."""
    weight_recent: float | None = Field(default=None, ge=0)
    """Merge weight of the user's recent unbought items (reciprocal-rank fusion); unset: the
    weight fitted with the model on held-out train events (training/merge_weights.py)."""
    weight_behavioural: float | None = Field(default=None, ge=0)
    """Merge weight of the behavioural route (co-visitation, popularity); unset: fitted with the
    model, like weight_recent."""
    weight_intent: float | None = Field(default=None, ge=0)
    """Merge weight of the intent route; unset: the weight fitted with the model on users whose
    last train event it never learned from (training/merge_weights.py `fit_intent_weight`), or
    0.3 (UNFITTED_INTENT_WEIGHT) for a model fitted without one (too few held-out users, or trained
    before the fit existed)."""
    llm_explanations: int = Field(default=0, ge=0)
    """How many of a user's intent items get an explanation written by the LLM (the served
    model, in process or behind the openai backend) from reasoning/prompts/explanation.md,
    served only if it passes the faithfulness check (the grounded realisation serves otherwise).
    0: grounded templates only (the tiny model writes little that passes; with the pretrained
    backbone see benchmarks/REPORT.md)."""
    batch_size: int = Field(default=32, ge=1)
    """Users the reasoner reasons about in one batch."""
    take_max: int = Field(default=2000, ge=1)
    """At most this many requests a reasoner takes from the intent topic at once (it takes what
    is waiting): coalesced per user, the newest it can serve within max_wait_s served in batches
    of batch_size, the rest shed; the take's offsets are committed after all are written."""
    min_interval_s: float = Field(default=10.0, ge=0)
    """A user whose intent was reasoned about (or requested) less than this many seconds ago is
    not sent again; their refresh merges the last intent result into the fresh behavioural list."""
    every_n_events: int = Field(default=10, ge=1)
    """After min_interval_s, a refresh whose reason is only the event count (not a purchase or a
    new dominant category) is sent again once this many events came since the state the
    last run read (stream/trigger.py intent_due); until then the last result is merged."""
    remember_users: int = Field(default=100_000, ge=1)
    """Users whose last request the worker keeps in memory, so a user is not sent again while
    their request is on its way (LRU; the last result itself is read from Redis)."""
    max_wait_s: float = Field(default=10.0, gt=0)
    """The reasoning SLO: a request older than this when its batch comes is shed, and of a take
    a reasoner serves only the newest users it can reason about within it (its measured users/s
    times this); the rest are shed at once: the behavioural list serves (fallback_reason
    intent_timeout, counted intent_shed)."""
    batch_timeout_s: float = Field(default=120.0, gt=0)
    """A reasoning batch still running after this many seconds is abandoned: the reasoner's LM
    child process is replaced and the batch's users get fallback_reason intent_timeout."""
    threads: int = Field(default=1, ge=0)
    """torch threads of the reasoner's in-process model (0: torch's default)."""
    nice: int = Field(default=19, ge=0, le=19)
    """Scheduling niceness the reasoner's LM child adds to itself (os.nice): where reasoners share
    cores with stream workers, the kernel runs the stream first and reasons on what is left
    (0: none added). On a host of its own it changes nothing. 19 (the lowest priority in the
    normal class) rather than SCHED_IDLE (`sched_idle`): measured on this 2-core box, REES46,
    three alternating rounds each, the stream's event -> recs p99 at x100 was 127 / 105 / 111 ms
    at nice 19 against 164 / 166 / 174 with SCHED_IDLE (without a reasoner 123 / 96 / 88), and
    event -> intent recs p99 at x10 1.86 / 1.77 / 1.58 s against 2.55 / 3.89 / 2.93 s."""
    sched_idle: bool = False
    """Put the reasoner's LM child in the Linux SCHED_IDLE class as well: it runs only on cores no
    other process wants. Off by default: measured, it cost both the stream's tail and the
    reasoning latency against nice 19 alone (`nice`); the likely mechanism is Linux's wakeup
    placement, which takes a core running only SCHED_IDLE work for an idle one
    (select_idle_sibling's sched_idle_cpu), so the stream's processes wake onto the child's core
    and preempt it even where the other core is free. Ignored, with a warning, where the OS has
    no SCHED_IDLE."""
    registry_poll_s: float = Field(default=5.0, gt=0)
    """How often (at most, before a batch) the reasoner checks the model registry
    in Redis for a newly promoted or rolled-back version, which it then loads between batches."""

    def merge_weights(self, model_meta: dict) -> tuple[float, float, float]:
        """(recent, behavioural, intent) weights: settings win, then the model's fitted ones."""
        fitted = model_meta.get("merge", {})
        recent = self.weight_recent if self.weight_recent is not None else fitted.get("weight_recent", 1.0)
        behavioural = (self.weight_behavioural if self.weight_behavioural is not None
                       else fitted.get("weight_behavioural", 1.0))
        intent = self.weight_intent if self.weight_intent is not None else fitted.get("weight_intent")
        return float(recent), float(behavioural), float(UNFITTED_INTENT_WEIGHT if intent is None else intent)

    def unfitted_route(self, model_meta: dict) -> list[str]:
        """The settings shaping the intent route's items that differ from those the model's
        intent weight was fitted with (training/merge_weights.py `fit_intent_weight` records
        them), as 'name value (fitted with value)'; empty when weight_intent is set or nothing
        differs. A model fitted before the complement existed was fitted without one.

        >>> fitted = {"merge": {"weight_intent": 0.0, "intent_validation": {"item_step": "product", "complement_top": 20}}}
        >>> IntentSettings().unfitted_route(fitted)
        []
        >>> IntentSettings(item_step="mixture", complement_top=0).unfitted_route(fitted)
        ['item_step mixture (fitted with product)', 'complement_top 0 (fitted with 20)']
        >>> IntentSettings().unfitted_route({"merge": {"weight_intent": 0.0, "intent_validation": {"users": 600}}})
        ['complement_top 20 (fitted with 0)']
        >>> IntentSettings(weight_intent=0.3).unfitted_route({"merge": {"weight_intent": 0.0}})
        []
        """
        merge = model_meta.get("merge", {})
        if self.weight_intent is not None or merge.get("weight_intent") is None:
            return []
        fitted = merge.get("intent_validation") or {}
        out = []
        if "item_step" in fitted and fitted["item_step"] != ItemStep(self.item_step).value:
            out.append(f"item_step {ItemStep(self.item_step).value} (fitted with {fitted['item_step']})")
        if fitted.get("complement_top", 0) != self.complement_top:
            out.append(f"complement_top {self.complement_top} (fitted with {fitted.get('complement_top', 0)})")
        return out

    def resolved_model_dir(self, cache_dir: Path) -> Path:
        return (self.model_dir or cache_dir / "models" / "intent").expanduser()


class SequentialSettings(BaseModel):
    """The sequential route: a SASRec model over the user's recent items, served by the worker
    from ONNX with faiss (reasoning/sequential.py), merged with the behavioural route."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    enabled: bool = True
    """Merge the route into every refresh when a model exists (the registry's serving sequential
    version, else model_dir); without one the worker serves the behavioural route alone."""
    model_dir: Path | None = None
    """The model directory (`intentstream train --sequential` writes one); default:
    <cache_dir>/models/sequential."""
    threads: int = Field(default=1, ge=1)
    """Threads of the worker's onnxruntime encoder and faiss search."""
    registry_poll_s: float = Field(default=5.0, gt=0)
    """How often (at most, at a refresh) the worker checks the registry for a newly promoted or
    rolled-back sequential version, which it loads and serves from the next refresh on."""

    def resolved_model_dir(self, cache_dir: Path) -> Path:
        return (self.model_dir or cache_dir / "models" / "sequential").expanduser()


class FeedbackSettings(BaseModel):
    """Feedback: impressions and actions on Kafka, logged to parquet by the worker."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    window_s: float = Field(default=1800.0, gt=0)
    """An action counts for an impression of the same user shown at most this long before it."""
    log_dir: Path | None = None
    """Where the feedback log (parquet parts) lives; default: <state_dir>/feedback/<feedback topic>."""
    batch_max: int = Field(default=2000, ge=1)
    """Feedback records written per parquet part at most."""
    batch_within_s: float = Field(default=2.0, gt=0)
    """How long the logger collects records before writing a part."""
    impression_every: int = Field(default=5, ge=1)
    """`intentstream replay --feedback`: a user's every n-th event shows them their current
    recommendations (a simulated impression)."""


class TrainerSettings(BaseModel):
    """The periodic trainer (`intentstream train --once / --every`)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    every: str = "15m"
    """Default period of `intentstream train --every` (s, m or h suffix)."""
    min_episodes: int = Field(default=100, ge=1)
    """Feedback episodes (impressions with the context the model saw and attributed actions)
    needed before a run trains; fewer: the run waits for more feedback."""
    holdout_share: float = Field(default=0.2, gt=0, lt=1)
    """Share of the episodes' users held out to compare the candidate with the serving version."""
    holdout_key: SecretStr | None = None
    """Secret that keys the held-out draw (HMAC of the user id), so feedback writers cannot pick
    the held-out users; unset: a random key kept in <versions_dir>/holdout.key (mode 0600)."""
    min_holdout_users: int = Field(default=30, ge=1)
    """Distinct held-out users a run needs before it may train and promote; fewer: it waits."""
    promote_margin: float = Field(default=0.01, ge=0)
    """The candidate is promoted only when its held-out category HR@30 exceeds the serving
    version's by more than this (absolute): a tie or noise never swaps the model."""
    grpo_steps: int = Field(default=40, ge=1)
    """GRPO steps per run (the rest of the GRPO configuration: training/grpo.py GRPOConfig)."""
    reward: Literal["crs", "sum"] = "crs"
    """crs (constrained reward shaping) or sum (the ablation)."""
    rm_loss: Literal["listwise", "pointwise"] = "listwise"
    """Reward-model loss: listwise (the paper's) or pointwise."""
    threads: int = Field(default=0, ge=0)
    """torch threads of the trainer (0: torch's default)."""
    versions_dir: Path | None = None
    """Where model versions are written; default: <cache_dir>/models/versions."""


class RetentionSettings(BaseModel):
    """What is forgotten, and when: the bounds on state that grows with the number of users and
    items (measured by `intentstream bench soak`). A duration of 0 keeps that state forever."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    user_idle_s: float = Field(default=30 * 86_400.0, ge=0)
    """A user without an event for this long (seconds of their partition's stream time: the
    broker time of the newest event processed there, so a lagging worker forgets nobody whose
    events wait) is forgotten: the worker that owns their partition drops their state from its
    table (a changelog tombstone, so compaction reclaims it; counted `users_expired`), and their
    recs:{user_id} and intent results expire this long after they were written. A returning user
    starts from an empty state."""
    item_idle_s: float = Field(default=30 * 86_400.0, ge=0)
    """An item without an event for this long (seconds) leaves the shared item model: its
    co-visitation row and statistics hash expire (Redis EXPIRE, renewed by each batch that
    touches the item). Feast's online rows (users and items) expire after the larger of the two
    durations (Feast `key_ttl_seconds`), renewed by every push."""
    popular_max: int = Field(default=200_000, ge=1)
    """Items kept in the popularity sorted set (items-pop); the lowest-scoring beyond it (plus 10%
    slack) are trimmed by the batch that grows it past that."""
    changelog_segment_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """Segment size of the state table's changelog topic. Kafka compacts closed segments only, so
    this bounds how many superseded states the changelog holds before the log cleaner reclaims
    them. Applied when the topic is created (`changelog_topic_configs`)."""

    @property
    def changelog_topic_configs(self) -> dict[str, int]:
        """Kafka configs of the state table's changelog topic: the segment size, and how long the
        tombstone of a forgotten user stays after compaction (user_idle_s, at most a day: a
        worker restoring the table within that time sees the user deleted)."""
        keep_s = min(86_400.0, self.user_idle_s or 86_400.0)
        return {"segment.bytes": self.changelog_segment_bytes, "delete.retention.ms": int(keep_s * 1000)}

    @property
    def feast_key_ttl_s(self) -> int:
        """Feast's `key_ttl_seconds` for the online store (0: rows never expire)."""
        if not self.user_idle_s or not self.item_idle_s:
            return 0
        return int(max(self.user_idle_s, self.item_idle_s))

    @property
    def user_ttl_s(self) -> int | None:
        """EXPIRE seconds of a user's recs and intent keys (None: no expiry)."""
        return max(1, int(self.user_idle_s)) if self.user_idle_s else None


class MetricsSettings(BaseModel):
    """Each process's Prometheus endpoint (stream/prometheus.py): GET http://host:port/metrics."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Address the endpoints bind (0.0.0.0 in containers, where Prometheus scrapes them)."""
    worker_port: int = Field(default=9401, ge=0, le=65535)
    """`intentstream worker`'s endpoint; 0: none. A port taken (a second worker on the host) is
    logged and that process goes on without one: give each process its own."""
    reasoner_port: int = Field(default=9402, ge=0, le=65535)
    """`intentstream reasoner`'s endpoint; 0: none."""
    trainer_port: int = Field(default=9403, ge=0, le=65535)
    """`intentstream train --every`'s endpoint; 0: none."""


class ServicesSettings(BaseModel):
    """How `intentstream up` starts the embedded services."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    install_system_packages: bool = True
    """Let `up` run apt-get to install redis-server when it is missing (needs root)."""
    start_timeout_s: float = Field(default=90.0, gt=0)
    """How long to wait for a service to become healthy."""
    redis_acl_file: Path | None = None
    """ACL file the embedded Redis loads (`intentstream acl` writes one: a user per role, the
    default user off); unset: no ACL (loopback only)."""
    tls_dir: Path | None = None
    """Certificates of the embedded Kafka and Redis when they use TLS (kafka.security_protocol
    *SSL, redis.tls): ca.pem, server.pem, server.key; a self-signed set for 127.0.0.1 and
    localhost is created there when missing. Default: <state_dir>/tls."""


class Settings(BaseSettings):
    """Every setting of intentstream; env prefix INTENTSTREAM_, nested delimiter __."""

    model_config = SettingsConfigDict(
        env_prefix="INTENTSTREAM_", env_nested_delimiter="__", env_file=None, extra="ignore",
        use_attribute_docstrings=True,
    )

    state_dir: Path = Path.home() / ".local" / "state" / "intentstream"
    """Data of the embedded services (Kafka log, Redis dump, Feast registry) and their logs."""
    cache_dir: Path = Path.home() / ".cache" / "intentstream"
    """Downloads that can be rebuilt (Kafka jars, Maven repository)."""
    data_dir: Path = REPO_ROOT.parent / "shared" / "data"
    """Where dataset names (rees46, taobao) are looked up."""
    key_prefix: str = ""
    """Prefix of every Redis key the project writes (recs, metrics, models); empty in production."""
    require_services: bool = False
    """Tests fail instead of skipping when Kafka, Redis or Feast cannot be started (CI sets it)."""

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    feast: FeastSettings = FeastSettings()
    worker: WorkerSettings = WorkerSettings()
    metrics: MetricsSettings = MetricsSettings()
    trigger: TriggerSettings = TriggerSettings()
    recs: RecsSettings = RecsSettings()
    intent: IntentSettings = IntentSettings()
    sequential: SequentialSettings = SequentialSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    trainer: TrainerSettings = TrainerSettings()
    retention: RetentionSettings = RetentionSettings()
    services: ServicesSettings = ServicesSettings()

    @field_validator("state_dir", "cache_dir", "data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def isolated(self, name: str, key_prefix: str | None = None) -> "Settings":
        """A copy with its own events, dead-letter, feedback and intent topics (`name`, `name.dlq`,
        `name.feedback`, `name.intent`; so also its own feedback log), consumer groups
        (`name`, `name-reasoner`) and Redis key prefix: how the demo, benchmarks, evaluation and
        tests run beside each other and beside production on the same services."""
        return self.model_copy(update={
            "key_prefix": self.key_prefix if key_prefix is None else key_prefix,
            "kafka": self.kafka.model_copy(update={"events_topic": name, "dead_letter_topic": f"{name}.dlq",
                                                   "feedback_topic": f"{name}.feedback",
                                                   "intent_topic": f"{name}.intent"}),
            "worker": self.worker.model_copy(update={"app_id": name}),
        })

    def transport_json(self) -> str:
        """These settings as JSON for a child process, secrets included (`model_dump_json` masks
        them as `**********`): for a pipe to a child, never for a log or a file."""
        return json.dumps(reveal(self.model_dump(mode="python")), default=str)

    @property
    def reasoner_group(self) -> str:
        """The consumer group of `intentstream reasoner` processes: `<worker.app_id>-reasoner`."""
        return f"{self.worker.app_id}-reasoner"

    @property
    def feedback_dir(self) -> Path:
        return (self.feedback.log_dir or self.state_dir / "feedback" / self.kafka.feedback_topic).expanduser()

    @property
    def feast_registry_path(self) -> Path:
        return self.state_dir / "feast" / f"{self.feast.project}-registry.db"


def reveal(value):
    """A setting's value as a child process must receive it: secrets as their values, also
    inside a dumped group.

    >>> reveal(SecretStr("s3cret")), reveal({"port": 1, "password": SecretStr("pw")})
    ('s3cret', {'port': 1, 'password': 'pw'})
    """
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    return value


_DISPLAY_DEFAULTS = {
    "state_dir": "~/.local/state/intentstream",
    "cache_dir": "~/.cache/intentstream",
    "data_dir": "../shared/data",
}


def env_example() -> str:
    """The text of `.env.example`: every setting with its meaning and default.

    Regenerate with `intentstream settings > .env.example`; a test keeps the file in sync.
    """
    def comment(text: str | None) -> list[str]:
        return [f"# {line.strip()}" for line in (text or "").strip().splitlines()]

    lines = ["# Every intentstream setting, with its default. Copy to .env or export what you change.",
             "# Nested groups use a double underscore: INTENTSTREAM_<GROUP>__<FIELD>.", ""]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, BaseModel):
            lines.append(f"# --- {name}: {(type(default).__doc__ or '').strip().splitlines()[0]}")
            for sub, sub_field in type(default).model_fields.items():
                value = getattr(default, sub)
                if isinstance(value, Path):
                    value = "./" + str(value.relative_to(REPO_ROOT)) if value.is_relative_to(REPO_ROOT) else value
                lines += comment(sub_field.description)
                if value is None:  # unset by default: shown commented out
                    lines.append(f"# INTENTSTREAM_{name.upper()}__{sub.upper()}=")
                else:
                    lines.append(f"INTENTSTREAM_{name.upper()}__{sub.upper()}={value}")
        else:
            lines += comment(field.description)
            lines.append(f"INTENTSTREAM_{name.upper()}={_DISPLAY_DEFAULTS.get(name, default)}")
        lines.append("")
    return "\n".join(lines)
