"""One library function per scheduled task (invariant 10).

Every function takes the settings file (``config``; None means what the CLI
would load: ``LAMINA_CONFIG``, ``./lamina.toml``, the ``LAMINA_*``
environment) and its run's logical date, snapshot or version, and returns
a small JSON-able dict of paths, versions, counts and decisions -- never
data. The DAGs in ``dags/`` call them and pass the dicts through XCom.

Idempotence: a function called again with the same arguments returns the
same dict, whether the first call finished, failed, or was killed:

* the master snapshot a run reads is pinned by its logical date
  (``snapshot_as_of``: the newest version committed at or before it), so a
  retry an hour later reads the same data even if more has landed;
* batch views and the tile-store publish are recognised by their inputs
  (the batch layer skips a view already published from the same snapshot
  and cutoff); the result reports what is published, not whether this
  attempt wrote it (that goes to the log);
* training sets live under a folder named after the logical date and are
  rebuilt only if their lineage does not match; training is keyed by its
  run key; the gate's decision, once recorded in the registry, is read
  back instead of being made again;
* maintenance (compaction, vacuum) and the dead-letter count record their
  result per logical date under ``<home>/orchestration/`` and return it
  on a rerun.

Spark steps run in a driver process of their own (``spark_jobs``); the
heavy packages are imported inside the functions, so importing this module
is cheap (the DAG files import it at parse time only through their tasks).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamina.config import Settings, load_settings
from lamina.errors import DatasetError, LaminaError
from lamina.logs import get_logger

log = get_logger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


class HealthCheckFailed(LaminaError):
    """A health check's measurement is over its limit (the task fails so
    that Airflow shows it and alerts)."""


# --- time and snapshots ------------------------------------------------------


def to_ms(moment: Any) -> int:
    """Epoch milliseconds of a datetime (naive = UTC), an ISO-8601 string
    or a number of milliseconds."""
    if isinstance(moment, bool):
        raise ValueError(f"not a time: {moment!r}")
    if isinstance(moment, int | float):
        return int(moment)
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    # pendulum.DateTime is a datetime; anything else is refused.
    raise ValueError(f"not a time: {moment!r}")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def stamp(logical_ms: int) -> str:
    """A folder-safe name for a logical date: ``20260110T000000Z``."""
    return datetime.fromtimestamp(logical_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")


def settings_of(config: str | None) -> Settings:
    return load_settings(config or None)


def snapshot_as_of(settings: Settings, at_ms: int) -> int:
    """The newest master-dataset version committed at or before ``at_ms``:
    the snapshot a run for that logical date reads, whenever it runs.
    DatasetError if the master dataset has no version that old."""
    from lamina.master.dataset import MasterDataset

    dataset = MasterDataset(settings.master_uri)
    if not dataset.exists():
        raise DatasetError(f"no master dataset at {settings.master_uri}: land events first "
                           "(`lamina land` or `lamina import`)")
    versions = [s.version for s in dataset.snapshots() if s.timestamp_ms <= at_ms]
    if not versions:
        raise DatasetError(
            f"the master dataset at {settings.master_uri} has no snapshot committed at or "
            f"before {iso(at_ms)}: run this for a later logical date")
    return max(versions)


def _recorded(settings: Settings, kind: str, logical_ms: int,
              compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s result for (kind, logical date), computed once: kept in
    ``<home>/orchestration/<kind>/<stamp>.json`` (written atomically) and
    returned as it is on later calls."""
    folder = Path(settings.home) / "orchestration" / kind
    path = folder / f"{stamp(logical_ms)}.json"
    if path.is_file():
        found: dict[str, Any] = json.loads(path.read_text())
        log.info("task already done for this logical date", kind=kind, record=path)
        return found
    result = compute()
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(result, sort_keys=True, default=str))
    partial.replace(path)
    return result


# --- batch views ---------------------------------------------------------------


def batch_views(config: str | None, *, logical_date: Any) -> dict[str, Any]:
    """Compute and publish the card views for a run's logical date: master
    snapshot ``snapshot_as_of(logical date)``, cutoff the logical date floored
    to the views' alignment, but never later than that snapshot's latest
    event (floored; the batch layer's default). Returns group, views_uri,
    version (the views table version now published), cutoff_ms, cutoff,
    snapshot, rows and status: "published" (this view is the published one)
    or "superseded" (a later one is, so nothing was written)."""
    from lamina.batch.views import default_cutoff
    from lamina.master.dataset import MasterDataset
    from lamina.schemas.card_views import CARD_VIEWS

    settings = settings_of(config)
    at = to_ms(logical_date)
    snapshot = snapshot_as_of(settings, at)
    alignment = CARD_VIEWS.cutoff_alignment_ms()
    latest = default_cutoff(MasterDataset(settings.master_uri), snapshot, CARD_VIEWS)
    cutoff = min(at // alignment * alignment, latest)
    return _views_at(config, settings, snapshot, cutoff)


def _views_at(config: str | None, settings: Settings, snapshot: int,
              cutoff: int) -> dict[str, Any]:
    """The card views of (snapshot, cutoff): the published version if the
    latest one already has exactly these inputs (no Spark driver started),
    else a views run in a Spark driver process."""
    from lamina.batch.published import (
        ViewMetadata,
        definition_fingerprint,
        latest_published,
        published_rows,
    )
    from lamina.batch.views import TILE_MODULES
    from lamina.lineage import code_version
    from lamina.orchestration.spark_jobs import run_spark_step
    from lamina.schemas.card_views import CARD_VIEWS

    views_uri = settings.view_uri(CARD_VIEWS.name)
    if "://" not in views_uri:
        views_uri = str(Path(views_uri).resolve())
    wanted = ViewMetadata(group=CARD_VIEWS.name, cutoff_ms=cutoff, source_snapshot=snapshot,
                          master_uri=settings.master_uri,
                          definition=definition_fingerprint(CARD_VIEWS),
                          code_version=code_version(TILE_MODULES))
    current = latest_published(views_uri) if Path(views_uri, "_delta_log").is_dir() \
        or "://" in views_uri else None
    if current is not None and current[1].same_inputs(wanted):
        version = current[0]
        run = {"status": "published", "views_uri": views_uri, "version": version,
               "rows": published_rows(views_uri, version)}
        log.info("batch view already published", group=CARD_VIEWS.name, version=version,
                 cutoff_ms=cutoff, snapshot_id=snapshot)
    else:
        run = run_spark_step(config, "views", {"snapshot": snapshot, "cutoff_ms": cutoff})
    log.info("batch views", status=run["status"], group=CARD_VIEWS.name,
             version=run["version"], cutoff_ms=cutoff, snapshot_id=snapshot)
    return {"group": CARD_VIEWS.name, "views_uri": run["views_uri"], "version": run["version"],
            "cutoff_ms": cutoff, "cutoff": iso(cutoff), "snapshot": snapshot,
            "rows": run["rows"],
            "status": "superseded" if run["status"] == "superseded" else "published"}


def publish_to_tile_store(config: str | None, *, views_version: int) -> dict[str, Any]:
    """Switch the tile store to views version ``views_version`` (the batch
    records, then the realtime tiles before its cutoff dropped). Returns
    store, group, batch_version, cutoff_ms, horizon_ms, snapshot and status:
    "published" (the store serves this version) or "superseded" (it serves
    a later one)."""
    from lamina.orchestration.spark_jobs import run_spark_step

    run = run_spark_step(config, "publish", {"version": int(views_version)})
    log.info("tile store publish", status=run["status"], store=run["store"],
             batch_version=run["batch_version"], cutoff_ms=run["cutoff_ms"])
    return {key: run[key] for key in ("store", "group", "views_uri", "batch_version",
                                      "cutoff_ms", "horizon_ms", "snapshot")} | {
        "status": "superseded" if run["status"] == "superseded" else "published"}


def backfill_cutoffs(start: Any, end: Any) -> list[int]:
    """The daily cutoffs (epoch ms, midnight UTC) from ``start`` to ``end``,
    both included, oldest first. ValueError if end is before start."""
    first, last = to_ms(start) // DAY_MS * DAY_MS, to_ms(end) // DAY_MS * DAY_MS
    if last < first:
        raise ValueError(f"the backfill ends ({iso(last)}) before it starts ({iso(first)})")
    return list(range(first, last + DAY_MS, DAY_MS))


def backfill_views(config: str | None, *, cutoff_ms: int, logical_date: Any) -> dict[str, Any]:
    """The card views at one backfill cutoff, computed from the snapshot the
    backfill run pins (``snapshot_as_of`` its logical date), so every day of
    one backfill reads the same data. Same result fields as
    ``batch_views``."""
    settings = settings_of(config)
    snapshot = snapshot_as_of(settings, to_ms(logical_date))
    return _views_at(config, settings, snapshot, int(cutoff_ms))


# --- retraining ------------------------------------------------------------------


def retraining_windows(as_of_ms: int, *, train_days: float, backtest_days: float,
                       label_maturity_days: float) -> dict[str, tuple[int, int]]:
    """Event-time windows [start, end) of a retraining run whose labels are
    as known at ``as_of_ms``: the backtest ends ``label_maturity_days``
    before it (every row mature) and lasts ``backtest_days``; the training
    set is the ``train_days`` before the backtest (so the backtest is later
    in time, as the gate requires). Whole hours."""
    if min(train_days, backtest_days) <= 0 or label_maturity_days < 0:
        raise ValueError("train_days and backtest_days must be positive and "
                         "label_maturity_days 0 or more")
    end = (as_of_ms - round(label_maturity_days * DAY_MS)) // HOUR_MS * HOUR_MS
    split = end - round(backtest_days * DAY_MS) // HOUR_MS * HOUR_MS
    start = split - round(train_days * DAY_MS) // HOUR_MS * HOUR_MS
    return {"train": (start, split), "backtest": (split, end)}


def build_training_sets(config: str | None, *, logical_date: Any, as_of: Any = None,
                        train_days: float = 14.0, backtest_days: float = 3.0,
                        label_maturity_days: float = 30.0) -> dict[str, Any]:
    """The point-in-time training set and the backtest of one retraining
    run, from the snapshot its logical date pins, with labels as known at
    ``as_of`` (default: the logical date); windows from
    ``retraining_windows``. Written to
    ``<training sets>/retrain/<stamp of the logical date>/{train,backtest}``
    and rebuilt only when a set's lineage does not match (a killed build
    leaves a folder without it). Returns snapshot, as_of_ms, and per set:
    path, window, rows, not_mature_rows."""
    settings = settings_of(config)
    at = to_ms(logical_date)
    as_of_ms = at if as_of in (None, "") else to_ms(as_of)
    windows = retraining_windows(as_of_ms, train_days=train_days, backtest_days=backtest_days,
                                 label_maturity_days=label_maturity_days)
    return _labelled_sets(config, settings, "retrain", at, as_of_ms, windows,
                          round(label_maturity_days * DAY_MS))


def build_recent_window(config: str | None, *, logical_date: Any, as_of: Any = None,
                        days: float = 3.0, label_maturity_days: float = 30.0) -> dict[str, Any]:
    """The latest mature, labelled window (``days`` long, ending
    ``label_maturity_days`` before ``as_of``, default the logical date) for
    the drift check; like ``build_training_sets`` (one set, ``recent``,
    under ``<training sets>/drift/<stamp>``)."""
    settings = settings_of(config)
    at = to_ms(logical_date)
    as_of_ms = at if as_of in (None, "") else to_ms(as_of)
    window = retraining_windows(as_of_ms, train_days=days, backtest_days=days,
                                label_maturity_days=label_maturity_days)["backtest"]
    return _labelled_sets(config, settings, "drift", at, as_of_ms, {"recent": window},
                          round(label_maturity_days * DAY_MS))


def _labelled_sets(config: str | None, settings: Settings, kind: str, at: int, as_of_ms: int,
                   windows: dict[str, tuple[int, int]], maturity_ms: int) -> dict[str, Any]:
    from lamina.orchestration.spark_jobs import run_spark_step

    snapshot = snapshot_as_of(settings, at)
    base = Path(settings.training_sets_uri) / kind / stamp(at)
    out = {name: str(base / name) for name in windows}
    existing = {name: _matching_lineage(out[name], snapshot, window, as_of_ms, maturity_ms)
                for name, window in windows.items()}
    if any(meta is None for meta in existing.values()):
        run_spark_step(config, "training_sets", {
            "snapshot": snapshot, "windows": windows, "out": out,
            "label_maturity_ms": maturity_ms, "as_of_ms": as_of_ms})
        existing = {name: _matching_lineage(out[name], snapshot, window, as_of_ms, maturity_ms)
                    for name, window in windows.items()}
    sets = {}
    for name, meta in existing.items():
        if meta is None:
            raise DatasetError(f"the {name} set at {out[name]} was written without its lineage")
        sets[name] = {"path": out[name], "window": list(windows[name]),
                      "window_utc": [iso(windows[name][0]), iso(windows[name][1])],
                      "rows": meta.rows, "not_mature_rows": meta.not_mature_rows}
        log.info("training set", name=name, path=out[name], rows=meta.rows,
                 snapshot_id=snapshot)
    return {"snapshot": snapshot, "as_of_ms": as_of_ms, "sets": sets}


def _matching_lineage(path: str, snapshot: int, window: tuple[int, int], as_of_ms: int,
                      maturity_ms: int) -> Any:
    from lamina.batch.training_set import read_lineage
    from lamina.errors import ConfigError

    try:
        meta = read_lineage(path)
    except ConfigError:
        return None
    same = (meta.snapshot == snapshot and (meta.start_ms, meta.end_ms) == tuple(window)
            and meta.as_of_ms == as_of_ms and meta.label_maturity_ms == maturity_ms
            and meta.rows is not None)
    return meta if same else None


def train_model(config: str | None, *, training_set: str, snapshot: int,
                params: dict[str, Any] | None = None, seed: int = 42,
                workers: int = 1) -> dict[str, Any]:
    """Train on ``training_set`` and register the model (``train_command``):
    ``workers`` Spark barrier tasks on the ``[spark]`` master (0: TensorFlow
    in the driver process alone). Keyed by its run key, so a retry returns
    the same version. Returns version, run_key, model_dir, snapshot, rows,
    positives and the last epoch's training metrics (as registered)."""
    from lamina.orchestration.spark_jobs import run_spark_step

    run = run_spark_step(config, "train", {"training_set": training_set, "snapshot": snapshot,
                                           "params": params or None, "seed": seed,
                                           "workers": workers})
    from lamina.batch.commands import open_registry

    # From the registered lineage, not this attempt's history: a retry that
    # found the model trained has no history of its own to report.
    metrics = open_registry(settings_of(config).registry_uri).lineage(
        int(run["version"])).metrics if run["version"] is not None else {}
    last = {name: metrics[f"train_{name}"] for name in ("loss", "auc")
            if f"train_{name}" in metrics}
    log.info("trained", version=run["version"], run_key=run["run_key"], snapshot_id=snapshot,
             rows=run["rows"], workers=workers)
    return {"version": run["version"], "run_key": run["run_key"],
            "model_dir": run["model_dir"], "snapshot": snapshot, "rows": run["rows"],
            "positives": run["positives"], "workers": workers, "train_metrics": last}


def evaluate_and_gate(config: str | None, *, candidate: int, backtest: str,
                      thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Backtest ``candidate`` against the champion and let the gate promote
    it or keep the champion (``evaluate_command``, recorded in the
    registry). A decision already recorded for the candidate is read back,
    not made again, so a retry (even after the candidate became champion)
    returns the same dict: candidate, champion_before, champion_after,
    promote, decision ("promoted" or "kept"), reasons, candidate_metrics and
    champion_metrics (overall, on the backtest window)."""
    from lamina.batch.commands import evaluate_command, open_registry

    settings = settings_of(config)
    registry = open_registry(settings.registry_uri)
    recorded = registry.show(int(candidate))
    if recorded.get("evaluation") is None or recorded.get("gate") is None:
        evaluate_command(backtest, registry=registry, candidate=int(candidate),
                         thresholds=thresholds or None)
        recorded = registry.show(int(candidate))
    result = decision_from_record(int(candidate), recorded["evaluation"])
    log.info("gate decision", candidate=candidate, decision=result["decision"],
             champion_before=result["champion_before"], champion_after=result["champion_after"],
             roc_auc=result["candidate_metrics"].get("roc_auc"),
             champion_roc_auc=(result["champion_metrics"] or {}).get("roc_auc"))
    for reason in result["reasons"]:
        log.info("gate reason", candidate=candidate, reason=reason)
    return result


def _overall(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    if not evaluation:
        return None
    overall = evaluation.get("overall") or {}
    return {k: v for k, v in overall.items()
            if k in ("n", "positives", "roc_auc", "pr_auc", "log_loss", "brier", "ece")}


def decision_from_record(candidate: int, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The task result from the evaluation the registry recorded."""
    decision = evaluation.get("decision") or {}
    promote = bool(decision.get("promote"))
    before = evaluation.get("champion_version")
    return {"candidate": candidate, "champion_before": before,
            "champion_after": candidate if promote else before, "promote": promote,
            "decision": "promoted" if promote else "kept",
            "reasons": list(decision.get("reasons") or []),
            "candidate_metrics": _overall(evaluation.get("candidate")) or {},
            "champion_metrics": _overall(evaluation.get("champion"))}


# --- drift -------------------------------------------------------------------------


def drift_check(config: str | None, *, backtest: str) -> dict[str, Any]:
    """Score the champion on a recent labelled window (no gate, nothing
    recorded) and report its drift against its training data. Returns
    champion, alert, reasons, drifted_features, psi, metrics; ``alert`` is
    the drift report's. No champion yet: alert False and why."""
    from lamina.batch.commands import open_registry, score_champion_command

    settings = settings_of(config)
    if open_registry(settings.registry_uri).champion() is None:
        return {"champion": None, "alert": False, "reasons": ["no champion yet"],
                "drifted_features": [], "psi": {}, "metrics": {}}
    scored = score_champion_command(backtest, registry=settings.registry_uri)
    report = scored.get("drift") or {}
    result = {"champion": scored["champion"], "alert": bool(report.get("alert")),
              "reasons": list(report.get("reasons") or []),
              "drifted_features": scored["drifted_features"], "psi": scored["psi"],
              "metrics": scored["metrics"]}
    log.info("drift", champion=result["champion"], alert=result["alert"],
             drifted=",".join(result["drifted_features"]))
    return result


# --- landing health and maintenance --------------------------------------------------


def _end_offsets(settings: Settings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(beginning, end) offsets per partition of ``topic``."""
    from kafka import TopicPartition

    from lamina import kafkaio

    consumer = kafkaio.make_consumer(settings.kafka.bootstrap_servers)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            raise HealthCheckFailed(f"topic {topic} does not exist at "
                                    f"{settings.kafka.bootstrap_servers}: `lamina infra up` "
                                    "creates it")
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return ({tp.partition: int(o) for tp, o in begin.items()},
                {tp.partition: int(o) for tp, o in end.items()})
    finally:
        consumer.close()


def landing_lag(config: str | None, *, max_lag: int | None = None) -> dict[str, Any]:
    """The lander's lag per partition of the raw topic: the broker's end
    offset minus the next offset the master dataset expects (its Delta
    transaction ids, which the lander resumes from -- not the group's
    committed offsets). HealthCheckFailed if the total is over ``max_lag``.
    Reads the present: a rerun reports the lag then."""
    from lamina.master.dataset import MasterDataset

    settings = settings_of(config)
    topic = settings.kafka.raw_topic
    _, end = _end_offsets(settings, topic)
    dataset = MasterDataset(settings.master_uri)
    landed = dataset.transaction_versions([f"lander:{topic}:{p}" for p in end]) \
        if dataset.exists() else {}
    partitions = {}
    for p, end_offset in sorted(end.items()):
        last = landed.get(f"lander:{topic}:{p}")
        partitions[str(p)] = end_offset - (0 if last is None else int(last) + 1)
    total = sum(partitions.values())
    log.info("landing lag", topic=topic, lag=total, max_lag=max_lag)
    if max_lag is not None and total > max_lag:
        raise HealthCheckFailed(f"the lander is {total} events behind on {topic} (limit "
                                f"{max_lag}): is `lamina land` running?")
    return {"topic": topic, "lag": total, "partitions": partitions}


def dead_letter_growth(config: str | None, *, logical_date: Any,
                       max_growth: int | None = None) -> dict[str, Any]:
    """Dead letters on the dead-letter topic (end minus beginning offsets)
    at this logical date, and the growth since the previous logical date's
    count (recorded per logical date, so a rerun returns the same numbers).
    HealthCheckFailed if the growth is over ``max_growth``."""
    settings = settings_of(config)
    at = to_ms(logical_date)
    topic = settings.kafka.dlq_topic

    def count() -> dict[str, Any]:
        begin, end = _end_offsets(settings, topic)
        total = sum(end[p] - begin.get(p, 0) for p in end)
        folder = Path(settings.home) / "orchestration" / "dead_letters"
        earlier = sorted(p for p in folder.glob("*.json") if p.stem < stamp(at)) \
            if folder.is_dir() else []
        previous = json.loads(earlier[-1].read_text())["dead_letters"] if earlier else None
        return {"topic": topic, "dead_letters": total, "previous": previous,
                "growth": None if previous is None else total - previous}

    result = _recorded(settings, "dead_letters", at, count)
    log.info("dead letters", topic=topic, total=result["dead_letters"],
             growth=result["growth"], max_growth=max_growth)
    if max_growth is not None and (result["growth"] or 0) > max_growth:
        raise HealthCheckFailed(
            f"{result['growth']} new dead letters on {topic} since the last check (limit "
            f"{max_growth}): read their reasons there")
    return result


def compact_master(config: str | None, *, logical_date: Any) -> dict[str, Any]:
    """Compact the master dataset's small files into a new snapshot (old
    snapshots read the same), once per logical date. Returns from_version,
    to_version, files_added, files_removed."""
    from lamina.master.dataset import MasterDataset

    settings = settings_of(config)

    def compact() -> dict[str, Any]:
        metrics = MasterDataset(settings.master_uri).compact()
        return {k: metrics.get(k) for k in ("from_version", "to_version", "numFilesAdded",
                                            "numFilesRemoved")}

    return _recorded(settings, "compaction", to_ms(logical_date), compact)


def vacuum_views(config: str | None, *, logical_date: Any,
                 retain_hours: int | None = None) -> dict[str, Any]:
    """Delete view files replaced longer than the retention ago
    (``batch_vacuum_command``), once per logical date. Returns files, bytes,
    retain_hours, views_uri."""
    from lamina.batch.vacuum import batch_vacuum_command

    settings = settings_of(config)

    def vacuum() -> dict[str, Any]:
        done = batch_vacuum_command(settings, retain_hours)
        return {k: done.get(k) for k in ("views_uri", "files", "bytes", "retain_hours")}

    return _recorded(settings, "vacuum", to_ms(logical_date), vacuum)


def speed_lag(config: str | None, *, max_lag: int | None = None) -> dict[str, Any]:
    """The speed layer's lag on the raw topic: the broker's end offsets
    minus the positions the speed layer stored with its tiles in the tile
    store (its source of truth); if the store holds none, the consumer
    group's committed offsets on the broker. ``source`` says which was read.
    HealthCheckFailed if the total is over ``max_lag`` or nothing is known
    about the speed layer."""
    from lamina.stores import open_store

    settings = settings_of(config)
    topic, group = settings.kafka.raw_topic, settings.speed.group
    _, end = _end_offsets(settings, topic)
    with open_store(settings.tile_store.kind, **settings.tile_store_options()) as store:
        stored = {p: pos for (t, p), pos in store.read_offsets(group).items() if t == topic}
    source = "tile_store"
    if not stored:
        source = "consumer_group"
        stored = _group_offsets(settings, group, topic)
    if not stored:
        raise HealthCheckFailed(f"the speed layer (group {group}) has stored no offsets for "
                                f"{topic}: is `lamina speed run` running?")
    partitions = {str(p): end_offset - int(stored.get(p, 0))
                  for p, end_offset in sorted(end.items())}
    total = sum(partitions.values())
    log.info("speed layer lag", topic=topic, group=group, source=source, lag=total,
             max_lag=max_lag)
    if max_lag is not None and total > max_lag:
        raise HealthCheckFailed(f"the speed layer is {total} events behind on {topic} (limit "
                                f"{max_lag}, read from the {source.replace('_', ' ')})")
    return {"topic": topic, "group": group, "source": source, "lag": total,
            "partitions": partitions}


def _group_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    from lamina import kafkaio

    admin = kafkaio.make_admin(settings.kafka.bootstrap_servers)
    try:
        offsets = admin.list_consumer_group_offsets(group)
    finally:
        admin.close()
    return {tp.partition: int(meta.offset) for tp, meta in offsets.items()
            if tp.topic == topic and meta.offset >= 0}


# --- online/offline consistency ------------------------------------------------------


def consistency_report(config: str | None, *, logical_date: Any,
                       days: float = 1.0) -> dict[str, Any]:
    """The consistency report of the ``days`` before the UTC midnight at or
    before ``logical_date`` (a daily run after midnight covers the day
    before), against the master snapshot pinned by the logical date, so a
    rerun compares the same scores with the same data; written to
    ``<home>/reports/consistency.json`` by a Spark step. Returns the path
    and the totals. HealthCheckFailed, after the report is written, when
    some mismatch is unexplained (the task fails visibly)."""
    from lamina.orchestration.spark_jobs import run_spark_step

    if not days > 0:
        raise ValueError(f"days must be > 0, got {days!r}")
    settings = settings_of(config)
    logical_ms = to_ms(logical_date)
    until = logical_ms // DAY_MS * DAY_MS
    since = until - round(days * DAY_MS)
    snapshot = snapshot_as_of(settings, logical_ms)
    result = run_spark_step(config, "consistency",
                            {"since_ms": since, "until_ms": until, "snapshot": snapshot})
    log.info("consistency report", since=iso(since), until=iso(until), snapshot=snapshot,
             events=result["events"], unexplained=result["unexplained"], path=result["path"])
    if result["unexplained"]:
        raise HealthCheckFailed(
            f"{result['unexplained']} online/offline feature mismatches are unexplained in "
            f"{iso(since)}..{iso(until)} (snapshot {snapshot}): see the examples with cause "
            f"'unexplained' in {result['path']}")
    return result
