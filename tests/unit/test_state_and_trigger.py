from contracts.events import Event
from contracts.settings import TriggerSettings, WorkerSettings
from features.state import Fold, StateLimits, UserState, apply
from stream.trigger import due_at_ms, mark_refreshed, refresh_reason


def ev(i, kind="view", item=None, category="c.a", user="u"):
    return Event(event_id=f"e{i}", user_id=user, item_id=item or f"i{i}", type=kind, ts=1000 + i,
                 context={"category": category} if category else {})


def test_state_is_bounded_and_deduplicated():
    limits = StateLimits(recent_items=5, dedupe_window=10)
    state = UserState("u")
    for i in range(30):
        assert apply(state, ev(i), 2000 + i, limits) is Fold.applied
    assert len(state.recent) == 5 and state.recent[0][0] == "i29"
    assert len(state.event_ids) == 10
    assert apply(state, ev(29), 0, limits) is Fold.duplicate  # sent again: ignored
    assert state.event_count == 30 and state.state_version == 30
    assert state.last_produced_ms == 2029


def test_state_limits_default_to_the_worker_settings():
    # The offline methods that mirror the worker (offline/methods.py ItemKNN) read StateLimits().
    w = WorkerSettings()
    assert StateLimits() == StateLimits(w.recent_items, w.dedupe_window, w.top_affinities, w.affinity_half_life_events)


def test_redelivery_is_dropped_by_offset_however_far_back_it_reaches():
    # A replay after a crash can reach further back than the event_id window: the offset decides.
    limits = StateLimits(dedupe_window=4)
    state = UserState("u")
    for i in range(20):
        assert apply(state, ev(i), 0, limits, partition=3, offset=100 + i) is Fold.applied
    assert all(apply(state, ev(i), 0, limits, partition=3, offset=100 + i) is Fold.redelivered for i in range(20))
    assert state.event_count == 20
    assert apply(state, ev(20), 0, limits, partition=3, offset=120) is Fold.applied


def test_purchases_are_remembered_and_counted():
    state = UserState("u")
    apply(state, ev(1, "view", item="a"), 0, StateLimits())
    apply(state, ev(2, "purchase", item="a"), 0, StateLimits())
    assert state.bought == ["a"] and state.last_purchase_item == "a"
    assert state.counts == {"view": 1, "purchase": 1}
    row = state.feature_row()
    assert row["purchase_count"] == 1 and row["recent_items"] == ["a"]


def test_record_round_trip_does_not_share_lists():
    state = UserState("u")
    apply(state, ev(1), 0, StateLimits())
    record = state.to_record()
    apply(state, ev(2), 0, StateLimits())
    assert len(record["recent"]) == 1
    assert UserState.from_record(record).event_count == 1


def test_a_failed_try_leaves_the_stored_state_as_it_was():
    """Found by `bench chaos`: a state loaded from the table shared its lists with the table's
    record, so a batch try that folded and then failed (Redis down) left its event ids there
    without its counts, and the retry dropped 2,000 events as duplicates."""
    stored = UserState("u").to_record()
    event = Event(event_id="e1", user_id="u", item_id="i", type="view", ts=1, context={"category": "c"})
    failed_try = UserState.from_record(stored)
    assert apply(failed_try, event, 1, StateLimits(), 0, 5) is Fold.applied
    assert stored == UserState("u").to_record()  # nothing of the failed try is in the table
    retry = UserState.from_record(stored)
    assert apply(retry, event, 1, StateLimits(), 0, 5) is Fold.applied and retry.event_count == 1


def test_trigger_reasons_and_debounce():
    cfg = TriggerSettings(every_n_events=3, min_interval_s=2.0)
    state = UserState("u")
    apply(state, ev(1), 0, StateLimits())
    assert refresh_reason(state, cfg) == "first_events"
    mark_refreshed(state, now_ms=10_000)
    assert refresh_reason(state, cfg) is None
    assert due_at_ms(state, cfg) == 12_000

    apply(state, ev(2), 0, StateLimits())
    assert refresh_reason(state, cfg) is None  # 1 event, same category
    apply(state, ev(3, "purchase"), 0, StateLimits())
    assert refresh_reason(state, cfg) == "purchase"
    mark_refreshed(state, now_ms=20_000)

    for i in range(4, 7):
        apply(state, ev(i), 0, StateLimits())
    assert refresh_reason(state, cfg) == "event_count"


def test_dominant_category_change_respects_hysteresis():
    cfg = TriggerSettings(every_n_events=100, category_hysteresis=0.5)
    state = UserState("u")
    for i in range(3):
        apply(state, ev(i, category="a"), 0, StateLimits())
    mark_refreshed(state, 1)
    for i in range(3, 6):
        apply(state, ev(i, category="b"), 0, StateLimits())
    # b now leads, but not by 50% yet
    assert state.dominant_category == "b"
    assert refresh_reason(state, cfg) is None
    for i in range(6, 9):
        apply(state, ev(i, category="b"), 0, StateLimits())
    assert refresh_reason(state, cfg) == "dominant_category"
