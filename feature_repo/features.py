"""Feast declarations of intentstream (read by `feast apply`; nothing else lives here).

All feature views are fed by push sources from the stream worker in micro-batches
(features/feast_store.py); their batch sources only name where an offline log would live.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Array, Float64, Int64, String
from feast.value_type import ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A shopper, by the user_id of their events")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A catalog item, by item_id")

user_state_push = PushSource(
    name="user_state_push",
    batch_source=FileSource(name="user_state_log", path="data/user_state.parquet",
                            timestamp_field="event_timestamp"),
)
item_stats_push = PushSource(
    name="item_stats_push",
    batch_source=FileSource(name="item_stats_log", path="data/item_stats.parquet",
                            timestamp_field="event_timestamp"),
)

intent_context_push = PushSource(
    name="intent_context_push",
    batch_source=FileSource(name="intent_context_log", path="data/intent_context.parquet",
                            timestamp_field="event_timestamp"),
)

user_state = FeatureView(
    name="user_state",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[
        Field(name="event_count", dtype=Int64, description="valid events applied"),
        Field(name="view_count", dtype=Int64),
        Field(name="click_count", dtype=Int64),
        Field(name="cart_count", dtype=Int64),
        Field(name="fav_count", dtype=Int64),
        Field(name="purchase_count", dtype=Int64),
        Field(name="recent_items", dtype=Array(String), description="most recent first"),
        Field(name="top_categories", dtype=Array(String), description="by decayed affinity"),
        Field(name="top_brands", dtype=Array(String), description="by decayed affinity"),
        Field(name="last_purchase_item", dtype=String),
        Field(name="last_purchase_ts", dtype=Int64, description="epoch ms"),
        Field(name="last_event_ts", dtype=Int64, description="epoch ms, event time"),
        Field(name="state_version", dtype=Int64, description="grows with every applied event"),
    ],
    source=user_state_push,
    online=True,
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=timedelta(days=365),
    schema=[
        Field(name="views", dtype=Int64),
        Field(name="carts", dtype=Int64),
        Field(name="purchases", dtype=Int64),
        Field(name="category", dtype=String),
        Field(name="brand", dtype=String),
        Field(name="price", dtype=Float64),
        Field(name="last_event_ts", dtype=Int64, description="epoch ms, event time"),
    ],
    source=item_stats_push,
    online=True,
)

intent_context = FeatureView(
    name="intent_context",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[
        Field(name="context_items", dtype=Array(String),
              description="the items whose atoms the intent model read, newest first"),
        Field(name="context_actions", dtype=Array(String), description="the action of each item"),
        Field(name="context_text", dtype=String, description="profile and situation, as the model read them"),
        Field(name="context_mode", dtype=String, description="hybrid (atoms) or text"),
        Field(name="context_format", dtype=Int64, description="version of this feature's layout"),
        Field(name="embedder", dtype=String, description="what made the atoms (name and version)"),
        Field(name="model_version", dtype=String, description="the intent model that read it"),
        Field(name="state_version", dtype=Int64, description="the user state it was built from"),
    ],
    source=intent_context_push,
    online=True,
)
