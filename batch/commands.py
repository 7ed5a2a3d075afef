"""What the `lamina train`, `lamina evaluate` and `lamina models` commands
(and the retraining DAG's tasks) call. Each function does one thing, takes
plain values (paths, numbers, a registry location), returns a JSON-able dict,
and raises a LaminaError with an actionable message when it cannot.

- `train_command`: training set (Parquet file/folder or Delta table) ->
  saved model (+ drift reference profile) -> registered version with its
  lineage. Idempotent: the model folder and the registry entry are keyed by
  a hash of (snapshot, code version, features, params, seed, workers), so a
  retried task returns what the first attempt made.
- `evaluate_command`: a registered candidate and the champion are scored on
  the *same* backtest rows; the gate decides; the decision (promote, or
  reject with reasons) is recorded in the registry (not in a dry run). Also
  reports the drift of the backtest window (feature and score PSI with
  warm-up, performance) against the candidate's and the champion's training
  data.
- `score_champion_command`: the champion alone on a backtest window
  (metrics, slices, drift); no gate, nothing recorded.
- `models_command`: list / show / champion / audit / promote / rollback.

`registry` everywhere is a `ModelRegistry`, a tracking URI
(`sqlite:///...`, `http://...`) or a Lamina home directory (the embedded
`<home>/mlflow.db`). `contract` everywhere is the
`lamina.schemas.contract.FeatureContract` the model reads (default: the
card-fraud one): its feature list is what a model is trained on unless
`features` are given, its slices are what an evaluation reports and gates
on unless `slice_columns` are given, and its windows are what drift warms
up with.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina.batch.model import TrainingError, TrainParams
from lamina.lineage import code_version
from lamina.logs import get_logger
from lamina.models.registry import ModelRegistry, RegistryError
from lamina.models.saved_model import has_model_card, load_model, model_card, save_model
from lamina.models.scoring import to_pandas
from lamina.schemas.card_views import CARD_FRAUD
from lamina.schemas.contract import FeatureContract

log = get_logger(__name__)


def open_registry(registry: ModelRegistry | str | Path) -> ModelRegistry:
    if isinstance(registry, ModelRegistry):
        return registry
    if "://" in str(registry):
        return ModelRegistry(str(registry))
    return ModelRegistry.local(Path(registry))


def read_table(source: Any) -> Any:
    """A pandas DataFrame from a DataFrame, a pyarrow Table, a Parquet file
    or folder, or a Delta table folder (latest version)."""
    if not isinstance(source, str | Path):
        return to_pandas(source)
    path = Path(source)
    if (path / "_delta_log").is_dir():
        from deltalake import DeltaTable

        return DeltaTable(str(path)).to_pyarrow_table().to_pandas()
    if not path.exists():
        raise TrainingError(f"{path} does not exist")
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pandas()


def data_fingerprint(frame: Any) -> str:
    """A hash of which rows a training set holds and their labels, independent
    of row order: two training sets from the same snapshot (e.g. different
    windows) must not share a run key."""
    import pandas as pd

    cols = [c for c in ("event_id", "label") if c in frame.columns]
    if not cols:
        cols = list(frame.columns)
    hashed = pd.util.hash_pandas_object(frame[cols], index=False).sort_values()
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


def run_key(snapshot_id: Any, features: Sequence[str], params: TrainParams, seed: int,
            workers: int, code: str, data: str = "") -> str:
    """A stable id for one training run's inputs (for idempotent retries):
    the snapshot, the training data's fingerprint, features, parameters, seed,
    worker count and code version."""
    payload = json.dumps({"snapshot_id": snapshot_id, "features": list(features),
                          "params": params.to_dict(), "seed": seed, "workers": workers,
                          "code": code, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def training_set_snapshot(training_set: Any, snapshot_id: int | None) -> int:
    """The master-dataset snapshot a training set was built from.

    A training set written by `lamina training-set` (`write_training_set`)
    records it in its lineage (`read_lineage`): that is the answer, and a
    `snapshot_id` that differs is refused (TrainingError naming both). A
    frame, or a path without lineage, needs `snapshot_id`. `snapshot_id`
    must be an integer >= 0 (a Delta table version).
    """
    from lamina.batch.training_set import read_lineage
    from lamina.errors import ConfigError

    if snapshot_id is not None and (isinstance(snapshot_id, bool)
                                    or not isinstance(snapshot_id, int) or snapshot_id < 0):
        raise TrainingError(
            f"the snapshot must be a master-dataset version (an integer >= 0), "
            f"got {snapshot_id!r}")
    recorded = None
    if isinstance(training_set, str | Path):
        try:
            recorded = read_lineage(str(training_set)).snapshot
        except ConfigError:  # no lineage file or commit: not built by lamina training-set
            recorded = None
    if recorded is not None:
        if snapshot_id is not None and snapshot_id != recorded:
            raise TrainingError(
                f"snapshot {snapshot_id} was given, but {training_set} was built from master "
                f"snapshot {recorded} (its lineage says so): leave --snapshot out, or give "
                f"{recorded}")
        return int(recorded)
    if snapshot_id is None:
        where = training_set if isinstance(training_set, str | Path) else "the training frame"
        raise TrainingError(
            f"{where} has no training-set lineage (written by `lamina training-set`), so the "
            "master snapshot it was built from is unknown: give it with --snapshot N")
    return snapshot_id


def train_command(
    training_set: Any,
    *,
    models_dir: str | Path,
    registry: ModelRegistry | str | Path | None = None,
    snapshot_id: int | None = None,
    features: Sequence[str] | None = None,
    params: TrainParams | dict[str, Any] | None = None,
    seed: int = 42,
    workers: int = 0,
    spark: Any = None,
    spark_master: str = "local[2]",
    spark_conf: Mapping[str, str] | None = None,
    training_window: tuple[int, int] | None = None,
    contract: FeatureContract = CARD_FRAUD,
) -> dict[str, Any]:
    """Train a model on a training set and (given a registry) register it.

    `training_set`: a frame or a path (see `read_table`) with the features,
    `label`, `event_time`, `event_id`. `snapshot_id`: the master-dataset
    version the training set was built from (recorded in the lineage as an
    int); by default the one in the training set's own lineage, and refused
    if it differs from it (see `training_set_snapshot`).
    `workers=0` trains in this process; `workers>=1` on that many Spark
    barrier tasks (`spark`, or a session on `spark_master` with `spark_conf`
    started only if the model is not trained yet, and stopped before this
    returns unless it was already running in this process). The model is
    saved under `models_dir/<run key>/`; the training window defaults to the
    training set's event-time range. `features` default to
    `contract.features`; the registered lineage names the contract and its
    fingerprint (`extra`). Returns model_dir, version (or None), run_key,
    history, rows, seconds.
    """
    from lamina.batch import drift
    from lamina.batch.model import train_local

    began = time.perf_counter()
    features = tuple(features or contract.features)
    p = TrainParams.from_dict(params)
    code = code_version()
    frame = read_table(training_set)
    snapshot_id = training_set_snapshot(training_set, snapshot_id)
    key = run_key(snapshot_id, features, p, seed, workers, code, data_fingerprint(frame))
    target = Path(models_dir) / key
    if training_window is None:
        if "event_time" not in frame.columns or frame.empty:
            raise TrainingError("give training_window: the training set has no event_time")
        t = frame["event_time"]
        training_window = (int(t.min()), int(t.max()) + 1)

    history: dict[str, list[float]] = {}
    if has_model_card(target):
        log.info("model already trained", model_dir=target, run_key=key)
        history = model_card(target).get("history", {})
    elif workers == 0:
        model, history = train_local(frame, features, p, seed)
        save_model(model, target, features=features, params=p.to_dict(), seed=seed,
                   extra={"history": history, "snapshot_id": snapshot_id, "run_key": key})
    else:
        from lamina.batch.distributed import train_distributed

        session, own = spark, False
        if session is None:
            from pyspark.sql import SparkSession

            from lamina.batch.spark import spark_session

            own = SparkSession.getActiveSession() is None
            session = spark_session(spark_master, app_name="lamina-train",
                                    extra_conf=spark_conf)
        try:
            result = train_distributed(session, frame, features, p, seed, num_workers=workers,
                                       model_dir=target)
        finally:
            if own:
                session.stop()
        history = result.history
    # The drift reference (covered feature bins, training scores and AUC).
    drift.save_model_reference(target, frame, features, span=training_window,
                               contract=contract)

    rows, positives = len(frame), int(frame["label"].sum())
    metrics = {"train_rows": float(rows), "train_positives": float(positives)}
    for name, values in history.items():
        if values and name in ("loss", "auc", "examples_per_s"):
            metrics[f"train_{name}"] = float(values[-1])
    version = None
    if registry is not None:
        lineage = {
            "snapshot_id": snapshot_id, "code_version": code,
            "params": {**p.to_dict(), "seed": seed, "workers": workers},
            "metrics": metrics, "training_window": training_window,
            "features": list(features),
            "extra": {"run_key": key, "contract": contract.name,
                      "contract_fingerprint": contract.fingerprint()},
        }
        version = open_registry(registry).register(target, lineage, run_key=key)
    summary = {"model_dir": str(target), "version": version, "run_key": key,
               "snapshot_id": snapshot_id, "rows": rows, "positives": positives,
               "training_window": list(training_window), "history": history,
               "seconds": round(time.perf_counter() - began, 3)}
    log.info("trained", run_key=key, version=version, snapshot_id=snapshot_id, rows=rows)
    return summary


def check_backtest_window(window: tuple[int, int] | None, training_window: tuple[int, int],
                          *, version: int) -> None:
    """TrainingError unless the backtest `window` [start_ms, end_ms) starts
    at or after the end of `version`'s training window (None: nothing to
    check); the message names both times in ISO-8601 UTC and epoch ms."""
    from lamina.batch.evaluate import iso_utc

    if window is None or window[0] >= training_window[1]:
        return
    start, train_end = int(window[0]), int(training_window[1])
    raise TrainingError(
        f"the backtest window starts at {iso_utc(start)} ({start} ms), before the end of "
        f"version {version}'s training window, {iso_utc(train_end)} ({train_end} ms): a "
        f"backtest must be later in time than the training data; use rows from "
        f"{iso_utc(train_end)} on")


def _backtest_window(frame: Any, window: tuple[int, int] | None) -> tuple[int, int] | None:
    """`window`, or the backtest rows' event-time range [min, max + 1)."""
    if window is None and "event_time" in frame.columns and not frame.empty:
        window = (int(frame["event_time"].min()), int(frame["event_time"].max()) + 1)
    return window


def _window_fields(window: tuple[int, int] | None) -> dict[str, Any]:
    from lamina.batch.evaluate import iso_utc

    return {"window": list(window) if window else None,
            "window_utc": [iso_utc(window[0]), iso_utc(window[1])] if window else None}


def _slices(slice_columns: Sequence[str] | None, contract: FeatureContract) -> Sequence[str]:
    return contract.slices if slice_columns is None else slice_columns


def evaluate_command(
    backtest: Any,
    *,
    registry: ModelRegistry | str | Path,
    candidate: int,
    slice_columns: Sequence[str] | None = None,
    window: tuple[int, int] | None = None,
    thresholds: Any = None,
    apply: bool = True,
    drift_thresholds: Any = None,
    contract: FeatureContract = CARD_FRAUD,
) -> dict[str, Any]:
    """Evaluate registered version `candidate` against the champion on one
    backtest window and (if `apply`) record the evaluation and promote or
    reject it. With `apply=False` (a dry run) nothing is written to the
    registry.

    `backtest`: frame or path with the features, `label`, `event_time` and
    the slice columns (default: `contract.slices`; those the backtest lacks
    are skipped); it must be later in event time than the candidate's
    training window (refused otherwise). `thresholds`: a `GateThresholds` or
    a dict of its fields. A candidate that already is the champion is
    refused (RegistryError): there is nothing to decide, and
    `score_champion_command` scores it. A version that was once rolled back
    is never promoted here (only by `models_command("promote", ...)`).
    Re-running an evaluation that already rejected the candidate records
    nothing new. Returns both evaluations' overall metrics, the decision and
    its reasons, the champion before and after, and the drift of the backtest
    window against the candidate's (`drift`) and the champion's
    (`champion_drift`) training data (`lamina.batch.drift.DriftReport.to_dict`,
    with `alert` and `reasons`; `drift_thresholds`: a `DriftThresholds` or a
    dict of its fields); `psi` and `drifted_features` are the candidate's
    checked features. A model without a drift reference gets None.
    """
    from lamina.batch import drift
    from lamina.batch.evaluate import Decision, GateThresholds, evaluate_model, gate, json_safe

    drift_limits = drift.DriftThresholds.from_dict(drift_thresholds)  # refused before any record
    reg = open_registry(registry)
    champion = reg.champion()
    if champion is not None and champion == candidate:
        raise RegistryError(
            f"version {candidate} is already the champion, so there is nothing to decide: to "
            "score it on this window, run `lamina evaluate BACKTEST --champion`")
    frame = read_table(backtest)
    lineage = reg.lineage(candidate)
    features = lineage.features
    window = _backtest_window(frame, window)
    check_backtest_window(window, lineage.training_window, version=candidate)
    if isinstance(thresholds, dict):
        thresholds = GateThresholds(**thresholds)
    slices = [c for c in _slices(slice_columns, contract) if c in frame.columns]

    candidate_dir = reg.download(candidate)
    cand_eval = evaluate_model(load_model(candidate_dir), frame, features,
                               slice_columns=slices, window=window)
    champ_eval = None
    if champion is not None:
        champ_features = reg.lineage(champion).features
        champ_eval = evaluate_model(load_model(reg.download(champion)), frame, champ_features,
                                    slice_columns=slices, window=window)
    rolled_back = [e for e in reg.audit_log(candidate)
                   if e.action == "rollback" and e.previous == candidate]
    decision = gate(cand_eval, champ_eval, thresholds)
    if rolled_back:
        # An operator took it out for a reason the backtest may not see;
        # only a person brings it back (`models promote`).
        decision = Decision(False, [*decision.reasons, (
            f"FAIL: version {candidate} was rolled back at {rolled_back[-1].time} "
            f"({rolled_back[-1].reason}); only `lamina models promote` can bring it back")])
    after = champion
    if apply:
        # Only an applied evaluation is recorded: a dry run leaves the
        # registry exactly as it was (the stored evaluation included).
        reg.record_evaluation(candidate, json_safe({
            "candidate": cand_eval.to_dict(), "champion_version": champion,
            "champion": champ_eval.to_dict() if champ_eval else None,
            "decision": {"promote": decision.promote, "reasons": decision.reasons}}))
        already = reg.show(candidate).get("gate")
        if decision.promote or already != "rejected":
            after = reg.apply_decision(candidate, decision)

    # Drift of the backtest window against each model's training data: the
    # candidate's, and the serving champion's (the retraining signal).
    cand_drift = drift.model_drift(candidate_dir, frame, features, span=window,
                                   thresholds=drift_limits)
    champ_drift = None
    if champ_eval is not None and champion is not None:
        champ_drift = drift.model_drift(reg.download(champion), frame,
                                        reg.lineage(champion).features, span=window,
                                        thresholds=drift_limits)
    result = {
        "candidate": candidate, "champion_before": champion, "champion_after": after,
        "promote": decision.promote, "reasons": decision.reasons, "applied": apply,
        **_window_fields(window),
        "candidate_metrics": cand_eval.flat(),
        "champion_metrics": champ_eval.flat() if champ_eval else None,
        "psi": cand_drift.psi() if cand_drift else {},
        "drifted_features": cand_drift.drifted_features() if cand_drift else [],
        "drift": cand_drift.to_dict() if cand_drift else None,
        "champion_drift": champ_drift.to_dict() if champ_drift else None,
    }
    log.info("evaluated", candidate=candidate, champion_before=champion, champion_after=after,
             promote=decision.promote, summary=decision.summary())
    return dict(json_safe(result))


def score_champion_command(
    backtest: Any,
    *,
    registry: ModelRegistry | str | Path,
    slice_columns: Sequence[str] | None = None,
    window: tuple[int, int] | None = None,
    contract: FeatureContract = CARD_FRAUD,
) -> dict[str, Any]:
    """Score the current champion on one backtest window: no gate, nothing
    recorded (the registry is only read). For checking how the serving model
    does on new data, e.g. after a drift alarm.

    `backtest` as for `evaluate_command`; it must be later in event time
    than the champion's training window (refused otherwise). RegistryError
    when there is no champion yet. Returns the champion's version, the
    window, its overall metrics, the metrics per slice value
    (`slices[column][value]`) and the drift report of the backtest against
    the champion's training data (`drift`; `psi` and `drifted_features` of
    its checked features).
    """
    from lamina.batch import drift
    from lamina.batch.evaluate import evaluate_model, json_safe

    reg = open_registry(registry)
    champion = reg.champion()
    if champion is None:
        raise RegistryError(
            f"model {reg.name} has no champion yet: the gate makes one "
            "(`lamina evaluate BACKTEST --candidate VERSION`), or "
            "`lamina models promote VERSION --reason ...`")
    frame = read_table(backtest)
    lineage = reg.lineage(champion)
    window = _backtest_window(frame, window)
    check_backtest_window(window, lineage.training_window, version=champion)
    slices = [c for c in _slices(slice_columns, contract) if c in frame.columns]
    model_dir = reg.download(champion)
    scored = evaluate_model(load_model(model_dir), frame, lineage.features,
                            slice_columns=slices, window=window)
    report = drift.model_drift(model_dir, frame, lineage.features, span=window)
    result = {
        "champion": champion, **_window_fields(window),
        "metrics": scored.flat(),
        "slices": {column: {value: metrics.flat() for value, metrics in values.items()}
                   for column, values in scored.slices.items()},
        "psi": report.psi() if report else {},
        "drifted_features": report.drifted_features() if report else [],
        "drift": report.to_dict() if report else None,
        "recorded": False,
    }
    log.info("scored champion", champion=champion, rows=scored.overall.n,
             roc_auc=scored.overall.roc_auc, drifted=len(result["drifted_features"]))
    return dict(json_safe(result))


def models_command(action: str, *, registry: ModelRegistry | str | Path,
                   version: int | None = None, reason: str | None = None) -> Any:
    """`list`, `show VERSION`, `champion`, `audit`, `promote VERSION --reason`,
    `rollback --reason`. Returns a JSON-able value (promote: the previous
    champion; rollback: the champion now)."""
    reg = open_registry(registry)
    if action == "list":
        return reg.list_versions()
    if action == "champion":
        return {"champion": reg.champion()}
    if action == "audit":
        from dataclasses import asdict

        return [asdict(e) for e in reg.audit_log(version)]
    if action in ("show", "promote") and version is None:
        raise RegistryError(f"`models {action}` needs a version")
    if action == "show":
        return reg.show(int(version))  # type: ignore[arg-type]
    if action in ("promote", "rollback") and not (reason or "").strip():
        raise RegistryError(f"`models {action}` needs --reason (it goes into the audit trail)")
    if action == "promote":
        previous = reg.promote(int(version), reason or "")  # type: ignore[arg-type]
        return {"champion": int(version), "previous": previous}  # type: ignore[arg-type]
    if action == "rollback":
        return {"champion": reg.rollback(reason or "")}
    raise RegistryError(
        f"unknown action '{action}'; use list, show, champion, audit, promote or rollback")
