"""Two workers on one consumer group: the partitions split between them, the shared item model
counts every event once, a SIGKILLed worker restarted with its static instance id takes its
partitions back at once (no wait for its old session), and a SIGTERMed one (mid-stream: it
finishes what it holds, commits and exits by itself), then a SIGKILLed one, hand their
partitions to the other; per-user and per-item counts stay exact throughout."""

from __future__ import annotations

import threading
import time

from tests.integration.kafka_io import (changelog_states, committed_and_end, group_assignment,
                                        users_by_partition, wait_committed_to_end, wait_for)
from tests.integration.traffic import Traffic

A_SESSION_S = 40.0
"""Long, so that the restart phase shows static membership: with dynamic membership the group
would wait for the killed member's session to end before anyone processes again."""
B_SESSION_S = 8.0


def _worker(scoped, instance_id: str, session_s: float):
    return scoped.model_copy(update={"worker": scoped.worker.model_copy(
        update={"instance_id": instance_id, "session_timeout_s": session_s})})


def test_two_workers_split_the_stream_and_take_over_from_each_other(scoped, worker_factory):
    by_partition = users_by_partition(scoped.key_prefix, scoped.kafka.partitions, 10)
    users = [u for us in by_partition.values() for u in us]
    partition_of = {u: p for p, us in by_partition.items() for u in us}
    traffic = Traffic(scoped)
    a_settings, b_settings = _worker(scoped, "worker-a", A_SESSION_S), _worker(scoped, "worker-b", B_SESSION_S)

    def logs() -> str:
        committed, end = committed_and_end(scoped, scoped.kafka.events_topic)
        views, purchases = traffic.item_counts()
        items_off = {i: (views.get(i), n) for i, n in traffic.views.items() if views.get(i) != n}
        got = traffic.user_counts()
        users_off = sorted(u for u, n in traffic.users.items() if got.get(u) != n)[:4]
        states = changelog_states(scoped, users_off)
        return "\n".join([traffic.user_diff(), f"{len(items_off)} items' views off (got, sent): "
                          f"{sorted(items_off.items())[:12]}", f"committed {committed}, end {end}",
                          *(f"{u} (events partition {partition_of[u]}): last changelog records (changelog "
                            f"partition, offset, event_count, partition, last_offset) {states[u][-4:]} of "
                            f"{len(states[u])}" for u in users_off),
                          f"processed a {a.processed()}",
                          *(f"--- {w.log_path.name}\n{w.log_tail(15)}" for w in (a, b))])

    def counted() -> bool:
        return traffic.users_counted() and traffic.items_counted()

    # Both on one group: the partitions split, every event counted once per user and per item.
    traffic.send(users, 0, 4000)
    a, b = worker_factory(a_settings), worker_factory(b_settings)
    wait_for(lambda: sorted(map(len, group_assignment(scoped))) == [2, 2], 90, "the group to split 2 + 2", logs)
    split = sorted(group_assignment(scoped), key=min)
    assert split[0] | split[1] == set(range(scoped.kafka.partitions))
    wait_for(counted, 120, "every event counted once with two workers", logs)
    wait_committed_to_end(scoped, 60, logs)
    # Item features reach Feast, each item pushed by the one worker owning its slot.
    items = sorted(traffic.views)
    wait_for(lambda: [r["views"] for r in traffic.features.read_items(items, ["views"])]
             == [traffic.views[i] for i in items], 30, "item features in Feast", logs)

    # SIGKILL a mid-stream and restart it at once with its instance id: it takes its partitions
    # back without waiting out its old session (A_SESSION_S), and nothing is counted twice.
    before = a.processed()
    traffic.send(users, 4000, 6000)
    wait_for(lambda: a.processed() >= before + 500, 60, "the workers to make progress", logs)
    a.stop(kill=True)
    restarted_at = time.monotonic()
    a = worker_factory(a_settings)
    wait_for(counted, A_SESSION_S - 10, "the restarted static member to catch up before its old session ends", logs)
    assert time.monotonic() - restarted_at < A_SESSION_S - 10
    assert sorted(group_assignment(scoped), key=min) == split
    wait_committed_to_end(scoped, 60, logs)

    # SIGTERM b mid-stream: it drains what it holds (pushes, refreshes), commits and exits by
    # itself; a static member does not leave the group, so after its session its partitions move.
    sender = threading.Thread(target=traffic.send, args=(users, 10_000, 4000, 1000.0))
    before = a.processed()
    sender.start()
    wait_for(lambda: a.processed() >= before + 500, 60, "the workers to make progress", logs)
    stopped_at = time.monotonic()
    assert b.stop(timeout_s=b_settings.worker.drain_timeout_s + 10), "SIGTERMed b did not exit by itself"
    assert time.monotonic() - stopped_at < b_settings.worker.drain_timeout_s + 5
    assert "drained at stop" in b.log_tail(60), b.log_tail(60)
    sender.join()
    wait_for(lambda: group_assignment(scoped) == [frozenset(range(scoped.kafka.partitions))], 60,
             "the survivor to hold every partition", logs)
    wait_for(counted, 120, "every event counted once after the takeover", logs)
    wait_committed_to_end(scoped, 60, logs)

    # b back (its old session ended: it joins anew and the group splits again), then SIGKILLed
    # mid-stream: after its session its partitions move to a, nothing lost or counted twice.
    b = worker_factory(b_settings)
    wait_for(lambda: sorted(map(len, group_assignment(scoped))) == [2, 2], 90, "the group to split again", logs)
    before = a.processed()
    traffic.send(users, 14_000, 6000)
    wait_for(lambda: a.processed() >= before + 500, 60, "the workers to make progress", logs)
    b.stop(kill=True)
    wait_for(lambda: group_assignment(scoped) == [frozenset(range(scoped.kafka.partitions))], 60,
             "the survivor to hold every partition after the SIGKILL", logs)
    wait_for(counted, 120, "every event counted once after the SIGKILL takeover", logs)
    wait_committed_to_end(scoped, 60, logs)
    time.sleep(2)  # anything still redelivered must not be counted again
    assert traffic.user_counts() == traffic.users and sum(traffic.users.values()) == 20_000
    assert traffic.item_counts() == (traffic.views, traffic.purchases)
    assert a.alive(), a.log_tail()
