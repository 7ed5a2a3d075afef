"""The speed layer's champion on a real MLflow registry and real SavedModels
(invariant 8): a thread keeps scoring micro-batches while the alias is
promoted, rolled back and pointed at a model that does not fit the
contract; every batch is scored by exactly one version, the one it names,
with that model's own predictions; the misfit is refused and the old
champion kept."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lamina.batch.model import train_local
from lamina.lineage import code_version
from lamina.models.registry import ModelRegistry
from lamina.models.saved_model import load_model, save_model
from lamina.models.scoring import score
from lamina.schemas.card_views import CARD_FRAUD, FEATURES
from lamina.schemas.scores import decode_score, encode_score
from lamina.speed.models import ChampionHolder
from lamina.speed.scoring import ScoredBatch, score_batch

pytestmark = pytest.mark.integration  # TensorFlow and MLflow

T0 = 1_767_225_600_000
PARAMS = {"epochs": 2, "batch_size": 256, "hidden": [16, 8], "learning_rate": 0.01}
# How long a background load may take on a loaded 2-core machine before the
# test gives up (a bound against hanging, not a timing assertion).
DEADLINE_S = 180.0


def transaction(rng: np.random.Generator, i: int) -> dict[str, Any]:
    online = bool(rng.random() < 0.4)
    return {"event_id": f"tx-{i}", "event_type": "transaction", "schema_version": 1,
            "event_time": T0 + i * 1000, "card_id": f"c{i % 50}", "merchant_id": f"m{i % 70}",
            "merchant_category": "grocery", "amount": float(np.round(rng.lognormal(3, 1), 2)),
            "currency": "EUR", "country": "FR" if rng.random() < 0.8 else "US",
            "channel": "online" if online else "pos"}


def views(rng: np.random.Generator) -> dict[str, Any]:
    return {"txn_count_1h": int(rng.integers(0, 8)), "txn_count_10m": int(rng.integers(0, 4)),
            "amount_mean_7d": float(rng.lognormal(3, 0.5)),
            "amount_mean_30d": float(rng.lognormal(3, 0.5)),
            "small_online_count_1h": int(rng.integers(0, 6))}


def contract_examples(n: int, seed: int) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]],
                                                  pd.DataFrame]:
    """`n` (event, view features) pairs and their training frame: the
    contract's vectors with a label that depends on them."""
    rng = np.random.default_rng(seed)
    items = [(transaction(rng, i), views(rng)) for i in range(n)]
    frame = pd.DataFrame([CARD_FRAUD.vector(e, v) for e, v in items])
    logit = (-3.0 + 0.4 * frame["txn_count_1h"] + 0.6 * frame["small_online_count_1h"]
             + 0.01 * frame["amount"])
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return items, frame


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two models trained from the card contract's vectors (different seeds
    and widths: they score differently) and one trained on the same data
    with its features in another order (its card does not fit the contract)."""
    _, frame = contract_examples(3000, seed=5)
    root = tmp_path_factory.mktemp("speed-models")
    out = {}
    for name, features, seed, hidden in (("first", FEATURES, 1, [16, 8]),
                                         ("second", FEATURES, 2, [12]),
                                         ("misfit", tuple(reversed(FEATURES)), 3, [8])):
        model, _ = train_local(frame, list(features), {**PARAMS, "hidden": hidden}, seed=seed)
        out[name] = save_model(model, root / name, features=features)
    return out


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry.local(tmp_path / "home", name=f"fraud-{uuid.uuid4().hex[:8]}")


def register(registry: ModelRegistry, path: Path, *, fingerprint: str | None = None) -> int:
    features = list(load_card_features(path))
    return registry.register(path, {
        "snapshot_id": 1, "code_version": code_version(), "params": dict(PARAMS),
        "metrics": {"train_auc": 0.8}, "training_window": [0, T0], "features": features,
        "extra": {"contract": CARD_FRAUD.name,
                  "contract_fingerprint": fingerprint or CARD_FRAUD.fingerprint()}})


def load_card_features(path: Path) -> list[str]:
    from lamina.models.saved_model import model_card

    return list(model_card(path)["features"])


def holder_for(registry: ModelRegistry) -> ChampionHolder:
    # Its own client, as in a speed-layer process (the test moves the alias
    # from this thread meanwhile).
    own = ModelRegistry(registry.tracking_uri, name=registry.name,
                        cache_dir=registry.cache_dir.parent / "speed-cache")
    return ChampionHolder(own, CARD_FRAUD, poll_seconds=0.0)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {DEADLINE_S} s")
        time.sleep(0.05)


def test_each_batch_is_scored_by_one_version_through_promotion_rollback_and_a_refusal(
        models: dict[str, Path], registry: ModelRegistry) -> None:
    items, _ = contract_examples(64, seed=11)
    produced = [e["event_time"] for e, _ in items]
    v1, v2, misfit = (register(registry, models[n]) for n in ("first", "second", "misfit"))
    registry.promote(v1, "first champion")
    holder = holder_for(registry)
    first = holder.load_now()
    assert first is not None and first.version == v1 and first.scorer_kind == "numpy"

    batch = score_batch(items, contract=CARD_FRAUD, champion=first, produced_at_ms=produced,
                        batch_version=3, batch_cutoff=T0)
    # The model's own predictions (its traced graph) for the same matrix.
    expected = {v: score(load_model(models[n]), batch.matrix)
                for v, n in ((v1, "first"), (v2, "second"))}
    assert float(np.max(np.abs(expected[v1] - expected[v2]))) > 1e-3  # tellable apart
    assert [r.model_version for r in batch.records] == [v1] * len(items)
    np.testing.assert_allclose([r.score for r in batch.records], expected[v1], atol=1e-6)
    assert [decode_score(encode_score(r), features=FEATURES) for r in batch.records] \
        == batch.records

    scored: list[ScoredBatch] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_scoring() -> None:
        try:
            while not stop.is_set():
                champion = holder.check()
                assert champion is not None
                scored.append(score_batch(items, contract=CARD_FRAUD, champion=champion,
                                          produced_at_ms=produced))
        except BaseException as exc:  # surfaced by the main thread
            failures.append(exc)

    scorer = threading.Thread(target=keep_scoring, name="test-scoring-loop")
    scorer.start()
    try:
        def seen(version: int, after: int = 0) -> Callable[[], bool]:
            return lambda: bool(failures) or any(
                b.model_version == version for b in scored[after:])

        registry.promote(v2, "beat the first on backtest")
        wait_for(seen(v2), f"version {v2} to be swapped in")
        mark = len(scored)
        assert registry.rollback("second misbehaves") == v1
        wait_for(seen(v1, mark), f"the rollback to version {v1}")
        registry.promote(misfit, "a model whose card does not fit")
        wait_for(lambda: bool(failures) or misfit in holder.refused,
                 f"version {misfit} to be refused")
        mark = len(scored)
        wait_for(lambda: bool(failures) or len(scored) > mark + 3, "more batches")
    finally:
        stop.set()
        scorer.join(DEADLINE_S)
        holder.close()
    assert not failures, failures

    runs = [b.model_version for i, b in enumerate(scored)
            if i == 0 or b.model_version != scored[i - 1].model_version]
    assert runs == [v1, v2, v1]  # swapped, rolled back, and the misfit never used
    for b in scored:
        assert {r.model_version for r in b.records} == {b.model_version}
        # The whole batch matches that version's own predictions: no batch
        # was scored by a mix of models or by one half loaded.
        np.testing.assert_allclose([r.score for r in b.records], expected[b.model_version],
                                   atol=1e-6)
    assert "features are not contract 'card_fraud'" in holder.refused[misfit]
    assert holder.current is not None and holder.current.version == v1
    assert registry.champion() == misfit  # the registry says so; the process refused it


def test_a_model_trained_for_another_contract_fingerprint_is_refused(
        models: dict[str, Path], registry: ModelRegistry) -> None:
    holder = holder_for(registry)
    assert holder.load_now() is None  # no champion yet: nothing to score with
    stale = register(registry, models["first"], fingerprint="0" * 16)
    registry.promote(stale, "trained before the contract changed")
    assert holder.load_now() is None
    assert "trained for contract fingerprint 0000000000000000" in holder.refused[stale]
    fitting = register(registry, models["second"])
    registry.promote(fitting, "retrained on the current contract")
    champion = holder.load_now()
    assert champion is not None and champion.version == fitting
    assert champion.contract_fingerprint == CARD_FRAUD.fingerprint()
    holder.close()
