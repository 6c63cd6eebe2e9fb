"""Offline tools shared by training and evaluation, never imported by the streaming runtime:
dataset adapters (the generic format, REES46, Taobao), the replay that emits a dataset into
Kafka (with simulated feedback), splits, ranking metrics, baseline methods and the tag metric."""
