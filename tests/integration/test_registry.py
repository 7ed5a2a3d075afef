"""The model registry on a real MLflow SQLite store (invariant 7): register
with lineage, promote, roll back in one call, an audit record of every move,
and a candidate that loses to the champion stays out with its reasons."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lamina.batch.commands import evaluate_command, models_command, train_command
from lamina.batch.evaluate import iso_utc, time_split
from lamina.batch.model import train_local
from lamina.lineage import PACKAGES, code_version
from lamina.models.registry import CHAMPION, ModelRegistry, RegistryError
from lamina.models.saved_model import save_model
from lamina.models.scoring import score

pytestmark = pytest.mark.integration  # TensorFlow and MLflow

FEATURES = [f"f{i}" for i in range(6)]
PARAMS = {"epochs": 2, "batch_size": 256, "hidden": [32, 16], "learning_rate": 0.005}


def synthetic_training_set(n: int, seed: int) -> pd.DataFrame:
    """The same shape as test_training's: ~7% positives, a learnable signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    x[:, 0] = np.exp(x[:, 0] + 3)
    logit = -3.6 + 0.02 * x[:, 0] + 1.2 * x[:, 2] - 0.8 * x[:, 3] * x[:, 4]
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    frame["event_time"] = 1_767_225_600_000 + np.arange(n, dtype=np.int64) * 60_000
    frame["event_id"] = [f"evt-{seed}-{i:06d}" for i in range(n)]
    frame["merchant_category"] = np.array(["grocery", "travel", "online"])[rng.integers(0, 3, n)]
    return frame

# Loose absolute floors for a 2-epoch model on 3,500 rows; the relative
# checks (beat the champion) are the ones under test.
THRESHOLDS = {"min_roc_auc": 0.6, "max_ece": 0.2, "min_examples": 500, "min_positives": 20}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SQLite MLflow store for the module (creating it runs MLflow's
    migrations, several seconds); each test uses its own model name."""
    home = tmp_path_factory.mktemp("lamina-home")
    ModelRegistry.local(home)._experiment_id()  # create the schema once
    yield home


@pytest.fixture
def registry(store: Path) -> ModelRegistry:
    return ModelRegistry.local(store, name=f"fraud-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = synthetic_training_set(5000, seed=21)
    cutoff = int(frame["event_time"].iloc[3500])
    return time_split(frame, cutoff)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory,
              data: tuple[pd.DataFrame, pd.DataFrame]) -> Path:
    train, _ = data
    model, _ = train_local(train, FEATURES, PARAMS, seed=1)
    return save_model(model, tmp_path_factory.mktemp("models") / "m1", features=FEATURES)


def _lineage(snapshot: int, **metrics: float) -> dict[str, Any]:
    return {"snapshot_id": snapshot, "code_version": code_version(), "params": dict(PARAMS),
            "metrics": metrics or {"train_auc": 0.8}, "training_window": [0, 1000 * snapshot],
            "features": FEATURES}


def test_lineage_round_trips_through_the_registry(registry: ModelRegistry,
                                                  model_dir: Path) -> None:
    lineage = {**_lineage(7, train_auc=0.81, train_loss=0.4),
               "params": {**PARAMS, "seed": 1, "workers": 0}}
    version = registry.register(model_dir, lineage)
    shown = registry.show(version)
    assert shown["lineage"] == {**lineage, "extra": {}}
    assert registry.lineage(version).features == FEATURES
    assert shown["champion"] is False and registry.champion() is None
    run = registry.client.get_run(shown["run_id"])
    assert run.data.params["snapshot_id"] == "7"
    assert run.data.metrics["train_auc"] == pytest.approx(0.81)
    assert registry.client.list_artifacts(shown["run_id"], "model")
    assert [e.action for e in registry.audit_log(version)] == ["register"]
    # Lineage is refused when incomplete.
    with pytest.raises(RegistryError, match="missing"):
        registry.register(model_dir, {"snapshot_id": 1})


def test_promote_returns_previous_champion_and_rollback_is_one_call(
        registry: ModelRegistry, model_dir: Path) -> None:
    v1, v2, v3 = (registry.register(model_dir, _lineage(s)) for s in (1, 2, 3))
    assert registry.promote(v1, "first model") is None
    assert registry.promote(v2, "beat v1 on backtest") == v1
    assert registry.promote(v2, "a retried task") == v2  # nothing moves
    assert registry.promote(v3, "beat v2 on backtest") == v2
    assert int(registry.client.get_model_version_by_alias(registry.name, CHAMPION).version) == v3

    assert registry.rollback("v3 false-positive spike") == v2
    assert registry.champion() == v2
    assert registry.rollback("v2 also bad") == v1
    with pytest.raises(RegistryError, match="first champion"):
        registry.rollback("nothing left")
    assert registry.champion() == v1

    moves = [(e.action, e.version, e.previous, e.reason) for e in registry.audit_log()
             if e.action != "register"]
    assert moves == [
        ("promote", v1, None, "first model"),
        ("promote", v2, v1, "beat v1 on backtest"),
        ("promote", v3, v2, "beat v2 on backtest"),
        ("rollback", v2, v3, "v3 false-positive spike"),
        ("rollback", v1, v2, "v2 also bad"),
    ]
    assert all(e.time and e.actor for e in registry.audit_log())
    assert registry.show(v3)["gate"] == "rolled_back"


def test_rollback_refuses_when_the_alias_was_moved_outside_lamina(
        registry: ModelRegistry, model_dir: Path) -> None:
    v1, v2, v3 = (registry.register(model_dir, _lineage(s)) for s in (1, 2, 3))
    registry.promote(v1, "first")
    registry.promote(v2, "second")
    registry.client.set_registered_model_alias(registry.name, CHAMPION, str(v3))
    with pytest.raises(RegistryError, match="moved outside Lamina"):
        registry.rollback("confused")
    assert registry.champion() == v3


def test_load_champion_gives_the_registered_model(
        registry: ModelRegistry, model_dir: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    from lamina.models.saved_model import load_model

    with pytest.raises(RegistryError, match="no champion"):
        registry.load_champion()
    version = registry.register(model_dir, _lineage(1))
    registry.promote(version, "first")
    model, loaded_version = registry.load_champion()
    assert loaded_version == version
    _, backtest = data
    np.testing.assert_array_equal(score(model, backtest, features=FEATURES),
                                  score(load_model(model_dir), backtest, features=FEATURES))


def test_register_with_the_same_run_key_registers_once(registry: ModelRegistry,
                                                       model_dir: Path) -> None:
    first = registry.register(model_dir, _lineage(1), run_key="abc123")
    again = registry.register(model_dir, _lineage(1), run_key="abc123")
    other = registry.register(model_dir, _lineage(1), run_key="def456")
    assert first == again != other
    assert [v["version"] for v in registry.list_versions()] == [first, other]


def test_candidate_that_loses_to_the_champion_is_not_promoted_and_the_reason_is_recorded(
        registry: ModelRegistry, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, backtest = data
    good = train_command(train, models_dir=tmp_path / "models", registry=registry,
                         snapshot_id=10, features=FEATURES, params=PARAMS, seed=1)
    first = evaluate_command(backtest, registry=registry, candidate=good["version"],
                             thresholds=THRESHOLDS)
    assert first["promote"] and first["champion_after"] == good["version"], first["reasons"]
    assert first["champion_before"] is None

    # A candidate trained on shuffled labels has no signal: it must lose.
    shuffled = train.assign(label=np.random.default_rng(0).permutation(train["label"]))
    bad = train_command(shuffled, models_dir=tmp_path / "models", registry=registry,
                        snapshot_id=11, features=FEATURES, params=PARAMS, seed=1)
    result = evaluate_command(backtest, registry=registry, candidate=bad["version"],
                              thresholds=THRESHOLDS)
    assert not result["promote"]
    assert result["champion_after"] == good["version"] == registry.champion()
    assert result["candidate_metrics"]["roc_auc"] < result["champion_metrics"]["roc_auc"]

    shown = registry.show(bad["version"])
    assert shown["gate"] == "rejected"
    assert any(r.startswith("FAIL: ROC AUC") for r in shown["gate_reasons"])
    assert shown["evaluation"]["decision"]["promote"] is False
    reject = [e for e in registry.audit_log(bad["version"]) if e.action == "reject"]
    assert len(reject) == 1 and "ROC AUC" in reject[0].reason
    assert reject[0].previous == good["version"]

    # Re-running the same evaluation (a retried task) records nothing new.
    evaluate_command(backtest, registry=registry, candidate=bad["version"],
                     thresholds=THRESHOLDS)
    assert len([e for e in registry.audit_log(bad["version"]) if e.action == "reject"]) == 1


def test_evaluate_refuses_a_backtest_that_overlaps_training(
        registry: ModelRegistry, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    from lamina.batch.model import TrainingError

    train, _ = data
    trained = train_command(train, models_dir=tmp_path / "models", registry=registry,
                            snapshot_id=3, features=FEATURES, params=PARAMS, seed=1)
    with pytest.raises(TrainingError, match="later in time") as caught:
        evaluate_command(train, registry=registry, candidate=trained["version"])
    start = int(train["event_time"].min())
    assert f"starts at {iso_utc(start)} ({start} ms)" in str(caught.value)


def test_a_trained_model_records_the_code_version_of_the_whole_package(
        registry: ModelRegistry, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, _ = data
    trained = train_command(train, models_dir=tmp_path / "models", registry=registry,
                            snapshot_id=4, features=FEATURES, params=PARAMS, seed=1)
    recorded = registry.lineage(trained["version"]).code_version
    # lamina.lineage's: the package version and a hash of every package's source.
    assert recorded == code_version(PACKAGES) == code_version()
    run_id = registry.show(trained["version"])["run_id"]
    assert registry.client.get_run(run_id).data.tags["lamina.code_version"] == recorded


def test_train_command_is_idempotent_and_models_command_reports(
        registry: ModelRegistry, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, _ = data
    path = tmp_path / "train.parquet"
    train.to_parquet(path)
    first = train_command(path, models_dir=tmp_path / "models", registry=registry,
                          snapshot_id=5, features=FEATURES, params=PARAMS, seed=2)
    again = train_command(path, models_dir=tmp_path / "models", registry=registry,
                          snapshot_id=5, features=FEATURES, params=PARAMS, seed=2)
    assert first["version"] == again["version"] and first["model_dir"] == again["model_dir"]
    assert (Path(first["model_dir"]) / "drift_profile.json").exists()

    listed = models_command("list", registry=registry)
    assert [v["version"] for v in listed] == [first["version"]]
    assert listed[0]["snapshot_id"] == 5
    with pytest.raises(RegistryError, match="reason"):
        models_command("promote", registry=registry, version=first["version"])
    moved = models_command("promote", registry=registry, version=first["version"],
                           reason="manual")
    assert moved == {"champion": first["version"], "previous": None}
    assert models_command("champion", registry=registry) == {"champion": first["version"]}
    shown = models_command("show", registry=registry, version=first["version"])
    assert shown["lineage"]["training_window"] == [int(train["event_time"].min()),
                                                   int(train["event_time"].max()) + 1]
    assert [e["action"] for e in models_command("audit", registry=registry)] == [
        "register", "promote"]


def test_a_rolled_back_version_is_not_promoted_again_by_the_gate(
        registry: ModelRegistry, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, backtest = data
    v1 = train_command(train, models_dir=tmp_path / "models", registry=registry,
                       snapshot_id=1, features=FEATURES, params=PARAMS, seed=1)["version"]
    v2 = train_command(train, models_dir=tmp_path / "models", registry=registry,
                       snapshot_id=2, features=FEATURES, params=PARAMS, seed=2)["version"]
    registry.promote(v1, "first")
    registry.promote(v2, "second")
    assert registry.rollback("v2 misbehaved in production") == v1
    result = evaluate_command(backtest, registry=registry, candidate=v2,
                              thresholds={**THRESHOLDS, "min_roc_auc_gain": -1.0,
                                          "max_log_loss_increase": 1.0})
    assert not result["promote"] and registry.champion() == v1
    assert any("was rolled back" in r for r in result["reasons"])


@pytest.mark.integration
def test_a_dry_run_evaluation_writes_nothing_to_the_registry(
        registry: ModelRegistry, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, backtest = data
    first = train_command(train, models_dir=tmp_path / "models", registry=registry,
                          snapshot_id=1, features=FEATURES, params=PARAMS, seed=1)["version"]
    # A version never evaluated stays so after a dry run.
    dry = evaluate_command(backtest, registry=registry, candidate=first,
                           thresholds=THRESHOLDS, apply=False)
    assert dry["applied"] is False and dry["promote"], dry["reasons"]
    assert registry.show(first)["evaluation"] is None
    assert registry.champion() is None

    evaluate_command(backtest, registry=registry, candidate=first, thresholds=THRESHOLDS)
    assert registry.champion() == first
    shuffled = train.assign(label=np.random.default_rng(0).permutation(train["label"]))
    second = train_command(shuffled, models_dir=tmp_path / "models", registry=registry,
                           snapshot_id=2, features=FEATURES, params=PARAMS, seed=1)["version"]
    evaluate_command(backtest, registry=registry, candidate=second, thresholds=THRESHOLDS)
    before = registry.show(second)
    assert before["evaluation"] is not None and before["gate"] == "rejected"
    audit_before = registry.audit_log()

    # The same candidate on another (later) window, as a dry run.
    later = backtest.iloc[len(backtest) // 2:].reset_index(drop=True)
    result = evaluate_command(later, registry=registry, candidate=second,
                              thresholds=THRESHOLDS, apply=False)
    assert result["applied"] is False
    assert result["window"] != before["evaluation"]["candidate"]["window"]
    after = registry.show(second)
    assert after["evaluation"] == before["evaluation"]
    assert (after["gate"], after["gate_reasons"]) == (before["gate"], before["gate_reasons"])
    assert registry.audit_log() == audit_before
    assert registry.champion() == first


@pytest.mark.integration
def test_the_champion_is_scored_alone_and_nothing_is_recorded(
        registry: ModelRegistry, tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    from lamina.batch.commands import score_champion_command
    from lamina.batch.evaluate import evaluate_model
    from lamina.batch.model import TrainingError
    from lamina.models.saved_model import load_model

    train, backtest = data
    with pytest.raises(RegistryError, match="no champion yet"):
        score_champion_command(backtest, registry=registry)
    version = train_command(train, models_dir=tmp_path / "models", registry=registry,
                            snapshot_id=1, features=FEATURES, params=PARAMS, seed=1)["version"]
    evaluate_command(backtest, registry=registry, candidate=version, thresholds=THRESHOLDS)
    assert registry.champion() == version
    shown, audit = registry.show(version), registry.audit_log()

    later = backtest.iloc[len(backtest) // 2:].reset_index(drop=True)
    scored = score_champion_command(later, registry=registry)
    assert scored["champion"] == version and scored["recorded"] is False
    expected = evaluate_model(load_model(registry.download(version)), later, FEATURES,
                              slice_columns=["merchant_category"])
    assert scored["metrics"] == pytest.approx(expected.flat())
    assert scored["metrics"]["n"] == len(later)
    assert set(scored["slices"]["merchant_category"]) == {"grocery", "online", "travel"}
    assert scored["slices"]["merchant_category"]["travel"] == pytest.approx(
        expected.slices["merchant_category"]["travel"].flat())
    # The drift report covers every feature; on this 750-row window each is
    # below the drift check's minimum rows, so none has a PSI that counts.
    # (Changed when scoring the champion moved to the drift report.)
    assert set(scored["drift"]["features"]) == set(FEATURES)
    assert scored["psi"] == {} and not scored["drift"]["alert"]
    assert {d["status"] for d in scored["drift"]["features"].values()} <= {
        "too_few_rows", "warming_up", "no_reference", "lifetime"}
    assert scored["window"] == [int(later["event_time"].min()),
                                int(later["event_time"].max()) + 1]
    assert scored["window_utc"][0] == iso_utc(scored["window"][0])
    assert "promote" not in scored and "reasons" not in scored

    # Judging the champion as its own candidate is refused, pointing to --champion.
    with pytest.raises(RegistryError, match="already the champion.*--champion"):
        evaluate_command(later, registry=registry, candidate=version, thresholds=THRESHOLDS)
    with pytest.raises(RegistryError, match="already the champion"):
        evaluate_command(later, registry=registry, candidate=version, apply=False)
    assert registry.show(version) == shown
    assert registry.audit_log() == audit
    # The champion's own training rows are no backtest.
    with pytest.raises(TrainingError, match="later in time"):
        score_champion_command(train, registry=registry)


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """`lamina.cli.main` adds a stderr log handler (pytest's captured
    stream); take it off again afterwards."""
    import logging

    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_lamina", False)]:
        root.removeHandler(handler)


@pytest.mark.integration
@pytest.mark.usefixtures("cli_logging")
def test_lamina_evaluate_scores_the_champion_or_says_why_not_in_one_line(
        tmp_path: Path, data: tuple[pd.DataFrame, pd.DataFrame],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lamina import cli

    train, backtest = data
    home = tmp_path / "home"
    monkeypatch.setenv("LAMINA_HOME", str(home))
    backtest_path = tmp_path / "backtest.parquet"
    backtest.to_parquet(backtest_path)

    assert cli.main(["evaluate", str(backtest_path), "--champion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lamina evaluate: error: model lamina-fraud has no champion yet")

    version = train_command(train, models_dir=home / "models", registry=home, snapshot_id=1,
                            features=FEATURES, params=PARAMS, seed=1)["version"]
    models_command("promote", registry=home, version=version, reason="test")
    capsys.readouterr()
    assert cli.main(["evaluate", str(backtest_path), "--candidate", str(version)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"lamina evaluate: error: version {version} is already the "
                              "champion")
    assert "--champion" in err[-1]

    assert cli.main(["evaluate", str(backtest_path), "--champion"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["champion"] == version and out["recorded"] is False
    assert out["metrics"]["n"] == len(backtest)
    assert ModelRegistry.local(home).show(version)["evaluation"] is None


@pytest.mark.integration
@pytest.mark.usefixtures("cli_logging")
def test_lamina_train_records_the_training_sets_snapshot_as_an_int(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lamina import cli
    from lamina.batch.training_set import LINEAGE_FILE, TrainingSetMetadata
    from lamina.schemas.card_views import FEATURES as CARD_FEATURES

    # A training set as `lamina training-set` leaves it: Parquet + lineage (snapshot 4).
    rng = np.random.default_rng(5)
    n = 1500
    frame = pd.DataFrame(rng.normal(size=(n, len(CARD_FEATURES))), columns=list(CARD_FEATURES))
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(3 - 1.5 * frame["amount"]))).astype(int)
    frame["event_time"] = 1_767_225_600_000 + np.arange(n, dtype=np.int64) * 60_000
    frame["event_id"] = [f"tx-{i}" for i in range(n)]
    folder = tmp_path / "set"
    folder.mkdir()
    frame.to_parquet(folder / "part-0.parquet")
    (folder / LINEAGE_FILE).write_text(TrainingSetMetadata(
        master_uri=str(tmp_path / "master"), snapshot=4, group="card_transactions",
        group_fingerprint="0" * 16, start_ms=0, end_ms=1, as_of_ms=1, label_maturity_ms=0,
        code_version="test", rows=n).to_json())
    home = tmp_path / "home"
    monkeypatch.setenv("LAMINA_HOME", str(home))
    params = json.dumps({"epochs": 1, "batch_size": 256, "hidden": [8]})

    assert cli.main(["train", str(folder), "--snapshot", "4", "--params", params]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["snapshot_id"] == 4
    # Without --snapshot: the lineage's, the same run key, so the same version.
    assert cli.main(["train", str(folder), "--params", params]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["version"] == trained["version"] and again["run_key"] == trained["run_key"]

    reg = ModelRegistry.local(home)
    listed = reg.list_versions()
    assert [v["snapshot_id"] for v in listed] == [4]
    assert type(listed[0]["snapshot_id"]) is int
    shown = reg.show(trained["version"])
    assert type(shown["lineage"]["snapshot_id"]) is int
    assert reg.lineage(trained["version"]).snapshot_id == 4
    assert reg.client.get_run(shown["run_id"]).data.params["snapshot_id"] == "4"


@pytest.mark.integration
def test_the_train_step_run_again_after_its_model_was_saved_starts_no_spark(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry of the DAG's train step (``spark_jobs._train``, ``workers=1``)
    whose model is already saved under its run key registers it without
    starting a Spark session: a JVM start was all such a retry did."""
    from lamina.batch import spark as batch_spark
    from lamina.batch.commands import data_fingerprint, run_key
    from lamina.batch.model import TrainParams
    from lamina.config import load_settings
    from lamina.orchestration.spark_jobs import _train
    from lamina.schemas.card_views import CARD_FRAUD

    features = list(CARD_FRAUD.features)
    rng = np.random.default_rng(9)
    n = 1200
    frame = pd.DataFrame(rng.normal(size=(n, len(features))), columns=features)
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(3 - 1.5 * frame["amount"]))).astype(int)
    frame["event_time"] = 1_767_225_600_000 + np.arange(n, dtype=np.int64) * 60_000
    frame["event_id"] = [f"tx-{i}" for i in range(n)]
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    params = {"epochs": 1, "batch_size": 256, "hidden": [8]}
    # The module's home: its MLflow schema is made already.
    settings = load_settings(None, env={"LAMINA_HOME": str(store)})
    # What a first attempt left: the model saved under the run key, then killed.
    key = run_key(3, tuple(features), TrainParams.from_dict(params), 4, 1, code_version(),
                  data_fingerprint(frame))
    model, history = train_local(frame, features, params, seed=4)
    save_model(model, Path(settings.models_uri) / key, features=features,
               extra={"history": history, "snapshot_id": 3, "run_key": key})

    def no_spark(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Spark session was started for a model already trained")

    monkeypatch.setattr(batch_spark, "spark_session", no_spark)
    done = _train(settings, {"training_set": str(path), "snapshot": 3, "params": params,
                             "seed": 4, "workers": 1})
    assert done["run_key"] == key and done["version"] is not None
    assert ModelRegistry.local(settings.home).lineage(done["version"]).snapshot_id == 3
