"""The model registry, on MLflow (invariant 7).

Embedded default: an MLflow SQLite store `sqlite:///<home>/mlflow.db` with
artifacts under `<home>/mlartifacts`. At scale: any tracking/registry URI (an
MLflow server with a database and object storage); nothing else changes.

What is kept where:
- Each registered model version comes from an MLflow run (experiment
  `lamina-training`) holding the model directory as the artifact `model/`,
  `lineage.json`, the parameters (`param.*`) and metrics.
- The version's *lineage* is the model-version tag `lamina.lineage` (JSON:
  data snapshot, code version, params, metrics, training window, feature
  list), with `lamina.snapshot_id` / `lamina.code_version` also as their
  own tags so MLflow's search can filter on them.
- The serving model is the alias `champion` (`models:/<name>@champion`).
- The *audit trail* is a set of **registered-model tags**
  `lamina.audit.<time_ns>-<random>` (JSON: action, version, previous
  champion, reason, time, actor). Tags rather than a side table because they
  live wherever the registry lives (SQLite here, a tracking server at scale)
  and show in the MLflow UI. Keys are unique, so concurrent writers never
  overwrite an entry. Actions: `register`, `promote`, `rollback`, `reject`
  (a candidate the gate refused, with its reasons).

`promote(version, reason)` moves the alias and returns the previous
champion. `rollback(reason)` undoes the last promotion that is still in
effect: it replays the audit trail as a stack (promote pushes, rollback
pops), so rolling back twice walks two promotions back. Promotions are
expected to be serialized (one promotion task at a time); if the alias was
moved outside Lamina, rollback refuses rather than guess.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamina.logs import get_logger
from lamina.models.errors import ModelError
from lamina.models.saved_model import SAVED_MODEL_PB, load_model

log = get_logger(__name__)

DEFAULT_MODEL_NAME = "lamina-fraud"
DEFAULT_EXPERIMENT = "lamina-training"
CHAMPION = "champion"
AUDIT_PREFIX = "lamina.audit."
LINEAGE_TAG = "lamina.lineage"
GATE_TAG = "lamina.gate"
GATE_REASONS_TAG = "lamina.gate_reasons"
EVALUATION_TAG = "lamina.evaluation"
RUN_KEY_TAG = "lamina.run_key"


class RegistryError(ModelError):
    """A registry operation was refused (unknown version, nothing to roll back to...)."""


def snapshot_number(value: Any) -> Any:
    """A snapshot id as the int it is (a master-dataset version): digit
    strings -- what `lamina train --snapshot` stored before it parsed its
    argument -- become ints; anything else is returned unchanged (reading
    an old registry never fails on it; `register` refuses it)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


@dataclass(frozen=True)
class Lineage:
    """Everything needed to rebuild a model: the master dataset snapshot it
    was trained from, the code, the parameters (including the seed), the
    training window [start_ms, end_ms) of event time, the features in order,
    and its metrics (training and backtest)."""

    #: A master-dataset version, stored as a JSON int (str only in lineage
    #: registered by an older `lamina train --snapshot` with a non-number).
    snapshot_id: int | str
    #: `lamina.lineage.code_version()`: the package version and a hash of
    #: the whole distribution's source (lineage registered by older
    #: Lamina holds `git describe` output instead).
    code_version: str
    params: dict[str, Any]
    metrics: dict[str, float]
    training_window: tuple[int, int]
    features: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.features:
            raise RegistryError("lineage needs the feature list")
        if len(self.training_window) != 2 or self.training_window[0] > self.training_window[1]:
            raise RegistryError(
                f"training_window must be (start_ms, end_ms), got {self.training_window!r}")
        object.__setattr__(self, "training_window",
                           (int(self.training_window[0]), int(self.training_window[1])))
        object.__setattr__(self, "features", list(self.features))
        object.__setattr__(self, "snapshot_id", snapshot_number(self.snapshot_id))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["training_window"] = list(self.training_window)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Lineage:
        required = ("snapshot_id", "code_version", "params", "metrics", "training_window",
                    "features")
        missing = [k for k in required if k not in values]
        if missing:
            raise RegistryError(f"lineage is missing {missing}")
        known = {*required, "extra"}
        unknown = sorted(set(values) - known)
        extra = dict(values.get("extra", {}))
        extra.update({k: values[k] for k in unknown})  # keep what we do not model
        return cls(
            snapshot_id=values["snapshot_id"], code_version=str(values["code_version"]),
            params=dict(values["params"]),
            metrics={k: float(v) for k, v in dict(values["metrics"]).items()},
            training_window=tuple(values["training_window"]),
            features=list(values["features"]), extra=extra,
        )


@dataclass(frozen=True)
class AuditEntry:
    """One move recorded in the audit trail."""

    key: str
    action: str  # register | promote | rollback | reject
    version: int
    previous: int | None  # champion before the move (promote / rollback)
    reason: str
    time: str  # ISO-8601 UTC
    actor: str


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


class ModelRegistry:
    """The fraud model's versions, champion alias and audit trail in MLflow."""

    def __init__(self, tracking_uri: str, *, name: str = DEFAULT_MODEL_NAME,
                 artifact_root: str | Path | None = None,
                 experiment: str = DEFAULT_EXPERIMENT,
                 cache_dir: str | Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.name = name
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        # A local path becomes a file:// URI; a URI (s3://...) is kept as is.
        self.artifact_root: str | None = None
        if artifact_root is not None:
            self.artifact_root = (str(artifact_root) if "://" in str(artifact_root)
                                  else Path(artifact_root).resolve().as_uri())
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / (
            "lamina-model-cache")
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        # Downloads print a tqdm bar per call otherwise (noise in task logs).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    @classmethod
    def local(cls, home: str | Path, *, name: str = DEFAULT_MODEL_NAME) -> ModelRegistry:
        """The embedded registry under Lamina's home directory."""
        root = Path(home).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{root / 'mlflow.db'}", name=name,
                   artifact_root=root / "mlartifacts", cache_dir=root / "model-cache")

    # --- plumbing ----------------------------------------------------------

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(self.experiment,
                                                     artifact_location=self.artifact_root))
        except Exception:  # created concurrently
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.name, description="Lamina card-fraud model (lamina.batch)")
            except MlflowException:
                self.client.get_registered_model(self.name)  # created concurrently

    def _version(self, version: int | str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(int(version)))
        except (MlflowException, ValueError):
            raise RegistryError(f"model {self.name} has no version {version}") from None

    def _record(self, action: str, version: int, reason: str,
                previous: int | None = None) -> AuditEntry:
        key = f"{AUDIT_PREFIX}{time.time_ns():020d}-{secrets.token_hex(3)}"
        try:
            actor = getpass.getuser()
        except (KeyError, OSError):
            actor = "unknown"
        entry = AuditEntry(key=key, action=action, version=int(version), previous=previous,
                           reason=reason, time=_utc_now(), actor=actor)
        payload = {k: v for k, v in asdict(entry).items() if k != "key"}
        self.client.set_registered_model_tag(self.name, key, json.dumps(payload))
        log.info("registry audit", model=self.name, action=action, version=version,
                 previous=previous, reason=reason)
        return entry

    # --- reading -----------------------------------------------------------

    def champion(self) -> int | None:
        """The champion's version, or None if there is none yet."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException:
            return None
        version = (model.aliases or {}).get(CHAMPION)
        return _int_or_none(version)

    def audit_log(self, version: int | None = None) -> list[AuditEntry]:
        """Every recorded move, oldest first (optionally those of one version)."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.name).tags or {}
        except MlflowException:
            return []
        entries = []
        for key in sorted(k for k in tags if k.startswith(AUDIT_PREFIX)):
            data = json.loads(tags[key])
            entries.append(AuditEntry(
                key=key, action=data["action"], version=int(data["version"]),
                previous=_int_or_none(data.get("previous")), reason=data.get("reason", ""),
                time=data.get("time", ""), actor=data.get("actor", "")))
        if version is not None:
            entries = [e for e in entries if e.version == version or e.previous == version]
        return entries

    def list_versions(self) -> list[dict[str, Any]]:
        """One summary per version, oldest first."""
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException:
            return []
        champion = self.champion()
        out = []
        for mv in sorted(versions, key=lambda v: int(v.version)):
            tags = mv.tags or {}
            lineage = json.loads(tags.get(LINEAGE_TAG, "{}"))
            out.append({
                "version": int(mv.version),
                "champion": int(mv.version) == champion,
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
                .isoformat(timespec="seconds"),
                "snapshot_id": snapshot_number(lineage.get("snapshot_id")),
                "code_version": lineage.get("code_version"),
                "gate": tags.get(GATE_TAG),
                "metrics": lineage.get("metrics", {}),
            })
        return out

    def show(self, version: int) -> dict[str, Any]:
        """A version's lineage, tags, gate outcome, evaluation and audit trail."""
        mv = self._version(version)
        tags = dict(mv.tags or {})
        return {
            "name": self.name,
            "version": int(mv.version),
            "champion": self.champion() == int(mv.version),
            "aliases": list(mv.aliases or []),
            "run_id": mv.run_id,
            "source": mv.source,
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
            .isoformat(timespec="seconds"),
            "lineage": Lineage.from_dict(json.loads(tags[LINEAGE_TAG])).to_dict()
            if LINEAGE_TAG in tags else None,
            "gate": tags.get(GATE_TAG),
            "gate_reasons": json.loads(tags[GATE_REASONS_TAG])
            if GATE_REASONS_TAG in tags else [],
            "evaluation": json.loads(tags[EVALUATION_TAG]) if EVALUATION_TAG in tags else None,
            "audit": [asdict(e) for e in self.audit_log(int(mv.version))],
        }

    def lineage(self, version: int) -> Lineage:
        tags = self._version(version).tags or {}
        if LINEAGE_TAG not in tags:
            raise RegistryError(f"version {version} of {self.name} has no lineage")
        return Lineage.from_dict(json.loads(tags[LINEAGE_TAG]))

    # --- writing -----------------------------------------------------------

    def find_run_key(self, run_key: str) -> int | None:
        """The version registered with this idempotency key, if any."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(
                f"name='{self.name}' and tag.`{RUN_KEY_TAG}` = '{run_key}'")
        except MlflowException:
            return None
        versions = sorted(int(mv.version) for mv in found)
        return versions[0] if versions else None

    def register(self, model_path: str | Path, lineage: Lineage | Mapping[str, Any], *,
                 description: str = "", run_key: str | None = None) -> int:
        """Log a saved model directory with its lineage as a new version.

        The model directory is copied into the registry's artifact store, so
        the caller may delete it afterwards. Returns the new version number.
        Registering does not promote: the champion does not change. Given a
        `run_key` (e.g. a hash of snapshot, code, params and seed), a second
        call with the same key returns the version already registered: a
        retried training task registers once.
        """
        source = Path(model_path)
        if not source.is_dir():
            raise RegistryError(f"{source} is not a model directory")
        record = lineage if isinstance(lineage, Lineage) else Lineage.from_dict(lineage)
        snapshot = record.snapshot_id
        if isinstance(snapshot, bool) or not isinstance(snapshot, int) or snapshot < 0:
            raise RegistryError(
                f"lineage snapshot_id must be a master-dataset version (an integer >= 0), "
                f"got {snapshot!r}")
        if run_key is not None:
            existing = self.find_run_key(run_key)
            if existing is not None:
                log.info("already registered", model=self.name, version=existing,
                         run_key=run_key)
                return existing
        lineage_json = json.dumps(record.to_dict(), sort_keys=True, default=str)
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, run_name=f"{self.name}-train", tags={
            "lamina.snapshot_id": str(record.snapshot_id),
            "lamina.code_version": record.code_version,
        })
        run_id = run.info.run_id
        try:
            from mlflow.entities import Metric, Param

            now = int(time.time() * 1000)
            params = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                      for k, v in sorted(record.params.items())]
            params += [Param("snapshot_id", str(record.snapshot_id)),
                       Param("training_window", json.dumps(list(record.training_window))),
                       Param("n_features", str(len(record.features)))]
            metrics = [Metric(k, float(v), now, 0) for k, v in sorted(record.metrics.items())]
            self.client.log_batch(run_id, metrics=metrics, params=params)
            self.client.log_artifacts(run_id, str(source), "model")
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "lineage.json").write_text(lineage_json)
                self.client.log_artifact(run_id, str(Path(tmp) / "lineage.json"))
            self.client.set_terminated(run_id, "FINISHED")
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self._ensure_registered_model()
        mv = self.client.create_model_version(
            self.name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
            tags={LINEAGE_TAG: lineage_json,
                  "lamina.snapshot_id": str(record.snapshot_id),
                  "lamina.code_version": record.code_version,
                  **({RUN_KEY_TAG: run_key} if run_key else {})},
            description=description or None,
        )
        version = int(mv.version)
        self._record("register", version, f"registered from run {run_id}")
        return version

    def record_evaluation(self, version: int, evaluation: Mapping[str, Any]) -> None:
        """Attach a backtest evaluation (JSON-able) to a version."""
        self._version(version)
        self.client.set_model_version_tag(self.name, str(version), EVALUATION_TAG,
                                          json.dumps(evaluation, sort_keys=True, default=str))

    def promote(self, version: int, reason: str) -> int | None:
        """Make `version` the champion; returns the previous champion (None if
        there was none). If `version` already is the champion nothing moves
        (a retried task is harmless) and it is returned."""
        if not reason.strip():
            raise RegistryError("a promotion needs a reason")
        self._version(version)
        previous = self.champion()
        if previous == int(version):
            log.info("already champion", model=self.name, version=version)
            return previous
        self.client.set_registered_model_alias(self.name, CHAMPION, str(int(version)))
        self.client.set_model_version_tag(self.name, str(int(version)), GATE_TAG, "promoted")
        self._record("promote", int(version), reason, previous)
        return previous

    def reject(self, version: int, reasons: Sequence[str]) -> None:
        """Record that the gate refused `version` (the champion stays)."""
        self._version(version)
        self.client.set_model_version_tag(self.name, str(int(version)), GATE_TAG, "rejected")
        self.client.set_model_version_tag(self.name, str(int(version)), GATE_REASONS_TAG,
                                          json.dumps(list(reasons)))
        failed = [r for r in reasons if r.startswith("FAIL")] or list(reasons)
        self._record("reject", int(version), "; ".join(failed), self.champion())

    def apply_decision(self, version: int, decision: Any) -> int | None:
        """Promote or reject `version` as a gate `Decision` says; returns the
        champion afterwards."""
        if decision.promote:
            self.client.set_model_version_tag(self.name, str(int(version)), GATE_REASONS_TAG,
                                              json.dumps(list(decision.reasons)))
            self.promote(version, "gate passed: " + "; ".join(decision.reasons))
        else:
            self.reject(version, decision.reasons)
        return self.champion()

    def _champion_stack(self) -> list[int]:
        stack: list[int] = []
        for entry in self.audit_log():
            if entry.action == "promote":
                stack.append(entry.version)
            elif entry.action == "rollback" and stack:
                stack.pop()
        return stack

    def rollback(self, reason: str) -> int:
        """Put back the champion before the last promotion still in effect;
        returns the version that is champion now."""
        if not reason.strip():
            raise RegistryError("a rollback needs a reason")
        current = self.champion()
        if current is None:
            raise RegistryError(f"model {self.name} has no champion to roll back")
        stack = self._champion_stack()
        if not stack or stack[-1] != current:
            raise RegistryError(
                f"the champion alias points at version {current} but the audit trail says "
                f"{stack[-1] if stack else 'none'}: it was moved outside Lamina; set it with "
                "`lamina models promote VERSION --reason ...`")
        if len(stack) < 2:
            raise RegistryError(
                f"version {current} is the first champion of {self.name}; nothing to roll back to")
        target = stack[-2]
        self._version(target)
        self.client.set_registered_model_alias(self.name, CHAMPION, str(target))
        self.client.set_model_version_tag(self.name, str(current), GATE_TAG, "rolled_back")
        self._record("rollback", target, reason, current)
        return target

    # --- loading -------------------------------------------------------------

    def download(self, version: int) -> Path:
        """The model directory of `version`, from a local cache (versions are
        immutable, so a cached copy never goes stale)."""
        import mlflow.artifacts

        self._version(version)
        target = self.cache_dir / self.name / str(int(version))
        if (target / SAVED_MODEL_PB).exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{int(version)}-", dir=target.parent))
        try:
            # models:/<name>/<version> resolved through this registry (the
            # global MLflow URIs are never consulted).
            uri = self.client.get_model_version_download_uri(self.name, str(int(version)))
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging))
            found = staging if (staging / SAVED_MODEL_PB).exists() else next(
                (p.parent for p in staging.rglob(SAVED_MODEL_PB)), None)
            if found is None:
                raise RegistryError(f"version {version} of {self.name} has no saved model")
            try:
                os.rename(found, target)  # atomic: the cache holds whole models only
            except OSError:
                if not (target / SAVED_MODEL_PB).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def load_champion(self) -> tuple[Any, int]:
        """(Keras model, version) of the champion, like loading
        `models:/<name>@champion`; the version is resolved first, so the
        model returned is exactly the version reported."""
        version = self.champion()
        if version is None:
            raise RegistryError(f"model {self.name} has no champion yet")
        return load_model(self.download(version)), version
