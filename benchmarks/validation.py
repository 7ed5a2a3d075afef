"""Validation alone: `EventValidator.validate` over the loaded values, in
memory, on this thread (one core when pinned). Constructing the validator
(compiling the schemas) is not timed; parsing and validating every value is.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

from benchmarks.common import BenchmarkError, Timed
from lamina.schemas.validation import EventValidator, ValidEvent


def validation_rate(values: Sequence[bytes], expected_valid: int) -> Timed:
    """Time validating `values`; raise BenchmarkError unless exactly
    `expected_valid` of them pass (else the figure measured the wrong path)."""
    validate = EventValidator().validate
    gc.collect()
    began, began_cpu = time.perf_counter(), time.thread_time()
    valid = 0
    for raw in values:
        if type(validate(raw)) is ValidEvent:
            valid += 1
    elapsed, cpu = time.perf_counter() - began, time.thread_time() - began_cpu
    if valid != expected_valid:
        raise BenchmarkError(f"the validator passed {valid:,} of {len(values):,} values, "
                             f"expected {expected_valid:,}")
    return Timed(len(values), elapsed, cpu)
