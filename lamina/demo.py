"""`lamina demo`: the whole loop on embedded defaults, step by step.

The demo starts its own Kafka under ``<home>/demo`` (free loopback ports),
produces generated events, lands them, and then runs the batch loop on the
landed snapshot. Its windows (``demo_plan``) are chosen from the generator's
settings so the first champion learns the pre-drift pattern on mature
labels; the reasons are in docs/decisions.md ("The demo").
"""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamina.config import Settings
from lamina.errors import ConfigError, LaminaError
from lamina.runners import master_dataset, print_dataset_info, run_lander

#: Labels in the demo are as known at the end of its generated period (14
#: days by default) while chargebacks come 1-30 days after a fraud, so
#: Lamina's default 30-day label maturity would leave every unlabelled row
#: out. 4 days is the longest whole number of days that keeps the whole
#: pre-drift period (drift at day 9.3 of 14) mature.
DEMO_LABEL_MATURITY_DAYS = 4
#: Expected transactions per demo training set or backtest at most: the
#: point-in-time builder does ~700 rows/s on two cores, so 12k rows keep each
#: build under ~20 s whatever --transactions asks for.
DEMO_MAX_SET_ROWS = 12_000
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
_BATCH_PACKAGES = ("pyspark", "delta", "tensorflow", "mlflow")


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M") if ms % _DAY_MS else moment.strftime("%Y-%m-%d")


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """The demo's batch loop, as event-time windows [start, end) in ms."""

    train: tuple[int, int]
    backtest: tuple[int, int]
    label_maturity_ms: int
    drift_at_ms: int | None


def demo_plan(config: Any) -> DemoPlan:
    """Windows for the demo's training set and backtest from a
    GeneratorConfig: both before the drift (the champion learns the
    pre-drift pattern) and before ``end - label maturity`` (every row mature),
    the backtest right after the training set, each a third of that span
    (the first third is history for the lifetime features) but at most
    ~DEMO_MAX_SET_ROWS expected transactions; whole hours. ConfigError if
    the generated period leaves no room for them."""
    maturity = DEMO_LABEL_MATURITY_DAYS * _DAY_MS
    usable_end = config.end_ms - maturity
    drift = config.drift_at_ms
    if drift is not None:
        usable_end = min(usable_end, drift)
    usable_end = usable_end // _HOUR_MS * _HOUR_MS
    per_day = config.transactions / config.days
    cap = int(DEMO_MAX_SET_ROWS / per_day * _DAY_MS)
    width = min((usable_end - config.start) // 3, cap) // _HOUR_MS * _HOUR_MS
    if width < _HOUR_MS:
        raise ConfigError(
            f"the generated period ({_iso(config.start)} to {_iso(config.end_ms)}, drift at "
            f"{_iso(drift) if drift is not None else 'none'}) leaves no room for a training set "
            f"and a backtest before the drift and {DEMO_LABEL_MATURITY_DAYS} days before its "
            "end (label maturity); generate more days (--days) or run with --no-batch")
    return DemoPlan(train=(usable_end - 2 * width, usable_end - width),
                    backtest=(usable_end - width, usable_end),
                    label_maturity_ms=maturity, drift_at_ms=drift)


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
    naming the step (the traceback goes to the DEBUG log)."""

    def __init__(self, total: int) -> None:
        self.total, self.number, self.name = total, 0, ""

    def __call__(self, name: str, line: str) -> _DemoStep:
        self.number += 1
        self.name = name
        print(f"[{self.number}/{self.total}] {line}", flush=True)
        return self

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
    """Start Kafka, generate events (``config``, a GeneratorConfig), land
    them, print what landed; then run the batch loop on them: batch views, a
    point-in-time training set and backtest from before the drift, training,
    the gate (the first model becomes the champion) and the model registry.
    ``batch=False`` stops after landing. Everything goes under
    ``<settings.home>/demo``, emptied first. Returns the exit code."""
    import shutil

    from lamina import broker, generator
    from lamina.schemas.topics import default_topics

    began = time.monotonic()
    plan = None
    if batch:
        _check_batch_packages()
        plan = demo_plan(config)  # refuse a period with no room before doing anything
    home = settings.home / "demo"
    if home.exists():
        shutil.rmtree(home)  # a demo starts from nothing, every time
    demo = settings.relocated(home)
    step = _DemoStep(4 if plan is None else 9)
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
        step("produce", f"producing {config.transactions:,} transactions (+ labels, late, "
             f"duplicate and malformed events) to {kafka.raw_topic} at {kafka.bootstrap_servers}")
        counts = generator.produce(config, kafka.bootstrap_servers, kafka.raw_topic,
                                   rate=rate, progress=progress)
        print(f"      produced {counts}")
        step("landing", f"landing into the master dataset at {demo.master_uri}")
        landing_began = time.monotonic()
        stats = run_lander(demo, idle_exit_s=3.0, progress=progress)
        took = time.monotonic() - landing_began
        print(f"      landed {stats.landed:,}, dead-lettered {stats.dead_lettered:,}, "
              f"duplicates dropped {stats.duplicates_dropped:,} in {stats.commits} commits "
              f"({took:.1f} s including the idle wait)")
        expected = counts.get("valid", 0)
        if stats.landed != expected or stats.dead_lettered != counts.get("malformed", 0):
            print(f"      MISMATCH: the generator sent {expected} valid events", file=sys.stderr)
            return 1
        step("dataset", "what landed:\n")
        print_dataset_info(master_dataset(demo).info())
    finally:
        started.stop()  # the batch layer reads the master dataset, not Kafka
    if plan is not None:
        _demo_batch_loop(demo, plan, step)
    print(f"\ndemo done in {time.monotonic() - began:.0f} s; everything is under {home}")
    print(_demo_next_steps(home, plan))
    return 0


def _demo_batch_loop(demo: Settings, plan: DemoPlan, step: _DemoStep) -> None:
    """Steps 5-9 of the demo, on the master dataset it landed."""
    with step("batch views", "batch views: Spark local[2], every card view as time tiles"):
        from lamina.batch import spark as batch_spark
        from lamina.batch.views import batch_run_command

        spark = batch_spark.spark_session(demo.spark.master, app_name="lamina-demo",
                                          extra_conf=demo.spark.conf)
        print(f"      Spark started in {batch_spark.last_start_seconds or 0:.1f} s")
    try:
        with step:
            views = batch_run_command(demo, None, None, None)
        print(f"      {views['status']} {views['rows']:,} tile rows from snapshot "
              f"{views['snapshot']}, cutoff {_iso(views['cutoff_ms'])}, as version "
              f"{views['version']} of {views['views_uri']} ({views['seconds']:.1f} s)")
        snapshot = int(views["snapshot"])
        drift = f"; the fraud pattern drifts at {_iso(plan.drift_at_ms)}" \
            if plan.drift_at_ms is not None else ""
        with step("training sets", f"point-in-time training set and backtest from snapshot "
                  f"{snapshot}, labels as of its newest event, label maturity "
                  f"{DEMO_LABEL_MATURITY_DAYS} days{drift}"):
            from lamina.batch.commands import read_table
            from lamina.batch.training_set import write_training_set

            sets: dict[str, str] = {}
            for name, (start, end) in (("train", plan.train), ("backtest", plan.backtest)):
                out = str(Path(demo.training_sets_uri) / name)
                meta = write_training_set(spark, demo.master_uri, out, snapshot=snapshot,
                                          start_ms=start, end_ms=end,
                                          label_maturity_ms=plan.label_maturity_ms)
                labels = read_table(out)["label"]
                print(f"      {name:<9} {_iso(start)} to {_iso(end)}: {len(labels):,} rows, "
                      f"{int(labels.sum()):,} fraud -> {out} ({meta.built_seconds or 0:.1f} s)")
                sets[name] = out
    finally:
        spark.stop()

    with step("training", "training the model (TensorFlow MLP, in this process) and "
              "registering it with its lineage"):
        from lamina.batch.commands import evaluate_command, models_command, train_command

        trained = train_command(sets["train"], models_dir=demo.models_uri,
                                registry=demo.registry_uri, snapshot_id=snapshot)
    auc = (trained["history"].get("auc") or [None])[-1]
    print(f"      version {trained['version']}: {trained['rows']:,} rows, "
          f"{trained['positives']:,} fraud, training ROC AUC "
          f"{'n/a' if auc is None else f'{auc:.3f}'} ({trained['seconds']:.1f} s)")
    print(f"      model in {trained['model_dir']}, registry {demo.home / 'mlflow.db'}")

    version = int(trained["version"])
    with step("evaluation", f"backtest of version {version} on the later window, and the "
              "gate (no champion yet: the absolute minimums decide)"):
        result = evaluate_command(sets["backtest"], registry=demo.registry_uri, candidate=version)
    metrics = result["candidate_metrics"]
    print(f"      ROC AUC {metrics['roc_auc']:.3f}, PR AUC {metrics['pr_auc']:.3f}, "
          f"log loss {metrics['log_loss']:.4f}, ECE {metrics['ece']:.4f} on "
          f"{int(metrics['n']):,} rows ({int(metrics['positives']):,} fraud)")
    if result["champion_after"] == version:
        print(f"      promoted: version {version} is the champion")
    else:  # a different --seed or size can leave the backtest too thin for the gate
        print("      not promoted, so there is no champion yet; the gate's reasons:")
    for reason in result["reasons"]:
        print(f"        {reason}")

    with step("registry", "the model registry (`lamina models list`):\n"):
        listed = models_command("list", registry=demo.registry_uri)
    print(f"{'version':>7}  {'champion':<8}  {'gate':<10}  {'snapshot':>8}  "
          f"{'train rows':>10}  created")
    for row in listed:
        rows = row["metrics"].get("train_rows")
        print(f"{row['version']:>7}  {'yes' if row['champion'] else '':<8}  "
              f"{row['gate'] or '':<10}  {row['snapshot_id']!s:>8}  "
              f"{'' if rows is None else f'{int(rows):,}':>10}  {row['created']}")


def _demo_next_steps(home: Path, plan: DemoPlan | None) -> str:
    lines = [f"next (in this shell: export LAMINA_HOME={home}):",
             "  lamina dataset info                 the master dataset",
             "  lamina dataset snapshots            its commits (snapshots)"]
    if plan is None:
        lines.append("  lamina batch run                    batch views (needs the batch extras)")
    else:
        start, end = plan.train
        lines += [
            "  lamina models show 1                the champion: lineage, gate reasons, audit",
            "  lamina models audit                 every promotion and rollback, with its reason",
            "  lamina batch run                    again: skipped, the view is up to date",
            "  lamina batch vacuum --dry-run       view files a vacuum would remove",
            f"  lamina training-set --start {_iso(start)} --end {_iso(end)} "
            f"--maturity-days {DEMO_LABEL_MATURITY_DAYS}",
            "                                      the training set again, by hand",
        ]
    return "\n".join(lines)
