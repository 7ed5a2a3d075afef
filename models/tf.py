"""TensorFlow, imported one way for every layer: ``tensorflow()``.

It sets ``TF_USE_LEGACY_KERAS=1`` before the first import, so ``tf.keras``
is tf-keras: Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy
(ARCHITECTURE.md, "Known facts"). Nothing in Lamina imports TensorFlow at
module level; every module that needs it calls ``tensorflow()`` when it
does, so importing Lamina's modules stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from lamina.logs import get_logger
from lamina.models.errors import ModelError

_TF: Any = None
log = get_logger(__name__)


#: What TensorFlow prints while it looks for a GPU on a machine without a
#: CUDA driver (TF 2.21): that no driver was found, absl's notice that early
#: messages go to stderr, and then an ERROR "failed call to cuInit". Facts
#: about the machine, not failures: training runs on the CPU.
_NO_CUDA_DRIVER = re.compile(r"Could not find cuda drivers on your machine")
_GPU_PROBE_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|Could not find cuda drivers on your machine"
)
_CUINIT_FAILED = re.compile(r"failed call to cuInit")


def gpu_probe_output(text: str) -> tuple[str, bool]:
    """Split what TensorFlow wrote to stderr while importing and probing for
    a GPU into (what to show, whether no CUDA driver was found). Only the
    known no-driver lines are dropped, and the cuInit error only when there
    is no driver at all: with a driver, a cuInit failure is a real problem
    and is kept, as is every other line."""
    lines = text.splitlines(keepends=True)
    no_driver = any(_NO_CUDA_DRIVER.search(line) for line in lines)
    kept = [line for line in lines
            if not _GPU_PROBE_NOISE.search(line)
            and not (no_driver and _CUINIT_FAILED.search(line))]
    return "".join(kept), no_driver


@contextlib.contextmanager
def _stderr_through(sieve: Callable[[str], str]) -> Iterator[None]:
    """Collect everything written to file descriptor 2 (C++ libraries
    included) while the block runs, then write what `sieve` keeps of it to
    stderr, also if the block raised. Output of other threads meanwhile is
    delayed, not lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = sieve(capture.read().decode("utf-8", "replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def tensorflow() -> Any:
    """Import TensorFlow with tf-keras as `tf.keras` (once per process).

    On a machine without a CUDA driver TensorFlow's lines about the missing
    GPU (a "failed call to cuInit" ERROR among them) are dropped and one
    INFO line says that it runs on the CPU; anything else TensorFlow prints
    meanwhile is shown, and TF_CPP_MIN_LOG_LEVEL=2 keeps its later errors."""
    global _TF
    if _TF is None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        found: list[bool] = []

        def sieve(text: str) -> str:
            kept, no_driver = gpu_probe_output(text)
            found.append(no_driver)
            return kept

        with _stderr_through(sieve):
            import tensorflow as tf

            # The GPU probe (cuInit) runs on first use of a device: do it here.
            gpus = tf.config.list_physical_devices("GPU")
        if found and found[0]:
            log.info("tensorflow runs on the CPU (no CUDA driver on this machine)")
        else:
            log.debug("tensorflow devices probed", gpus=len(gpus))
        if not tf.keras.__name__.startswith("tf_keras"):
            raise ModelError(
                "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set, so tf.keras "
                "is Keras 3; import TensorFlow through lamina.models.tf.tensorflow()"
            )
        _TF = tf
    return _TF

