"""`lamina.models` stands alone: the speed layer and serving can load and
score the champion without the batch layer (ARCHITECTURE.md, "Where the
shared pieces live"). test_layering checks the import statements; this
checks what an import really loads, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = """
import json, sys
import lamina.models, lamina.models.registry, lamina.models.saved_model
import lamina.models.scoring, lamina.models.tf
print(json.dumps(sorted(sys.modules)))
"""


def _modules_loaded_by_importing_lamina_models() -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_lamina_models_imports_no_layer_and_neither_tensorflow_nor_mlflow() -> None:
    loaded = _modules_loaded_by_importing_lamina_models()
    layers = ("lamina.batch", "lamina.master", "lamina.speed", "lamina.serving")
    assert [m for m in loaded if m.startswith(layers)] == []
    # TensorFlow and MLflow are imported when a model is loaded or the
    # registry is used, not when the package is.
    assert [m for m in loaded if m.split(".")[0] in ("tensorflow", "mlflow", "tf_keras")] == []
    assert "lamina.models.registry" in loaded
