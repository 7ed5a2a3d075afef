"""Training the fraud model: a small Keras MLP over the feature list.

Saving, loading and scoring a model, its model card and TensorFlow itself
live in `lamina.models` (every layer scores; only the batch layer trains):
`lamina.models.tf.tensorflow()` is the one way TensorFlow is imported here
too, and nothing imports it at module level, so importing
`lamina.batch.model` is cheap. Distributed (barrier) training is in
`lamina.batch.distributed`.

The model is `features -> Normalization -> Dense(relu)... -> logit -> sigmoid`.
The normalization statistics (mean, population variance per feature) are
computed once over the whole training set and built into the model, so the
saved artifact scores raw feature values and every distributed worker
normalizes identically (what `Normalization.adapt` on the training data would
give; `adapt` on a worker's shard would not).

Class imbalance: positives are weighted by `pos_weight` (default: the ratio
of negatives to positives, "balanced"), which gives the rare class as much
gradient as the common one. Weighting by w shifts the learned log-odds by
log(w), so after training the logit bias is lowered by log(w) again (prior
correction): the saved model outputs calibrated probabilities, which the
promotion gate's calibration check and log loss depend on. The output bias
starts at the (weighted) prior log-odds so training does not spend its first
steps learning the base rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from lamina.errors import LaminaError
from lamina.models.errors import ModelError
from lamina.models.scoring import feature_matrix, to_pandas
from lamina.models.tf import tensorflow

LABEL = "label"


class TrainingError(LaminaError):
    """A training set or a training parameter was refused."""


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of the MLP and its training. All JSON-able, so they
    travel to distributed workers and into the registry's lineage."""

    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    learning_rate: float = 1e-3
    # The global batch: under N distributed workers each step takes
    # batch_size / N rows from every worker's shard.
    batch_size: int = 1024
    epochs: int = 5
    # "balanced" (n_negative / n_positive), "none" (1.0), or a number.
    pos_weight: float | str = "balanced"
    # Training steps per call into the TF graph. More steps per call means
    # less Python overhead and, under a distribution strategy, fewer metric
    # synchronisations between workers.
    steps_per_execution: int = 8

    def __post_init__(self) -> None:
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise TrainingError(f"hidden must be positive layer widths, got {self.hidden!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainingError(f"dropout must be in [0, 1), got {self.dropout}")
        if (self.learning_rate <= 0 or self.batch_size <= 0 or self.epochs <= 0
                or self.steps_per_execution <= 0):
            raise TrainingError(
                "learning_rate, batch_size, epochs and steps_per_execution must be positive")
        if isinstance(self.pos_weight, str) and self.pos_weight not in ("balanced", "none"):
            raise TrainingError(
                f"pos_weight must be 'balanced', 'none' or a number, got {self.pos_weight!r}"
            )
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | TrainParams | None) -> TrainParams:
        """Build from a dict (e.g. lineage or CLI JSON); unknown keys are refused."""
        if values is None:
            return cls()
        if isinstance(values, TrainParams):
            return values
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f"unknown training parameter(s) {unknown}; known: {sorted(known)}")
        given = dict(values)
        if "hidden" in given:
            given["hidden"] = tuple(given["hidden"])
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out


@dataclass(frozen=True)
class TrainingArrays:
    """A training set as the arrays the model consumes, plus the statistics
    built into the model. Feature order is the order of `features`."""

    features: tuple[str, ...]
    x: np.ndarray  # float32 (n, len(features))
    y: np.ndarray  # float32 (n,)
    mean: np.ndarray = field(repr=False)  # float64 (len(features),)
    variance: np.ndarray = field(repr=False)
    positives: int = 0

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


def labels(frame: Any) -> np.ndarray:
    """The 0/1 label column as float32; refuses anything else."""
    df = to_pandas(frame)
    if LABEL not in df.columns:
        raise TrainingError(f"the data has no '{LABEL}' column")
    y = df[LABEL].to_numpy()
    if len(y) and not np.isin(y, (0, 1)).all():
        raise TrainingError(f"'{LABEL}' must be 0 or 1")
    return y.astype(np.float32)


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population variance in float64 (what
    `Normalization.adapt` computes)."""
    x64 = x.astype(np.float64, copy=False)
    return x64.mean(axis=0), x64.var(axis=0)


def training_arrays(frame: Any, features: Sequence[str]) -> TrainingArrays:
    """Validate a training set and turn it into arrays plus statistics."""
    features = tuple(features)
    if not features:
        raise TrainingError("the feature list is empty")
    try:
        x = feature_matrix(frame, features)
    except ModelError as refused:  # the training set, refused as such
        raise TrainingError(str(refused)) from None
    y = labels(frame)
    if len(y) == 0:
        raise TrainingError("the training set is empty")
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise TrainingError(
            f"the training set needs both classes; it has {positives} positive(s) "
            f"in {len(y)} rows"
        )
    mean, variance = feature_stats(x)
    return TrainingArrays(features, x, y, mean, variance, positives)


def positive_weight(params: TrainParams, rows: int, positives: int) -> float:
    """The weight of a positive example (negatives weigh 1)."""
    if params.pos_weight == "none":
        return 1.0
    if params.pos_weight == "balanced":
        return max(1.0, (rows - positives) / max(positives, 1))
    weight = float(params.pos_weight)
    if weight <= 0:
        raise TrainingError(f"pos_weight must be positive, got {weight}")
    return weight


def build_model(
    n_features: int,
    params: TrainParams,
    *,
    mean: np.ndarray,
    variance: np.ndarray,
    output_bias: float = 0.0,
    seed: int = 0,
) -> Any:
    """The compiled, untrained MLP. Call inside `strategy.scope()` to build
    it for distributed training."""
    tf = tensorflow()
    keras = tf.keras
    inputs = keras.Input(shape=(n_features,), dtype="float32", name="features")
    x = keras.layers.Normalization(
        axis=-1, mean=mean.astype(np.float32), variance=variance.astype(np.float32),
        name="normalize",
    )(inputs)
    for i, width in enumerate(params.hidden):
        x = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(x)
        if params.dropout > 0:
            x = keras.layers.Dropout(params.dropout, seed=seed + i, name=f"dropout_{i}")(x)
    logit = keras.layers.Dense(
        1, name="logit", bias_initializer=keras.initializers.Constant(output_bias)
    )(x)
    probability = keras.layers.Activation("sigmoid", name="fraud_probability")(logit)
    model = keras.Model(inputs, probability, name="lamina_fraud_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        weighted_metrics=[],
        metrics=[keras.metrics.AUC(name="auc")],
        steps_per_execution=params.steps_per_execution,
    )
    return model


def make_dataset(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, *, batch_size: int, seed: int,
    repeat: bool = False,
) -> Any:
    """A deterministic, seeded, shuffled tf.data pipeline of (x, y, weight)."""
    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((x, y.reshape(-1, 1), weights))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=repeat).prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    # The data is already sharded per worker (by Spark); tf.distribute must
    # not shard it again.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    return ds.with_options(options)


def seed_everything(seed: int) -> None:
    """Python, NumPy and TF seeds, and deterministic TF kernels (per process)."""
    tf = tensorflow()
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def correct_prior(model: Any, pos_weight: float) -> None:
    """Undo the log-odds shift that weighting positives by `pos_weight` causes."""
    if pos_weight == 1.0:
        return
    layer = model.get_layer("logit")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias - np.float32(math.log(pos_weight))])


def weighted_prior_logit(positives: int, rows: int, pos_weight: float) -> float:
    p = positives * pos_weight / (positives * pos_weight + (rows - positives))
    return float(math.log(p / (1.0 - p)))


def train_local(
    train_df: Any, features: Sequence[str], params: TrainParams | dict[str, Any] | None = None,
    seed: int = 42,
) -> tuple[Any, dict[str, list[float]]]:
    """Train the MLP in this process.

    `train_df` (pandas or pyarrow) has the feature columns and a 0/1 `label`.
    Returns the trained Keras model (calibrated: prior correction applied) and
    the per-epoch history (`loss`, `auc`, `epoch_seconds`, `examples_per_s`).
    For a given seed, data and params the weights are bit-identical from run
    to run on CPU (seeded shuffle and initialisers, deterministic kernels).
    """
    p = TrainParams.from_dict(params)
    arrays = training_arrays(train_df, features)
    seed_everything(seed)
    w_pos = positive_weight(p, arrays.rows, arrays.positives)
    model = build_model(
        len(arrays.features), p, mean=arrays.mean, variance=arrays.variance,
        output_bias=weighted_prior_logit(arrays.positives, arrays.rows, w_pos), seed=seed,
    )
    weights = np.where(arrays.y > 0, np.float32(w_pos), np.float32(1.0)).astype(np.float32)
    ds = make_dataset(arrays.x, arrays.y, weights, batch_size=p.batch_size, seed=seed)
    timer = epoch_timer()
    history = model.fit(ds, epochs=p.epochs, verbose=0, callbacks=[timer])
    correct_prior(model, w_pos)
    return model, history_dict(history.history, timer.seconds, arrays.rows)


def epoch_timer() -> Any:
    """A Keras callback that records each epoch's wall time in `.seconds`."""
    base: Any = tensorflow().keras.callbacks.Callback

    class EpochTimer(base):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._began = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self._began)

    return EpochTimer()


def history_dict(
    history: dict[str, Any], epoch_seconds: list[float], rows_per_epoch: int
) -> dict[str, list[float]]:
    """Keras history as plain floats, plus `epoch_seconds` and
    `examples_per_s` per epoch (the first epoch includes tracing the graph)."""
    out = {k: [float(v) for v in vs] for k, vs in history.items()}
    out["epoch_seconds"] = [float(s) for s in epoch_seconds]
    out["examples_per_s"] = [rows_per_epoch / s for s in epoch_seconds if s > 0]
    return out
