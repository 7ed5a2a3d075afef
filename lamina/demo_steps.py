"""The steps of `lamina demo`'s full loop (lamina/demo.py calls them in
order): the batch side (views published into the tile store, training
sets, training, the gate), the live side (``LiveRun``: the speed layer,
serving, the stream's legs, the live AUC) and the report."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina import demo_loop as loop
from lamina.config import Settings

if TYPE_CHECKING:
    from lamina.demo import _DemoStep

_DAY_MS = 86_400_000


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M") if ms % _DAY_MS else moment.strftime("%Y-%m-%d")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


# --- the batch side ---------------------------------------------------------------


def batch_views_and_publish(spark: Any, demo: Settings) -> int:
    """Batch views of the latest snapshot, then that view published into
    the demo's tile store; returns the snapshot."""
    from lamina.batch.store_publish import publish_to_store
    from lamina.batch.views import batch_run_command
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.stores import open_store

    views = batch_run_command(demo, None, None, None)
    print(f"      {views['status']} {views['rows']:,} tile rows from snapshot "
          f"{views['snapshot']}, cutoff {_iso(views['cutoff_ms'])}, as version "
          f"{views['version']} of {views['views_uri']} ({views['seconds']:.1f} s)")
    with open_store(demo.tile_store.kind, **demo.tile_store_options()) as store:
        published = publish_to_store(spark, views["views_uri"], store, CARD_VIEWS,
                                     publish_interval_ms=loop.DEMO_PUBLISH_INTERVAL_MS)
    view = published.plan.view
    print(f"      {published.status} into the tile store: {published.records or 0:,} card "
          f"records, cutoff {_iso(view.cutoff_ms)}, answering until {_iso(view.horizon_ms)} "
          f"({published.seconds:.1f} s)")
    return int(views["snapshot"])


def training_sets(spark: Any, demo: Settings, snapshot: int, which: str,
                  train: tuple[int, int], backtest: tuple[int, int],
                  maturity_ms: int) -> dict[str, str]:
    """A training set and a backtest (``which`` "first": folders ``train``
    and ``backtest``, else ``post-drift-train``/``-backtest``)."""
    from lamina.batch.commands import read_table
    from lamina.batch.training_set import write_training_set

    prefix = "" if which == "first" else "post-drift-"
    sets: dict[str, str] = {}
    for name, (start, end) in (("train", train), ("backtest", backtest)):
        out = str(Path(demo.training_sets_uri) / f"{prefix}{name}")
        meta = write_training_set(spark, demo.master_uri, out, snapshot=snapshot,
                                  start_ms=start, end_ms=end, label_maturity_ms=maturity_ms)
        labels = read_table(out)["label"]
        print(f"      {name:<9} {_iso(start)} to {_iso(end)}: {len(labels):,} rows, "
              f"{int(labels.sum()):,} fraud -> {out} ({meta.built_seconds or 0:.1f} s)")
        sets[name] = out
    return sets


def train(demo: Settings, training_set: str, snapshot: int) -> int:
    from lamina.batch.commands import train_command

    trained = train_command(training_set, models_dir=demo.models_uri,
                            registry=demo.registry_uri, snapshot_id=snapshot)
    auc = (trained["history"].get("auc") or [None])[-1]
    print(f"      version {trained['version']}: {trained['rows']:,} rows, "
          f"{trained['positives']:,} fraud, training ROC AUC "
          f"{'n/a' if auc is None else f'{auc:.3f}'} ({trained['seconds']:.1f} s)")
    return int(trained["version"])


def gate(demo: Settings, backtest: str, version: int) -> int | None:
    """Evaluate ``version`` on ``backtest`` against the champion and apply
    the gate; returns the champion after it."""
    from lamina.batch.commands import evaluate_command

    result = evaluate_command(backtest, registry=demo.registry_uri, candidate=version)
    metrics = result["candidate_metrics"]
    print(f"      ROC AUC {metrics['roc_auc']:.3f}, PR AUC {metrics['pr_auc']:.3f}, "
          f"log loss {metrics['log_loss']:.4f}, ECE {metrics['ece']:.4f} on "
          f"{int(metrics['n']):,} rows ({int(metrics['positives']):,} fraud)")
    champion = result["champion_metrics"]
    if champion:
        print(f"      the champion (version {result['champion_before']}) on the same rows: "
              f"ROC AUC {champion['roc_auc']:.3f}")
    if result["champion_after"] == version:
        print(f"      promoted: version {version} is the champion")
    else:  # another --seed or size can leave the backtest too thin for the gate
        print(f"      not promoted; the champion stays {result['champion_after']}; "
              "the gate's reasons:")
    for reason in result["reasons"]:
        print(f"        {reason}")
    after = result["champion_after"]
    return None if after is None else int(after)


def list_registry(demo: Settings) -> None:
    from lamina.batch.commands import models_command

    listed = models_command("list", registry=demo.registry_uri)
    print(f"{'version':>7}  {'champion':<8}  {'gate':<10}  {'snapshot':>8}  "
          f"{'train rows':>10}  created")
    for row in listed:
        rows = row["metrics"].get("train_rows")
        print(f"{row['version']:>7}  {'yes' if row['champion'] else '':<8}  "
              f"{row['gate'] or '':<10}  {row['snapshot_id']!s:>8}  "
              f"{'' if rows is None else f'{int(rows):,}':>10}  {row['created']}")


# --- the live side ------------------------------------------------------------------


class LiveRun:
    """The speed layer, the serving API and what the live stream measured."""

    def __init__(self, demo: Settings, config: Any, timeline: loop.DemoTimeline,
                 facts: loop.StreamFacts, producer: loop.StreamProducer, rate: float,
                 progress: bool) -> None:
        self.demo, self.config, self.timeline, self.facts = demo, config, timeline, facts
        self.producer, self.rate, self.progress = producer, rate, progress
        self.speed: loop.SpeedProcess | None = None
        self.serving: loop.ServingThread | None = None
        self.lookups = loop.LookupStats()
        self.first_champion: int | None = None
        self.second_champion: int | None = None
        self.promoted_at = 0.0
        self.scores: dict[str, dict[str, Any]] = {}
        self.windows: list[loop.AucWindow] = []
        self.swap_event_ms: int | None = None

    def start(self) -> None:
        from lamina.schemas.card_views import CARD_VIEWS

        demo = self.demo
        settings_file = loop.write_settings_file(demo, demo.home / "speed" / "lamina.toml",
                                                 champion_poll_s=1.0, metrics_interval_s=0.5)
        began = time.monotonic()
        self.speed = loop.SpeedProcess(settings_file, demo.speed_metrics_path,
                                       demo.home / "speed" / "speed.log")
        clock = self.producer
        self.serving = loop.ServingThread(demo, lambda: clock.clock_ms + 1)
        self.group = CARD_VIEWS.name
        self.speed.wait_caught_up(self.producer.sent, timeout_s=180)
        scored = int(self.speed.metric("scored_total") or 0)
        print(f"      speed layer caught up with the {self.producer.sent:,} history records "
              f"in {time.monotonic() - began:.1f} s ({scored:,} after the batch cutoff "
              f"scored by version {int(self.speed.metric('model_version') or -1)}); "
              f"serving at {self.serving.url}")

    def close(self) -> None:
        if self.serving is not None:
            self.serving.stop()
        if self.speed is not None:
            code = self.speed.stop()
            if code not in (0, -15):
                print(f"      the speed layer exited with {code}; its log: "
                      f"{self.speed.log_path}")

    def print_auc(self, title: str) -> None:
        kafka = self.demo.kafka
        self.scores = loop.read_scores(kafka.bootstrap_servers, kafka.scores_topic)
        self.windows = loop.auc_windows(self.scores.values(), self.facts,
                                        as_of=self.producer.clock_ms,
                                        maturity_ms=self.timeline.label_maturity_ms)
        print(f"      {title}:")
        print(f"      {'event-time window':<42}{'model':>6}{'labelled':>10}{'fraud':>7}"
              f"{'ROC AUC':>9}")
        for w in self.windows:
            if w.start_ms < self.timeline.history_end_ms:
                continue  # history scored while catching up: not the live stream
            mark = "  <- drift" if w.start_ms <= self.timeline.drift_at_ms < w.end_ms else ""
            auc = "   n/a" if w.roc_auc is None else f"{w.roc_auc:9.3f}"
            print(f"      {_when(w.start_ms)} to {_when(w.end_ms):<22}"
                  f"{'v' + str(w.model_version):>6}"
                  f"{w.n:>10,}{w.positives:>7}{auc}{mark}")

    def print_swap(self) -> None:
        newer = [r for r in self.scores.values()
                 if self.second_champion is not None
                 and r["model_version"] == self.second_champion]
        if not newer:
            print("      no score by a second champion: the speed layer did not swap")
            return
        first = min(newer, key=lambda r: r["scored_at"])
        self.swap_event_ms = int(first["event_time"])
        after = (first["scored_at"] / 1000 - self.promoted_at)
        print(f"      swapped to version {self.second_champion}: its first score at event "
              f"time {_iso(self.swap_event_ms)}, {after:.1f} s after the gate started; "
              f"{len(newer):,} events scored by it")


def stream_leg(run: LiveRun, records: list[Any], *, lookups: int) -> None:
    """Send one leg at the run's rate, ``lookups`` serving lookups while it
    flows; returns when the speed layer has caught up with it."""
    assert run.speed is not None and run.serving is not None
    producer, began = run.producer, time.monotonic()
    before = int(run.speed.metric("scored_total") or 0)
    producer.rate = run.rate
    producer.start(records)
    if lookups:
        from lamina.schemas.card_views import CARD_VIEWS

        # Cards that transacted in the history: known to the batch view.
        known = run.facts.cards[:run.facts.cards_by_leg[0]]
        loop.run_lookups(run.serving.url, run.serving.token, CARD_VIEWS.name,
                         known, run.lookups, count=lookups,
                         while_running=producer.running)
    producer.join()
    sent_s = time.monotonic() - began
    run.speed.wait_caught_up(producer.sent)
    scored = int(run.speed.metric("scored_total") or 0) - before
    p99 = run.speed.metric("produce_to_score_ms", quantile="0.99")
    print(f"      sent {len(records):,} records in {sent_s:.1f} s; the speed layer scored "
          f"{scored:,} transactions (produce-to-score p99 "
          f"{'n/a' if p99 is None else f'{p99:.0f} ms'}, lag back to 0 "
          f"{time.monotonic() - began - sent_s:.1f} s after the last send)")
    if lookups:
        stats = run.lookups
        print(f"      serving: {len(stats.latency_ms):,} lookups, half features, half "
              f"scores ({stats.scores_seen:,} scores returned; 404 for "
              f"{stats.unknown_features} feature and {stats.unknown_scores} score lookups, "
              f"{len(stats.errors)} errors), p50 {_pct(stats.latency_ms, 50)}, "
              f"p99 {_pct(stats.latency_ms, 99)}")
        for error in stats.errors[:3]:
            print(f"        {error}")


def _pct(values: list[float], q: float) -> str:
    from lamina.demo_report import percentile

    value = percentile(values, q)
    return "n/a" if value is None else f"{value:.1f} ms"


def _mean_auc(windows: list[loop.AucWindow]) -> str:
    values = [w.roc_auc for w in windows if w.roc_auc is not None]
    return "n/a" if not values else f"{sum(values) / len(values):.3f} over {len(values)} windows"


def phase_aucs(run: LiveRun) -> dict[str, str]:
    """Mean live AUC: the first champion before and after the drift, the
    second after the swap (windows of the live stream only)."""
    tl = run.timeline
    live = [w for w in run.windows if w.start_ms >= tl.history_end_ms]
    first, second = run.first_champion, run.second_champion
    return {
        f"live AUC v{first} before the drift": _mean_auc(
            [w for w in live if w.model_version == first and w.end_ms <= tl.drift_at_ms]),
        f"live AUC v{first} after the drift": _mean_auc(
            [w for w in live if w.model_version == first and w.start_ms >= tl.drift_at_ms]),
        f"live AUC v{second} after the swap": _mean_auc(
            [w for w in live if w.model_version == second and w.model_version != first]),
    }


def write_report(run: LiveRun, step: _DemoStep, began: float) -> Path:
    from lamina.demo_report import ReportData, render_report

    tl, config = run.timeline, run.config
    by_version: dict[str, list[float]] = {}
    latencies: list[float] = []
    for record in run.scores.values():
        by_version.setdefault(f"v{record['model_version']}", []).append(float(record["score"]))
        if record["event_time"] >= tl.history_end_ms:
            latencies.append(float(record["produce_to_score_ms"]))
    marks = {"drift": tl.drift_at_ms}
    if run.swap_event_ms is not None:
        marks[f"swap to v{run.second_champion}"] = run.swap_event_ms
    summary = {
        "generated": f"{config.transactions:,} transactions, {config.cards:,} cards, "
                     f"{_iso(config.start)} to {_iso(config.end_ms)}, seed {config.seed}",
        "drift of the fraud pattern": _iso(tl.drift_at_ms),
        "history landed before the stream": f"to {_iso(tl.history_end_ms)}",
        "retrained at (event time)": _iso(tl.retrain_at_ms),
        "champion before / after": f"v{run.first_champion} / v{run.second_champion}",
        "scores by model version": ", ".join(f"{v}: {len(s):,}"
                                             for v, s in sorted(by_version.items())),
        **phase_aucs(run),
        "served lookups p50 / p99": f"{_pct(run.lookups.latency_ms, 50)} / "
                                    f"{_pct(run.lookups.latency_ms, 99)}",
        "produce-to-score p50 / p99": f"{_pct(latencies, 50)} / {_pct(latencies, 99)}",
        "demo wall time so far": f"{time.monotonic() - began:.0f} s",
    }
    for name, value in summary.items():
        print(f"      {name}: {value}")
    data = ReportData(
        title=f"Lamina demo (seed {config.seed})", summary=summary, steps=list(step.times),
        scores=by_version,
        auc=[(w.end_ms, w.roc_auc, f"v{w.model_version}") for w in run.windows
             if w.roc_auc is not None and w.start_ms >= tl.history_end_ms],
        marks=marks, lag=run.speed.lag if run.speed else [],
        score_latency_ms=latencies, lookup_latency_ms=run.lookups.latency_ms)
    facts = {
        "report": str(run.demo.home / "report.html"),
        "first_champion": run.first_champion, "second_champion": run.second_champion,
        "drift_at_ms": tl.drift_at_ms, "history_end_ms": tl.history_end_ms,
        "retrain_at_ms": tl.retrain_at_ms, "swap_event_ms": run.swap_event_ms,
        "scores_by_version": {v: len(s) for v, s in sorted(by_version.items())},
        "lookups": len(run.lookups.latency_ms), "lookup_errors": len(run.lookups.errors),
        "auc_windows": [dataclasses.asdict(w) for w in run.windows],
    }
    (run.demo.home / "demo-summary.json").write_text(json.dumps(facts, indent=2) + "\n",
                                                     encoding="utf-8")
    return render_report(data, run.demo.home / "report.html")
