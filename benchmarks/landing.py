"""Loading the benchmark topic, and landing it with Lamina's lander.

`load_topic` fills the raw topic with the first N records of the generator
(valid events, duplicates and malformed records at the generator's default
fractions) and remembers what a correct lander must land. `land` runs a
fresh `Lander` over the whole topic and `check_landed` proves it landed
exactly that: a benchmark that lands the wrong thing is worthless.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError
from lamina import kafkaio
from lamina.generator import KIND_DUPLICATE, KIND_MALFORMED, KIND_VALID, GeneratorConfig, generate
from lamina.master import dataset as dataset_module
from lamina.master import lander as lander_module
from lamina.master.dataset import MasterDataset
from lamina.master.deadletters import KafkaDeadLetters
from lamina.master.lander import Lander, LanderStats
from lamina.schemas.validation import EventValidator


@dataclass
class LoadedTopic:
    """What was produced: N record values in produce order, how many of each
    generator kind, and the event ids a correct lander lands (each valid
    event once; duplicates dropped, malformed records dead-lettered)."""

    values: list[bytes]
    kinds: Counter[str]
    valid_ids: set[str]
    seconds: float

    @property
    def records(self) -> int:
        return len(self.values)

    def describe(self) -> str:
        return (f"{self.records:,} records: {self.kinds[KIND_VALID]:,} valid, "
                f"{self.kinds[KIND_DUPLICATE]:,} duplicates, "
                f"{self.kinds[KIND_MALFORMED]:,} malformed")


def load_topic(bootstrap: str, topic: str, events: int, seed: int = 42) -> LoadedTopic:
    """Produce the first `events` generator records (transactions=`events`,
    so labels, duplicates and malformed records make up the rest) with
    confluent-kafka, keyed by the record's key, and wait until all are
    acknowledged. Loading speed is not a figure."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1024 * 1024,
        "message.max.bytes": 4 * 1024 * 1024,
    })
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    values: list[bytes] = []
    kinds: Counter[str] = Counter()
    valid_ids: set[str] = set()
    began = time.perf_counter()
    records = itertools.islice(generate(GeneratorConfig(seed=seed, transactions=events)), events)
    for record in records:
        while True:
            try:
                producer.produce(topic, value=record.value, key=record.key, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
        producer.poll(0)
        values.append(record.value)
        kinds[record.kind] += 1
        if record.kind == KIND_VALID and record.event_id is not None:
            valid_ids.add(record.event_id)
    try:
        remaining = producer.flush(120)
    except KafkaException as exc:
        raise BenchmarkError(f"loading {topic} failed: {exc}") from exc
    if remaining or failures:
        raise BenchmarkError(
            f"loading {topic}: {remaining} records undelivered, {len(failures)} failed "
            f"(first: {failures[:1]}); is the broker healthy?"
        )
    if len(values) < events:
        raise BenchmarkError(f"the generator made only {len(values)} records, not {events}")
    if len(valid_ids) != kinds[KIND_VALID]:
        raise BenchmarkError("the generator repeated an event_id among its valid records")
    return LoadedTopic(values, kinds, valid_ids, time.perf_counter() - began)


# A lander whose consumed count has not moved for this long is stopped
# (`Lander.stop()`): a healthy run always has records waiting.
STALL_S = 20.0


# The steps of a commit the benchmark times (see `_commit_steps`), in the
# order they happen; whatever else commit_s holds is the replay and
# duplicate filtering of commit_batch.
COMMIT_STEPS = ("table load", "dead letters", "Arrow rows", "event_date column", "Delta write")


@dataclass(frozen=True)
class LanderRun:
    seconds: float
    stats: LanderStats
    dataset_uri: str
    cpu_seconds: float
    # Set by the watchdog if it had to stop the lander: what it saw.
    stall: str | None = None
    # Seconds per COMMIT_STEPS name, summed over the run's commits.
    commit_steps: dict[str, float] = field(default_factory=dict)

    @property
    def stalled_at_start(self) -> bool:
        """True if the lander consumed nothing and was stopped: its consumer
        never got going (seen with kafka-python 3.0.12: a subscribed consumer
        left without partitions after its join raced a metadata update)."""
        return self.stall is not None and self.stats.consumed == 0

    @property
    def consumed_rate(self) -> float:
        return self.stats.consumed / self.seconds

    @property
    def landed_rate(self) -> float:
        return self.stats.landed / self.seconds


class _Watchdog:
    """Stops `lander` when its consumed count has not moved for `stall_s`
    seconds, and says what it saw (a benchmark must end, not hang)."""

    def __init__(self, lander: Lander, stall_s: float) -> None:
        self.lander = lander
        self.stall_s = stall_s
        self.stall: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        last, since = -1, time.monotonic()
        while not self._done.wait(1.0):
            consumed = self.lander.stats.consumed
            if consumed != last:
                last, since = consumed, time.monotonic()
            elif time.monotonic() - since >= self.stall_s:
                try:
                    assignment = sorted(tp.partition for tp in self.lander.consumer.assignment())
                except Exception as exc:  # noqa: BLE001 - only a diagnostic
                    assignment = [f"unknown ({exc})"]
                self.stall = (f"no progress for {self.stall_s:.0f} s at {consumed:,} records "
                              f"consumed; the consumer's assignment was {assignment}")
                self.lander.stop()
                return


def _timed(totals: dict[str, float], step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[step] = totals.get(step, 0.0) + time.perf_counter() - began
    return timed


@contextlib.contextmanager
def _commit_steps(dataset: MasterDataset, dead_letters: KafkaDeadLetters,
                  totals: dict[str, float]) -> Iterator[None]:
    """Time the steps of the lander's commits by wrapping what commit_batch
    calls (a dozen calls per run, so the wrapping costs nothing measurable):
    loading the table, sending the dead letters, building the Arrow rows,
    the event_date column and the Delta write (`MasterDataset.append` minus
    the event_date column). The module functions are put back afterwards."""
    rows, with_date = lander_module._rows, dataset_module.with_event_date
    # Instance attributes shadowing the methods, for this run only.
    dataset.table = _timed(totals, "table load", dataset.table)  # type: ignore[method-assign]
    dataset.append = _timed(totals, "Delta write", dataset.append)  # type: ignore[method-assign]
    dead_letters.send = _timed(  # type: ignore[method-assign]
        totals, "dead letters", dead_letters.send)
    lander_module._rows = _timed(totals, "Arrow rows", rows)
    dataset_module.with_event_date = _timed(totals, "event_date column", with_date)
    try:
        yield
    finally:
        lander_module._rows, dataset_module.with_event_date = rows, with_date
        date_s = totals.get("event_date column", 0.0)
        totals["Delta write"] = totals.get("Delta write", 0.0) - date_s


def land(bootstrap: str, topic: str, dlq_topic: str, events: int, dataset_dir: Path) -> LanderRun:
    """Land the whole topic into a fresh master dataset with the lander's
    default commit settings and dead letters on `dlq_topic`; the wall time
    runs from creating the consumer until `run` returns (the remainder
    committed, the consumer closed). The dead-letter producer and the
    validator are made before the clock starts, like a lander's setup."""
    if dataset_dir.exists():
        raise BenchmarkError(f"{dataset_dir} exists; the lander benchmark needs a fresh dataset")
    producer = kafkaio.make_producer(bootstrap)
    validator = EventValidator()
    steps: dict[str, float] = {}
    try:
        began, began_cpu = time.perf_counter(), time.process_time()
        consumer = kafkaio.make_consumer(bootstrap, group_id=f"bench-lander-{uuid.uuid4().hex}")
        dataset = MasterDataset(str(dataset_dir))
        dead_letters = KafkaDeadLetters(producer, dlq_topic)
        lander = Lander(
            dataset=dataset,
            consumer=consumer,
            topic=topic,
            dead_letters=dead_letters,
            validator=validator,
        )
        with _commit_steps(dataset, dead_letters, steps), \
                _Watchdog(lander, STALL_S) as watchdog:
            stats = lander.run(max_events=events)
        seconds, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    finally:
        producer.close()
    return LanderRun(seconds, stats, str(dataset_dir), cpu, watchdog.stall, steps)


def check_landed(run: LanderRun, loaded: LoadedTopic) -> None:
    """Raise BenchmarkError unless the lander consumed every record, the
    table holds exactly `landed` rows, and those are the generator's valid
    events, each once; duplicates and malformed records must be accounted for."""
    stats = run.stats
    ids = MasterDataset(run.dataset_uri).read(columns=["event_id"]).column("event_id")
    landed_ids = set(ids.to_pylist())
    problems = []
    if stats.consumed != loaded.records:
        problems.append(f"consumed {stats.consumed:,} of {loaded.records:,} records")
    if len(ids) != stats.landed:
        problems.append(f"the table has {len(ids):,} rows but the lander says {stats.landed:,}")
    if len(landed_ids) != len(ids):
        problems.append(f"{len(ids) - len(landed_ids):,} event_ids landed more than once")
    if landed_ids != loaded.valid_ids:
        problems.append(
            f"landed {len(landed_ids):,} distinct events, expected the {len(loaded.valid_ids):,} "
            f"valid ones ({len(loaded.valid_ids - landed_ids):,} missing, "
            f"{len(landed_ids - loaded.valid_ids):,} unexpected)"
        )
    if stats.dead_lettered != loaded.kinds[KIND_MALFORMED]:
        problems.append(f"dead-lettered {stats.dead_lettered:,}, but "
                        f"{loaded.kinds[KIND_MALFORMED]:,} records were malformed")
    if stats.duplicates_dropped != loaded.kinds[KIND_DUPLICATE]:
        problems.append(f"dropped {stats.duplicates_dropped:,} duplicates, but "
                        f"{loaded.kinds[KIND_DUPLICATE]:,} were produced")
    if run.stall:
        problems.append(f"the watchdog stopped it: {run.stall}")
    if problems:
        raise BenchmarkError("the lander landed the wrong thing: " + "; ".join(problems)
                             + f" (dataset kept at {run.dataset_uri})")
