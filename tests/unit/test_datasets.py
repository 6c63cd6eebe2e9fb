import pandas as pd
import pytest

from contracts.events import decode_event
from offline import datasets
from offline.errors import DatasetError
from offline.replay import event_payloads


def test_generic_format_with_aliases_iso_times_and_items(tmp_path):
    pd.DataFrame({
        "user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "event_type": ["pv", "buy", "cart"],
        "timestamp": ["2024-01-01T00:00:02Z", "2024-01-01T00:00:01Z", "2024-01-01T00:00:03Z"],
    }).to_csv(tmp_path / "events.csv", index=False)
    pd.DataFrame({"item_id": ["a", "b"], "category": ["Home > Kitchen", "toys/lego"], "brand": ["x", None]}
                 ).to_csv(tmp_path / "items.csv.gz", index=False)
    data = datasets.load(str(tmp_path), tmp_path, "auto")
    assert list(data.events.type) == ["purchase", "view", "cart"]  # sorted by time
    assert list(data.events.category) == ["toys.lego", "home.kitchen", "home.kitchen"]
    assert data.events.ts.iloc[0] == 1704067201000
    for key, value in event_payloads(data.events, "p:"):
        event = decode_event(value, 4096)
        assert key == event.user_id.encode() and event.user_id.startswith("p:")


def test_generic_unix_seconds_and_unknown_type(tmp_path):
    pd.DataFrame({"user_id": [1], "item_id": [2], "event_type": ["view"], "timestamp": [1700000000]}
                 ).to_csv(tmp_path / "events.csv", index=False)
    assert datasets.load(str(tmp_path), tmp_path).events.ts.iloc[0] == 1700000000000
    pd.DataFrame({"user_id": [1], "item_id": [2], "event_type": ["teleport"], "timestamp": [1]}
                 ).to_csv(tmp_path / "events.csv", index=False)
    with pytest.raises(DatasetError, match="teleport"):
        datasets.load(str(tmp_path), tmp_path)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no dataset"):
        datasets.load("nope", tmp_path)


def test_shared_datasets_load(data_dir):
    rees = datasets.load("rees46", data_dir)
    assert len(rees.events) == 17434 and rees.events.type.value_counts()["purchase"] == 214
    assert rees.events.user_id.nunique() == 4504
    taobao = datasets.load("taobao", data_dir)
    assert len(taobao.events) == 89123 and taobao.events.user_id.nunique() == 1195
    assert taobao.events.ts.is_monotonic_increasing
    window = datasets.load_taobao(data_dir / "taobao-userbehavior-samples", "window_20171126_0100_0310utc.csv.gz")
    assert len(window.events) == 110300
