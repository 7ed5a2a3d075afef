"""What the Lamina page shows: one summary of the platform's state.

Every section is a dict with ``available`` (bool) and, when false,
``reason`` (why, and what to do); a section that cannot be read never makes
the page fail. ``collect_summary(settings)`` reads the stores; the
``*_section`` builders are pure functions of the data read, so the page can
be tested from fixtures.

Files the page reads (written by scheduled steps; absent = "no report yet"):

* ``<home>/reports/drift.json`` -- the latest drift report, the shape of
  ``lamina.batch.drift.DriftReport.to_dict()`` (``features``: name ->
  ``{"psi", "status", "drifted", ...}``, ``alert``, ``reasons``), plus
  optional ``written_at`` / ``model_version``;
* ``<home>/reports/consistency.json`` -- the consistency report:
  ``{"written_at", "events", "features": {name: {"mismatch_rate",
  "mismatches", "attributed": {cause: n}}}}``, and from
  ``lamina.batch.consistency`` also ``unexplained`` (mismatches no cause
  explains), ``since`` / ``until`` and more (docs/decisions.md);
* ``<home>/speed/metrics.prom`` -- the speed layer's metrics in the
  Prometheus text format (lines ``name{labels} value``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina.config import Settings
from lamina.logs import get_logger

log = get_logger(__name__)

Section = dict[str, Any]

DRIFT_REPORT = "drift.json"
CONSISTENCY_REPORT = "consistency.json"
SPEED_METRICS = Path("speed") / "metrics.prom"


def unavailable(reason: str) -> Section:
    return {"available": False, "reason": reason}


# --- pure builders -----------------------------------------------------------


def master_section(uri: str, snapshots: Sequence[Mapping[str, Any]], rows: int,
                   files: int) -> Section:
    """``snapshots``: newest first, each ``version, timestamp_ms, operation,
    rows_added``. ``rows_total`` per version is the table's rows after that
    commit (the table is append-only, so older totals are the latest minus
    what later commits added)."""
    versions = []
    total = rows
    for snap in snapshots:
        versions.append({"version": int(snap["version"]), "operation": snap.get("operation", ""),
                         "time": iso_ms(snap.get("timestamp_ms")),
                         "rows_added": int(snap.get("rows_added", 0)), "rows_total": total})
        total -= int(snap.get("rows_added", 0))
    return {"available": True, "uri": uri, "latest_version": versions[0]["version"]
            if versions else None, "rows": rows, "files": files, "versions": versions}


def tile_store_section(kind: str, views: Mapping[str, Any | None]) -> Section:
    """``views``: group -> the store's ``PublishedView`` (or a dict of its
    fields), None when nothing is published for that group yet."""
    groups = []
    for group, view in views.items():
        if view is None:
            groups.append({"group": group, "published": False})
            continue
        fields = view if isinstance(view, Mapping) else vars(view)
        groups.append({"group": group, "published": True,
                       "batch_version": fields.get("batch_version"),
                       "cutoff": iso_ms(fields.get("cutoff_ms")),
                       "cutoff_ms": fields.get("cutoff_ms"),
                       "horizon": iso_ms(fields.get("horizon_ms")),
                       "published_at": iso_ms(fields.get("published_at_ms")),
                       "generation": fields.get("generation")})
    return {"available": True, "kind": kind, "groups": groups}


def registry_section(name: str, champion: int | None, versions: Sequence[Mapping[str, Any]],
                     audit: Sequence[Mapping[str, Any]],
                     evaluations: Mapping[int, Mapping[str, Any]]) -> Section:
    """The champion and every alias move (promote, rollback) and gate
    refusal, newest first, each with its reason and the metrics of both
    models: the versions' own (training) metrics, and where the gate judged
    them, both models' backtest metrics on the same window.

    ``versions``: ``ModelRegistry.list_versions()``; ``audit``: the audit
    entries as dicts (``ModelRegistry.audit_log()``); ``evaluations``:
    version -> its recorded evaluation (the ``lamina.evaluation`` tag)."""
    by_version = {int(v["version"]): v for v in versions}

    def metrics_of(version: int | None) -> dict[str, Any] | None:
        if version is None or version not in by_version:
            return None
        return dict(by_version[version].get("metrics") or {})

    moves = []
    for entry in reversed(list(audit)):
        if entry["action"] not in ("promote", "rollback", "reject"):
            continue
        version, previous = int(entry["version"]), entry.get("previous")
        move: dict[str, Any] = {
            "action": entry["action"], "version": version, "previous": previous,
            "reason": entry.get("reason", ""), "time": entry.get("time", ""),
            "actor": entry.get("actor", ""),
            "metrics": metrics_of(version), "previous_metrics": metrics_of(previous)}
        evaluation = evaluations.get(version)
        if entry["action"] != "rollback" and evaluation:
            move["backtest"] = {
                "candidate": _overall(evaluation.get("candidate")),
                "champion_version": evaluation.get("champion_version"),
                "champion": _overall(evaluation.get("champion")),
            }
        moves.append(move)
    return {"available": True, "model": name, "champion": champion,
            "champion_metrics": metrics_of(champion), "versions": len(by_version),
            "history": moves}


def _overall(evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not evaluation:
        return None
    overall = evaluation.get("overall", evaluation)
    return {k: v for k, v in overall.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def drift_section(report: Mapping[str, Any] | None, path: Path) -> Section:
    """Per-feature PSI and status of the latest drift report, most drifted
    first."""
    if report is None:
        return unavailable(f"no drift report yet ({path} is written by the drift check)")
    features = []
    for name, values in dict(report.get("features") or {}).items():
        features.append({"feature": name, "psi": values.get("psi"),
                         "status": values.get("status", ""),
                         "drifted": bool(values.get("drifted"))})
    features.sort(key=lambda f: (not f["drifted"], -(f["psi"] or 0.0), f["feature"]))
    return {"available": True, "path": str(path), "alert": bool(report.get("alert")),
            "reasons": list(report.get("reasons") or []),
            "written_at": report.get("written_at"), "model_version": report.get("model_version"),
            "features": features}


def consistency_section(report: Mapping[str, Any] | None, path: Path) -> Section:
    """Per-feature mismatch rates between the speed layer's logged features
    and the offline computation, with the causes they were attributed to."""
    if report is None:
        return unavailable(f"no report yet: the consistency-report DAG writes {path}")
    features = []
    for name, values in sorted(dict(report.get("features") or {}).items()):
        features.append({"feature": name, "mismatch_rate": values.get("mismatch_rate"),
                         "mismatches": values.get("mismatches"),
                         "attributed": dict(values.get("attributed") or {})})
    return {"available": True, "path": str(path), "written_at": report.get("written_at"),
            "events": report.get("events"), "features": features,
            "unexplained": report.get("unexplained"),
            "since": report.get("since"), "until": report.get("until")}


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for each sample line of the Prometheus text
    format (comments and malformed lines skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.rpartition("}") if "}" in line else ("", "", line)
        if name:
            key, value = name + "}", rest.split()
        else:
            parts = line.split()
            key, value = parts[0], parts[1:]
        if not value:
            continue
        try:
            samples[key.strip()] = float(value[0])
        except ValueError:
            continue
    return samples


def speed_section(metrics: Mapping[str, float] | None, metrics_path: Path,
                  dlq_topic: str, dlq_count: int | None, dlq_reason: str) -> Section:
    """Lag and dead-letter figures of the speed layer's metrics file, and
    the dead-letter topic's message count from the broker."""
    section: Section = {"available": True, "metrics_path": str(metrics_path),
                        "dlq_topic": dlq_topic, "dlq_messages": dlq_count,
                        "dlq_reason": dlq_reason}
    if metrics is None:
        section["metrics"] = None
        section["metrics_reason"] = (f"the speed layer has not written {metrics_path} "
                                     "(run `lamina speed run`)")
    else:
        section["metrics"] = {k: v for k, v in sorted(metrics.items())
                              if any(w in k for w in ("lag", "dead", "dlq", "invalid"))}
        section["metrics_reason"] = ""
    return section


def iso_ms(ms: Any) -> str | None:
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))


# --- collectors (read the stores; never raise) --------------------------------


def _guarded(name: str, read: Callable[[], Section]) -> Section:
    try:
        return read()
    except Exception as exc:  # a section that cannot be read says why
        log.warning("summary section unavailable", section=name, error=repr(exc))
        return unavailable(f"{type(exc).__name__}: {exc}")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return dict(json.loads(path.read_text()))


def read_master(settings: Settings) -> Section:
    from lamina.master.dataset import MasterDataset

    dataset = MasterDataset(settings.master_uri)
    if not dataset.exists():
        return unavailable(f"no master dataset at {settings.master_uri} yet (land events: "
                           "`lamina land` or `lamina import`)")
    info = dataset.info()
    snapshots = [vars(s) for s in dataset.snapshots(20)]
    return master_section(settings.master_uri, snapshots, int(info["rows"]), int(info["files"]))


def read_tile_store(settings: Settings) -> Section:
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.stores import open_store

    options = settings.tile_store_options()
    if settings.tile_store.kind == "sqlite" and not Path(options["path"]).exists():
        return unavailable(f"no tile store at {options['path']} yet (publish a batch view: "
                           "`lamina batch publish`)")
    store = open_store(settings.tile_store.kind, **options)
    try:
        view = store.current_view(CARD_VIEWS.name)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return tile_store_section(settings.tile_store.kind, {CARD_VIEWS.name: view})


def read_registry(settings: Settings) -> Section:
    from dataclasses import asdict

    from lamina.models.registry import EVALUATION_TAG, ModelRegistry

    if settings.registry.tracking_uri:
        registry = ModelRegistry(settings.registry.tracking_uri,
                                 name=settings.registry.model_name)
    else:
        if not (settings.home / "mlflow.db").exists():
            return unavailable(f"no model registry at {settings.home / 'mlflow.db'} yet (train "
                               "a model: `lamina train`)")
        registry = ModelRegistry.local(settings.home, name=settings.registry.model_name)
    versions = registry.list_versions()
    audit = [asdict(e) for e in registry.audit_log()]
    evaluations: dict[int, dict[str, Any]] = {}
    for entry in audit:
        version = int(entry["version"])
        if entry["action"] in ("promote", "reject") and version not in evaluations:
            tags = registry.client.get_model_version(registry.name, str(version)).tags or {}
            if EVALUATION_TAG in tags:
                evaluations[version] = json.loads(tags[EVALUATION_TAG])
    return registry_section(registry.name, registry.champion(), versions, audit, evaluations)


def read_drift(settings: Settings) -> Section:
    path = settings.reports_dir / DRIFT_REPORT
    return drift_section(_read_json(path), path)


def read_consistency(settings: Settings) -> Section:
    path = settings.reports_dir / CONSISTENCY_REPORT
    return consistency_section(_read_json(path), path)


def dlq_count(bootstrap_servers: str, topic: str) -> tuple[int | None, str]:
    """Messages in the dead-letter topic (end minus beginning offsets over
    its partitions), or (None, why not)."""
    from lamina.kafkaio import broker_reachable, make_consumer

    if not broker_reachable(bootstrap_servers, timeout_s=0.5):
        return None, f"the broker at {bootstrap_servers} is not reachable (`lamina infra up`)"
    consumer = make_consumer(bootstrap_servers)
    try:
        from kafka import TopicPartition

        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return None, f"topic {topic} does not exist on {bootstrap_servers}"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        end, start = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        return sum(int(end[tp]) - int(start[tp]) for tp in tps), ""
    finally:
        consumer.close()


def read_speed(settings: Settings) -> Section:
    path = settings.home / SPEED_METRICS
    metrics = parse_prometheus(path.read_text()) if path.exists() else None
    try:
        count, reason = dlq_count(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
    except Exception as exc:
        count, reason = None, f"{type(exc).__name__}: {exc}"
    return speed_section(metrics, path, settings.kafka.dlq_topic, count, reason)


READERS: Mapping[str, Callable[[Settings], Section]] = {
    "master": read_master,
    "tile_store": read_tile_store,
    "registry": read_registry,
    "drift": read_drift,
    "consistency": read_consistency,
    "speed": read_speed,
}


def collect_summary(settings: Settings, sections: Iterable[str] | None = None) -> dict[str, Any]:
    """Every section of the page (or those named), each read on its own: a
    failure in one is that section's ``reason``, never an exception."""
    names = list(READERS) if sections is None else list(sections)
    out: dict[str, Any] = {"generated_at": iso_ms(time.time() * 1000),
                           "home": str(settings.home.resolve())}
    for name in names:
        out[name] = _guarded(name, lambda name=name: READERS[name](settings))  # type: ignore[misc]
    return out
