"""TensorFlow on a machine without a GPU: no "failed call to cuInit" ERROR
on every command, and nothing else hidden."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROGRAM = """
import logging, sys
from lamina.logs import configure, get_logger
configure("INFO")
from lamina.models.tf import tensorflow
tf = tensorflow()
print(float((tf.constant([1.0]) + 1)[0]))
print("python stderr after the import", file=sys.stderr)
get_logger("lamina.test").error("a real error from Lamina")
"""


def test_tensorflow_prints_no_cuinit_error_and_hides_no_real_error() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"
    assert "cuInit" not in done.stderr, done.stderr
    assert "Could not find cuda drivers" not in done.stderr, done.stderr
    assert "python stderr after the import" in done.stderr
    assert "ERROR lamina.test a real error from Lamina" in done.stderr
