"""The speed layer's metrics for Prometheus: a text file written atomically
every few seconds, optionally ``/metrics`` over HTTP on a loopback port, and
the reader ``lamina speed status`` uses.

What is measured (names are the exposition's; ``_total`` are counters of
this process, reset by a restart as Prometheus expects):

- ``lamina_speed_records_total{outcome=...}`` -- every consumed record ends
  in one outcome (``SpeedStats``): applied, late (beyond the allowed
  lateness), before_cutoff, duplicate, invalid, future, other_type; and
  ``lamina_speed_invalid_total{reason=...}`` by validator reason;
- ``lamina_speed_scored_total`` and ``lamina_speed_unscored_total{reason}``;
- ``lamina_speed_reread_total`` -- consumed records dropped unwritten and
  read again (``consumed_total - reread_total`` went into written batches);
- ``lamina_speed_batches_total`` (micro-batches written), ``..._resets_total``,
  ``..._rejoins_total``, ``..._tiles_written_total``;
- ``lamina_speed_lag_records{topic,partition}`` -- the partition's end
  offset (high watermark) minus the consumer's position, for the
  partitions this member owns, read when the file is written;
- ``lamina_speed_events_per_second`` -- consumed records per second over
  the last interval (a gauge, for people; Prometheus' ``rate()`` of the
  counter is the better series);
- ``lamina_speed_produce_to_score_ms`` -- a summary of the produce-to-score
  latency of the recent scores (the score record's ``produce_to_score_ms``:
  Kafka record timestamp to the scorer's clock): quantiles 0.5, 0.9, 0.99,
  0.999 over the last ``LATENCY_WINDOW`` scores, plus ``_sum``/``_count``
  over the process' life;
- ``lamina_speed_model_version`` (-1 before anything is scored),
  ``lamina_speed_batch_cutoff_ms`` (-1 with no batch view) and
  ``lamina_speed_metrics_written_seconds`` (Unix time of the write).

The format is Prometheus' text exposition 0.0.4, written here by hand (it is
a few lines; no client library needed). The file is written to a temporary
name in the same folder and renamed over the old one, so a reader (the node
exporter's textfile collector, ``lamina speed status``) never sees half a
file.
"""

from __future__ import annotations

import http.server
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.logs import get_logger

log = get_logger(__name__)

#: How many recent produce-to-score latencies the quantiles are taken over.
LATENCY_WINDOW = 10_000
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
PREFIX = "lamina_speed"

#: SpeedStats field -> the ``outcome`` label of ``records_total``.
OUTCOMES: Mapping[str, str] = {
    "applied": "applied", "late": "late", "before_cutoff": "before_cutoff",
    "duplicates": "duplicate", "invalid": "invalid", "future": "future",
    "other_types": "other_type",
}
UNSCORED: Mapping[str, str] = {
    "unscored_no_champion": "no_champion", "unscored_no_batch_view": "no_batch_view",
    "unscored_out_of_range": "out_of_range", "unscored_refused": "refused",
}


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``sorted_values`` (ascending): the
    smallest value with at least ``q`` of the values at or below it. NaN
    for no values (Prometheus' convention for an empty summary)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q * n))
    return float(sorted_values[rank - 1])


class LatencyWindow:
    """The last ``size`` latencies (ms) and the sum and count of all of them."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"latency window must hold at least 1 value, got {size}")
        self._recent: deque[int] = deque(maxlen=size)
        self.count = 0
        self.total = 0
        self._lock = threading.Lock()

    def add(self, latencies_ms: Iterable[int]) -> None:
        values = list(latencies_ms)
        with self._lock:
            self._recent.extend(values)
            self.count += len(values)
            self.total += sum(values)

    def quantiles(self, qs: Sequence[float] = QUANTILES) -> dict[float, float]:
        with self._lock:
            ordered = sorted(self._recent)
        return {q: quantile(ordered, q) for q in qs}


class MeteredSink:
    """A score sink that records each sent record's produce-to-score latency
    in ``latencies`` once ``inner.send`` returned (scores that failed to go
    out are not counted)."""

    def __init__(self, inner: Any, latencies: LatencyWindow) -> None:
        self.inner = inner
        self.latencies = latencies

    def send(self, records: Sequence[Any], encoded: Sequence[bytes] | None = None) -> None:
        self.inner.send(records, encoded)
        self.latencies.add(r.produce_to_score_ms for r in records)


# --- the exposition ----------------------------------------------------------

_LABEL_ESCAPES = str.maketrans({"\\": r"\\", '"': r"\"", "\n": r"\n"})


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).translate(_LABEL_ESCAPES)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _value(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    return str(int(value))


@dataclass
class Exposition:
    """Metric families in the text format, in the order they are added."""

    lines: list[str] = field(default_factory=list)

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, object], float]], *,
               suffixes: Iterable[tuple[str, Mapping[str, object], float]] = ()) -> None:
        full = f"{PREFIX}_{name}"
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self.lines.append(f"{full}{_labels(labels)} {_value(value)}")
        for suffix, labels, value in suffixes:
            self.lines.append(f"{full}{suffix}{_labels(labels)} {_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass(frozen=True)
class Snapshot:
    """What one write of the metrics shows."""

    stats: Any  # SpeedStats
    lag: Mapping[tuple[str, int], int]
    events_per_second: float
    latencies: Mapping[float, float]
    latency_count: int
    latency_sum: int
    written_at_s: float


def render(snapshot: Snapshot) -> str:
    """The snapshot in Prometheus' text exposition format (0.0.4)."""
    stats = snapshot.stats
    out = Exposition()
    out.family("records_total", "counter",
               "Consumed records by outcome (every record ends in exactly one).",
               [({"outcome": label}, getattr(stats, name)) for name, label in OUTCOMES.items()])
    out.family("consumed_total", "counter", "Records consumed (polled) by this process.",
               [({}, stats.consumed)])
    out.family("reread_total", "counter",
               "Consumed records dropped unwritten and read again (a revoked partition's "
               "open batch, a batch the store refused).", [({}, stats.reread)])
    out.family("invalid_total", "counter", "Invalid records by validator reason.",
               [({"reason": reason}, n) for reason, n in sorted(stats.invalid_reasons.items())])
    out.family("scored_total", "counter", "Events scored and produced to the scores topic.",
               [({}, stats.scored)])
    out.family("unscored_total", "counter", "Applied query events not scored, by reason.",
               [({"reason": label}, getattr(stats, name)) for name, label in UNSCORED.items()])
    out.family("batches_total", "counter", "Micro-batches written to the tile store.",
               [({}, stats.commits)])
    out.family("tiles_written_total", "counter", "Tile rows written to the tile store.",
               [({}, stats.tiles_written)])
    out.family("resets_total", "counter", "Micro-batches dropped (failed write, rebalance).",
               [({}, stats.resets)])
    out.family("rejoins_total", "counter", "Group rejoins by the assignment watchdog.",
               [({}, stats.rejoins)])
    out.family("lag_records", "gauge",
               "End offset (high watermark) minus the consumer's position, per owned partition.",
               [({"topic": topic, "partition": partition}, lag)
                for (topic, partition), lag in sorted(snapshot.lag.items())])
    out.family("events_per_second", "gauge", "Records consumed per second, last interval.",
               [({}, snapshot.events_per_second)])
    out.family("produce_to_score_ms", "summary",
               "Kafka record timestamp to score, recent scores (quantiles) and all (sum, count).",
               [({"quantile": _value(q)}, v) for q, v in snapshot.latencies.items()],
               suffixes=[("_sum", {}, snapshot.latency_sum),
                         ("_count", {}, snapshot.latency_count)])
    out.family("model_version", "gauge", "Model version of the last scored batch (-1: none).",
               [({}, -1 if stats.model_version is None else stats.model_version)])
    out.family("batch_cutoff_ms", "gauge", "Cutoff of the batch view in use (-1: none).",
               [({}, -1 if stats.cutoff_ms is None else stats.cutoff_ms)])
    out.family("metrics_written_seconds", "gauge", "Unix time this exposition was written.",
               [({}, round(snapshot.written_at_s, 3))])
    return out.text()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

#: (metric name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """The samples of a text exposition (comments skipped). ValueError
    naming the line for one that is not a sample."""
    samples: Samples = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"line {number} is not a Prometheus sample: {line!r}")
        name, _, labels, value = match.groups()
        pairs = tuple(sorted(
            (k, v.replace(r"\n", "\n").replace(r"\"", '"').replace(r"\\", "\\"))
            for k, v in _LABEL.findall(labels or "")))
        samples[(name, pairs)] = float(value)
    return samples


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder
    and a rename, so a reader sees the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


# --- the process' metrics ----------------------------------------------------

LagSource = Callable[[], Mapping[tuple[str, int], int]]


class SpeedMetrics:
    """Renders the speed layer's metrics every ``interval_s`` (``tick``, on
    the consumer's thread: the lag is read through the consumer, which is
    not thread-safe) to ``path`` and, with ``port`` > 0, serves the latest
    rendering at ``http://127.0.0.1:port/metrics`` from a daemon thread.
    ``close()`` stops the server; the owner ticks with ``force`` once more
    before it closes its consumer."""

    def __init__(self, stats: Any, *, path: Path | None, interval_s: float = 5.0,
                 port: int = 0, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"metrics interval must be > 0 s, got {interval_s}")
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be within 0-65535, got {port}")
        self.stats = stats
        self.path = path
        self.interval_s = interval_s
        self.latencies = LatencyWindow()
        self.lag_source: LagSource | None = None
        self._clock, self._monotonic = clock, monotonic
        self._last_at: float | None = None
        self._last_consumed = 0
        self._rate = 0.0
        self._text = ""
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        if port:
            self._serve(port)

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def text(self) -> str:
        """The latest rendering (empty before the first)."""
        with self._lock:
            return self._text

    def tick(self, *, force: bool = False) -> bool:
        """Render and write when ``interval_s`` passed since the last write
        (or ``force``); True if it wrote."""
        now = self._monotonic()
        if not force and self._last_at is not None and now - self._last_at < self.interval_s:
            return False
        consumed = self.stats.consumed
        if self._last_at is not None and now > self._last_at:
            self._rate = (consumed - self._last_consumed) / (now - self._last_at)
        self._last_at, self._last_consumed = now, consumed
        lag: Mapping[tuple[str, int], int] = {}
        if self.lag_source is not None:
            try:
                lag = self.lag_source()
            except Exception as exc:  # noqa: BLE001 - a metric must not stop the speed layer
                log.debug("lag not read", error=exc)
        text = render(Snapshot(
            stats=self.stats, lag=lag, events_per_second=round(self._rate, 1),
            latencies=self.latencies.quantiles(), latency_count=self.latencies.count,
            latency_sum=self.latencies.total, written_at_s=self._clock()))
        with self._lock:
            self._text = text
        if self.path is not None:
            try:
                write_atomically(self.path, text)
            except OSError as exc:
                log.warning("metrics file not written", path=str(self.path), error=exc)
        return True

    def close(self) -> None:
        """Stop the HTTP server (the file stays, with the last write)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _serve(self, port: int) -> None:
        metrics = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = metrics.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # scrapes are not worth a log line
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, name="speed-metrics-http",
                         daemon=True).start()
        log.info("metrics served", url=f"http://127.0.0.1:{self.port}/metrics")


def consumer_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """End offset minus position for each partition ``consumer`` owns (one
    ``end_offsets`` request; call on the consumer's thread)."""
    assigned = list(consumer.assignment())
    if not assigned:
        return {}
    ends = consumer.end_offsets(assigned)
    out = {}
    for tp in assigned:
        position = consumer.position(tp)
        if position is not None and tp in ends:
            out[(tp.topic, tp.partition)] = max(0, int(ends[tp]) - int(position))
    return out


# --- reading it back (lamina speed status) -------------------------------------

def status_lines(text: str, *, age_s: float) -> list[str]:
    """``lamina speed status``' lines for a metrics file's ``text`` written
    ``age_s`` seconds ago."""
    samples = parse(text)

    def get(name: str, **labels: str) -> float | None:
        return samples.get((f"{PREFIX}_{name}", tuple(sorted(labels.items()))))

    def by(name: str, label: str) -> dict[str, float]:
        return {dict(pairs)[label]: v for (n, pairs), v in samples.items()
                if n == f"{PREFIX}_{name}" and label in dict(pairs)}

    def num(value: float | None) -> str:
        if value is None:
            return "-"
        if math.isnan(value):
            return "n/a"
        return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"

    lines = [f"written      {age_s:.1f} s ago"]
    model = get("model_version")
    lines.append(f"model        {'none yet' if model is None or model < 0 else f'v{int(model)}'}")
    cutoff = get("batch_cutoff_ms")
    lines.append(f"batch cutoff {'none' if cutoff is None or cutoff < 0 else num(cutoff)}")
    lines.append(f"consumed     {num(get('consumed_total'))}  "
                 f"({num(get('events_per_second'))} events/s)")
    outcomes = by("records_total", "outcome")
    lines.append("outcomes     " + ", ".join(f"{k} {num(v)}" for k, v in outcomes.items()))
    reasons = by("invalid_total", "reason")
    if reasons:
        lines.append("invalid by   " + ", ".join(f"{k} {num(v)}" for k, v in reasons.items()))
    unscored = by("unscored_total", "reason")
    lines.append(f"scored       {num(get('scored_total'))}; unscored "
                 + ", ".join(f"{k} {num(v)}" for k, v in unscored.items()))
    quantiles = by("produce_to_score_ms", "quantile")
    lines.append("latency ms   " + ", ".join(
        f"p{float(q) * 100:g} {num(v)}" for q, v in sorted(quantiles.items(),
                                                           key=lambda kv: float(kv[0])))
        + f"  (produce to score, {num(get('produce_to_score_ms_count'))} scores)")
    lines.append(f"batches      {num(get('batches_total'))}  (resets "
                 f"{num(get('resets_total'))}, rejoins {num(get('rejoins_total'))})")
    lag = {(dict(p)["topic"], int(dict(p)["partition"])): v for (n, p), v in samples.items()
           if n == f"{PREFIX}_lag_records"}
    if lag:
        lines.append(f"lag          {num(sum(lag.values()))} records")
        lines.extend(f"  {topic}[{partition}]  {num(v)}"
                     for (topic, partition), v in sorted(lag.items()))
    else:
        lines.append("lag          no partition owned")
    return lines
