"""The speed layer's Prometheus metrics: the quantile maths, the text
format, the atomic file, the HTTP endpoint and ``lamina speed status``."""

from __future__ import annotations

import math
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from lamina.cli import main
from lamina.speed.metrics import (
    LatencyWindow,
    MeteredSink,
    Snapshot,
    SpeedMetrics,
    parse,
    quantile,
    render,
    status_lines,
    write_atomically,
)
from lamina.speed.realtime import SpeedStats


def test_nearest_rank_quantiles_of_known_values() -> None:
    values = list(range(1, 101))  # 1..100
    assert quantile(values, 0.5) == 50
    assert quantile(values, 0.9) == 90
    assert quantile(values, 0.99) == 99
    assert quantile(values, 0.999) == 100
    assert quantile(values, 0.0) == 1 and quantile(values, 1.0) == 100
    assert quantile([7], 0.5) == 7 and quantile([7], 0.999) == 7
    assert math.isnan(quantile([], 0.5))
    with pytest.raises(ValueError, match="within"):
        quantile(values, 1.5)


def test_the_latency_window_keeps_the_recent_values_and_counts_them_all() -> None:
    window = LatencyWindow(size=10)
    window.add(range(1000, 1100))  # old, slow scores ...
    window.add(range(1, 11))  # ... then ten fast ones fill the window
    assert window.count == 110 and window.total == sum(range(1000, 1100)) + 55
    assert window.quantiles((0.5, 0.99)) == {0.5: 5.0, 0.99: 10.0}


def test_a_metered_sink_records_latency_only_for_scores_that_went_out() -> None:
    class Failing:
        def send(self, records: object, encoded: object = None) -> None:
            raise RuntimeError("broker gone")

    class Ok:
        def send(self, records: object, encoded: object = None) -> None:
            pass

    window = LatencyWindow()
    scores = [SimpleNamespace(produce_to_score_ms=ms) for ms in (3, 5, 40)]
    with pytest.raises(RuntimeError):
        MeteredSink(Failing(), window).send(scores)
    assert window.count == 0
    MeteredSink(Ok(), window).send(scores)
    assert window.count == 3 and window.quantiles((0.5,)) == {0.5: 5.0}


def stats(**values: object) -> SpeedStats:
    out = SpeedStats()
    for name, value in values.items():
        setattr(out, name, value)
    return out


def snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = dict(
        stats=stats(consumed=120, applied=100, late=4, duplicates=3, invalid=7, future=2,
                    before_cutoff=1, other_types=3, scored=90, unscored_no_champion=10,
                    commits=6, model_version=3, cutoff_ms=1_767_225_600_000,
                    invalid_reasons={"bad_json": 5, "unknown_schema_version": 2}),
        lag={("events.raw", 0): 12, ("events.raw", 1): 0},
        events_per_second=250.5, latencies={0.5: 4.0, 0.99: 18.0},
        latency_count=90, latency_sum=510, written_at_s=1_767_225_600.25)
    base.update(changes)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_the_exposition_is_prometheus_text_and_parses_back() -> None:
    text = render(snapshot())
    assert text.endswith("\n")
    for line in text.splitlines():  # every family declared before its samples
        if line.startswith("# TYPE"):
            assert line.split()[3] in {"counter", "gauge", "summary"}
    samples = parse(text)
    assert samples[("lamina_speed_records_total", (("outcome", "applied"),))] == 100
    assert samples[("lamina_speed_records_total", (("outcome", "late"),))] == 4
    assert samples[("lamina_speed_records_total", (("outcome", "duplicate"),))] == 3
    assert samples[("lamina_speed_records_total", (("outcome", "future"),))] == 2
    assert samples[("lamina_speed_invalid_total", (("reason", "bad_json"),))] == 5
    assert samples[("lamina_speed_lag_records",
                    (("partition", "0"), ("topic", "events.raw")))] == 12
    assert samples[("lamina_speed_produce_to_score_ms", (("quantile", "0.99"),))] == 18
    assert samples[("lamina_speed_produce_to_score_ms_count", ())] == 90
    assert samples[("lamina_speed_model_version", ())] == 3
    assert samples[("lamina_speed_batches_total", ())] == 6
    assert samples[("lamina_speed_events_per_second", ())] == 250.5
    # Every outcome of SpeedStats' partition of the consumed records is there.
    outcomes = sum(v for (n, _), v in samples.items() if n == "lamina_speed_records_total")
    assert outcomes == 120


def test_no_scores_yet_renders_nan_quantiles_and_model_minus_one() -> None:
    text = render(snapshot(stats=SpeedStats(), latencies={0.5: math.nan}, latency_count=0,
                           latency_sum=0))
    assert 'lamina_speed_produce_to_score_ms{quantile="0.5"} NaN' in text
    assert "lamina_speed_model_version -1" in text
    assert math.isnan(parse(text)[("lamina_speed_produce_to_score_ms", (("quantile", "0.5"),))])


def test_label_values_are_escaped_and_read_back() -> None:
    odd = 'a"b\\c\nd'
    text = render(snapshot(stats=stats(invalid=1, invalid_reasons={odd: 1})))
    assert parse(text)[("lamina_speed_invalid_total", (("reason", odd),))] == 1


def test_a_line_that_is_not_a_sample_is_named() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse("# HELP x y\nthis is not a sample at all\n")


def test_the_file_is_replaced_whole_and_leaves_no_temporary_behind(tmp_path: Path) -> None:
    path = tmp_path / "speed" / "metrics.prom"
    write_atomically(path, "a 1\n")
    write_atomically(path, "a 2\n")
    assert path.read_text() == "a 2\n"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.prom"]


def test_metrics_write_each_interval_and_serve_the_same_text_over_http(tmp_path: Path) -> None:
    clock = [100.0]
    speed_stats = stats(consumed=0)
    metrics = SpeedMetrics(speed_stats, path=tmp_path / "m.prom", interval_s=5.0, port=0,
                           monotonic=lambda: clock[0])
    metrics.lag_source = lambda: {("raw", 0): 9}
    assert metrics.tick() is True  # the first tick writes at once
    speed_stats.consumed = 1000
    clock[0] += 2.0
    assert metrics.tick() is False  # inside the interval
    clock[0] += 3.0
    assert metrics.tick() is True
    samples = parse((tmp_path / "m.prom").read_text())
    assert samples[("lamina_speed_events_per_second", ())] == 200.0  # 1000 in 5 s
    assert samples[("lamina_speed_lag_records", (("partition", "0"), ("topic", "raw")))] == 9

    served = SpeedMetrics(speed_stats, path=None, port=_free_port())
    try:
        served.tick()
        with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics",
                                    timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert response.read().decode() == served.text()
    finally:
        served.close()


def test_a_failing_lag_read_does_not_stop_the_metrics(tmp_path: Path) -> None:
    metrics = SpeedMetrics(stats(), path=tmp_path / "m.prom")

    def broken() -> dict[tuple[str, int], int]:
        raise RuntimeError("consumer closed")

    metrics.lag_source = broken
    assert metrics.tick(force=True)
    assert "lamina_speed_lag_records" in (tmp_path / "m.prom").read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_status_lines_say_what_a_person_needs() -> None:
    lines = status_lines(render(snapshot()), age_s=3.24)
    text = "\n".join(lines)
    assert lines[0] == "written      3.2 s ago"
    assert "model        v3" in text
    assert "applied 100" in text and "late 4" in text and "duplicate 3" in text
    assert "bad_json 5" in text
    assert "p50 4" in text and "p99 18" in text
    assert "lag          12 records" in text and "events.raw[0]  12" in text


def test_lamina_speed_status_says_when_no_speed_layer_wrote_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAMINA_HOME", str(tmp_path))
    assert main(["speed", "status"]) == 1
    out = capsys.readouterr().out
    assert "no speed-layer metrics at" in out and str(tmp_path / "speed" / "metrics.prom") in out

    write_atomically(tmp_path / "speed" / "metrics.prom", render(snapshot()))
    assert main(["speed", "status"]) == 0
    out = capsys.readouterr().out
    assert "s ago" in out and "model        v3" in out

    (tmp_path / "speed" / "metrics.prom").write_text("garbage here\n")
    assert main(["speed", "status"]) == 2
    assert "is not a speed-layer metrics file" in capsys.readouterr().err
