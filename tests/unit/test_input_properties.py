"""Property-based: no input breaks the worker's data path.

Hypothesis generates raw Kafka values, valid and invalid (arbitrary unicode ids with control
characters and chat markup, timestamps from negative to 2^64, prices from NaN to 1e308, nested and
oversized context, junk bytes, the system key names as user ids), and runs each batch through what
the worker runs: decode -> fold into user state -> behavioural model and item-model deltas -> Feast
rows -> the state-table record -> the recommendation record -> the item model's script argument.
The only error that may
escape is the documented `InvalidEvent` (a dead letter); everything that passes is bounded.
"""

from __future__ import annotations

import json
import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import InvalidEvent
from contracts.events import MAX_TEXT_CHARS, TS_MIN_MS, decode_event
from contracts.keys import RedisKeys
from contracts.recs import Recommendations
from features.item_model import ItemDeltas
from features.state import Fold, StateLimits, UserState, apply
from reasoning.behavioural import BehaviouralModel, BehaviouralReasoner
from reasoning.reasoner import UserView

NOW_MS = 1_764_000_000_000  # 2025-11-24: a fixed clock, so the generated cases do not age
MAX_BYTES = 65_536
INT64 = 2**63 - 1
SEEN = {"events": 0, "valid": 0, "invalid": 0}

ids = st.one_of(
    st.text(min_size=0, max_size=140),
    st.sampled_from(["updates", "__popular__", "recs-updates", "recs-popular", "metrics", "model:serving",
                     "<|im_start|>system", "</s>", "a\x00b", "tab\tid", "\u202eevil", "x" * 129]),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
)
timestamps = st.one_of(
    st.integers(min_value=TS_MIN_MS, max_value=NOW_MS + 10 * 86_400_000),  # mostly plausible
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.sampled_from([10**19, 2**64 - 1, 2**63, 1_569_888_004, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["2019-10-01T00:00:04Z", "2019-10-01 00:00:04 UTC", "9999-12-31T23:59:59Z", "yesterday", ""]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300))
contexts = st.one_of(
    st.dictionaries(st.sampled_from(["category", "brand", "page", "x" * 70]), scalars, max_size=4),
    st.dictionaries(st.text(max_size=10), st.one_of(scalars, st.lists(scalars, max_size=3),
                                                     st.dictionaries(st.text(max_size=3), scalars, max_size=2)),
                    max_size=40),
    st.integers(min_value=60_000, max_value=61_000).map(lambda n: {"category": "c" * n}),
)
events = st.fixed_dictionaries(
    {"event_id": ids, "user_id": ids, "item_id": ids,
     "type": st.one_of(st.sampled_from(["view", "click", "cart", "fav", "purchase"]), st.text(max_size=8)),
     "ts": timestamps},
    optional={"price": st.one_of(st.floats(), st.integers(min_value=-(2**70), max_value=2**70)),
              "session_id": ids, "context": contexts},
)


def _encode(event: dict) -> bytes:
    # The standard library writes what a careless producer could send: ints past 64 bits, NaN.
    return json.dumps(event).encode()


plain_ids = st.text(alphabet="abcdefghij0123456789-_:.", min_size=1, max_size=12)
plausible = st.fixed_dictionaries(
    {"event_id": plain_ids, "user_id": st.one_of(plain_ids, st.sampled_from(["updates", "__popular__", "recs-updates"])),
     "item_id": st.text(alphabet="abcdef0123", min_size=1, max_size=3),
     "type": st.sampled_from(["view", "click", "cart", "fav", "purchase"]),
     "ts": st.integers(min_value=TS_MIN_MS, max_value=NOW_MS + 86_400_000)},
    optional={"price": st.floats(min_value=0, max_value=1e9), "session_id": plain_ids,
              "context": st.fixed_dictionaries({}, optional={"category": st.text(max_size=40),
                                                            "brand": st.text(max_size=20)})},
)
raw_values = st.one_of(
    plausible.map(_encode),
    plausible.map(_encode),
    events.map(_encode),
    events.map(_encode),
    st.binary(max_size=200),
    st.sampled_from([b"[1,2,3]", b"null", b'"text"', b"{", b'{"price": NaN}', b'{"ts": 1e400}']),
    st.none(),
)


def _plain(value: object) -> bool:
    """JSON-safe and bounded: what Feast, orjson and the changelog accept."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -INT64 - 1 <= value <= INT64
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


@settings(max_examples=450, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(raw_values, min_size=20, max_size=40))
def test_no_input_escapes_but_invalid_event(batch):
    limits = StateLimits()
    model = BehaviouralModel(5, 100, 3600.0)
    items = ItemDeltas(partition=0, fence=-1)
    reasoner = BehaviouralReasoner(model, "behavioural-1")
    states: dict[str, UserState] = {}
    for n, raw in enumerate(batch):
        SEEN["events"] += 1
        try:
            event = decode_event(raw, MAX_BYTES, NOW_MS)
        except InvalidEvent as exc:
            SEEN["invalid"] += 1
            assert exc.reason.split(":")[0] in {"empty", "oversized", "bad_json", "not_an_object", "invalid"}
            continue
        SEEN["valid"] += 1
        assert TS_MIN_MS <= event.ts <= NOW_MS + 86_400_000
        assert "<" not in event.item_id and ">" not in event.item_id
        for text in (event.category, event.brand):
            assert text is None or (len(text) <= MAX_TEXT_CHARS and "<" not in text)
        state = states.setdefault(event.user_id, UserState(event.user_id))
        previous = [entry[0] for entry in state.recent[:5]]
        if apply(state, event, NOW_MS + n, limits, 0, n) is Fold.applied:
            model.observe(event.item_id, event.type.value, event.ts, previous, event.category, event.brand)
            items.observe(event, previous, 5)
    reasoner.invalidate()
    for state in states.values():
        assert _plain(state.feature_row())
        record = state.to_record()
        assert _plain(record) and len(orjson.dumps(record)) < 1_000_000  # a changelog record
        assert UserState.from_record(orjson.loads(orjson.dumps(record))) == state
    assert _plain(orjson.loads(items.payload(3_600_000.0, 4)))  # the item model script's argument
    views = [UserView(user_id=s.user_id, recent=s.recent, bought=frozenset(s.bought),
                      top_categories=s.top(s.categories, 5), state_version=s.state_version, trigger="event_count")
             for s in states.values()]
    for payload in reasoner.recommend(views, 20):
        Recommendations.model_validate_json(orjson.dumps(payload))
    Recommendations.model_validate_json(orjson.dumps(reasoner.popular_fallback("*", 20, "unknown_user")))


def test_enough_events_were_generated():
    # Runs after the property above (pytest keeps file order): >= 10,000 generated events, both kinds.
    assert SEEN["events"] >= 10_000, SEEN
    assert SEEN["valid"] >= 1_000 and SEEN["invalid"] >= 1_000, SEEN


@given(st.text(min_size=1, max_size=128))
def test_no_user_id_reaches_a_system_key(user_id):
    keys = RedisKeys("p:")
    assert keys.recs(user_id) not in keys.system_keys()
    assert keys.intent(user_id) not in keys.system_keys()
    assert not any(k.startswith(tuple("p:" + n for n in keys.USER_NAMESPACES)) for k in keys.system_keys())
