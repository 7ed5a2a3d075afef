"""The consumer loop every Lamina consumer group member runs (the lander, the
speed layer): subscribe with a rebalance listener, watch the assignment and
rejoin when kafka-python loses it, tell when the owned partitions are read
to their end, stop cleanly on SIGTERM/SIGINT, and say once when the broker
is lost and once when it is back.

What a consumer *does* with its records and where it keeps its offsets is
its own business: the owner gets ``on_assigned`` (seek each partition to
where its store says) and ``on_revoked`` (forget uncommitted work of those
partitions) callbacks, and calls :meth:`ConsumerLoop.poll` in its own loop.

Readers outside any group (the consistency report, the demo) use
:func:`read_to_end`: a topic from its beginning to the end offsets taken
when the read starts.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lamina.errors import InfraError
from lamina.kafkaio import BrokerWatch
from lamina.logs import get_logger

log = get_logger(__name__)

#: Longest wait of the assignment watchdog between two rejoins (seconds).
MAX_REJOIN_S = 300.0

PartitionsCallback = Callable[[list[Any]], None]

#: The shortest poll while a rebalance is under way (ms). kafka-python
#: 3.0.12 runs a group join (JoinGroup, SyncGroup) as a task that each poll
#: waits for at most its own timeout; a join that completes after that wait
#: ran out is thrown away by the next poll, which starts another join. A
#: member polling with a few ms (the speed layer with a short micro-batch
#: wait; 0 for a due batch) could so go on joining without ever applying an
#: assignment until the watchdog rejoined: 14-15 s stalls in the
#: speed-latency benchmark (docs/decisions.md, "Polls during a rebalance").
#: A member that owns nothing has no records to hand on, so the longer wait
#: costs no latency.
JOIN_POLL_MS = 200

#: The cyclic garbage collector's first threshold while a consumer runs
#: (Python's default is 700 allocations). See :func:`consumer_gc`.
CONSUMER_GC_THRESHOLD = 50_000


@contextlib.contextmanager
def consumer_gc(threshold: int = CONSUMER_GC_THRESHOLD) -> Iterator[None]:
    """Run the block with the collector's first generation threshold raised
    to ``threshold`` (the older generations' unchanged), then restore it.

    A consumer allocates a record object per message; with the default
    threshold the collector runs every 700 of them and often walks the
    older generations too, although none of these objects is part of a
    cycle (reference counting frees them). The lander spent ~40 % less CPU
    per record with 50,000 (docs/decisions.md, "The lander benchmark").
    Cyclic garbage is still collected, just less often.
    """
    old = gc.get_threshold()
    gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


class ConsumerLoop:
    """One group member's plumbing around a kafka-python ``consumer``.

    ``on_assigned(partitions)`` runs inside the poll that assigns them
    (before any of their records is returned), ``on_revoked(partitions)``
    inside the poll that takes them away. ``assigned_at`` is the monotonic
    time of the latest assignment (0 before the first); ``rejoins`` counts
    the watchdog's re-subscriptions.
    """

    def __init__(self, consumer: Any, topic: str, *, on_assigned: PartitionsCallback,
                 on_revoked: PartitionsCallback, name: str,
                 rejoin_after_s: float = 15.0) -> None:
        self.consumer = consumer
        self.topic = topic
        self.name = name
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self.rejoin_after_s = rejoin_after_s
        self.rejoins = 0
        self.assigned_at = 0.0
        self._rejoin_wait_s = rejoin_after_s
        self._unassigned_since: float | None = None
        #: What the listener last handed this member and has not taken back.
        self._owned: set[Any] = set()
        #: A revoke was heard and no assignment since (a join under way).
        self._awaiting_assignment = False
        #: Joins the client completed without applying their assignment,
        #: started again (see ``_rejoin_if_join_lost``).
        self.lost_joins = 0
        self._stop = threading.Event()
        self._broker_watch = BrokerWatch.of(consumer, name=name)

    # --- stopping --------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop; the owner finishes its batch."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # --- membership ------------------------------------------------------------
    def subscribe(self) -> None:
        """Join the group on the topic. InfraError if the topic does not exist."""
        from kafka import ConsumerRebalanceListener

        loop = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                loop._owned.difference_update(revoked)
                loop._awaiting_assignment = True
                loop._on_revoked(list(revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                assigned = list(assigned)
                loop._awaiting_assignment = False
                loop._owned.update(assigned)
                if assigned:
                    loop._on_assigned(assigned)
                    loop.assigned_at = time.monotonic()

        # Fetch the topic's metadata first: kafka-python 3.0.12 otherwise often
        # joins with no partitions known, gets an empty assignment, and may
        # not apply the rejoin that follows (seen in the benchmarks).
        if not self.consumer.partitions_for_topic(self.topic):
            raise InfraError(
                f"topic {self.topic} does not exist on the broker; create it with "
                "`lamina infra up` (local) or your cluster's tooling"
            )
        self._owned = set()
        self.consumer.subscribe([self.topic], listener=_Listener())

    @property
    def owned(self) -> set[Any]:
        """The partitions this member owns: assigned by the last rebalance
        and not revoked since. Not ``consumer.assignment()``: kafka-python
        3.0.12 (eager protocol) keeps the revoked partitions there until the
        next assignment completes, with their fetches stopped."""
        return set(self._owned)

    def rebalancing(self) -> bool:
        """True while the member owns no partition or the client says a
        rejoin is pending (kafka-python 3.0.12's coordinator flags, read
        defensively: another client has none and counts as not pending)."""
        if not self._owned:
            return True
        coordinator = getattr(self.consumer, "_coordinator", None)
        return bool(getattr(coordinator, "rejoin_needed", False)
                    or getattr(coordinator, "rejoining", False))

    def poll(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        """One poll, waiting at least ``JOIN_POLL_MS`` while a rebalance is
        under way (see ``JOIN_POLL_MS``); also runs the broker watch and the
        assignment watchdog."""
        if timeout_ms < JOIN_POLL_MS and self.rebalancing():
            timeout_ms = JOIN_POLL_MS
        polled: dict[Any, list[Any]] = self.consumer.poll(timeout_ms=timeout_ms,
                                                          max_records=max_records)
        self._rejoin_if_join_lost()
        if self._broker_watch is not None:
            self._broker_watch.check()
        self.watch_assignment(time.monotonic())
        return polled

    def _rejoin_if_join_lost(self) -> None:
        """Start the join again if kafka-python 3.0.12 dropped its outcome.

        Its coordinator awaits a join task only while ``need_rejoin()`` is
        true, and for a rebalance started by a metadata change that turns
        false as soon as the leader has computed the assignment -- before
        the SyncGroup answer. A poll that looks in that window (seen with
        polls of a few ms, docs/decisions.md "Polls during a rebalance")
        never applies the assignment: the member stays ``rejoining`` with
        nothing owned until the watchdog's rejoin, 15 s on. Here that state
        (a revoke heard, no assignment since, the client still rejoining,
        no rejoin needed, no join task in flight) asks the client for a new
        join at once. Other clients lack these attributes: nothing done."""
        if not self._awaiting_assignment:
            return
        coordinator = getattr(self.consumer, "_coordinator", None)
        if coordinator is None or not getattr(coordinator, "rejoining", False):
            return
        task = getattr(coordinator, "_join_task", None)
        if task is not None and not getattr(task, "is_done", True):
            return  # a join is in flight: a later poll completes it
        try:
            if coordinator.need_rejoin():
                return  # the next poll joins (again) by itself
            coordinator.request_rejoin()
        except AttributeError:
            return
        self.lost_joins += 1
        log.info("group join ended without its assignment, joining again",
                 consumer=self.name, topic=self.topic, lost_joins=self.lost_joins)

    def watch_assignment(self, now: float) -> None:
        """Re-subscribe when the consumer has held no partition for a while.

        kafka-python 3.0.12 can get its partitions revoked by a rebalance and
        never apply the rejoin that follows: the consumer then polls forever
        with nothing assigned (seen in CI and the benchmarks). Leaving the
        group and subscribing again makes a fresh join. A member that is
        legitimately idle (more members than partitions) also rejoins, which
        costs the group a rebalance -- so the wait doubles after each try,
        up to MAX_REJOIN_S, and resets once partitions are assigned.

        What counts is :attr:`owned`: after a revoke kafka-python still lists
        the old partitions in ``assignment()`` while the join that follows
        is pending, so a join that never completes looked like an owner
        with nothing to read (the speed layer sat so for minutes in CI).
        """
        if self._owned:
            self._unassigned_since = None
            self._rejoin_wait_s = self.rejoin_after_s
            return
        if self._unassigned_since is None:
            self._unassigned_since = now
            return
        if now - self._unassigned_since < self._rejoin_wait_s:
            return
        log.warning("no partition assigned, rejoining the group", consumer=self.name,
                    topic=self.topic, unassigned_s=round(now - self._unassigned_since, 1),
                    rejoins=self.rejoins + 1)
        self.consumer.unsubscribe()
        self.subscribe()
        self.rejoins += 1
        self._unassigned_since = now
        self._rejoin_wait_s = min(self._rejoin_wait_s * 2, MAX_REJOIN_S)

    def caught_up(self) -> bool:
        """True when the member owns partitions and has read each to its end."""
        assigned = self.owned
        if not assigned:
            return False
        ends = self.consumer.end_offsets(list(assigned))
        return all(self.consumer.position(tp) >= ends[tp] for tp in assigned)

    def idle_and_caught_up(self, last_record_at: float, idle_s: float, now: float) -> bool:
        """Owns partitions, has seen nothing new for ``idle_s`` since the
        later of the last record and the last assignment, and is caught up."""
        return bool(self.assigned_at) and now - max(last_record_at, self.assigned_at) >= idle_s \
            and self.caught_up()

    def seek_all(self, partitions: Iterable[Any], next_offset: Callable[[Any], int | None]) -> None:
        """Seek each partition to ``next_offset(tp)``, or to its beginning
        when that is None (nothing of it stored yet)."""
        for tp in partitions:
            offset = next_offset(tp)
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)

    def close(self) -> None:
        self.consumer.close()


def read_to_end(consumer: Any, topic: str, *, stall_s: float | None = None,
                deadline_s: float | None = None, poll_timeout_ms: int = 1000,
                max_records: int | None = None,
                clock: Callable[[], float] = time.monotonic) -> Iterator[Any]:
    """Every record of ``topic`` from the beginning up to the end offsets
    taken when the read starts, for a reader outside any group.

    Assigns all the topic's partitions to ``consumer`` (a kafka-python
    consumer made with ``group_id=None``), seeks them to the beginning and
    yields their records (kafka-python ``ConsumerRecord``: ``partition``,
    ``offset``, ``value``) in poll order; the generator ends when every
    partition's position reached its end offset. Partitions that never held
    a record are not waited for; records produced after the read started
    are not yielded (a later read gets them). The caller closes the consumer.

    Raises InfraError if the topic has no partitions, if ``stall_s`` seconds
    pass with polls that return nothing, or if the read is still short of
    its end ``deadline_s`` seconds after it started (None: no limit); the
    message names the topic and each unfinished partition's position/end.
    """
    from kafka import TopicPartition

    started = clock()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise InfraError(f"the topic {topic!r} does not exist (no partitions): create it, or "
                         "check the topic setting")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = {tp: end for tp, end in consumer.end_offsets(tps).items() if end > 0}
    last_progress = started
    while ends:
        now = clock()
        if stall_s is not None and now - last_progress >= stall_s:
            raise _short_of_end(consumer, topic, ends, f"nothing read for {stall_s:.0f} s")
        if deadline_s is not None and now - started >= deadline_s:
            raise _short_of_end(consumer, topic, ends, f"not done in {deadline_s:.0f} s")
        polled = consumer.poll(timeout_ms=poll_timeout_ms, max_records=max_records)
        if polled:
            last_progress = clock()
        for tp, records in polled.items():
            end = ends.get(tp)
            for record in records:
                if end is not None and record.offset < end:
                    yield record
        for tp in list(ends):
            if consumer.position(tp) >= ends[tp]:
                del ends[tp]


def _short_of_end(consumer: Any, topic: str, ends: dict[Any, int], why: str) -> InfraError:
    positions = ", ".join(f"partition {tp.partition} at {consumer.position(tp)} of end {end}"
                          for tp, end in sorted(ends.items(), key=lambda item: item[0].partition))
    return InfraError(f"reading {topic} stalled short of its end offsets ({why}; {positions}): "
                      "is the broker reachable and the topic's leader up? Run again when it is")
