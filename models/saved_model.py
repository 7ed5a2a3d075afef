"""A model on disk: a TensorFlow SavedModel directory and its model card.

``save_model`` writes the directory in tf-keras' SavedModel format
(loadable as a Keras model and as a plain SavedModel with a
``serving_default`` signature) and, beside it, the model card
``lamina_model.json``; ``load_model`` and ``model_card`` read them back.
The card is written and read only here, so its format has one definition.

The card is a JSON object:

- ``features``: the feature names in the order the model consumes them;
- ``params``: the training parameters (JSON), or null;
- ``seed``: the training seed, or null;
- ``tensorflow``: the TensorFlow version that saved the model;
- whatever the trainer adds (``extra``: e.g. ``history``, ``snapshot_id``,
  ``run_key``, ``trained_by``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina.models.errors import ModelError
from lamina.models.tf import tensorflow

# Written next to the SavedModel: what the model consumes and how it was made.
MODEL_CARD = "lamina_model.json"
#: The file that makes a directory a SavedModel.
SAVED_MODEL_PB = "saved_model.pb"


def save_model(
    model: Any, path: str | Path, *, features: Sequence[str],
    params: Mapping[str, Any] | None = None, seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a Keras model as a SavedModel directory at `path` with its model
    card (see the module docstring; `extra`'s keys are added to the card).
    Refuses (ModelError) to overwrite an existing non-empty directory. The
    directory appears complete or not at all (written beside it, then
    renamed). Returns `path`."""
    tf = tensorflow()
    target = Path(path)
    if target.exists() and any(target.iterdir()):
        raise ModelError(f"{target} exists and is not empty; choose a new model directory")
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(str(tmp), save_format="tf", include_optimizer=False)
    card = {
        "features": list(features),
        "params": dict(params) if params is not None else None,
        "seed": seed,
        "tensorflow": tf.__version__,
        **(extra or {}),
    }
    (tmp / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True))
    if target.exists():
        target.rmdir()
    tmp.rename(target)
    return target


def load_model(path: str | Path) -> Any:
    """Load a model saved by `save_model` as a Keras model (no optimizer).
    ModelError if `path` is not a SavedModel directory."""
    tf = tensorflow()
    target = Path(path)
    if not (target / SAVED_MODEL_PB).exists():
        raise ModelError(f"{target} is not a saved model (no {SAVED_MODEL_PB})")
    return tf.keras.models.load_model(str(target), compile=False)


def model_card(path: str | Path) -> dict[str, Any]:
    """The model card saved with the model in `path` (see the module
    docstring). ModelError if there is none."""
    card_path = Path(path) / MODEL_CARD
    if not card_path.exists():
        raise ModelError(f"{path} has no {MODEL_CARD}")
    return dict(json.loads(card_path.read_text()))


def has_model_card(path: str | Path) -> bool:
    """Whether `path` holds a model saved by `save_model` (its directory
    is renamed into place complete, card included)."""
    return (Path(path) / MODEL_CARD).exists()
