"""Small shared pieces: the error a benchmark raises, a timed count, best-of."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

RAW_TOPIC = "bench.raw"
DLQ_TOPIC = "bench.dlq"
RAW_PARTITIONS = 3


class BenchmarkError(Exception):
    """A benchmark could not run, or measured the wrong thing (the message
    says which and what to do)."""


@dataclass(frozen=True)
class Timed:
    """`events` handled in `seconds` of wall time (and, where measured,
    `cpu_seconds` of this thread's CPU time)."""

    events: int
    seconds: float
    cpu_seconds: float | None = None

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_share(self) -> float | None:
        """CPU time over wall time: near 1.0 on a pinned core means the client
        was busy all along; well below means it waited (for the broker, or
        for other processes sharing the core)."""
        if self.cpu_seconds is None or self.seconds <= 0:
            return None
        return self.cpu_seconds / self.seconds

    @property
    def cpu_rate(self) -> float | None:
        """Events per second of CPU time: what the rate would be with the core
        to ourselves (a busy machine lowers `rate`, not this)."""
        if self.cpu_seconds is None or self.cpu_seconds <= 0:
            return None
        return self.events / self.cpu_seconds


T = TypeVar("T")


def best_of(runs: Sequence[T], rate: Callable[[T], float]) -> T:
    """The run with the highest rate."""
    if not runs:
        raise BenchmarkError("no runs to choose the best of")
    return max(runs, key=rate)


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f} ev/s"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}×"
