"""The moving parts of `lamina demo`'s full loop (lamina/demo.py runs them).

* ``demo_timeline`` -- where the generated period is cut: a history landed
  before the stream, the first champion's windows inside it, the live
  stream's two legs (to the retraining point, then to the end) and the
  second model's windows after the drift.
* ``StreamProducer`` -- one leg of the generated records sent to Kafka at
  a rate in a background thread; it keeps the stream's clock (the newest
  event time sent), which the demo's serving app answers "now" with.
* ``SpeedProcess`` -- `lamina speed run` as a child process with the demo's
  settings, and a sampler of its metrics file (lag, model version).
* ``ServingThread`` -- the serving app on uvicorn on a free loopback port.
* ``read_scores`` / ``auc_windows`` -- the score records of ``scores.v1``
  joined with the label events by transaction id, ROC AUC per event-time
  window with the labels known at a time (the contract's label rule).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from lamina.config import Settings
from lamina.errors import ConfigError, InfraError
from lamina.logs import get_logger

log = get_logger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: The demo's label delays (days), much shorter than the generator's default
#: chargebacks (1-30 days): the live AUC and the retraining need post-drift
#: labels within the 4.7 days the 14-day period has after its drift.
DEMO_LABEL_DELAY_DAYS = (0.02, 0.5)
#: Longer than any demo label delay: an unlabelled transaction this old is genuine.
DEMO_LABEL_MATURITY_MS = 12 * HOUR_MS
#: Share of cards compromised once (the generator's default is 0.02): enough
#: fraud that half a day of post-drift backtest passes the gate's minimum
#: of 20 frauds and each live AUC window has some.
DEMO_FRAUD_CARD_RATE = 0.1
#: Expected transactions per training set or backtest at most: the
#: point-in-time builder does ~700 rows/s on two cores.
DEMO_MAX_SET_ROWS = 6_000
#: The history ends this long before the drift, the retraining point this
#: long after it.
HISTORY_BEFORE_DRIFT_MS = DAY_MS
RETRAIN_AFTER_DRIFT_MS = 60 * HOUR_MS
#: The live AUC's event-time windows.
AUC_WINDOW_MS = 12 * HOUR_MS
#: Published batch views answer until cutoff + 2 x this: past the period's end.
DEMO_PUBLISH_INTERVAL_MS = 4 * DAY_MS


def demo_generator_config(config: Any, *, fraud_rate_given: bool) -> Any:
    """``config`` (a GeneratorConfig) with the demo's label delays and, unless
    the user chose one, its fraud rate."""
    changes: dict[str, Any] = {"fraud_label_delay_days": DEMO_LABEL_DELAY_DAYS,
                               "genuine_label_delay_days": DEMO_LABEL_DELAY_DAYS}
    if not fraud_rate_given:
        changes["fraud_card_rate"] = DEMO_FRAUD_CARD_RATE
    return dataclasses.replace(config, **changes)


@dataclass(frozen=True)
class DemoTimeline:
    """Event-time cuts of the demo's period, [start, end) in ms, whole hours."""

    history_end_ms: int
    retrain_at_ms: int
    first_train: tuple[int, int]
    first_backtest: tuple[int, int]
    second_train: tuple[int, int]
    second_backtest: tuple[int, int]
    drift_at_ms: int
    label_maturity_ms: int = DEMO_LABEL_MATURITY_MS


def _hours(ms: int) -> int:
    return ms // HOUR_MS * HOUR_MS


def _pair(end: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (end - 2 * width, end - width), (end - width, end)


def demo_timeline(config: Any) -> DemoTimeline:
    """The cuts for a GeneratorConfig with a drift: the history ends a day
    before the drift; the first champion trains and backtests on two
    adjacent windows ending a label maturity before that; the stream runs
    to 60 h after the drift, where the second model is trained on the
    post-drift windows (training from the drift on, the backtest ending a
    label maturity before the retraining point), then on to the end. Sets
    are capped at ~DEMO_MAX_SET_ROWS expected transactions. ConfigError if
    the period has no drift or no room for this."""
    drift = config.drift_at_ms
    if drift is None:
        raise ConfigError("the full demo needs a drift of the fraud pattern (--drift-at); "
                          "run with --no-batch to only land events")
    per_day = config.transactions / config.days
    cap = _hours(int(DEMO_MAX_SET_ROWS / per_day * DAY_MS))
    history_end = _hours(drift - HISTORY_BEFORE_DRIFT_MS)
    retrain_at = _hours(drift + RETRAIN_AFTER_DRIFT_MS)
    first_end = history_end - DEMO_LABEL_MATURITY_MS
    first_width = min(_hours((first_end - config.start) // 3), cap)
    second_end = retrain_at - DEMO_LABEL_MATURITY_MS
    second_start = _hours(drift + HOUR_MS - 1)  # the first whole hour of the new pattern
    backtest_width = min(_hours((second_end - second_start) // 4), cap)
    train_width = min(second_end - backtest_width - second_start, cap)
    if first_width < HOUR_MS or backtest_width < HOUR_MS or retrain_at + DAY_MS > config.end_ms:
        raise ConfigError(
            "the generated period leaves no room for the full demo (a history and "
            "windows before the drift, 60 h after it for retraining and a day more for "
            "the new champion): generate more days (--days) or run with --no-batch")
    first_train, first_backtest = _pair(first_end, first_width)
    return DemoTimeline(
        history_end_ms=history_end, retrain_at_ms=retrain_at,
        first_train=first_train, first_backtest=first_backtest,
        second_train=(second_end - backtest_width - train_width, second_end - backtest_width),
        second_backtest=(second_end - backtest_width, second_end), drift_at_ms=drift)


# --- the generated records, cut into legs ------------------------------------------


@dataclass
class StreamFacts:
    """What the demo knows of what it sent: label events (transaction id ->
    (is_fraud, label event time), a positive winning), transaction event
    times, and the cards that transacted."""

    labels: dict[str, list[tuple[bool, int]]] = field(default_factory=dict)
    tx_time: dict[str, int] = field(default_factory=dict)
    cards: list[str] = field(default_factory=list)
    #: How many of ``cards`` had transacted by the end of each leg.
    cards_by_leg: list[int] = field(default_factory=list)


def cut_records(records: Iterable[Any], cuts: Sequence[int],
                facts: StreamFacts) -> list[list[Any]]:
    """Generated records (in arrival order) in ``len(cuts) + 1`` legs: a leg
    ends before the first valid record whose event time reaches its cut
    (late records then arrive in the next leg, as they would). Fills
    ``facts`` from the valid records."""
    legs: list[list[Any]] = [[]]
    seen_cards: set[str] = set()
    for record in records:
        if record.kind == "valid":
            while len(legs) <= len(cuts) and record.event_time_ms >= cuts[len(legs) - 1]:
                facts.cards_by_leg.append(len(facts.cards))
                legs.append([])
            doc = orjson.loads(record.value)
            if doc["event_type"] == "label":
                facts.labels.setdefault(doc["transaction_id"], []).append(
                    (bool(doc["is_fraud"]), int(doc["event_time"])))
            elif doc["event_type"] == "transaction":
                facts.tx_time[doc["event_id"]] = int(doc["event_time"])
                if doc["card_id"] not in seen_cards:
                    seen_cards.add(doc["card_id"])
                    facts.cards.append(doc["card_id"])
        legs[-1].append(record)
    while len(legs) <= len(cuts):
        facts.cards_by_leg.append(len(facts.cards))
        legs.append([])
    facts.cards_by_leg.append(len(facts.cards))
    return legs


class StreamProducer:
    """Sends records to a topic at ``rate`` events/s in a background thread
    (``start``/``join``); ``clock_ms`` is the newest valid event time sent."""

    def __init__(self, bootstrap_servers: str, topic: str, *, rate: float,
                 clock_ms: int) -> None:
        from lamina.kafkaio import make_producer

        self.topic, self.rate = topic, rate
        self.producer = make_producer(bootstrap_servers)
        self.clock_ms = clock_ms
        self.sent = 0
        self.errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def start(self, records: Sequence[Any]) -> None:
        self._thread = threading.Thread(target=self._send, args=(records,),
                                        name="demo-stream", daemon=True)
        self._thread.start()

    def _send(self, records: Sequence[Any]) -> None:
        started = time.monotonic()
        try:
            for n, record in enumerate(records):
                ahead = started + n / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                future = self.producer.send(self.topic, key=record.key, value=record.value)
                future.add_errback(self.errors.append)
                if record.kind == "valid" and record.event_time_ms > self.clock_ms:
                    self.clock_ms = record.event_time_ms
                self.sent += 1
            self.producer.flush()
        except Exception as exc:  # reported by join()
            self.errors.append(exc)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.errors:
            raise InfraError(f"{len(self.errors)} records of the live stream were not "
                             f"delivered to {self.topic} (first: {self.errors[0]!r})")

    def close(self) -> None:
        self.producer.close()


# --- the speed layer, as a child process ---------------------------------------------


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def write_settings_file(settings: Settings, path: Path, *, champion_poll_s: float,
                        metrics_interval_s: float) -> Path:
    """The demo's settings as a TOML file for a child `lamina` process."""
    kafka = settings.kafka
    lines = [f"home = {_toml(str(settings.home.resolve()))}", "[kafka]"]
    lines += [f"{name} = {_toml(getattr(kafka, name))}" for name in
              ("bootstrap_servers", "raw_topic", "dlq_topic", "scores_topic", "raw_partitions")]
    lines += ["[registry]", f"model_name = {_toml(settings.registry.model_name)}",
              "[speed]", f"champion_poll_s = {champion_poll_s}",
              f"metrics_interval_s = {metrics_interval_s}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class SpeedProcess:
    """`lamina speed run` in a child process (its output in ``log_path``)
    and a thread sampling its metrics file: ``lag`` is (seconds since
    start, total lag) per new file, ``samples`` the latest parsed file."""

    def __init__(self, settings_file: Path, metrics_path: Path, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
        env["LAMINA_CONFIG"] = str(settings_file)
        self.metrics_path = metrics_path
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lamina.cli", "speed", "run", "--quiet"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.started = time.monotonic()
        self.lag: list[tuple[float, int]] = []
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.written = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="demo-speed-metrics",
                                         daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        from lamina.speed.metrics import parse

        while not self._stop.wait(0.25):
            try:
                samples = parse(self.metrics_path.read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):
                continue
            written = samples.get(("lamina_speed_metrics_written_seconds", ()), 0.0)
            if written <= self.written:
                continue
            self.samples, self.written = samples, written
            lag = sum(v for (name, _), v in samples.items() if name == "lamina_speed_lag_records")
            self.lag.append((round(time.monotonic() - self.started, 2), int(lag)))

    def metric(self, name: str, **labels: str) -> float | None:
        return self.samples.get((f"lamina_speed_{name}", tuple(sorted(labels.items()))))

    def consumed(self) -> int:
        return int(sum(v for (name, _), v in self.samples.items()
                       if name == "lamina_speed_records_total"))

    def wait(self, what: str, done: Callable[[], bool], timeout_s: float) -> None:
        """Until ``done()`` (checked on each metrics file), or InfraError."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.process.poll() is not None:
                raise InfraError(f"the speed layer exited ({self.process.returncode}) while "
                                 f"the demo waited for {what}; its log: {self.log_path}")
            if time.monotonic() > deadline:
                raise InfraError(f"the speed layer did not reach {what} in {timeout_s:.0f} s; "
                                 f"its log: {self.log_path}")
            time.sleep(0.1)

    def wait_caught_up(self, records: int, timeout_s: float = 120.0) -> None:
        """Until it consumed ``records`` records and reports no lag."""
        self.wait(f"{records:,} records consumed with no lag",
                  lambda: self.consumed() >= records and bool(self.lag) and self.lag[-1][1] == 0,
                  timeout_s)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: it finishes its micro-batch and exits
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stop.set()
        self._sampler.join()
        self._log.close()
        return int(self.process.returncode)


# --- the serving API, in a thread ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServingThread:
    """The serving app on uvicorn in a thread, on a free loopback port, its
    "now" the demo stream's clock; ``token`` is a fresh random one."""

    def __init__(self, settings: Settings, clock_ms: Callable[[], int]) -> None:
        import uvicorn

        from lamina.serving.app import create_app

        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        serving = dataclasses.replace(settings.serving, token=self.token, score=False,
                                      host="127.0.0.1", port=self.port)
        app = create_app(dataclasses.replace(settings, serving=serving), clock_ms=clock_ms)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    access_log=False, log_config=None))
        self.thread = threading.Thread(target=self.server.run, name="demo-serving",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise InfraError(f"the serving API did not start on 127.0.0.1:{self.port}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class LookupStats:
    """Client-side latencies (ms) of the demo's lookups, and what came back."""

    latency_ms: list[float] = field(default_factory=list)
    features: int = 0
    #: 404s: an entity the store does not know, or one not scored yet.
    unknown_features: int = 0
    unknown_scores: int = 0
    scores_seen: int = 0
    errors: list[str] = field(default_factory=list)


def run_lookups(url: str, token: str, group: str, cards: Sequence[str], stats: LookupStats,
                *, count: int, while_running: Callable[[], bool]) -> None:
    """``count`` lookups through ServingClient, alternating an entity's
    features and its latest scores, spread while ``while_running()``."""
    from lamina.serving.client import ServingClient, ServingError

    with ServingClient(url, token) as client:
        for n in range(count):
            card = cards[(n * 7919) % len(cards)]
            began = time.perf_counter()
            try:
                if n % 2 == 0:
                    client.features(group, card)
                    stats.features += 1
                else:
                    stats.scores_seen += len(client.scores(card))
            except ServingError as exc:
                if exc.status == 404 and n % 2 == 0:
                    stats.unknown_features += 1
                elif exc.status == 404:
                    stats.unknown_scores += 1
                else:
                    stats.errors.append(str(exc))
            stats.latency_ms.append((time.perf_counter() - began) * 1000)
            if while_running():
                time.sleep(0.05)


# --- scores, labels, live AUC ------------------------------------------------------


def read_scores(bootstrap_servers: str, topic: str) -> dict[str, dict[str, Any]]:
    """Every score record on ``topic`` (read from the start to the end
    offsets), one per event id: the latest scored (a replay after a crash
    may have scored an event twice)."""
    from lamina.consumer import read_to_end
    from lamina.kafkaio import make_consumer

    consumer = make_consumer(bootstrap_servers, group_id=None)
    try:
        scores: dict[str, dict[str, Any]] = {}
        for message in read_to_end(consumer, topic, deadline_s=60, poll_timeout_ms=500):
            record = orjson.loads(message.value)
            kept = scores.get(record["event_id"])
            if kept is None or record["scored_at"] >= kept["scored_at"]:
                scores[record["event_id"]] = record
        return scores
    finally:
        consumer.close()


def label_as_of(labels: Sequence[tuple[bool, int]] | None, event_time: int, as_of: int,
                maturity_ms: int) -> int | None:
    """The contract's label rule (lamina.schemas.contract.LabelRule) as
    known at ``as_of``: 1 if a positive label arrived, 0 if a negative one
    did or the event is mature, None (unknown yet) otherwise."""
    known = [positive for positive, at in labels or () if at <= as_of]
    if any(known):
        return 1
    if known or event_time < as_of - maturity_ms:
        return 0
    return None


@dataclass(frozen=True)
class AucWindow:
    start_ms: int
    end_ms: int
    model_version: int
    n: int
    positives: int
    roc_auc: float | None


def auc_windows(scores: Iterable[dict[str, Any]], facts: StreamFacts, *, as_of: int,
                maturity_ms: int, width_ms: int = AUC_WINDOW_MS,
                min_positives: int = 5) -> list[AucWindow]:
    """ROC AUC of the scores per (event-time window, model version) against
    the labels known at ``as_of``; windows with fewer than
    ``min_positives`` frauds or no genuine transaction get ``None``."""
    from lamina.batch.evaluate import roc_auc

    grouped: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
    for record in scores:
        label = label_as_of(facts.labels.get(record["event_id"]), record["event_time"],
                            as_of, maturity_ms)
        if label is None:
            continue
        key = (record["event_time"] // width_ms * width_ms, int(record["model_version"]))
        ys, ps = grouped.setdefault(key, ([], []))
        ys.append(label)
        ps.append(float(record["score"]))
    windows = []
    for (start, version), (ys, ps) in sorted(grouped.items()):
        positives = sum(ys)
        auc = roc_auc(ys, ps) if positives >= min_positives else None
        windows.append(AucWindow(start, start + width_ms, version, len(ys), positives, auc))
    return windows
