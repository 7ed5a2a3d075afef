"""`lamina demo`: the whole loop on embedded defaults, step by step.

The demo starts its own Kafka under ``<home>/demo`` (free loopback ports)
and cuts the generated period (``lamina.demo_loop.demo_timeline``): a
history before the drift is produced, landed, turned into batch views
(published into the tile store) and a first champion; then the speed layer
scores the rest as a live stream while the serving API answers lookups,
the drift arrives and the champion's live AUC falls as labels come in; the
platform retrains on post-drift data, the gate promotes the new model, the
speed layer swaps to it and the AUC recovers. It ends with an HTML report.
The reasons for its sizes are in docs/decisions.md ("The demo").
"""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamina import demo_loop as loop
from lamina.config import Settings
from lamina.errors import ConfigError, LaminaError
from lamina.runners import master_dataset, print_dataset_info, run_lander

_DAY_MS = 86_400_000
_BATCH_PACKAGES = ("pyspark", "delta", "tensorflow", "mlflow")
#: The live stream's rate when --rate is not given (events/s).
DEMO_LIVE_RATE = 600.0
#: Lookups through the serving API while the first leg streams.
DEMO_LOOKUPS = 400
FULL_STEPS = 18


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M") if ms % _DAY_MS else moment.strftime("%Y-%m-%d")


def _check_batch_packages() -> None:
    import importlib.util

    missing = [name for name in _BATCH_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the batch layer's packages are not installed ({', '.join(missing)}): install "
            "them with `pip install -e '.[batch]'` (infra/bootstrap.sh does), or run "
            "`lamina demo --no-batch` to stop after landing")


class _DemoStep:
    """Numbered progress lines; a failure inside a step becomes one line
    naming the step (the traceback goes to the DEBUG log). ``times`` holds
    (step line, seconds) of the steps done."""

    def __init__(self, total: int) -> None:
        self.total, self.number, self.name = total, 0, ""
        self.times: list[tuple[str, float]] = []
        self._began = 0.0

    def __call__(self, name: str, line: str) -> _DemoStep:
        self.finish()
        self.number += 1
        self.name = name
        self._began = time.monotonic()
        print(f"[{self.number}/{self.total}] {line}", flush=True)
        return self

    def finish(self) -> None:
        if self.number and len(self.times) < self.number:
            self.times.append((f"{self.number}. {self.name}", time.monotonic() - self._began))

    def __enter__(self) -> _DemoStep:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, LaminaError):
            return  # done, a message already, or Ctrl-C
        import logging

        logging.getLogger(__name__).debug("demo step failed", exc_info=exc)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise LaminaError(
            f"the {self.name} step failed: {type(exc).__name__}: {first_line} (the traceback: "
            "`lamina --log-level DEBUG demo`)") from exc


def run_demo(settings: Settings, config: Any, *, batch: bool = True, rate: float | None = None,
             progress: bool = True) -> int:
    """The demo (module docstring) for ``config``, a GeneratorConfig (the
    CLI gives it the demo's label delays, ``demo_loop.demo_generator_config``).
    ``batch=False`` produces the whole period, lands it and stops. ``rate``:
    the live stream's events/s (default DEMO_LIVE_RATE; with ``batch=False``
    the production's limit). Everything goes under ``<settings.home>/demo``,
    emptied first. Returns the exit code."""
    import shutil

    from lamina import broker
    from lamina.schemas.topics import default_topics

    began = time.monotonic()
    timeline = None
    if batch:
        _check_batch_packages()
        timeline = loop.demo_timeline(config)  # refuse a period with no room first
    home = settings.home / "demo"
    if home.exists():
        shutil.rmtree(home)  # a demo starts from nothing, every time
    demo = settings.relocated(home)
    step = _DemoStep(4 if timeline is None else FULL_STEPS)
    step("kafka", f"starting Kafka (single KRaft node, free loopback ports) under {home}/kafka")
    # Kafka's jars stay where the bootstrap put them (settings.home).
    started = broker.KafkaCluster(home / "kafka", broker.kafka_libs(settings), nodes=1)
    started.start()
    try:
        demo = dataclasses.replace(demo, kafka=dataclasses.replace(
            demo.kafka, bootstrap_servers=started.bootstrap_servers))
        kafka = demo.kafka
        started.create_topics(
            default_topics(kafka.raw_topic, kafka.dlq_topic, kafka.raw_partitions,
                           kafka.scores_topic))
        if timeline is None:
            return _land_only(demo, config, step, rate, progress, began)
        return _full_loop(demo, config, timeline, step, rate, progress, began)
    finally:
        started.stop()


def _land_only(demo: Settings, config: Any, step: _DemoStep, rate: float | None,
               progress: bool, began: float) -> int:
    from lamina import generator

    kafka = demo.kafka
    step("produce", f"producing {config.transactions:,} transactions (+ labels, late, "
         f"duplicate and malformed events) to {kafka.raw_topic} at {kafka.bootstrap_servers}")
    counts = generator.produce(config, kafka.bootstrap_servers, kafka.raw_topic,
                               rate=rate, progress=progress)
    print(f"      produced {counts}")
    if not _land(demo, step, counts, progress):
        return 1
    step("dataset", "what landed:\n")
    print_dataset_info(master_dataset(demo).info())
    print(f"\ndemo done in {time.monotonic() - began:.0f} s; everything is under {demo.home}")
    print(_next_steps(demo.home, full=False))
    return 0


def _land(demo: Settings, step: _DemoStep, counts: dict[str, int], progress: bool,
          line: str = "") -> bool:
    """Land what is on the raw topic; False (and a line on stderr) if the
    master dataset did not get exactly the valid events sent so far."""
    step("landing", line or f"landing into the master dataset at {demo.master_uri}")
    landing_began = time.monotonic()
    stats = run_lander(demo, idle_exit_s=3.0, progress=progress)
    took = time.monotonic() - landing_began
    print(f"      landed {stats.landed:,}, dead-lettered {stats.dead_lettered:,}, "
          f"duplicates dropped {stats.duplicates_dropped:,} in {stats.commits} commits "
          f"({took:.1f} s including the idle wait)")
    if stats.landed != counts.get("valid", 0) or \
            stats.dead_lettered != counts.get("malformed", 0):
        print(f"      MISMATCH: the generator sent {counts.get('valid', 0)} valid and "
              f"{counts.get('malformed', 0)} malformed events", file=sys.stderr)
        return False
    return True


def _counts(records: list[Any]) -> dict[str, int]:
    counts = {"valid": 0, "malformed": 0, "duplicate": 0}
    for record in records:
        counts[record.kind] += 1
    return counts


def _full_loop(demo: Settings, config: Any, timeline: loop.DemoTimeline, step: _DemoStep,
               rate: float | None, progress: bool, began: float) -> int:
    from lamina import generator
    from lamina.batch import spark as batch_spark
    from lamina.demo_steps import (
        LiveRun,
        batch_views_and_publish,
        gate,
        list_registry,
        stream_leg,
        train,
        training_sets,
        write_report,
    )

    kafka, tl = demo.kafka, timeline
    facts = loop.StreamFacts()
    history, live, after_retrain = loop.cut_records(
        generator.generate(config), (tl.history_end_ms, tl.retrain_at_ms), facts)
    step("produce", f"producing the history, {_iso(config.start)} to {_iso(tl.history_end_ms)} "
         f"({_counts(history)['valid']:,} valid events of {config.transactions:,} "
         f"transactions + labels; the drift comes at {_iso(tl.drift_at_ms)}) to "
         f"{kafka.raw_topic} at {kafka.bootstrap_servers}")
    producer = loop.StreamProducer(kafka.bootstrap_servers, kafka.raw_topic, rate=1e9,
                                   clock_ms=config.start)
    live_run = LiveRun(demo, config, tl, facts, producer, rate or DEMO_LIVE_RATE, progress)
    try:
        producer.start(history)
        producer.join()
        sent = _counts(history)
        print(f"      produced {sent}")
        if not _land(demo, step, sent, progress):
            return 1
        step("dataset", "what landed:\n")
        print_dataset_info(master_dataset(demo).info())

        with step("batch views", "batch views: Spark local[2], every card view as time "
                  "tiles, published into the tile store"):
            spark = batch_spark.spark_session(demo.spark.master, app_name="lamina-demo",
                                              extra_conf=demo.spark.conf)
            print(f"      Spark started in {batch_spark.last_start_seconds or 0:.1f} s")
        try:
            with step:
                snapshot = batch_views_and_publish(spark, demo)
            with step("training sets", f"point-in-time training set and backtest before the "
                      f"drift from snapshot {snapshot}, label maturity "
                      f"{tl.label_maturity_ms / 3_600_000:.0f} h"):
                sets = training_sets(spark, demo, snapshot, "first",
                                     tl.first_train, tl.first_backtest, tl.label_maturity_ms)
            with step("training", "training the first model (TensorFlow MLP, in this "
                      "process) and registering it with its lineage"):
                first = train(demo, sets["train"], snapshot)
            with step("evaluation", f"backtest of version {first} and the gate (no champion "
                      "yet: the absolute minimums decide)"):
                live_run.first_champion = gate(demo, sets["backtest"], first)

            with step("speed + serving", "starting the speed layer (`lamina speed run`, a "
                      "child process, champion poll 1 s) and the serving API (uvicorn, "
                      "a thread)"):
                live_run.start()
            with step("live stream", f"streaming {_iso(tl.history_end_ms)} to "
                      f"{_iso(tl.retrain_at_ms)} at {live_run.rate:.0f} events/s (the drift "
                      f"at {_iso(tl.drift_at_ms)}) while serving answers "
                      f"{DEMO_LOOKUPS} lookups"):
                stream_leg(live_run, live, lookups=DEMO_LOOKUPS)
                live_run.print_auc("live ROC AUC of the champion as labels came in "
                                   f"(as of {_iso(producer.clock_ms)})")

            if not _land(demo, step, _counts(live), progress,
                         "landing the stream so far (the lander resumes from the table)"):
                return 1
            with step("batch views", "batch views again on the new snapshot, published "
                      "into the tile store (the speed layer switches cutoff)"):
                snapshot = batch_views_and_publish(spark, demo)
            with step("training sets", f"training set and backtest after the drift from "
                      f"snapshot {snapshot}"):
                sets = training_sets(spark, demo, snapshot, "second",
                                     tl.second_train, tl.second_backtest,
                                     tl.label_maturity_ms)
        finally:
            spark.stop()
        with step("training", "retraining on post-drift data"):
            second = train(demo, sets["train"], snapshot)
        with step("evaluation", f"backtest of version {second} against the champion on "
                  "post-drift data, and the gate"):
            live_run.promoted_at = time.time()  # epoch: compared with scored_at
            live_run.second_champion = gate(demo, sets["backtest"], second)
        with step("swap", f"streaming {_iso(tl.retrain_at_ms)} to {_iso(config.end_ms)}: "
                  "the speed layer swaps to the new champion between micro-batches"):
            stream_leg(live_run, after_retrain, lookups=0)
            live_run.print_auc("live ROC AUC by model version, labels as of the period's end")
            live_run.print_swap()
        with step("report", "writing the HTML report"):
            report = write_report(live_run, step, began)
        print(f"      report: {report}")
        with step("registry", "the model registry (`lamina models list`):\n"):
            list_registry(demo)
    finally:
        live_run.close()
        producer.close()
    step.finish()
    print(f"\ndemo done in {time.monotonic() - began:.0f} s; everything is under {demo.home}")
    print(f"the report: {report}")
    print(_next_steps(demo.home, full=True))
    return 0


def _next_steps(home: Path, *, full: bool) -> str:
    lines = [f"next (in this shell: export LAMINA_HOME={home}):",
             "  lamina dataset info                 the master dataset",
             "  lamina dataset snapshots            its commits (snapshots)"]
    if not full:
        lines.append("  lamina batch run                    batch views (needs the batch extras)")
    else:
        lines += [
            "  lamina models show 2                the new champion: lineage, gate reasons",
            "  lamina models audit                 every promotion and rollback, with its reason",
            "  lamina speed status                 the speed layer's last metrics",
            "  lamina batch run                    again: skipped, the view is up to date",
        ]
    return "\n".join(lines)
