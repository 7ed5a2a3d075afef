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
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamina import __version__
from lamina.config import Settings, load_settings
from lamina.errors import ConfigError, LaminaError
from lamina.logs import configure
from lamina.runners import (
    event_validator,
    human_bytes,
    master_dataset,
    print_dataset_info,
    run_lander,
)

# --- helpers ---------------------------------------------------------------


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


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def _store_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as store options (whole numbers as ints);
    ConfigError for an item that is not ``KEY=VALUE``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"store option {pair!r} is not KEY=VALUE (e.g. "
                              "--store-option path=/var/lib/lamina/tiles.db)")
        options[key.strip()] = int(value) if value.isdigit() else value
    return options


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


def _rate(text: str) -> float:
    """A rate in [0, 1], both ends allowed."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be a fraction in [0, 1], e.g. 0.05")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


# --- infra -----------------------------------------------------------------


def cmd_infra(args: argparse.Namespace, settings: Settings) -> int:
    from lamina import infra

    if args.action == "up":
        info = infra.infra_up(settings, mode=args.mode)
        print(json.dumps(dataclasses.asdict(info), indent=2, default=str))
        if not info.already_running:
            print(f"Kafka is up at {info.bootstrap_servers}; stop it with `lamina infra down`",
                  file=sys.stderr)
    elif args.action == "down":
        stopped = infra.infra_down(settings)
        print(json.dumps({"stopped": stopped}))
    else:
        status = infra.infra_status(settings)
        print(json.dumps(status, indent=2, default=str))
        return 0 if status.get("running") else 1
    return 0


# --- airflow ---------------------------------------------------------------


def cmd_airflow(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.orchestration import airflow_runner as runner

    if args.action == "up":
        # The Lamina page runs inside Airflow, in another directory: hand it
        # the settings file this command read, if any.
        config = args.config or os.environ.get("LAMINA_CONFIG") or (
            "lamina.toml" if Path("lamina.toml").exists() else None)
        if config:
            os.environ["LAMINA_CONFIG"] = str(Path(config).resolve())
        started = runner.airflow_up(settings)
        state = started.state
        print(json.dumps({"url": state.url, "already_running": started.already_running,
                          "pid": state.pid, "password_file": state.password_file,
                          "lamina_page": state.url + runner.LAMINA_PAGE,
                          "log_file": state.log_file, "dags_folder": state.dags_folder,
                          "healthy": started.health is not None}, indent=2))
        if started.already_running:
            print(f"Airflow is already running at {state.url} (pid {state.pid}); not starting "
                  "another. Stop it with `lamina airflow down`", file=sys.stderr)
        else:
            print(f"Airflow is up at {state.url} (user admin, password in "
                  f"{state.password_file}); the Lamina page is under Browse > Lamina. Stop it "
                  "with `lamina airflow down`", file=sys.stderr)
        return 0
    if args.action == "down":
        print(json.dumps(runner.airflow_down(settings)))
        return 0
    status = runner.airflow_status(settings)
    print(json.dumps(status, indent=2, default=str))
    return 0 if status.get("running") else 1


# --- generate --------------------------------------------------------------


def _generator_config(args: argparse.Namespace) -> Any:
    from lamina.generator import GeneratorConfig

    fields: dict[str, Any] = {"seed": args.seed, "transactions": args.transactions}
    for name in ("cards", "merchants", "days", "late_fraction", "malformed_fraction",
                 "duplicate_fraction"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.fraud_rate is not None:
        fields["fraud_card_rate"] = args.fraud_rate
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
    topic = args.topic or settings.kafka.raw_topic
    counts = generator.produce(config, settings.kafka.bootstrap_servers, topic,
                               rate=args.rate, progress=not args.quiet)
    print(json.dumps({"topic": topic, "produced": counts}, indent=2))
    return 0


# --- land / import ----------------------------------------------------------


def cmd_land(args: argparse.Namespace, settings: Settings) -> int:
    stats = run_lander(settings, idle_exit_s=args.idle_exit, max_events=args.max_events,
                       progress=not args.quiet)
    print(json.dumps(vars(stats), indent=2))
    return 0


def cmd_speed(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.runners import run_speed

    stats = run_speed(settings, idle_exit_s=args.idle_exit, max_events=args.max_events,
                      progress=not args.quiet)
    print(json.dumps(vars(stats), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve features, scores and ad-hoc scoring over HTTP ([serving])."""
    serving = settings.serving
    if args.host:
        serving = dataclasses.replace(serving, host=args.host)
    if args.port is not None:
        serving = dataclasses.replace(serving, port=args.port)
    tile_store = settings.tile_store
    if args.store:
        tile_store = dataclasses.replace(tile_store, kind=args.store)
    if args.store_option:
        tile_store = dataclasses.replace(
            tile_store, options={**tile_store.options, **_store_options(args.store_option)})
    settings = dataclasses.replace(settings, serving=serving, tile_store=tile_store)
    from lamina.serving.app import create_app

    app = create_app(settings)  # ConfigError (no token, bad store) -> one line, exit 2

    import uvicorn

    # access_log off: the default access line is fine, but the app logs its
    # own (without headers, so never the token).
    uvicorn.run(app, host=serving.host, port=serving.port, access_log=False,
                log_config=None)
    return 0


def cmd_speed_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print the speed layer's metrics file readably; exit 1 when no speed
    layer has written one at the configured path yet."""
    import time

    from lamina.speed.metrics import status_lines

    path = settings.speed_metrics_path
    try:
        text = path.read_text(encoding="utf-8")
        age_s = max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        print(f"no speed-layer metrics at {path}: no `lamina speed run` has written them "
              "with these settings yet (start one, or set [speed] metrics_path to the file "
              "it writes)")
        return 1
    if args.raw:
        print(text, end="")
        return 0
    print(f"speed layer metrics  {path}")
    try:
        lines = status_lines(text, age_s=age_s)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a speed-layer metrics file: {exc}") from exc
    for line in lines:
        print(line)
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.master.importer import import_files

    results = import_files(
        master_dataset(settings),
        [Path(p) for p in args.files],
        event_validator(settings),
        settings.home / "deadletters",
        batch_size=settings.lander.commit_max_events,
        dedup_cached_days=settings.lander.dedup_cached_days,
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


def cmd_dataset(args: argparse.Namespace, settings: Settings) -> int:
    dataset = master_dataset(settings)
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
        print(f"{done} {result['files']} files ({human_bytes(result['bytes'])}) of "
              f"{result['views_uri']}; retention {result['retain_hours']} h", file=sys.stderr)
        return 0
    if args.action == "publish":
        from lamina.batch.evaluate import iso_utc
        from lamina.batch.store_publish import batch_publish_command, parse_store_options

        result = batch_publish_command(
            settings, store=args.store, options=parse_store_options(args.store_option),
            version=args.version, publish_interval_ms=round(args.publish_interval_hours
                                                            * 3_600_000),
            master=args.master)
        print(json.dumps(result, indent=2))
        print(f"{result['status']}: views version {result['batch_version']} (cutoff "
              f"{iso_utc(result['cutoff_ms'])}, answers until "
              f"{iso_utc(result['horizon_ms'])}) in the "
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
    out = args.out or str(Path(settings.training_sets_uri) / f"{args.start}_{args.end}")
    spark = spark_session(args.master or settings.spark.master, extra_conf=settings.spark.conf)
    try:
        meta = write_training_set(
            spark, settings.master_uri, out, snapshot=args.snapshot, start_ms=start,
            end_ms=end, label_maturity_ms=int(args.maturity_days * 86_400_000))
    finally:
        spark.stop()
    print_training_set(out, meta)
    return 0


#: Exit status of `lamina consistency report` when a mismatch is unexplained.
EXIT_UNEXPLAINED = 1


def cmd_consistency(args: argparse.Namespace, settings: Settings) -> int:
    """The consistency report of [--since, --until): a short table on
    stdout, the JSON in <home>/reports/consistency.json; exit 1 when some
    mismatch is unexplained."""
    import time

    from lamina.batch.consistency import consistency_command, summary_lines

    until = _utc_ms(args.until) if args.until else int(time.time() * 1000)
    since = _utc_ms(args.since) if args.since else until - 86_400_000
    if since >= until:
        raise ConfigError(f"--since ({args.since or 'a day before --until'}) must be before "
                          f"--until ({args.until or 'now'})")
    report, path = consistency_command(settings, since_ms=since, until_ms=until,
                                       snapshot=args.snapshot, master=args.master)
    for line in summary_lines(report):
        print(line)
    print(f"report: {path}")
    if report["unexplained"]:
        print(f"lamina consistency: {report['unexplained']} feature mismatches are "
              f"unexplained: the online and offline features differ for a reason that is "
              f"not a late arrival, the allowed lateness or the batch cutoff; see "
              f"\"examples\" (cause \"unexplained\") in {path} and compare the speed "
              "layer's and the training set's code versions", file=sys.stderr)
        return EXIT_UNEXPLAINED
    return 0


def print_training_set(out: str, meta: Any) -> None:
    """The written training set's metadata as JSON on stdout, with a
    `warning` (also one line on stderr) when rows were left out as not yet
    mature."""
    from lamina.batch.training_set import maturity_warning

    warning = maturity_warning(meta)
    print(json.dumps({"out": out, **dataclasses.asdict(meta), "warning": warning}, indent=2,
                     default=str))
    if warning:
        print(f"lamina training-set: warning: {warning}", file=sys.stderr)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.commands import train_command

    params = json.loads(args.params) if args.params else None
    if params is not None and not isinstance(params, dict):
        raise ConfigError("--params must be a JSON object, e.g. '{\"epochs\": 3}'")
    result = train_command(
        args.training_set,
        models_dir=settings.models_uri,
        registry=settings.registry_uri,
        snapshot_id=args.snapshot,
        params=params,
        seed=args.seed,
        workers=args.workers,
        spark_master=args.master or settings.spark.master,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.commands import evaluate_command, score_champion_command

    if args.champion:  # records nothing anyway, so --dry-run changes nothing here
        result = score_champion_command(args.backtest, registry=settings.registry_uri)
    else:
        result = evaluate_command(args.backtest, registry=settings.registry_uri,
                                  candidate=args.candidate, apply=not args.dry_run)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.batch.commands import models_command

    result = models_command(args.action, registry=settings.registry_uri, version=args.version,
                            reason=args.reason)
    print(json.dumps(result, indent=2, default=str))
    return 0


# --- schemas ---------------------------------------------------------------


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from lamina.schemas import compat
    from lamina.schemas.event_schemas import default_registry

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


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Start Kafka, land a history, make batch views and a first champion;
    then stream the rest of the period through the speed layer while
    serving answers lookups, watch the drift lower the champion's live AUC,
    retrain on post-drift data, promote, swap, and write an HTML report.
    --no-batch stops after landing the whole period."""
    from lamina.demo import run_demo
    from lamina.demo_loop import demo_generator_config

    config = _generator_config(args)
    if not args.no_batch:
        config = demo_generator_config(config, fraud_rate_given=args.fraud_rate is not None)
    return run_demo(settings, config, batch=not args.no_batch, rate=args.rate,
                    progress=not args.quiet)


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
    p.add_argument("--fraud-rate", type=_rate, metavar="FRACTION",
                   help="share of cards compromised once (a burst of fraud each), in [0, 1] "
                        "(default 0.02)")
    p.add_argument("--late-fraction", type=_fraction, help="share of late events")
    p.add_argument("--malformed-fraction", type=_fraction, help="share of malformed events")
    p.add_argument("--duplicate-fraction", type=_fraction, help="share of producer resends")
    p.add_argument("--rate", type=_positive_float,
                   help="events/s limit when producing (demo: the live stream's rate, "
                        "default 600; its history goes as fast as it can)")
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

    p = sub.add_parser("demo", help="the whole loop: Kafka, a landed history, batch views, a "
                                    "champion, a live stream scored and served, the drift, "
                                    "retraining, the swap, an HTML report",
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

    p = sub.add_parser("airflow", help="start, stop or inspect Airflow standalone with the "
                                       "DAGs and the Lamina page",
                       description="Airflow standalone on 127.0.0.1 under <home>/airflow "
                                   "(SQLite metadata, [airflow] settings), detached; `up` "
                                   "waits until it is healthy.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_airflow)

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

    p = sub.add_parser("speed", help="run the speed layer: Kafka -> realtime tiles "
                                     "(exactly-once) and scores (at-least-once)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("run", help="keep the card views' realtime tiles up to date and "
                                       "score each transaction",
                           description="Consume the raw topic in its own group, validate, "
                                       "score each applied transaction with the registry's "
                                       "champion to the scores topic ([speed] score), and "
                                       "write the tiles each micro-batch changed together "
                                       "with the offsets, in one tile-store transaction.")
    p.add_argument("--idle-exit", type=_positive_float, metavar="SECONDS",
                   help="stop after this long without new events (default: run until "
                        "SIGTERM/Ctrl-C)")
    p.add_argument("--max-events", type=_positive_int, help="stop after consuming this many")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_speed)
    p = actions.add_parser("status", help="print the speed layer's latest metrics",
                           description="Read the Prometheus text file a running (or the last) "
                                       "`lamina speed run` writes ([speed] metrics_path) and "
                                       "print lag, rates, counts, latency and model version, "
                                       "with how old the file is.")
    p.add_argument("--raw", action="store_true", help="print the file as it is")
    p.set_defaults(func=cmd_speed_status)

    p = sub.add_parser("serve", help="serve features, scores and ad-hoc scoring over HTTP",
                       description="The serving API (FastAPI on uvicorn) over the tile store: "
                                   "every route but /health needs the bearer token "
                                   "[serving] token (or LAMINA_SERVING_TOKEN).")
    p.add_argument("--host", help="address to listen on (default: [serving] host, 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port (default: [serving] port, 8000)")
    p.add_argument("--store", choices=["sqlite", "redis"],
                   help="tile store kind (default: [tile_store] kind in the settings)")
    p.add_argument("--store-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a store option over [tile_store] options, repeatable")
    p.set_defaults(func=cmd_serve)

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
    p.add_argument("--master",
                   help="Spark master URL (default: [spark] master in the settings, local[2])")
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
    p.add_argument("--store", choices=["sqlite", "redis"],
                   help="tile store kind (default: [tile_store] kind in the settings, "
                        "sqlite = the embedded store at <home>/tiles.db)")
    p.add_argument("--store-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a store option over [tile_store] options, repeatable (sqlite: path, "
                        "busy_timeout_ms, "
                        "synchronous, wal_autocheckpoint, publish_chunk; redis: url, prefix, "
                        "publish_chunk, socket_timeout_s)")
    p.add_argument("--publish-interval-hours", type=_positive_float, default=24.0,
                   metavar="H", help="expected time to the next publish; lookups are answered "
                                     "until cutoff + 2H (default 24)")
    p.add_argument("--master",
                   help="Spark master URL (default: [spark] master in the settings, local[2])")
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
    p.add_argument("--master",
                   help="Spark master URL (default: [spark] master in the settings, local[2])")
    p.set_defaults(func=cmd_training_set)

    p = sub.add_parser("consistency", help="compare the speed layer's logged features with "
                                           "the offline ones (Spark), every mismatch attributed",
                       description="Reads the score records of [since, until) from the scores "
                                   "topic, computes the same events' features from the master "
                                   "dataset as the training set does, compares them bit for "
                                   "bit and attributes each mismatch (late arrival, beyond the "
                                   "allowed lateness, batch cutoff, or unexplained). Writes "
                                   "<home>/reports/consistency.json; exit 1 if any mismatch is "
                                   "unexplained.")
    p.add_argument("action", choices=["report"])
    p.add_argument("--since", help="ISO-8601 UTC, inclusive (default: a day before --until)")
    p.add_argument("--until", help="ISO-8601 UTC, exclusive (default: now)")
    p.add_argument("--snapshot", type=_non_negative_int,
                   help="master dataset version (default: latest)")
    p.add_argument("--master",
                   help="Spark master URL (default: [spark] master in the settings, local[2])")
    p.set_defaults(func=cmd_consistency)

    p = sub.add_parser("train", help="train a model on a training set and register it",
                       description="Idempotent: the same training set, snapshot, parameters "
                                   "and seed register one version.")
    p.add_argument("training_set", help="Parquet file/folder or Delta table with the features")
    p.add_argument("--snapshot", type=_non_negative_int, metavar="N",
                   help="master snapshot the set was built from (default: the one in its "
                        "lineage; needed for a set without one)")
    p.add_argument("--params", help="training parameters as JSON")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=0,
                   help="Spark barrier workers (0: train in this process)")
    p.add_argument("--master",
                   help="Spark master URL for --workers (default: [spark] master in the settings)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="backtest a candidate against the champion; promote "
                                        "it only if it wins (or score the champion alone)",
                       description="--candidate V: score V and the champion on the same "
                                   "backtest rows; the gate promotes V only if it wins, and "
                                   "the decision is recorded (V must not be the champion "
                                   "already: use --champion). --champion: score the current "
                                   "champion on the window (metrics, slices, drift); no gate, "
                                   "nothing recorded.")
    p.add_argument("backtest", help="Parquet/Delta rows later in time than the training data")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidate", type=_positive_int, metavar="VERSION",
                       help="registered model version to judge against the champion")
    which.add_argument("--champion", action="store_true",
                       help="score the current champion only: no gate, nothing recorded")
    p.add_argument("--dry-run", action="store_true",
                   help="with --candidate: decide but record nothing")
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
