import orjson
import pytest

from contracts.errors import InvalidEvent
from contracts.events import Event, decode_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "cart", "ts": 1569888000000}


def raw(**changes):
    return orjson.dumps({**GOOD, **changes})


def test_valid_event_with_numeric_ids_and_iso_time():
    event = decode_event(raw(user_id=42, item_id=7, ts="2019-10-01T00:00:00Z", price=3.5), 4096)
    assert (event.user_id, event.item_id, event.ts, event.price) == ("42", "7", 1569888000000, 3.5)


def test_context_gives_category_and_brand():
    event = decode_event(raw(context={"category": "kids.toys", "brand": "lego"}), 4096)
    assert (event.category, event.brand) == ("kids.toys", "lego")


@pytest.mark.parametrize("payload, reason", [
    (b"{oops", "bad_json"),
    (b'"just a string"', "not_an_object"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "user_id"}), "user_id"),
    (raw(type="teleport"), "type"),
    (raw(ts="not a time"), "ts"),
    (raw(ts=True), "ts"),
    (raw(price=-1), "price"),
    (raw(item_id={"nested": 1}), "item_id"),
    (raw(context={f"k{i}": i for i in range(40)}), "context"),
    (None, "empty"),
])
def test_invalid_events_raise_with_a_reason(payload, reason):
    with pytest.raises(InvalidEvent) as info:
        decode_event(payload, 4096)
    assert reason in info.value.reason


def test_oversized_event_is_rejected_before_parsing():
    with pytest.raises(InvalidEvent, match="oversized"):
        decode_event(raw(context={"blob": "x" * 5000}), 4096)


def test_event_round_trips_through_json():
    event = Event.model_validate(GOOD)
    assert decode_event(event.to_json(), 4096) == event
