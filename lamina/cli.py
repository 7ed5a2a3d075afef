"""`lamina`: one command line for the platform.

Every subcommand loads the settings once (defaults < `--config FILE` or
lamina.toml < `LAMINA_*` variables), does one thing, and turns a LaminaError
into one line on stderr and exit code 2. Heavy imports happen inside the
subcommand that needs them, so `lamina --help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamina import __version__
from lamina.config import Settings, load_settings
from lamina.errors import ConfigError, LaminaError
from lamina.logs import configure

# --- helpers ---------------------------------------------------------------


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _utc_ms(text: str) -> int:
    """Parse an ISO-8601 UTC time (naive means UTC) to epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"'{text}' is not an ISO-8601 time (e.g. 2026-01-01 or 2026-01-01T12:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be in [0, 1)")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


# --- infra -----------------------------------------------------------------


def cmd_infra(args: argparse.Namespace, settings: Settings) -> int:
    from lamina import broker

    if args.action == "up":
        info = broker.infra_up(settings, mode=args.mode)
        print(json.dumps(dataclasses.asdict(info), indent=2, default=str))
        if not info.already_running:
            print(f"Kafka is up at {info.bootstrap_servers}; stop it with `lamina infra down`",
                  file=sys.stderr)
    elif args.action == "down":
        stopped = broker.infra_down(settings)
        print(json.dumps({"stopped": stopped}))
    else:
        status = broker.infra_status(settings)
        print(json.dumps(status, indent=2, default=str))
        return 0 if status.get("running") else 1
    return 0


# --- generate --------------------------------------------------------------


def _generator_config(args: argparse.Namespace) -> Any:
    from lamina.generator import GeneratorConfig

    fields: dict[str, Any] = {"seed": args.seed, "transactions": args.transactions}
    for name in ("cards", "merchants", "days", "late_fraction", "malformed_fraction",
                 "duplicate_fraction"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.start is not None:
        fields["start"] = _utc_ms(args.start)
    if args.drift_at is not None:
        fields["drift_at"] = None if args.drift_at == "none" else _utc_ms(args.drift_at)
    return GeneratorConfig(**fields)


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from lamina import generator

    config = _generator_config(args)
    if args.out is not None:
        files = generator.write_files(config, Path(args.out))
        print(json.dumps({"files": [str(f) for f in files]}, indent=2))
        return 0
    topic = args.topic or settings.raw_topic
    counts = generator.produce(config, settings.bootstrap_servers, topic,
                               rate=args.rate, progress=not args.quiet)
    print(json.dumps({"topic": topic, "produced": counts}, indent=2))
    return 0


# --- land / import ----------------------------------------------------------


def _dataset(settings: Settings) -> Any:
    from lamina.master.dataset import MasterDataset

    return MasterDataset(settings.master_path)


def _validator(settings: Settings) -> Any:
    from lamina.schemas.validation import EventValidator

    return EventValidator(max_event_bytes=settings.max_event_bytes)


def run_lander(settings: Settings, *, idle_exit_s: float | None = None,
               max_events: int | None = None, progress: bool = True) -> Any:
    """Start a lander with the settings; returns its LanderStats."""
    from tqdm import tqdm

    from lamina import kafkaio
    from lamina.master.deadletters import KafkaDeadLetters
    from lamina.master.lander import Lander

    consumer = kafkaio.make_consumer(
        settings.bootstrap_servers,
        group_id=settings.lander_group,
        group_instance_id=settings.lander_instance_id or None,
        session_timeout_ms=settings.lander_session_timeout_ms,
    )
    producer = kafkaio.make_producer(settings.bootstrap_servers)
    lander = Lander(
        dataset=_dataset(settings),
        consumer=consumer,
        topic=settings.raw_topic,
        dead_letters=KafkaDeadLetters(producer, settings.dlq_topic),
        validator=_validator(settings),
        commit_max_events=settings.commit_max_events,
        commit_max_seconds=settings.commit_max_seconds,
        dedup_cached_days=settings.dedup_cached_days,
    )
    lander.install_signal_handlers()
    bar = tqdm(unit=" events", desc="landing", disable=not progress)

    def show(stats: Any) -> None:
        bar.n = stats.consumed
        bar.set_postfix(landed=stats.landed, dead=stats.dead_lettered,
                        dup=stats.duplicates_dropped, snapshot=stats.last_snapshot)

    try:
        stats = lander.run(idle_exit_s=idle_exit_s, max_events=max_events, on_commit=show)
        show(stats)
    finally:
        bar.close()
        producer.close()
    return stats


def cmd_land(args: argparse.Namespace, settings: Settings) -> int:
    stats = run_lander(settings, idle_exit_s=args.idle_exit, max_events=args.max_events,
                       progress=not args.quiet)
    print(json.dumps(vars(stats), indent=2))
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.master.importer import import_files

    results = import_files(
        _dataset(settings),
        [Path(p) for p in args.files],
        _validator(settings),
        settings.home / "deadletters",
        batch_size=settings.commit_max_events,
        dedup_cached_days=settings.dedup_cached_days,
        progress=not args.quiet,
    )
    print(json.dumps([
        {"file": str(r.path), "source": r.source, "lines": r.lines, "landed": r.stats.landed,
         "dead_letters": r.stats.dead_lettered, "duplicates": r.stats.duplicates_dropped,
         "dead_letter_file": str(r.dead_letter_file) if r.dead_letter_file else None,
         "snapshot": r.stats.last_snapshot}
        for r in results
    ], indent=2))
    return 0


# --- dataset ---------------------------------------------------------------


def print_dataset_info(info: dict[str, Any]) -> None:
    print(f"master dataset  {info['uri']}")
    print(f"snapshot        {info['snapshot']}  ({info['snapshots']} snapshots)")
    print(f"rows            {info['rows']:,}")
    print(f"size            {_human_bytes(info['bytes'])} in {info['files']} files")
    if info["partitions"]:
        print(f"\n{'event_type':<14}{'event_date':<12}{'rows':>12}{'files':>7}{'size':>12}")
        for p in info["partitions"]:
            print(f"{p['event_type']:<14}{p['event_date']:<12}{p['rows']:>12,}"
                  f"{p['files']:>7}{_human_bytes(p['bytes']):>12}")
    if info["offsets"]:
        print("\nsource offsets landed (Delta transaction ids)")
        for app, version in info["offsets"].items():
            print(f"  {app:<40} {version}")


def cmd_dataset(args: argparse.Namespace, settings: Settings) -> int:
    dataset = _dataset(settings)
    if args.action == "info":
        info = dataset.info()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print_dataset_info(info)
    elif args.action == "snapshots":
        for s in dataset.snapshots(args.limit):
            when = datetime.fromtimestamp(s.timestamp_ms / 1000, UTC).isoformat(timespec="seconds")
            print(f"{s.version:>6}  {when}  {s.operation:<10} rows+={s.rows_added:<8} "
                  f"{json.dumps(s.metadata) if s.metadata else ''}")
    elif args.action == "compact":
        print(json.dumps(dataset.compact(), indent=2, default=str))
    return 0


# --- batch layer -----------------------------------------------------------


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.vacuum import batch_vacuum_command
    from lamina.batch.views import batch_run_command

    if args.action == "vacuum":
        result = batch_vacuum_command(settings, args.retain_hours, dry_run=args.dry_run,
                                      unsafe_retention=args.unsafe_retention)
        print(json.dumps(result, indent=2))
        done = "would remove" if args.dry_run else "removed"
        print(f"{done} {result['files']} files ({_human_bytes(result['bytes'])}) of "
              f"{result['views_uri']}; retention {result['retain_hours']} h", file=sys.stderr)
        return 0
    if args.action == "publish":
        from lamina.batch.store_publish import batch_publish_command, parse_store_options

        result = batch_publish_command(
            settings, store=args.store, options=parse_store_options(args.store_option),
            version=args.version, publish_interval_ms=round(args.publish_interval_hours
                                                            * 3_600_000),
            master=args.master)
        print(json.dumps(result, indent=2))
        print(f"{result['status']}: views version {result['batch_version']} (cutoff "
              f"{_iso(result['cutoff_ms'])}, answers until {_iso(result['horizon_ms'])}) in the "
              f"{result['store']} tile store"
              + (f"; {result['reason']}" if result["reason"] else ""), file=sys.stderr)
        return 0
    cutoff = _utc_ms(args.cutoff) if args.cutoff else None
    result = batch_run_command(settings, args.snapshot, cutoff, args.master, force=args.force)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_training_set(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.spark import spark_session
    from lamina.batch.training_set import write_training_set

    start, end = _utc_ms(args.start), _utc_ms(args.end)
    if end <= start:
        raise ConfigError(f"--end ({args.end}) must be after --start ({args.start})")
    out = args.out or str(settings.home / "training_sets" / f"{args.start}_{args.end}")
    spark = spark_session(args.master or "local[2]")
    try:
        meta = write_training_set(
            spark, settings.master_path, out, snapshot=args.snapshot, start_ms=start,
            end_ms=end, label_maturity_ms=int(args.maturity_days * 86_400_000))
    finally:
        spark.stop()
    print(json.dumps({"out": out, **dataclasses.asdict(meta)}, indent=2, default=str))
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.commands import train_command

    params = json.loads(args.params) if args.params else None
    if params is not None and not isinstance(params, dict):
        raise ConfigError("--params must be a JSON object, e.g. '{\"epochs\": 3}'")
    result = train_command(
        args.training_set,
        models_dir=settings.home / "models",
        registry=settings.home,
        snapshot_id=args.snapshot,
        params=params,
        seed=args.seed,
        workers=args.workers,
        spark_master=args.master or "local[2]",
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.commands import evaluate_command

    result = evaluate_command(args.backtest, registry=settings.home, candidate=args.candidate,
                              apply=not args.dry_run)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.commands import models_command

    result = models_command(args.action, registry=settings.home, version=args.version,
                            reason=args.reason)
    print(json.dumps(result, indent=2, default=str))
    return 0


# --- schemas ---------------------------------------------------------------


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.schemas import compat
    from lamina.schemas.registry import default_registry

    if args.action == "list":
        registry = default_registry()
        for event_type in registry.event_types():
            versions = ", ".join(f"v{v}" for v in registry.versions(event_type))
            print(f"{event_type:<14} {versions}  entity key: "
                  f"{registry.entity_key(event_type, registry.latest(event_type))}")
        return 0
    problems = compat.check_command(None, Path(args.new) if args.new else None, None)
    if not any(problems.values()):
        checked = ", ".join(problems) or "nothing"
        print(f"compatible: {checked}")
        return 0
    for subject, issues in problems.items():
        for issue in issues:
            print(f"{subject}: {issue}")
    return 1


# --- demo ------------------------------------------------------------------

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


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Start Kafka, generate events, land them, print what landed; then run the
    batch loop on them: batch views, a point-in-time training set and backtest
    from before the drift, training, the gate (the first model becomes the
    champion) and the model registry. --no-batch stops after landing."""
    import shutil

    from lamina import broker, generator
    from lamina.schemas.topics import default_topics

    began = time.monotonic()
    config = _generator_config(args)
    plan = None
    if not args.no_batch:
        _check_batch_packages()
        plan = demo_plan(config)  # refuse a period with no room before doing anything
    home = settings.home / "demo"
    if home.exists():
        shutil.rmtree(home)  # a demo starts from nothing, every time
    demo = dataclasses.replace(settings, home=home, master_uri="")
    step = _DemoStep(4 if plan is None else 9)
    step("kafka", f"starting Kafka (single KRaft node, free loopback ports) under {home}/kafka")
    # Kafka's jars stay where the bootstrap put them (settings.home).
    started = broker.KafkaCluster(home / "kafka", broker.kafka_libs(settings), nodes=1)
    started.start()
    try:
        demo = dataclasses.replace(demo, bootstrap_servers=started.bootstrap_servers)
        started.create_topics(
            default_topics(demo.raw_topic, demo.dlq_topic, demo.raw_partitions))
        step("produce", f"producing {config.transactions:,} transactions (+ labels, late, "
             f"duplicate and malformed events) to {demo.raw_topic} at {demo.bootstrap_servers}")
        counts = generator.produce(config, demo.bootstrap_servers, demo.raw_topic,
                                   rate=args.rate, progress=not args.quiet)
        print(f"      produced {counts}")
        step("landing", f"landing into the master dataset at {demo.master_path}")
        landing_began = time.monotonic()
        stats = run_lander(demo, idle_exit_s=3.0, progress=not args.quiet)
        took = time.monotonic() - landing_began
        print(f"      landed {stats.landed:,}, dead-lettered {stats.dead_lettered:,}, "
              f"duplicates dropped {stats.duplicates_dropped:,} in {stats.commits} commits "
              f"({took:.1f} s including the idle wait)")
        expected = counts.get("valid", 0)
        if stats.landed != expected or stats.dead_lettered != counts.get("malformed", 0):
            print(f"      MISMATCH: the generator sent {expected} valid events", file=sys.stderr)
            return 1
        step("dataset", "what landed:\n")
        print_dataset_info(_dataset(demo).info())
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

        spark = batch_spark.spark_session("local[2]", app_name="lamina-demo")
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
                out = str(demo.home / "training_sets" / name)
                meta = write_training_set(spark, demo.master_path, out, snapshot=snapshot,
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

        trained = train_command(sets["train"], models_dir=demo.home / "models",
                                registry=demo.home, snapshot_id=snapshot)
    auc = (trained["history"].get("auc") or [None])[-1]
    print(f"      version {trained['version']}: {trained['rows']:,} rows, "
          f"{trained['positives']:,} fraud, training ROC AUC "
          f"{'n/a' if auc is None else f'{auc:.3f}'} ({trained['seconds']:.1f} s)")
    print(f"      model in {trained['model_dir']}, registry {demo.home / 'mlflow.db'}")

    version = int(trained["version"])
    with step("evaluation", f"backtest of version {version} on the later window, and the "
              "gate (no champion yet: the absolute minimums decide)"):
        result = evaluate_command(sets["backtest"], registry=demo.home, candidate=version)
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
        listed = models_command("list", registry=demo.home)
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


# --- parser ----------------------------------------------------------------


def _add_generator_args(p: argparse.ArgumentParser, transactions: int) -> None:
    p.add_argument("--transactions", type=_positive_int, default=transactions,
                   help=f"transaction events to generate (default {transactions:,}); "
                        "labels come on top")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--cards", type=_positive_int, help="number of cards")
    p.add_argument("--merchants", type=_positive_int, help="number of merchants")
    p.add_argument("--days", type=_positive_float, help="days of event time covered")
    p.add_argument("--start", help="first event time, ISO-8601 UTC (default 2026-01-01)")
    p.add_argument("--drift-at", help="when the fraud pattern changes, ISO-8601 UTC, "
                                      "or 'none' (default: two thirds through)")
    p.add_argument("--late-fraction", type=_fraction, help="share of late events")
    p.add_argument("--malformed-fraction", type=_fraction, help="share of malformed events")
    p.add_argument("--duplicate-fraction", type=_fraction, help="share of producer resends")
    p.add_argument("--rate", type=_positive_float, help="events/s limit when producing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamina",
        description="Lamina: raw events kept forever, views and models recomputed from them.",
    )
    parser.add_argument("--version", action="version", version=f"lamina {__version__}")
    parser.add_argument("--config", help="TOML settings file (default: ./lamina.toml if present)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="start Kafka, generate events, land them, then run the "
                                    "batch loop on them (views, training, gate, registry)",
                       description=cmd_demo.__doc__)
    _add_generator_args(p, transactions=50_000)
    p.add_argument("--no-batch", action="store_true",
                   help="stop after landing (no Spark, TensorFlow or MLflow needed)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("infra", help="start, stop or inspect the local Kafka (KRaft) runtime",
                       description="Kafka from its published jars (fetched by "
                                   "infra/bootstrap.sh), on 127.0.0.1, daemonised.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--mode", choices=["single", "cluster"], default="single",
                   help="one node (default) or three nodes with replication 3, min.insync 2")
    p.set_defaults(func=cmd_infra)

    p = sub.add_parser("generate", help="generate card-transaction events to Kafka or files",
                       description="Synthetic card transactions with a planted, drifting "
                                   "fraud signal; deterministic for a seed.")
    _add_generator_args(p, transactions=50_000)
    p.add_argument("--out", help="write JSON-lines files to this folder instead of Kafka")
    p.add_argument("--topic", help="topic to produce to (default: the raw topic)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("land", help="run the lander: Kafka -> master dataset, exactly-once",
                       description="Consume the raw topic, validate, dead-letter bad events, "
                                   "and commit rows with their offsets to the master dataset.")
    p.add_argument("--idle-exit", type=_positive_float, metavar="SECONDS",
                   help="stop after this long without new events (default: run until "
                        "SIGTERM/Ctrl-C)")
    p.add_argument("--max-events", type=_positive_int, help="stop after consuming this many")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_land)

    p = sub.add_parser("import", help="backfill JSON-lines files through the same validation",
                       description="Each line is one event. Re-importing a file is a no-op; "
                                   "invalid lines go to a dead-letter file.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("dataset", help="inspect or compact the master dataset")
    p.add_argument("action", choices=["info", "snapshots", "compact"],
                   help="info: rows/bytes per partition and offsets; snapshots: the "
                        "commit history; compact: merge small files into a new snapshot")
    p.add_argument("--json", action="store_true", help="info as JSON")
    p.add_argument("--limit", type=_positive_int, default=20, help="snapshots to list")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("batch", help="compute and publish batch views (Spark), or vacuum "
                                     "the files of old ones")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("run", help="compute and publish the card views",
                           description="Read a master-dataset snapshot, compute the card views "
                                       "as time tiles before a cutoff, publish them in one "
                                       "commit.")
    p.add_argument("--snapshot", type=int, help="master dataset version (default: latest)")
    p.add_argument("--cutoff", help="ISO-8601 UTC cutoff, a multiple of the largest tile hop "
                                    "(default: the latest event time, floored)")
    p.add_argument("--master", help="Spark master URL (default local[2])")
    p.add_argument("--force", action="store_true", help="publish even if already published")
    p.set_defaults(func=cmd_batch)
    p = actions.add_parser("publish", help="publish a batch view into the tile store",
                           description="Collapse each card's tiles of one published views "
                                       "version into one batch record (Spark) and switch the "
                                       "tile store to them atomically; then drop realtime tiles "
                                       "before the cutoff. Publishing the same version again "
                                       "is skipped; an older one is refused (superseded).")
    p.add_argument("--version", type=_non_negative_int,
                   help="views table version (default: the latest)")
    p.add_argument("--store", choices=["sqlite", "redis"], default="sqlite",
                   help="tile store (default: the embedded SQLite store, <home>/tiles.db)")
    p.add_argument("--store-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a store option, repeatable (sqlite: path, busy_timeout_ms, "
                        "synchronous, wal_autocheckpoint, publish_chunk; redis: url, prefix, "
                        "publish_chunk, socket_timeout_s)")
    p.add_argument("--publish-interval-hours", type=_positive_float, default=24.0,
                   metavar="H", help="expected time to the next publish; lookups are answered "
                                     "until cutoff + 2H (default 24)")
    p.add_argument("--master", help="Spark master URL (default local[2])")
    p.set_defaults(func=cmd_batch)
    p = actions.add_parser("vacuum", help="delete the files of views replaced long ago",
                           description="Delete view files that were replaced by a publish more "
                                       "than --retain-hours ago, and files of killed runs as "
                                       "old. The published view never changes, and the "
                                       "previous one stays readable unless "
                                       "--unsafe-retention.")
    p.add_argument("--retain-hours", type=_non_negative_int, metavar="N",
                   help="keep files replaced less than N hours ago (default: the table's "
                        "delta.deletedFileRetentionDuration, 168 unless set)")
    p.add_argument("--dry-run", action="store_true", help="list the files, delete nothing")
    p.add_argument("--unsafe-retention", action="store_true",
                   help="allow a retention below the table's minimum: readers of older views, "
                        "and a publish still writing, can lose files")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("training-set", help="build a point-in-time training set (Spark)",
                       description="One row per transaction in [start, end): features as of "
                                   "just before it, and its label (chargeback = 1; confirmed "
                                   "genuine or mature and unlabelled = 0; recent unlabelled "
                                   "rows are left out).")
    p.add_argument("--start", required=True, help="ISO-8601 UTC, inclusive")
    p.add_argument("--end", required=True, help="ISO-8601 UTC, exclusive")
    p.add_argument("--snapshot", type=int, help="master dataset version (default: latest)")
    p.add_argument("--maturity-days", type=_positive_float, default=30.0,
                   help="unlabelled transactions older than this count as genuine (default 30)")
    p.add_argument("--out", help="output folder (default: <home>/training_sets/START_END)")
    p.add_argument("--master", help="Spark master URL (default local[2])")
    p.set_defaults(func=cmd_training_set)

    p = sub.add_parser("train", help="train a model on a training set and register it",
                       description="Idempotent: the same training set, snapshot, parameters "
                                   "and seed register one version.")
    p.add_argument("training_set", help="Parquet file/folder or Delta table with the features")
    p.add_argument("--snapshot", required=True, help="master snapshot the set was built from")
    p.add_argument("--params", help="training parameters as JSON")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=0,
                   help="Spark barrier workers (0: train in this process)")
    p.add_argument("--master", help="Spark master URL for --workers (default local[2])")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="backtest a candidate against the champion; promote "
                                        "it only if it wins")
    p.add_argument("backtest", help="Parquet/Delta rows later in time than the training data")
    p.add_argument("--candidate", type=int, required=True, help="registered model version")
    p.add_argument("--dry-run", action="store_true", help="decide but record nothing")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="the model registry: list, show, promote, rollback")
    p.add_argument("action", choices=["list", "show", "champion", "audit", "promote",
                                      "rollback"])
    p.add_argument("version", nargs="?", type=int, help="model version (show, promote)")
    p.add_argument("--reason", help="why (promote, rollback): goes into the audit trail")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("schemas", help="list event schemas or check compatibility",
                       description="check: every schema version must be backward compatible "
                                   "with the previous one; --new FILE checks a proposed one.")
    p.add_argument("action", choices=["list", "check"])
    p.add_argument("--new", metavar="FILE", help="a proposed schema file to check")
    p.set_defaults(func=cmd_schemas)
    return parser


#: The exit status of a command whose reader closed stdout early (`lamina
#: dataset info | head`): what a shell reports for a writer SIGPIPE ended.
EXIT_STDOUT_CLOSED = 128 + 13


def _stdout_closed() -> bool:
    """True if stdout is a pipe or socket whose reader has gone away (the
    kernel flags the write end with an error or hang-up)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _quiet_stdout() -> int:
    """Point stdout at /dev/null, so the interpreter's last flush of what is
    still buffered cannot fail again, and return EXIT_STDOUT_CLOSED."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_STDOUT_CLOSED


def _from_broken_pipe(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BrokenPipeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Output into a pipe closed early by its reader ends
    the command quietly with EXIT_STDOUT_CLOSED, like any Unix filter; a
    broken pipe anywhere else (a socket, a subprocess) is a real error."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        if _stdout_closed():
            return _quiet_stdout()
        raise


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.log_level)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = load_settings(args.config)
        return func(args, settings)
    except LaminaError as exc:
        if _from_broken_pipe(exc) and _stdout_closed():
            return _quiet_stdout()  # a step wrapped the closed pipe (`lamina demo | head`)
        print(f"lamina {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lamina {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
