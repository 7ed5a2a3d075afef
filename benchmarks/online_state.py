"""The online point-in-time state: per transaction, the card's features
strictly before it, then the transaction added -- what the speed layer does
per event -- next to the offline sweep computing the same features.

    .venv/bin/python -m benchmarks.run --only online-state
    .venv/bin/python -m benchmarks.online_state --transactions 20000   # a quick print
    .venv/bin/python -m benchmarks.online_state --transactions 50000 --before f6c625a

The data (built once per run, not a figure)
-------------------------------------------
`GeneratorConfig(seed=42, transactions=N, cards=N/100, days=20)` (defaults
otherwise: 1 % of records up to 2 h late); the valid `transaction` events,
parsed, in the generator's order -- the order a producer sends them, so
the arrival order with its out-of-order events. Duplicates and malformed
records are left out (the speed layer's dedup index and validator drop
them before the state).

Figures (events/s = transactions per second of wall time, one core)
-------------------------------------------------------------------
* FeatureSweep -- THE REFERENCE: `lamina.schemas.pit.FeatureSweep` per card
  over the card's events (construction included), `features_before(t)` at
  each event's time in `(event_time, event_id)` order: the offline
  training set's point-in-time features for the same events.
* OnlineState -- one `OnlineState(CARD_VIEWS, card, allowed_lateness_ms=2 h)`
  per card (the generator's largest lateness: every event is applied); per
  event in arrival order `features_before(event_time)` then `add(event)`.
  Every 1,000 events (a micro-batch) the states those events touched are
  drained (`drain_changed_tiles`, what the speed layer writes to the
  store); the drains are timed apart and shown as their own row, not in
  the per-event figure (writing the tiles is `benchmarks/tile_store.py`'s).

Check (fails the run): for every 7th event that no late arrival explains
(no earlier-in-time event of its card arrived after it: invariant 6's
exception), the online features equal the sweep's, value for value
(`repr`, and `0.0 == -0.0` for a min/max).

`--before COMMIT` (the standalone command only) also runs that commit's
`schemas/online.py` (read with `git show`) on the same events, after the
current one in each round: before/after in one process.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import BenchmarkError, Timed, best_of, fmt_rate, fmt_ratio
from benchmarks.report import Row

DEFAULT_TRANSACTIONS = 200_000
QUICK_TRANSACTIONS = 20_000
DAYS = 20
SEED = 42
SAMPLE_EVERY = 7
DRAIN_EVERY = 1000


def say_nothing(_: str) -> None:
    pass


@dataclass
class OnlineData:
    """The events both sides get, and what they are."""

    transactions: int
    cards: int
    lateness_ms: int
    arrivals: list[dict[str, Any]]
    out_of_order: int
    seconds: float

    def describe(self) -> str:
        return (f"{self.transactions:,} valid transactions of {self.cards:,} cards over {DAYS} "
                f"days (generator seed {SEED}), in arrival order; {self.out_of_order:,} arrive "
                f"after a later-in-time transaction of their card; built in "
                f"{self.seconds:.0f} s (not a figure)")


def prepare_data(transactions: int) -> OnlineData:
    import orjson

    from lamina.generator import KIND_VALID, GeneratorConfig, generate

    started = time.monotonic()
    config = GeneratorConfig(seed=SEED, transactions=transactions,
                             cards=max(10, transactions // 100), days=float(DAYS))
    arrivals = [payload for record in generate(config) if record.kind == KIND_VALID
                for payload in (orjson.loads(record.value),)
                if payload.get("event_type") == "transaction"]
    newest: dict[str, int] = {}
    out_of_order = 0
    for event in arrivals:
        card, t = event["card_id"], event["event_time"]
        if t < newest.get(card, t):
            out_of_order += 1
        newest[card] = max(newest.get(card, t), t)
    return OnlineData(len(arrivals), len(newest), config.max_lateness_ms, arrivals,
                      out_of_order, time.monotonic() - started)


def sampled(data: OnlineData) -> set[str]:
    """Every SAMPLE_EVERY-th event no late arrival explains (see the module
    docstring): their online and offline features must be equal."""
    later_min: dict[str, int] = {}
    explained: set[str] = set()
    for event in reversed(data.arrivals):
        card, t = event["card_id"], event["event_time"]
        if later_min.get(card, t) < t:
            explained.add(event["event_id"])
        later_min[card] = min(later_min.get(card, t), t)
    return {e["event_id"] for i, e in enumerate(data.arrivals)
            if i % SAMPLE_EVERY == 0 and e["event_id"] not in explained}


def run_online(data: OnlineData, keep: set[str], module: Any = None
               ) -> tuple[Timed, Timed, dict[str, dict[str, Any]]]:
    """The per-event figure and the drains' (see the module docstring);
    ``module``: another version of ``lamina.schemas.online`` to run."""
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.schemas.online import OnlineState

    state_class: Any = OnlineState if module is None else module.OnlineState
    states: dict[str, OnlineState] = {}
    kept: dict[str, dict[str, Any]] = {}
    lateness = data.lateness_ms
    touched: set[str] = set()
    drain_s = drain_cpu = 0.0
    drained = 0
    cpu, started = time.thread_time(), time.perf_counter()
    for n, event in enumerate(data.arrivals, 1):
        card = event["card_id"]
        state = states.get(card)
        if state is None:
            state = states[card] = state_class(CARD_VIEWS, card, allowed_lateness_ms=lateness)
        features = state.features_before(event["event_time"])
        if not state.add(event):
            raise BenchmarkError(f"event {event['event_id']} was refused as late: the "
                                 "benchmark's lateness must cover the generator's")
        if event["event_id"] in keep:
            kept[event["event_id"]] = features
        touched.add(card)
        if n % DRAIN_EVERY == 0 or n == len(data.arrivals):
            drain_cpu -= time.thread_time()
            drain_s -= time.perf_counter()
            for touched_card in touched:
                drained += len(states[touched_card].drain_changed_tiles())
            touched.clear()
            drain_s += time.perf_counter()
            drain_cpu += time.thread_time()
    seconds = time.perf_counter() - started - drain_s
    return (Timed(len(data.arrivals), seconds, time.thread_time() - cpu - drain_cpu),
            Timed(drained, drain_s, drain_cpu), kept)


def load_state_module(commit: str) -> Any:
    """``schemas/online.py`` as of ``commit``, loaded as a module of its own."""
    import importlib.util
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{commit}:schemas/online.py"], cwd=repo,
                                check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as exc:
        raise BenchmarkError(f"cannot read schemas/online.py at {commit!r}: "
                             f"{exc.stderr.strip()}") from None
    name = f"lamina.schemas.online_at_{commit}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:schemas/online.py", "exec"), module.__dict__)
    return module


def run_sweep(data: OnlineData, keep: set[str]
              ) -> tuple[Timed, dict[str, Mapping[str, Any]]]:
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.schemas.pit import FeatureSweep

    by_card: dict[str, list[dict[str, Any]]] = {}
    for event in data.arrivals:
        by_card.setdefault(event["card_id"], []).append(event)
    kept: dict[str, Mapping[str, Any]] = {}
    cpu, started = time.thread_time(), time.perf_counter()
    for card, events in by_card.items():
        sweep = FeatureSweep(CARD_VIEWS, events, card)
        for swept in sweep.events:
            features = sweep.features_before(int(swept["event_time"]))
            if swept["event_id"] in keep:
                kept[swept["event_id"]] = features
    seconds = time.perf_counter() - started
    return Timed(len(data.arrivals), seconds, time.thread_time() - cpu), kept


def _same(got: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    return list(got) == list(expected) and all(
        repr(got[k]) == repr(expected[k])
        or (isinstance(got[k], float) and got[k] == expected[k] == 0.0) for k in expected)


def check_equal(online: Mapping[str, Mapping[str, Any]],
                offline: Mapping[str, Mapping[str, Any]], keep: set[str]) -> int:
    """How many sampled events were compared; BenchmarkError on any mismatch."""
    missing = keep - online.keys() | keep - offline.keys()
    if missing:
        raise BenchmarkError(f"{len(missing)} sampled events have no features, e.g. "
                             f"{sorted(missing)[:3]}")
    wrong = [event_id for event_id in sorted(keep) if not _same(online[event_id],
                                                                offline[event_id])]
    if wrong:
        first = wrong[0]
        diff = {k: (online[first].get(k), v) for k, v in offline[first].items()
                if not _same({k: online[first].get(k)}, {k: v})}
        raise BenchmarkError(f"online features differ from the offline sweep for {len(wrong)} "
                             f"of {len(keep)} sampled events; {first}: {diff}")
    return len(keep)


@dataclass
class OnlineStateResults:
    data: OnlineData
    online: list[Timed] = field(default_factory=list)
    #: The drains of each online run (events = tiles drained).
    drains: list[Timed] = field(default_factory=list)
    sweep: list[Timed] = field(default_factory=list)
    compared: int = 0
    before: list[Timed] = field(default_factory=list)
    before_commit: str | None = None


def measure_online_state(transactions: int, rounds: int,
                         say: Callable[[str], None] = say_nothing,
                         before: str | None = None) -> OnlineStateResults:
    """Rounds of the sweep and the online state, alternating; the sample
    checked on every round. ``before``: a commit whose state also runs."""
    old = None if before is None else load_state_module(before)
    say(f"online state: generating {transactions:,} transactions")
    data = prepare_data(transactions)
    say(f"online state: {data.describe()}")
    results = OnlineStateResults(data)
    keep = sampled(data)
    for round_no in range(1, rounds + 1):
        sweep, offline = run_sweep(data, keep)
        results.sweep.append(sweep)
        say(f"round {round_no}: FeatureSweep {fmt_rate(sweep.rate)}")
        online, drains, got = run_online(data, keep)
        results.online.append(online)
        results.drains.append(drains)
        say(f"round {round_no}: OnlineState {fmt_rate(online.rate)}")
        results.compared = check_equal(got, offline, keep)
        if old is not None:
            timed, _, got = run_online(data, keep, old)
            results.before.append(timed)
            results.before_commit = before
            say(f"round {round_no}: OnlineState at {before} {fmt_rate(timed.rate)}")
            check_equal(got, offline, keep)
    return results


def _us(timed: Timed) -> str:
    return f"{timed.seconds * 1e6 / timed.events:.1f} µs/event"


def _runs(runs: Sequence[Timed]) -> str:
    return f"best of {len(runs)}: " + ", ".join(f"{t.rate:,.0f}" for t in runs)


def online_state_rows(results: OnlineStateResults) -> list[Row]:
    ref = best_of(results.sweep, lambda t: t.rate)
    online = best_of(results.online, lambda t: t.rate)
    drains = results.drains[results.online.index(online)]
    drain_us = drains.seconds * 1e6 / online.events
    return [
        Row("online state, FeatureSweep same features (reference)", fmt_rate(ref.rate), "—",
            "1.00×", "—", f"per card, construction included; {_us(ref)}; per CPU second "
            f"{ref.cpu_rate or 0:,.0f} ev/s; {_runs(results.sweep)}"),
        Row("online state, features_before + add per event", fmt_rate(online.rate),
            f"FeatureSweep {fmt_rate(ref.rate)}", fmt_ratio(online.rate / ref.rate), "—",
            f"CARD_VIEWS, arrival order, lateness {results.data.lateness_ms // 60_000} min; "
            f"{_us(online)}; per CPU second {online.cpu_rate or 0:,.0f} ev/s; "
            f"{_runs(results.online)}"),
        Row("online state, drain per 1,000-event micro-batch", f"{drain_us:.1f} µs/event",
            "—", "—", "—",
            f"drain_changed_tiles of the states each micro-batch touched, apart from the "
            f"figure above; {drains.events:,} tiles in {drains.seconds:.1f} s "
            f"(the best online run's)"),
    ] + ([] if not results.before else [
        Row(f"online state at {results.before_commit}, features_before + add per event",
            fmt_rate(best_of(results.before, lambda t: t.rate).rate),
            f"FeatureSweep {fmt_rate(ref.rate)}",
            fmt_ratio(best_of(results.before, lambda t: t.rate).rate / ref.rate), "—",
            f"the same loop with that commit's schemas/online.py; "
            f"{_us(best_of(results.before, lambda t: t.rate))}; {_runs(results.before)}")])


def online_state_notes(results: OnlineStateResults) -> list[str]:
    return [
        f"Online-state data: {results.data.describe()}.",
        f"Online state: one process, one thread; the two sides alternate round by round. "
        f"Checked: {results.compared:,} sampled events (every {SAMPLE_EVERY}th that no late "
        "arrival explains) got identical online and offline features. The speed layer's "
        "target (≥ 0.3× raw kafka-python consume, ARCHITECTURE.md) needs this per-event "
        "work well under the ~17 µs a raw consumed record takes.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.online_state",
                                     description="The online state next to FeatureSweep "
                                     "(prints; benchmarks.run --only online-state appends).")
    parser.add_argument("--transactions", type=int, default=QUICK_TRANSACTIONS)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", default=None, metavar="COMMIT",
                        help="also run schemas/online.py as of this commit (before/after)")
    args = parser.parse_args(argv)
    if args.transactions < 100 or args.rounds < 1:
        parser.error("--transactions must be at least 100 and --rounds at least 1")
    try:
        results = measure_online_state(args.transactions, args.rounds,
                                       lambda m: print(f"[bench] {m}", file=sys.stderr),
                                       args.before)
    except BenchmarkError as exc:
        print(f"[bench] benchmark failed: {exc}", file=sys.stderr)
        return 1
    from benchmarks.report import render_table

    print(render_table(online_state_rows(results)))
    for note in online_state_notes(results):
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
