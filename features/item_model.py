"""Item-level state shared by every worker: co-visitation, popularity and item statistics, kept
in Redis and changed only by offset-fenced increments.

Why Redis increments. A user's events all land on one partition, so user state can live in the
worker that owns the partition; an item's events come from every partition. With one model per
worker each learns from its own partitions only, and workers checkpointing to one key overwrite
each other. Here every worker folds its batch into `ItemDeltas` (one per events partition of
the batch, coalesced per item and item pair) and applies them with one Lua script per partition:
sums commute, so N workers together build the same model as one worker from the same events
(up to float rounding, except which tail entries a row keeps when it is pruned past
2 x `max_neighbors`, and an item's category, brand and price, which are the last applied batch's). The alternative, an item-keyed repartition topic with its own agent and
changelog table, needs a second hop per event and still a shared store for scoring (any worker
scores any item's neighbours); the increments cost one script call per partition per batch.

Exactly once. The script refuses a partition's deltas unless the partition's fence (the last
offset applied, in the hash `items-fence`) is still what the worker read at the start of the
batch, and moves the fence to the batch's last offset in the same atomic step. A batch that comes
again (a retry, or Kafka redelivering after a crash) reads the moved fence and skips the events up
to it; a second worker that still holds a revoked partition is refused (`ItemModelFenced`,
retryable: the batch is retried against the new fence). The worker applies the deltas *before*
it writes the batch's user states to the changelog table, so a user state that is ahead of the
fence cannot exist: a redelivered event is either folded again into a state that never saw it
(and its deltas skipped by the fence) or dropped as seen by both.

Ownership of derived writes. Item rows in Feast and the popularity fallback are derived from the
Redis state; each item has a slot (`item_slot`, one per events partition) and only the worker that
owns the events partition of that number pushes it: no two workers write one key with different
content. The script marks touched items dirty in their slot's set; the owner takes them from
there (`take_dirty`).

Keys (contracts/keys.py `RedisKeys.item_*`): `items-fence`, `items-pop` (sorted set of
forward-decayed scores), `items-pop-t0`, `items-covisit:{item}` (hash neighbour -> weight),
`items-stats:{item}` (hash), `items-dirty:{slot}` (set).

Bounded (retention settings): an item's row and statistics expire `item_idle_s` after the last
batch that touched them (a neighbour entry naming an expired item stays in its partner's row
until that row is pruned or expires too); `items-pop` keeps the `popular_max` best-scoring
members (trimmed when it passes 110% of that); rows hold at most 2 x `max_neighbors` entries.
The script touches keys it computes, so it needs a single Redis (not Redis Cluster).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import redis

from contracts.events import Event
from contracts.keys import RedisKeys
from contracts.text import plain_text
from features.errors import FeatureStoreError
from features.redis_client import delete_matching
from features.state import TYPE_WEIGHT

MAX_EXPONENT = 60.0
"""Forward decay: scores are stored as w * 2^((t - t0) / half_life) and rescaled (t0 moved) when
the exponent passes this."""

LABEL_TTL_S = 60.0
"""An item's category and brand change rarely: labels are re-read after this."""
CACHE_MAX = 400_000
"""Rows and labels kept locally before the stale ones are dropped."""

COUNTED_AS = {"view": "views", "click": "views", "cart": "carts", "purchase": "purchases"}
"""Which item count an event type adds to (a fav adds none)."""
STAT_COUNTS = ("views", "carts", "purchases")


def covisit_pairs(item_id: str, previous: Sequence[str], weight: float, window: int) -> list[tuple[str, float]]:
    """The co-visitation increments of one event: (other item, weight) for the `window` distinct
    items before it (newest first), nearer ones stronger.

    >>> covisit_pairs("c", ["b", "b", "a", "c"], 2.0, 5)
    [('b', 2.0), ('a', 0.6666666666666666)]
    """
    seen = {item_id}
    out = []
    for rank, other in enumerate(previous):
        if len(seen) > window:
            break
        if other in seen:
            continue
        seen.add(other)
        out.append((other, weight / (1.0 + rank)))
    return out


def item_slot(item_id: str, slots: int) -> int:
    """The events partition number whose owner pushes this item's derived rows."""
    return zlib.crc32(item_id.encode()) % slots


class ItemCodes:
    """Integer codes for item ids, so that a row of neighbours is two arrays the behavioural
    reasoner scores with numpy (reasoning/behavioural.py `BehaviouralReasoner.score`)."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.ids: list[str] = []

    def of(self, item_id: str) -> int:
        code = self.code.get(item_id)
        if code is None:
            code = self.code[item_id] = len(self.ids)
            self.ids.append(item_id)
        return code

    def known(self, item_ids: Iterable[str]) -> np.ndarray:
        """Codes of those of `item_ids` that have one (an item without a code is in no row)."""
        return np.fromiter((c for i in item_ids if (c := self.code.get(i)) is not None), np.int64)

    def row(self, neighbours: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, log1p(weight)) in the row's order; `math.log1p`, so scores match a plain loop."""
        n = len(neighbours)
        return (np.fromiter((self.of(i) for i in neighbours), np.int64, n),
                np.fromiter((math.log1p(w) for w in neighbours.values()), np.float64, n))


EMPTY_ROW = (np.empty(0, np.int64), np.empty(0, np.float64))


class ItemModelFenced(FeatureStoreError):
    """A partition's fence moved since this batch read it (another worker took the partition over,
    or a retried call had been applied already): the batch must be retried against the new fence."""

    retryable = True


@dataclass
class ItemDeltas:
    """One events partition's effects of one batch on the item model, coalesced."""

    partition: int
    fence: int
    """The partition's fence read at the start of the batch (-1: none); events up to it are skipped."""
    last_offset: int = -1
    popularity: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """item -> [(event ts ms, weight)]."""
    covisit: dict[tuple[str, str], float] = field(default_factory=dict)
    """(item, earlier item) -> weight; the script adds it to both items' rows."""
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def skips(self, offset: int) -> bool:
        """Whether the event at `offset` was already applied (it is at or before the fence)."""
        return offset <= self.fence

    def advance(self, offset: int) -> None:
        self.last_offset = max(self.last_offset, offset)

    def observe(self, event: Event, previous: Sequence[str], window: int) -> None:
        """Learn one newly applied event; `previous` are the user's items before it, newest first."""
        item, kind = event.item_id, event.type.value
        weight = TYPE_WEIGHT[kind]
        self.popularity.setdefault(item, []).append((event.ts, weight))
        covisit = self.covisit
        for other, w in covisit_pairs(item, previous, weight, window):
            pair = (item, other)
            covisit[pair] = covisit.get(pair, 0.0) + w
        row = self.stats.get(item)
        if row is None:
            row = self.stats[item] = {"views": 0, "carts": 0, "purchases": 0, "category": "", "brand": "",
                                      "price": None, "last_event_ts": 0}
        column = COUNTED_AS.get(kind)
        if column:
            row[column] += 1
        if event.category:
            row["category"] = event.category
        if event.brand:
            row["brand"] = event.brand
        if event.price is not None:
            row["price"] = float(event.price)
        row["last_event_ts"] = max(row["last_event_ts"], event.ts)

    def payload(self, half_life_ms: float, slots: int) -> bytes:
        """The script's argument: popularity summed relative to the batch's newest event time."""
        ref = max((ts for points in self.popularity.values() for ts, _ in points), default=0)
        pop = {item: sum(w * 2.0 ** ((ts - ref) / half_life_ms) for ts, w in points)
               for item, points in self.popularity.items()}
        dirty: dict[str, list[str]] = {}
        for item in self.stats:
            dirty.setdefault(str(item_slot(item, slots)), []).append(item)
        return orjson.dumps({
            "ref": ref, "pop": pop,
            "co": [[a, b, w] for (a, b), w in self.covisit.items()],
            "st": self.stats, "dirty": dirty,
        })


# KEYS: fence hash, popularity zset, popularity t0. ARGV: fence field, expected fence ('' = none),
# new fence, payload JSON, half-life ms, max exponent, max neighbours, covisit prefix, stats
# prefix, dirty prefix, idle expiry of an item's rows in seconds (0: none), most members of the
# popularity set. Returns 1 when applied, 0 when the fence moved (nothing applied).
_APPLY = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
local d = cjson.decode(ARGV[4])
local hl, max_exp, max_n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl, max_pop = tonumber(ARGV[11]), tonumber(ARGV[12])
local function fmt(x) return string.format('%.17g', x) end
if next(d.pop) ~= nil then
  local t0 = redis.call('GET', KEYS[3])
  if t0 then t0 = tonumber(t0) else t0 = d.ref; redis.call('SET', KEYS[3], fmt(t0)) end
  local e = (d.ref - t0) / hl
  if e > max_exp then
    redis.call('ZUNIONSTORE', KEYS[2], 1, KEYS[2], 'WEIGHTS', fmt(2 ^ -e))
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(1e-12')
    redis.call('SET', KEYS[3], fmt(d.ref))
    e = 0
  end
  local scale = 2 ^ e
  for item, v in pairs(d.pop) do redis.call('ZINCRBY', KEYS[2], fmt(v * scale), item) end
  local n = redis.call('ZCARD', KEYS[2])
  if n > max_pop + math.floor(max_pop / 10) then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - max_pop - 1) end
end
local rows = {}
for _, t in ipairs(d.co) do
  local w = fmt(t[3])
  local a, b = ARGV[8] .. t[1], ARGV[8] .. t[2]
  redis.call('HINCRBYFLOAT', a, t[2], w)
  redis.call('HINCRBYFLOAT', b, t[1], w)
  rows[a] = true
  rows[b] = true
end
for key in pairs(rows) do
  if redis.call('HLEN', key) > 2 * max_n then
    local flat = redis.call('HGETALL', key)
    local entries = {}
    for i = 1, #flat, 2 do entries[#entries + 1] = {flat[i], tonumber(flat[i + 1])} end
    table.sort(entries, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] < b[1] end)
    for i = max_n + 1, #entries do redis.call('HDEL', key, entries[i][1]) end
  end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
for item, s in pairs(d.st) do
  local key = ARGV[9] .. item
  for _, c in ipairs({'views', 'carts', 'purchases'}) do
    if s[c] > 0 then redis.call('HINCRBY', key, c, s[c]) end
  end
  if s.category ~= '' then redis.call('HSET', key, 'category', s.category) end
  if s.brand ~= '' then redis.call('HSET', key, 'brand', s.brand) end
  if s.price ~= cjson.null then redis.call('HSET', key, 'price', fmt(s.price)) end
  local last = tonumber(redis.call('HGET', key, 'last_event_ts') or '0')
  if s.last_event_ts > last then redis.call('HSET', key, 'last_event_ts', string.format('%d', s.last_event_ts)) end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
for slot, items in pairs(d.dirty) do
  for i = 1, #items, 1000 do redis.call('SADD', ARGV[10] .. slot, unpack(items, i, math.min(i + 999, #items))) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def _stat_row(item_id: str, raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A Feast `item_stats` row from the Redis hash."""
    get = lambda name, default=b"": raw.get(name.encode(), default)  # noqa: E731
    return {"item_id": item_id, **{c: int(get(c, b"0")) for c in STAT_COUNTS},
            "category": get("category").decode(), "brand": get("brand").decode(),
            "price": float(get("price", b"0")), "last_event_ts": int(get("last_event_ts", b"0"))}


class SharedItemModel:
    """The Redis-backed item model: writes (`fences`, `apply`, `take_dirty`) for the worker, reads
    (`prefetch`, `neighbour_arrays`, `top_popular`, `category`, `label`) for the behavioural
    reasoner.

    Reads are served from a local copy of the rows a refresh needs, re-read after `refresh_s`:
    recommendations see other workers' increments within that time.
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, topic: str, slots: int, covisit_window: int,
                 max_neighbors: int, half_life_s: float, refresh_s: float = 1.0, item_ttl_s: float = 0.0,
                 popular_max: int = 200_000) -> None:
        self.client = client
        self.keys = keys
        self.topic = topic
        self.slots = slots
        self.window = covisit_window
        self.max_neighbors = max_neighbors
        self.half_life_ms = half_life_s * 1000.0
        self.refresh_s = refresh_s
        self.item_ttl_s = max(1, int(item_ttl_s)) if item_ttl_s else 0
        """Idle expiry of an item's co-visitation row and statistics (seconds; 0: none)."""
        self.popular_max = popular_max
        self._script = client.register_script(_APPLY)
        self._rows: dict[str, tuple[float, dict[str, float]]] = {}
        """item -> (read at, neighbours)."""
        self._labels: dict[str, tuple[float, str, str]] = {}
        """item -> (read at, category, brand)."""
        self.codes = ItemCodes()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """item -> its cached row as arrays (built on first use, dropped when the row is re-read)."""

    @classmethod
    def from_settings(cls, settings, client: redis.Redis) -> "SharedItemModel":
        r, keep = settings.recs, settings.retention
        return cls(client, RedisKeys(settings.key_prefix), settings.kafka.events_topic, settings.kafka.partitions,
                   r.covisit_window, r.covisit_max_neighbors, r.popularity_half_life_s, r.model_refresh_s,
                   keep.item_idle_s, keep.popular_max)

    # -- writes ---------------------------------------------------------------------------------
    def _field(self, partition: int) -> str:
        return f"{self.topic}:{partition}"

    def fences(self, partitions: Iterable[int]) -> dict[int, ItemDeltas]:
        """Empty deltas for `partitions`, each holding its fence as stored now."""
        partitions = sorted(set(partitions))
        if not partitions:
            return {}
        raw = self.client.hmget(self.keys.item_fence, [self._field(p) for p in partitions])
        return {p: ItemDeltas(p, int(v) if v is not None else -1) for p, v in zip(partitions, raw)}

    def apply(self, deltas: Iterable[ItemDeltas]) -> None:
        """Apply every partition's deltas (one script call each, one round trip); raises
        `ItemModelFenced` when a fence moved meanwhile (that partition's deltas were not applied;
        the others were, and their fences moved, so a retry skips them)."""
        work = [d for d in deltas if d.last_offset > d.fence]
        if not work:
            return
        pipe = self.client.pipeline(transaction=False)
        k = self.keys
        for d in work:
            self._script(keys=[k.item_fence, k.item_popularity, k.item_popularity_t0],
                         args=[self._field(d.partition), "" if d.fence < 0 else str(d.fence), str(d.last_offset),
                               d.payload(self.half_life_ms, self.slots), self.half_life_ms, MAX_EXPONENT,
                               self.max_neighbors, k.item_covisit(""), k.item_stats_row(""), k.item_dirty(""),
                               self.item_ttl_s, self.popular_max],
                         client=pipe)
        applied = pipe.execute()
        refused = [d.partition for d, ok in zip(work, applied) if not ok]
        if refused:
            raise ItemModelFenced(f"item model fence of partitions {refused} of {self.topic} moved since the batch "
                                  "read it (another worker took them over, or a timed-out call was applied after "
                                  "all); the batch is retried against the new fence")

    def take_dirty(self, slots: Iterable[int], limit: int = 10_000) -> list[dict[str, Any]]:
        """Feast `item_stats` rows of items changed since they were last taken, for the slots this
        worker owns (at most `limit` per slot)."""
        pipe = self.client.pipeline(transaction=False)
        slots = list(slots)
        for slot in slots:
            pipe.spop(self.keys.item_dirty(str(slot)), limit)
        items = sorted({i.decode() for members in pipe.execute() if members for i in members})
        if not items:
            return []
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hgetall(self.keys.item_stats_row(item))
        return [_stat_row(item, raw) for item, raw in zip(items, pipe.execute())]

    def reset(self) -> None:
        """Delete the whole item model (the demo starts each run from nothing)."""
        k = self.keys
        self.client.delete(k.item_fence, k.item_popularity, k.item_popularity_t0)
        for pattern in (k.item_covisit("*"), k.item_stats_row("*"), k.item_dirty("*")):
            delete_matching(self.client, pattern)
        self._rows.clear()
        self._labels.clear()
        self._arrays.clear()

    # -- reads ----------------------------------------------------------------------------------
    def prefetch(self, items: Iterable[str]) -> None:
        """Read the neighbours of `items` not read within `refresh_s`, and labels not read yet
        (one round trip)."""
        self._read(set(items), neighbours=True)

    def _read(self, items: set[str], neighbours: bool) -> None:
        now = time.monotonic()
        stale = [i for i in items if (row := self._rows.get(i)) is None or now - row[0] > self.refresh_s] \
            if neighbours else []
        unlabelled = [i for i in items if (label := self._labels.get(i)) is None or now - label[0] > LABEL_TTL_S]
        if not stale and not unlabelled:
            return
        pipe = self.client.pipeline(transaction=False)
        for item in stale:
            pipe.hgetall(self.keys.item_covisit(item))
        for item in unlabelled:
            pipe.hmget(self.keys.item_stats_row(item), "category", "brand")
        raw = pipe.execute()
        for item, row in zip(stale, raw):
            self._rows[item] = (now, {k.decode(): float(v) for k, v in row.items()})
            self._arrays.pop(item, None)
        for item, (category, brand) in zip(unlabelled, raw[len(stale):]):
            # Event context may carry a link (the contract bars markup only): labels are plain text.
            self._labels[item] = (now, plain_text((category or b"").decode()), plain_text((brand or b"").decode()))
        if len(self._rows) + len(self._labels) > CACHE_MAX:  # bounded: drop what is stale
            self._rows = {i: r for i, r in self._rows.items() if now - r[0] <= self.refresh_s}
            self._arrays = {i: a for i, a in self._arrays.items() if i in self._rows}
            self._labels = {i: r for i, r in self._labels.items() if now - r[0] <= LABEL_TTL_S}

    def similar(self, item_id: str) -> dict[str, float]:
        row = self._rows.get(item_id)
        return row[1] if row else {}

    def neighbour_arrays(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._arrays.get(item_id)
        if arrays is None:
            row = self._rows.get(item_id)
            if not row or not row[1]:
                return EMPTY_ROW
            arrays = self._arrays[item_id] = self.codes.row(row[1])
        return arrays

    def category(self, item_id: str) -> str | None:
        label = self._labels.get(item_id)
        return (label[1] or None) if label else None

    def label(self, item_id: str) -> str:
        label = self._labels.get(item_id)
        parts = [label[2], label[1]] if label else []
        text = " ".join(p.replace(".", " ").replace("_", " ") for p in parts if p)
        return text or plain_text(f"item {item_id}")

    def top_popular(self, n: int) -> list[tuple[str, float]]:
        best = self.client.zrevrange(self.keys.item_popularity, 0, n - 1, withscores=True)
        if not best:
            return []
        items = [i.decode() for i, _ in best]
        self._read(set(items), neighbours=False)  # their categories explain them
        norm = best[0][1] or 1.0
        return [(item, score / norm) for item, (_, score) in zip(items, best)]

    def popular_size(self) -> int:
        return self.client.zcard(self.keys.item_popularity)

    def popularity_scores(self) -> dict[str, float]:
        """Every item's popularity score (the intent route's retrieval prior)."""
        return {i.decode(): s for i, s in self.client.zrange(self.keys.item_popularity, 0, -1, withscores=True)}

    def stats_rows(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for item in item_ids:
            pipe.hgetall(self.keys.item_stats_row(item))
        return [_stat_row(item, raw) for item, raw in zip(item_ids, pipe.execute())]
