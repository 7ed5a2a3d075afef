"""The consistency report: the features the speed layer logged with its
scores against the offline point-in-time features of the same events,
feature by feature, bit for bit, every mismatch attributed (invariant 6).

Inputs
------
* The score records of ``scores.v1`` whose scored event's time is in
  ``[since_ms, until_ms)``, read from the beginning of the topic to its end
  offsets at the start of the read, with the documented reader rule: one
  record per ``(event_id, model_version)`` (the first read; the speed layer
  is at-least-once and its copies are the same score from the same
  features). Undecodable records are counted, not compared.
* The master dataset (one snapshot, default the latest): the offline
  features are ``batch.training_set.point_in_time_features`` over
  ``contract_events`` -- the training-set builder's own computation, not a
  second one -- for the query events in the same range.

Comparison: a feature mismatches when the two doubles differ in any bit
(``float.hex``: ``0.0`` and ``-0.0`` differ). A scored event the master does
not hold yet (not landed) is counted in ``not_landed`` and not compared.

Attribution (derived from the data, per mismatched score)
---------------------------------------------------------
For the scored event ``S`` (time ``t``, position = the Kafka topic,
partition and offset the lander recorded for it, batch cutoff ``T`` and
batch version ``V`` from the score record) every event ``E`` of the same
entity with ``event_time < t`` that the offline features count is classed:

* ``batch_cutoff`` -- ``E.event_time < T`` but ``E`` is not in master
  version ``V``: the batch views the speed layer read did not hold it, and
  the speed layer never applies events before the cutoff (they are the
  next batch run's);
* ``late_arrival`` -- ``E.event_time >= T`` and ``E`` reached the stream
  after ``S``: a higher offset in ``S``'s partition (or, in another topic or
  partition, where offsets do not compare, landed after ``S`` was scored);
* ``beyond_allowed_lateness`` -- ``E`` arrived before ``S`` but the speed
  layer's rule refused it: replaying the entity's events at or after ``T``
  in arrival order, ``E.event_time`` was more than the allowed lateness
  older than the newest event time applied before it;
* otherwise the speed layer saw it.

The features are then recomputed with the same per-entity function the
training set runs (``entity_rows``) without the events of each set of
causes (single causes first, then pairs, then all three); a mismatched
feature is attributed to the first set whose recomputation equals the
logged value bit for bit (``late_arrival``, or e.g.
``batch_cutoff+late_arrival``). A feature no set reproduces is
``unexplained``, and so is every mismatch of a score when recomputing with
all events does not give the offline value (a bug here, said in the log).
``unexplained`` is zero in normal operation; anything else means the
online and offline computations differ (or a record was altered).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from lamina.errors import ConfigError
from lamina.logs import get_logger
from lamina.schemas.card_views import CARD_FRAUD
from lamina.schemas.contract import FeatureContract
from lamina.schemas.scores import ScoreRecord, ScoreRecordError, decode_score

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = get_logger(__name__)

BATCH_CUTOFF: Final = "batch_cutoff"
LATE_ARRIVAL: Final = "late_arrival"
BEYOND_LATENESS: Final = "beyond_allowed_lateness"
UNEXPLAINED: Final = "unexplained"
#: The causes, in the order their sets are tried.
CAUSES: Final = (LATE_ARRIVAL, BEYOND_LATENESS, BATCH_CUTOFF)
#: Mismatched scores listed one by one in the report, each with its
#: mismatched features (the rest are counted).
MAX_EXAMPLES: Final = 50
REPORT_NAME: Final = "consistency.json"
#: Seconds of empty polls (of 1 s) in a row after which reading the scores
#: gives up.
_STALL_S: Final = 30.0


def bits(value: float) -> str:
    """The exact double (``float.hex``): equal iff the same bits, so 0.0 and
    -0.0 differ while every NaN-free value round-trips."""
    return float(value).hex()


@dataclass(frozen=True, order=True)
class Position:
    """Where an event reached the stream: the Kafka record the lander
    landed (topic, partition, offset) and when it landed it (epoch ms)."""

    topic: str
    partition: int
    offset: int
    ingest_ms: int


@dataclass(frozen=True)
class HistoryEvent:
    """One landed event of an entity: the row as the training set's
    per-entity function reads it, where it came from, and whether the
    batch views a score used held it (master version membership)."""

    row: Mapping[str, Any]
    position: Position
    in_batch_versions: frozenset[int] = frozenset()

    @property
    def event_id(self) -> str:
        return str(self.row["event_id"])

    @property
    def event_time(self) -> int:
        return int(self.row["event_time"])


def arrived_before(event: Position, scored: Position, scored_at_ms: int) -> bool:
    """True if ``event`` reached the stream before the scored event: by
    offset in the same topic-partition; elsewhere (offsets do not compare)
    when it landed before the score was made."""
    if (event.topic, event.partition) == (scored.topic, scored.partition):
        return event.offset < scored.offset
    return event.ingest_ms < scored_at_ms


def unseen_online(score: ScoreRecord, scored: HistoryEvent, history: Sequence[HistoryEvent], *,
                  allowed_lateness_ms: int) -> dict[str, str]:
    """event_id -> cause, for every event of ``history`` (the entity's
    landed events, any order) with ``event_time`` before the score's that
    the speed layer could not have counted in ``score``'s features (module
    docstring). Events it saw are not in the result."""
    t, cutoff = score.event_time, score.batch_cutoff
    version = score.batch_version
    causes: dict[str, str] = {}
    newest: int | None = None
    stream = sorted((e for e in history if e.event_id != scored.event_id
                     and (cutoff is None or e.event_time >= cutoff)),
                    key=lambda e: e.position)
    # Replay the speed layer's lateness rule over what arrived before S.
    for e in stream:
        if not arrived_before(e.position, scored.position, score.scored_at):
            if e.event_time < t:
                causes[e.event_id] = LATE_ARRIVAL
            continue
        if newest is not None and e.event_time < newest - allowed_lateness_ms:
            if e.event_time < t:
                causes[e.event_id] = BEYOND_LATENESS
            continue
        newest = e.event_time if newest is None else max(newest, e.event_time)
    if cutoff is not None:
        for e in history:
            if e.event_time < min(cutoff, t) and e.event_id != scored.event_id \
                    and version not in e.in_batch_versions:
                causes[e.event_id] = BATCH_CUTOFF
    return causes


def recompute(contract: FeatureContract, scored: HistoryEvent,
              history: Iterable[HistoryEvent], leave_out: set[str]) -> dict[str, float]:
    """The scored event's vector from ``history`` without the events in
    ``leave_out``, by the training set's per-entity function."""
    from lamina.batch.training_set import entity_rows

    t = scored.event_time
    rows = [e.row for e in history if e.event_id not in leave_out and e.event_time <= t]
    if scored.event_id not in {str(r["event_id"]) for r in rows}:
        rows.append(scored.row)
    for row in entity_rows(contract, rows, t, t + 1):
        if row["event_id"] == scored.event_id:
            return {f: row[f] for f in contract.features}
    raise ValueError(f"event {scored.event_id} gave no feature row")  # a bug: it is a query event


def attribute(contract: FeatureContract, score: ScoreRecord, offline: Mapping[str, float],
              scored: HistoryEvent, history: Sequence[HistoryEvent], *,
              allowed_lateness_ms: int) -> dict[str, str]:
    """feature -> cause for each feature of ``score`` that differs from
    ``offline`` in any bit (empty when none does); see the module doc."""
    mismatched = [f for f in contract.features
                  if bits(score.features[f]) != bits(offline[f])]
    if not mismatched:
        return {}
    if any(bits(v) != bits(offline[f])
           for f, v in recompute(contract, scored, history, set()).items()):
        log.warning("the offline features could not be recomputed from the entity's events",
                    event_id=score.event_id, entity=score.entity)
        return dict.fromkeys(mismatched, UNEXPLAINED)
    unseen = unseen_online(score, scored, history, allowed_lateness_ms=allowed_lateness_ms)
    present = [c for c in CAUSES if c in unseen.values()]
    out: dict[str, str] = {}
    left = list(mismatched)
    for size in range(1, len(present) + 1):
        for causes in itertools.combinations(present, size):
            if not left:
                break
            leave_out = {i for i, c in unseen.items() if c in causes}
            vector = recompute(contract, scored, history, leave_out)
            for f in list(left):
                if bits(vector[f]) == bits(score.features[f]):
                    out[f] = "+".join(sorted(causes))
                    left.remove(f)
    out.update(dict.fromkeys(left, UNEXPLAINED))
    return out


# --- reading ---------------------------------------------------------------------


@dataclass
class ScoresRead:
    """The deduplicated score records of a range and what was left out."""

    records: list[ScoreRecord] = field(default_factory=list)
    read: int = 0
    undecodable: int = 0
    duplicates: int = 0
    outside_range: int = 0


def read_scores(bootstrap: str, topic: str, *, since_ms: int, until_ms: int,
                contract: FeatureContract = CARD_FRAUD) -> ScoresRead:
    """The score records of ``topic`` whose event time is in ``[since_ms,
    until_ms)``, one per ``(event_id, model_version)``: read from the
    beginning to the end offsets taken when the read starts (records
    produced meanwhile wait for the next report)."""
    from lamina import kafkaio
    from lamina.consumer import read_to_end

    consumer = kafkaio.make_consumer(bootstrap, group_id=None, consumer_timeout_ms=1000)
    out = ScoresRead()
    try:
        if not consumer.partitions_for_topic(topic):
            raise ConfigError(f"the scores topic {topic!r} does not exist on {bootstrap}: "
                              "start the speed layer with scoring on ([speed] scoring), or "
                              "set [kafka] scores_topic")
        seen: set[tuple[str, int]] = set()
        for message in read_to_end(consumer, topic, stall_s=_STALL_S, poll_timeout_ms=1000,
                                   max_records=10_000):
            out.read += 1
            try:
                record = decode_score(message.value, features=contract.features)
            except ScoreRecordError as exc:
                out.undecodable += 1
                log.warning("score record not decodable", topic=topic,
                            partition=message.partition, offset=message.offset,
                            reason=exc.reason)
                continue
            if not since_ms <= record.event_time < until_ms:
                out.outside_range += 1
                continue
            key = (record.event_id, record.model_version)
            if key in seen:
                out.duplicates += 1
                continue
            seen.add(key)
            out.records.append(record)
    finally:
        consumer.close()
    return out


def _history(spark: SparkSession, master_uri: str, snapshot: int, contract: FeatureContract,
             entities: Sequence[str], end_ms: int, batch_versions: Iterable[int]
             ) -> dict[str, list[HistoryEvent]]:
    """The landed events (each event_id once, as the training set reads
    them) before ``end_ms`` of ``entities``, with positions and master
    version membership."""
    from pyspark.sql import functions as F

    from lamina.batch import events as batch_events
    from lamina.batch.training_set import contract_events, event_types

    master = batch_events.read_master(spark, master_uri, snapshot)
    wanted = F.col("entity_key").isin(list(entities))
    typed = contract_events(master, contract).where(wanted & (F.col("event_time") < end_ms))
    fields = sorted(set(contract.payload_fields()) & set(typed.columns))
    kinds = event_types(contract)
    landed = batch_events.first_of_each_event_id(
        master.where(F.col("event_type").isin(list(kinds)) & wanted)).select(
        "event_id", "kafka_topic", "kafka_partition", "kafka_offset",
        F.unix_millis("ingest_time").alias("ingest_ms"))
    extra = ["event_type"] if "event_type" in typed.columns else []
    rows = typed.select("event_id", "event_time", "entity_key", *fields, *extra) \
        .join(landed, "event_id").collect()
    member: dict[str, set[int]] = defaultdict(set)
    for version in sorted(set(batch_versions)):
        if version > snapshot:
            continue  # not committed in this snapshot's history: nothing to read
        older = batch_events.read_master(spark, master_uri, version)
        for r in older.where(wanted).select("event_id").distinct().collect():
            member[r["event_id"]].add(version)
    out: dict[str, list[HistoryEvent]] = defaultdict(list)
    for r in rows:
        d = r.asDict()
        row = {"event_id": d["event_id"], "event_time": int(d["event_time"]),
               contract.entity_key: d["entity_key"], **{f: d[f] for f in fields},
               **{c: d[c] for c in extra}}
        out[str(d["entity_key"])].append(HistoryEvent(
            row, Position(d["kafka_topic"], int(d["kafka_partition"]), int(d["kafka_offset"]),
                          int(d["ingest_ms"])), frozenset(member.get(d["event_id"], ()))))
    return out


def _offline(spark: SparkSession, master_uri: str, snapshot: int, contract: FeatureContract,
             since_ms: int, until_ms: int, event_ids: Sequence[str]
             ) -> dict[str, dict[str, float]]:
    """event_id -> the training set's feature vector, for ``event_ids``."""
    from lamina.batch import events as batch_events
    from lamina.batch.training_set import contract_events, point_in_time_features

    master = batch_events.read_master(spark, master_uri, snapshot)
    frame = point_in_time_features(contract_events(master, contract), contract,
                                   start_ms=since_ms, end_ms=until_ms)
    ids = spark.createDataFrame([(i,) for i in sorted(set(event_ids))], "event_id string")
    from pyspark.sql import functions as F

    picked = frame.join(F.broadcast(ids), "event_id").select("event_id", *contract.features)
    return {r["event_id"]: {f: float(r[f]) for f in contract.features}
            for r in picked.collect()}


# --- the report ------------------------------------------------------------------


def build_report(scores: ScoresRead, offline: Mapping[str, Mapping[str, float]],
                 attributed: Mapping[tuple[str, int], Mapping[str, str]],
                 contract: FeatureContract, /, *,
                 examples: Sequence[Mapping[str, Any]] = (),
                 **header: Any) -> dict[str, Any]:
    """The report's JSON object from the compared records (pure): per
    feature the mismatch rate over the compared records, the mismatches and
    their causes; totals ``events`` (compared), ``mismatched_events``,
    ``unexplained`` (feature mismatches no cause explains) and ``causes``."""
    compared = [s for s in scores.records if s.event_id in offline]
    features: dict[str, dict[str, Any]] = {
        f: {"mismatches": 0, "mismatch_rate": 0.0, "attributed": Counter()}
        for f in contract.features}
    causes: Counter[str] = Counter()
    for s in compared:
        for f, cause in attributed.get((s.event_id, s.model_version), {}).items():
            features[f]["mismatches"] += 1
            features[f]["attributed"][cause] += 1
            causes[cause] += 1
    for values in features.values():
        values["mismatch_rate"] = (values["mismatches"] / len(compared)) if compared else 0.0
        values["attributed"] = dict(sorted(values["attributed"].items()))
    return {
        **header,
        "events": len(compared),
        "records_read": scores.read, "undecodable": scores.undecodable,
        "duplicate_records": scores.duplicates,
        "not_landed": len(scores.records) - len(compared),
        "mismatched_events": sum(1 for s in compared
                                 if attributed.get((s.event_id, s.model_version))),
        "unexplained": causes.get(UNEXPLAINED, 0),
        "causes": dict(sorted(causes.items())),
        "features": features,
        "examples": list(examples)[:MAX_EXAMPLES],
    }


def consistency_report(spark: SparkSession, *, bootstrap: str, scores_topic: str,
                       master_uri: str, since_ms: int, until_ms: int,
                       allowed_lateness_ms: int, snapshot: int | None = None,
                       contract: FeatureContract = CARD_FRAUD) -> dict[str, Any]:
    """Compare and attribute the scores of ``[since_ms, until_ms)`` (module
    doc) against master ``snapshot`` (None: the latest); returns the
    report's JSON object (not written: :func:`write_report`)."""
    from lamina.batch.evaluate import iso_utc
    from lamina.batch.training_set import resolve_snapshot

    if since_ms >= until_ms:
        raise ConfigError(f"--since {iso_utc(since_ms)} must be before --until "
                          f"{iso_utc(until_ms)}")
    began = time.monotonic()
    snapshot = resolve_snapshot(master_uri, snapshot)
    scores = read_scores(bootstrap, scores_topic, since_ms=since_ms, until_ms=until_ms,
                         contract=contract)
    offline = (_offline(spark, master_uri, snapshot, contract, since_ms, until_ms,
                        [s.event_id for s in scores.records]) if scores.records else {})
    suspects = [s for s in scores.records if s.event_id in offline
                and any(bits(s.features[f]) != bits(offline[s.event_id][f])
                        for f in contract.features)]
    attributed: dict[tuple[str, int], dict[str, str]] = {}
    examples: list[dict[str, Any]] = []
    if suspects:
        histories = _history(spark, master_uri, snapshot, contract,
                             sorted({s.entity for s in suspects}), until_ms,
                             {s.batch_version for s in suspects if s.batch_version is not None})
        for s in suspects:
            history = histories.get(s.entity, [])
            scored = next((e for e in history if e.event_id == s.event_id), None)
            if scored is None:  # landed under another entity: the records disagree
                causes = dict.fromkeys((f for f in contract.features if bits(
                    s.features[f]) != bits(offline[s.event_id][f])), UNEXPLAINED)
            else:
                causes = attribute(contract, s, offline[s.event_id], scored, history,
                                   allowed_lateness_ms=allowed_lateness_ms)
            attributed[(s.event_id, s.model_version)] = causes
            examples.append({"event_id": s.event_id, "model_version": s.model_version,
                             "entity": s.entity, "event_time": iso_utc(s.event_time),
                             "unexplained": sum(c == UNEXPLAINED for c in causes.values()),
                             "features": {f: {"online": s.features[f],
                                              "offline": offline[s.event_id][f],
                                              "cause": cause} for f, cause in causes.items()}})
    examples.sort(key=lambda e: (not e["unexplained"], e["event_time"], e["event_id"]))
    report = build_report(
        scores, offline, attributed, contract, examples=examples,
        written_at=iso_utc(int(time.time() * 1000)), since=iso_utc(since_ms),
        until=iso_utc(until_ms), since_ms=since_ms, until_ms=until_ms, snapshot=snapshot,
        scores_topic=scores_topic, allowed_lateness_ms=allowed_lateness_ms,
        contract=contract.name, seconds=round(time.monotonic() - began, 1))
    log.info("consistency report", events=report["events"],
             mismatched_events=report["mismatched_events"], unexplained=report["unexplained"],
             not_landed=report["not_landed"], snapshot=snapshot, topic=scores_topic)
    return report


def write_report(report: Mapping[str, Any], reports_dir: Path) -> Path:
    """Write ``report`` to ``reports_dir/consistency.json`` atomically (a
    temporary file in the same folder, then a rename): a reader sees the
    old report or the new one, never half of one."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / REPORT_NAME
    partial = reports_dir / f".{REPORT_NAME}.{os.getpid()}.partial"
    partial.write_text(json.dumps(report, indent=2, sort_keys=False))
    partial.replace(path)
    return path


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A short table for a terminal: one line per feature with mismatches
    (all features when there are none), then the totals."""
    lines = [f"{'feature':<28} {'mismatch rate':>13} {'mismatches':>10}  attributed to"]
    for name, values in report["features"].items():
        causes = ", ".join(f"{c}={n}" for c, n in values["attributed"].items()) or "-"
        lines.append(f"{name:<28} {values['mismatch_rate']:>13.4%} {values['mismatches']:>10}"
                     f"  {causes}")
    lines.append(f"{report['events']} scores compared ({report['since']} to {report['until']},"
                 f" snapshot {report['snapshot']}), {report['mismatched_events']} with "
                 f"mismatches, {report['unexplained']} unexplained, {report['not_landed']} not "
                 "landed yet")
    return lines


def consistency_command(settings: Any, *, since_ms: int, until_ms: int,
                        snapshot: int | None = None, master: str | None = None
                        ) -> tuple[dict[str, Any], Path]:
    """The report of ``[since_ms, until_ms)`` with the settings' broker,
    scores topic, master dataset and allowed lateness, written to
    ``<home>/reports/consistency.json``; returns it and the path. Uses the
    process's Spark session if one is active (a test's, a notebook's) and
    otherwise starts one from the ``[spark]`` settings and stops it."""
    from pyspark.sql import SparkSession

    from lamina.batch.spark import spark_session

    active = SparkSession.getActiveSession()
    spark = active or spark_session(master or settings.spark.master,
                                    app_name="lamina-consistency",
                                    extra_conf=settings.spark.conf)
    try:
        report = consistency_report(
            spark, bootstrap=settings.kafka.bootstrap_servers,
            scores_topic=settings.kafka.scores_topic, master_uri=settings.master_uri,
            since_ms=since_ms, until_ms=until_ms,
            allowed_lateness_ms=settings.speed.allowed_lateness_ms, snapshot=snapshot)
    finally:
        if active is None:
            spark.stop()
    return report, write_report(report, settings.reports_dir)
