"""Which of a worker's users went idle: the index behind forgetting them (retention.user_idle_s).

A worker's state table holds every user it has folded; without a bound it grows with the user
base, not with the active users (`intentstream bench soak`). `IdleIndex` keeps the users of each
events partition this worker owns in the order their states were last written, each with the
broker time of their newest event, so a sweep reads only the fronts: the users idle past their
partition's cutoff, least recently active first, at most `limit` per sweep (the ingest loop
waits while it runs).

Idle is measured in each partition's stream time (the processor's cutoff: the broker time of the
newest event it processed there, less user_idle_s), not the wall clock: a user's events are in
order on one partition, so once the partition's stream has passed a user's newest event by
user_idle_s no event of theirs within that time can still be waiting. A worker that lags behind
forgets nobody whose events are in its backlog; a partition without traffic forgets nobody until
it has some.

>>> idle = IdleIndex()
>>> idle.rebuild([], owned={0, 1})
>>> idle.touch("a", 1_000, 0); idle.touch("b", 2_000, 0); idle.touch("a", 3_000, 0)
>>> idle.touch("c", 500, 1)
>>> idle.expired({0: 2_500}, limit=10)   # a was active again at 3,000; partition 1 has no cutoff
['b']
>>> idle.expired({0: 9_000, 1: 9_000}, limit=1), len(idle)
(['a'], 1)

After a rebalance (or a restart: recovered states) the index is rebuilt from the table's states
of the partitions now owned, oldest first; the others leave it:

>>> idle.rebuild([("d", 5_000, 1), ("e", 4_000, 1), ("f", 1, 2)], owned={1})
>>> idle.expired({1: 4_500}, limit=10), len(idle), idle.partitions == {1}
(['e'], 1, True)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping


class IdleIndex:
    def __init__(self) -> None:
        self._users: dict[int, OrderedDict[str, int]] = {}
        """partition -> user -> broker ms of their newest event, least recently written first."""
        self.partitions: frozenset[int] | None = None
        """The partitions the index was built for (None: not built yet)."""

    def __len__(self) -> int:
        return sum(len(users) for users in self._users.values())

    def touch(self, user_id: str, newest_ms: int, partition: int) -> None:
        """The user's state was written with their newest event at `newest_ms` (broker time)."""
        users = self._users.get(partition)
        if users is None:
            users = self._users[partition] = OrderedDict()
        users[user_id] = newest_ms
        users.move_to_end(user_id)

    def rebuild(self, states: Iterable[tuple[str, int, int]], owned: set[int]) -> None:
        """Index the (user, newest ms, partition) of `states` that lie on `owned` partitions."""
        self._users = {p: OrderedDict() for p in owned}
        for user, newest_ms, partition in sorted((s for s in states if s[2] in owned), key=lambda s: s[1]):
            self._users[partition][user] = newest_ms
        self.partitions = frozenset(owned)

    def expired(self, cutoffs: Mapping[int, int], limit: int) -> list[str]:
        """Take up to `limit` users whose newest event is at or before their partition's cutoff
        (partitions without one: none), from the fronts."""
        out: list[str] = []
        for partition, cutoff in cutoffs.items():
            users = self._users.get(partition)
            while users and len(out) < limit:
                user, newest_ms = next(iter(users.items()))
                if newest_ms > cutoff:
                    break
                users.popitem(last=False)
                out.append(user)
        return out
