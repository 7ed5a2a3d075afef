"""Raw consumes of a whole topic: the reference (kafka-python with Lamina's
consumer settings) and the client tax (confluent-kafka, kcat).

Each one reads every record from the beginning and only counts them; the
time runs from creating the client (or starting the kcat process) until the
last record is in and the client is closed. CPU time is recorded beside it
(this process and, for kcat, the child plus the pipe reading).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
import uuid

from benchmarks.common import BenchmarkError, Timed
from benchmarks.machine import BENCH_CORE
from lamina import kafkaio

_POLL_TIMEOUT_MS = 200


def _timeout_s(events: int) -> float:
    """A generous bound on any raw consume: 10k events/s, at least 60 s."""
    return max(60.0, events / 10_000)


def kafka_python_raw(bootstrap: str, topic: str, partitions: int, events: int) -> Timed:
    """The reference: kafka-python with `lamina.kafkaio.make_consumer`'s
    settings, all partitions assigned (no group), from the beginning."""
    from kafka import TopicPartition

    began, began_cpu = time.perf_counter(), time.process_time()
    consumer = kafkaio.make_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        count = 0
        deadline = began + _timeout_s(events)
        while count < events:
            for records in consumer.poll(timeout_ms=_POLL_TIMEOUT_MS).values():
                count += len(records)
            if time.perf_counter() > deadline:
                raise BenchmarkError(f"kafka-python read {count} of {events} records of "
                                     f"{topic} in {_timeout_s(events):.0f}s")
    finally:
        consumer.close()
    return Timed(count, time.perf_counter() - began, time.process_time() - began_cpu)


def confluent_raw(bootstrap: str, topic: str, partitions: int, events: int) -> Timed:
    """confluent-kafka (librdkafka): all partitions assigned from the
    beginning, `consume(num_messages=10000)`, no offset commits."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    began, began_cpu = time.perf_counter(), time.process_time()
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        # Required by the client; with assign() and no commits the group is unused.
        "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    })
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        count = 0
        deadline = began + _timeout_s(events)
        while count < events:
            for message in consumer.consume(num_messages=10_000, timeout=_POLL_TIMEOUT_MS / 1000):
                error = message.error()
                if error is not None:
                    raise BenchmarkError(f"confluent-kafka consume of {topic} failed: {error}")
                count += 1
            if time.perf_counter() > deadline:
                raise BenchmarkError(f"confluent-kafka read {count} of {events} records of "
                                     f"{topic} in {_timeout_s(events):.0f}s")
    finally:
        consumer.close()
    return Timed(count, time.perf_counter() - began, time.process_time() - began_cpu)


def kcat_version() -> str | None:
    """kcat's version line, or None if kcat is not installed."""
    kcat = shutil.which("kcat")
    if kcat is None:
        return None
    out = subprocess.run([kcat, "-V"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Version"):
            return line.split("(")[0].replace("Version", "kcat").strip()
    return "kcat"


def kcat_raw(bootstrap: str, topic: str, events: int, pin: bool) -> Timed:
    """`kcat -C ... -o beginning -e -q -f '%o\\n'`, counting output lines;
    the process start is included. With `pin`, kcat runs under `taskset`
    on the benchmark's core."""
    kcat = shutil.which("kcat")
    if kcat is None:
        raise BenchmarkError("kcat is not installed (apt-get install -y kcat)")
    cmd = [kcat, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
           "-f", "%o\\n"]
    if pin:
        cmd = ["taskset", "-c", str(BENCH_CORE), *cmd]
    began, began_cpu = time.perf_counter(), _children_cpu() + time.process_time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    lines = 0
    while chunk := proc.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
    try:
        _, stderr = proc.communicate(timeout=_timeout_s(events))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BenchmarkError(f"kcat did not exit after reading {lines} lines") from None
    elapsed = time.perf_counter() - began
    cpu = _children_cpu() + time.process_time() - began_cpu
    if proc.returncode != 0 or lines != events:
        raise BenchmarkError(
            f"kcat read {lines} of {events} records of {topic} (exit code {proc.returncode}): "
            f"{stderr.decode(errors='replace').strip()[-500:]}"
        )
    return Timed(lines, elapsed, cpu)


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (kcat, once it exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
