"""Validation alone: each of the validator's paths over the loaded values, in
memory, on this thread (one core when pinned). Constructing the validator
(building the structs, compiling the schemas) is not timed; parsing and
validating every value is.

The paths (`VALIDATION_PATHS`): the lander's call (`validate_envelope`: the
typed decoder, the reference for what it does not accept, no payload dict),
`validate` (the same, building the payload dict) and the reference alone
(`EventValidator(typed=False).validate`: orjson + fastjsonschema + the
integer check, which decided every event before issue 11).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.common import BenchmarkError, Timed
from lamina.schemas.validation import EventValidator, Rejected

# figure name -> how to get the function from a fresh validator
VALIDATION_PATHS: dict[str, Callable[[], Callable[[bytes], Any]]] = {
    "typed, envelope only (EventValidator.validate_envelope, the lander's call)":
        lambda: EventValidator().validate_envelope,
    "typed, with the payload dict (EventValidator.validate)":
        lambda: EventValidator().validate,
    "reference alone (EventValidator(typed=False): orjson + fastjsonschema)":
        lambda: EventValidator(typed=False).validate,
}


def validation_rate(values: Sequence[bytes], expected_valid: int, path: str) -> Timed:
    """Time validating `values` with the path named `path` (a key of
    VALIDATION_PATHS); raise BenchmarkError unless exactly `expected_valid`
    of them pass (else the figure measured the wrong path)."""
    validate = VALIDATION_PATHS[path]()
    gc.collect()
    began, began_cpu = time.perf_counter(), time.thread_time()
    rejected = 0
    for raw in values:
        if type(validate(raw)) is Rejected:
            rejected += 1
    elapsed, cpu = time.perf_counter() - began, time.thread_time() - began_cpu
    valid = len(values) - rejected
    if valid != expected_valid:
        raise BenchmarkError(f"{path}: passed {valid:,} of {len(values):,} values, "
                             f"expected {expected_valid:,}")
    return Timed(len(values), elapsed, cpu)

