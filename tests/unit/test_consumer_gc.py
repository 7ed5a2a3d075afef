"""The consumer's garbage-collector setting is applied and always restored."""

from __future__ import annotations

import gc

import pytest

from lamina.consumer import CONSUMER_GC_THRESHOLD, consumer_gc


def test_consumer_gc_raises_the_first_threshold_and_restores_all_three() -> None:
    before = gc.get_threshold()
    with consumer_gc():
        inside = gc.get_threshold()
    assert inside == (CONSUMER_GC_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


def test_consumer_gc_restores_the_thresholds_when_the_block_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), consumer_gc(12_345):
        assert gc.get_threshold()[0] == 12_345
        raise RuntimeError("the consumer failed")
    assert gc.get_threshold() == before
