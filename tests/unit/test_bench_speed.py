"""The speed-layer benchmark's pure parts: the stream is exactly the records
at or after the cutoff (the batch view holds the rest, each valid event in
one of the two), the table puts every figure next to its same-run reference
with ratios and per-CPU-second rates, and bad arguments are refused."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import orjson
import pytest

from benchmarks.common import Timed
from benchmarks.run import parse_args
from benchmarks.speed import (
    SCORING_BATCHES,
    ScoringFigure,
    SpeedResults,
    SpeedRun,
    StallWatch,
    build_data,
    speed_notes,
    speed_rows,
)
from lamina.generator import GeneratorConfig, generate


def test_the_stream_is_every_record_at_or_after_the_cutoff_and_the_batch_view_the_valid_rest():
    data = build_data(2000)
    config = GeneratorConfig(seed=42, transactions=3000, cards=40, days=3.0,
                             max_lateness_ms=20 * 60_000)
    records = list(generate(config))
    valid = [orjson.loads(r.value) for r in records if r.kind == "valid"]
    before = [e for e in valid if e["event_time"] < data.cutoff_ms]
    assert [e["event_id"] for e in data.batch_events] == [e["event_id"] for e in before]
    assert len(data.stream) + len(data.batch_events) + sum(
        1 for r in records if r.kind != "valid" and r.kind != "malformed"
        and orjson.loads(r.value)["event_time"] < data.cutoff_ms) == len(records)
    streamed = {v for _, v in data.stream}
    assert all(r.value in streamed for r in records if r.kind == "malformed")
    assert data.stream_transactions == sum(
        1 for e in valid if e["event_time"] >= data.cutoff_ms and e["event_type"] == "transaction")
    assert data.horizon_ms > data.cutoff_ms


def results() -> SpeedResults:
    data = SimpleNamespace(stream=[(None, b"x")] * 1000, describe=lambda: "test data")
    stats = SimpleNamespace(scored=900, poll_s=1.0, apply_s=6.0, score_s=2.0, write_s=1.0,
                            validate_s=0.5, seed_s=0.25, drain_s=1.25)
    out = SpeedResults(data)  # type: ignore[arg-type]
    out.raw = [Timed(100_000, 4.0, 2.0), Timed(100_000, 5.0, 2.0)]  # best 25,000 ev/s
    out.runs = {"sqlite": [SpeedRun("sqlite", Timed(100_000, 10.0, 8.0), stats)]}
    out.scoring = [ScoringFigure(b, Timed(1000, 1.0, 1.0), Timed(4000, 1.0, 1.0),
                                 Timed(3000, 1.0, 1.0)) for b in SCORING_BATCHES]
    return out


def test_rows_put_each_figure_next_to_its_reference_as_ratio_and_absolute():
    rows = {r.figure: r for r in speed_rows(results())}
    raw = rows["speed: kafka-python raw consume (reference)"]
    assert raw.value == "25,000 ev/s" and raw.ratio == "1.00×"
    run = rows["speed layer, scored events (sqlite)"]
    assert run.value == "10,000 ev/s" and run.ratio == "0.40×" and run.target == "≥ 0.3×"
    assert run.note.startswith("target met;")
    assert "per CPU second 12,500 ev/s vs raw 50,000 (0.25×)" in run.note
    apply = rows["speed layer time (sqlite): apply"]
    assert apply.value == "6.00 s" and apply.ratio == "60%"
    # Its parts, the online state being what the other three leave.
    state = rows["speed layer time (sqlite): apply: online state"]
    assert state.value == "4.00 s" and state.ratio == "40%"
    assert rows["speed layer time (sqlite): apply: drain"].value == "1.25 s"
    at_1000 = rows["scoring, model call at batch 1,000"]
    assert at_1000.ratio == "0.75×" and at_1000.note.startswith("target met;")
    assert rows["scoring, model call at batch 1"].target == "—"
    whole = rows["scoring, score_batch at batch 1,000"]  # for the record, no target
    assert whole.ratio == "0.25×" and whole.target == "—"
    assert rows["scoring, score_batch at batch 1"].target == "—"
    assert speed_notes(results())[0] == "Speed data: test data."


def test_speed_arguments_are_checked(capsys: pytest.CaptureFixture[str]):
    args = parse_args(["--only", "speed", "--speed-events", "5000", "--speed-stores", "sqlite"])
    assert args.suites == {"speed"} and args.speed_events == 5000
    assert args.speed_stores == ("sqlite",)
    for bad in (["--speed-stores", "postgres"], ["--speed-events", "10"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(bad)
        assert exit_info.value.code == 2
    assert "--speed-stores" in capsys.readouterr().err


class _Layer:
    """A stand-in for SpeedLayer: the watch reads ``stats.consumed`` and
    calls ``stop()``, nothing else."""

    def __init__(self) -> None:
        self.stats = SimpleNamespace(consumed=0)
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()


def test_a_run_that_reads_nothing_new_is_stopped_and_one_that_progresses_is_not():
    stuck = _Layer()
    with StallWatch(stuck, 0.2, tick_s=0.02) as watch:
        assert stuck.stopped.wait(5)
    assert watch.stalled

    moving = _Layer()
    with StallWatch(moving, 5.0, tick_s=0.02) as watch:
        for _ in range(30):  # consumes something every 20 ms for 0.6 s
            moving.stats.consumed += 1
            time.sleep(0.02)
    assert not watch.stalled and not moving.stopped.is_set()
