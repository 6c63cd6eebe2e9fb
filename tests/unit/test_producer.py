"""The producer's environment (stream/producer.py)."""

from stream.producer import CHECKSUMS_IN_C


def test_record_batches_are_checksummed_in_c():
    # Without the crc32c extension every producer (the worker's intent requests, the shop SDK,
    # replays) checksums its batches in pure Python while holding the GIL: a dependency that
    # silently fell away would show only as a slower, jerkier stream.
    assert CHECKSUMS_IN_C
