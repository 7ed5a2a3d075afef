"""Synthetic card-transaction events with a planted fraud signal that drifts.

`generate(config)` streams Kafka records (key, value bytes) in the order a
producer would send them. Everything is a function of `config`: the same seed
gives the same bytes, run after run, on the same Python minor version (every
random stream is a `random.Random` seeded from a string, which is hashed with
SHA-512 and so does not depend on PYTHONHASHSEED). Memory grows with the
number of cards and merchants, not with the number of events: records wait
in a heap keyed on arrival time only while they are in flight.

What the data looks like
------------------------
* Cards have habits: a home country (and its currency, which is the billing
  currency of every amount), a typical amount (lognormal across cards), a
  handful of favourite merchants, a preferred share of online payments, an
  activity level and a chronotype (active hours shifted -1..+3 h). Some cards
  travel abroad for a few days; some genuine purchases are cross-border
  online. So "abroad" and "new merchant" are signals, not proofs.
* Merchants have a category and a country (mostly the card countries, some
  elsewhere). Countries have fixed UTC offsets (no daylight saving).
* Rhythm: the rate follows the cards' local time of day (quiet 01-05, a lunch
  bump, busiest 18-21) and mildly the day of week (Fri/Sat busier, Sun
  quieter). Genuine purchases sometimes come in short sessions (1-3 more
  within the next ~2 h), so a count burst alone is not fraud.

The planted fraud signal (all transactions of a burst are fraud)
----------------------------------------------------------------
`fraud_card_rate` of the cards are compromised once, at a time uniform over
the period.
* Before `drift_at` -- account takeover: a burst of 3-8 transactions within
  about an hour at merchants new to the card (electronics, fashion, cash,
  travel, entertainment), each 3-10x the card's typical amount; in 60 % of
  bursts at the card's quiet hours (local 01-05) and in 60 % abroad.
* From `drift_at` on -- card testing: 5-15 tiny online payments (0.50-4.99)
  at online_services/electronics merchants 10-120 s apart, then 1-2 larger
  online purchases at 0.8-2x the card's typical amount, in the home country,
  at ordinary hours. A model that learnt "big, abroad, at night" before the
  drift loses AUC after it.

Labels arrive late, as in life: a chargeback (is_fraud=true) 1-30 days after
a fraud (skewed early: median ~3 days; one dispute per burst), a confirmation
(is_fraud=false) for `genuine_label_rate` of genuine transactions 0.5-5 days
after. A label is emitted only if its event time falls inside the period.

Delivery faults (drawn from their own random stream, so changing a fault
fraction never changes the valid events' bytes)
---------------------------------------------------------------------------
* Every valid record arrives 0-2 s after its event time; `late_fraction` of
  them arrive later, up to `max_lateness_ms`. No valid record ever arrives
  more than `max_lateness_ms` after its event time.
* `duplicate_fraction` of valid records are sent again (the same key and
  bytes, kind="duplicate") 0.1-120 s later, like a producer retry.
* `malformed_fraction` per valid record: a broken record (kind="malformed"):
  truncated JSON, a wrong type, a missing required field, schema_version 99,
  an unknown event_type, non-UTF-8 garbage, or (rarely) an oversized event
  (> 64 KiB: a valid event padded with JSON whitespace, so only the size
  rule refuses it).

No value ever contains a newline byte (orjson escapes newlines in strings
and the garbage generator never emits 0x0A), so `write_files` writes raw
bytes one per line and `iter_jsonl` reads them back unchanged.

Identifiers: transaction n is `tx-{seed}-{n}` (n counts from 0 in generation
order, which follows event time hour by hour), its label `lb-{seed}-{n}`, a
malformed record that carries an id `bad-{seed}-{m}`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final, Literal, TypeVar

import orjson

from lamina.errors import ConfigError, InfraError, LaminaError
from lamina.logs import get_logger

log = get_logger(__name__)

MS_PER_SECOND: Final = 1_000
MS_PER_MINUTE: Final = 60_000
MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000
DEFAULT_START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SCHEMA_VERSION: Final = 1

KIND_VALID: Final = "valid"
KIND_MALFORMED: Final = "malformed"
KIND_DUPLICATE: Final = "duplicate"

MERCHANT_CATEGORIES: Final = (
    "grocery", "restaurant", "fuel", "travel", "electronics",
    "fashion", "online_services", "entertainment", "health", "cash",
)
CHANNELS: Final = ("pos", "online", "atm")

# (country, billing currency, UTC offset in hours, share of cards). Currencies
# of similar magnitude, so one amount distribution fits every card.
_HOME_COUNTRIES: Final = (
    ("US", "USD", -5, 0.30), ("GB", "GBP", 0, 0.14), ("DE", "EUR", 1, 0.11),
    ("FR", "EUR", 1, 0.09), ("ES", "EUR", 1, 0.07), ("IT", "EUR", 1, 0.06),
    ("NL", "EUR", 1, 0.05), ("CA", "CAD", -5, 0.06), ("AU", "AUD", 10, 0.04),
    ("IE", "EUR", 0, 0.03), ("CH", "CHF", 1, 0.02), ("SG", "SGD", 8, 0.02),
    ("NZ", "NZD", 12, 0.01),
)
# Countries with merchants but no cards: travel destinations and where stolen
# card data is cashed out.
_FOREIGN_COUNTRIES: Final = ("BR", "MX", "TH", "ID", "NG", "RO", "UA", "VN", "TR", "PH")
_FOREIGN_MERCHANT_SHARE: Final = 0.12

# Share of merchants per category, and of genuine spending per category.
_MERCHANT_CATEGORY_WEIGHTS: Final = (0.16, 0.20, 0.07, 0.06, 0.07, 0.12, 0.10, 0.08, 0.06, 0.08)
_SPEND_CATEGORY_WEIGHTS: Final = (0.24, 0.20, 0.09, 0.03, 0.04, 0.08, 0.11, 0.07, 0.06, 0.08)
# A purchase's amount is the card's typical amount times this, times noise.
_CATEGORY_AMOUNT_FACTOR: Final = {
    "grocery": 1.0, "restaurant": 0.8, "fuel": 1.3, "travel": 5.0, "electronics": 3.0,
    "fashion": 1.8, "online_services": 0.35, "entertainment": 0.9, "health": 1.1, "cash": 2.5,
}
# Relative purchase rate by local hour of day: quiet 01-05, lunch bump, evening peak.
_DIURNAL: Final = (
    0.25, 0.12, 0.07, 0.05, 0.05, 0.08, 0.20, 0.45, 0.70, 0.80, 0.85, 0.95,
    1.15, 1.05, 0.90, 0.90, 1.00, 1.20, 1.40, 1.50, 1.40, 1.10, 0.75, 0.45,
)
_DIURNAL_CUM: Final = tuple(itertools.accumulate(_DIURNAL))
_QUIET_HOURS: Final = (1, 2, 3, 4)  # local, before the card's chronotype shift
# By UTC weekday, Monday first: mild.
_WEEKLY: Final = (0.95, 0.95, 1.00, 1.00, 1.10, 1.12, 0.90)
_CHRONOTYPE_SHIFTS: Final = (-1, 0, 0, 0, 0, 1, 1, 2, 3)

_FAVOURITE_SHARE: Final = 0.75      # genuine purchases at a favourite merchant
_CROSS_BORDER_ONLINE: Final = 0.015  # genuine online purchases from abroad
_SESSION_PROBABILITY: Final = 0.08   # a purchase followed by 1-3 more
_TRIP_PROBABILITY: Final = 0.06      # a card travels abroad once in the period
_AMOUNT_NOISE_SIGMA: Final = 0.45
# Lognormal noise on amounts as a quantile table: one uniform draw per purchase
# instead of two plus a log (the table's 4096 steps are far finer than cents).
_AMOUNT_NOISE: Final = tuple(
    math.exp(_AMOUNT_NOISE_SIGMA * NormalDist().inv_cdf((i + 0.5) / 4096)) for i in range(4096)
)

_NORMAL_DELAY_CAP_MS: Final = 2_000
_DUPLICATE_DELAY_MS: Final = (100, 120_000)
_OVERSIZED_BYTES: Final = 70 * 1024

# Malformed kinds and their weights; oversized is rare because it is big.
_MALFORMED_KINDS: Final = (
    ("truncated", 0.18), ("wrong_type", 0.18), ("missing_field", 0.18),
    ("unknown_schema_version", 0.14), ("unknown_event_type", 0.14),
    ("garbage", 0.14), ("oversized", 0.04),
)

_TX_REQUIRED: Final = (
    "event_id", "event_type", "schema_version", "event_time", "card_id", "merchant_id",
    "merchant_category", "amount", "currency", "country", "channel",
)
_LABEL_REQUIRED: Final = (
    "event_id", "event_type", "schema_version", "event_time", "card_id",
    "transaction_id", "is_fraud", "label_source",
)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Times are UTC milliseconds since the epoch.

    The defaults make a small demo: 50k transactions by 2000 cards over two
    weeks from 2026-01-01, with the fraud pattern drifting two thirds in.
    `drift_at="auto"` means two thirds through the period; None disables
    the drift (every burst is an account takeover).
    """

    seed: int = 42
    cards: int = 2_000
    merchants: int = 300
    transactions: int = 50_000
    start: int = DEFAULT_START_MS
    days: float = 14.0
    fraud_card_rate: float = 0.02
    genuine_label_rate: float = 0.05
    fraud_label_delay_days: tuple[float, float] = (1.0, 30.0)
    genuine_label_delay_days: tuple[float, float] = (0.5, 5.0)
    late_fraction: float = 0.01
    max_lateness_ms: int = 2 * MS_PER_HOUR
    malformed_fraction: float = 0.002
    duplicate_fraction: float = 0.001
    drift_at: int | None | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0, 2**63 - 1)  # keeps event ids short
        _check_int("cards", self.cards, 1)
        # One merchant per category at least, so every pool has somewhere to buy.
        _check_int("merchants", self.merchants, len(MERCHANT_CATEGORIES))
        _check_int("transactions", self.transactions, 1)
        _check_int("start", self.start, 0)
        _check_float("days", self.days, 0.0, None, low_open=True)
        for name in ("fraud_card_rate", "genuine_label_rate", "late_fraction"):
            _check_float(name, getattr(self, name), 0.0, 1.0)
        for name in ("malformed_fraction", "duplicate_fraction"):
            _check_float(name, getattr(self, name), 0.0, 1.0, high_open=True)
        for name in ("fraud_label_delay_days", "genuine_label_delay_days"):
            _check_delay_range(name, getattr(self, name))
        _check_int("max_lateness_ms", self.max_lateness_ms, 0)
        if self.drift_at is not None and self.drift_at != "auto":
            _check_int("drift_at", self.drift_at, self.start, self.end_ms)

    @property
    def end_ms(self) -> int:
        """End of the period (exclusive): no transaction or label at or after it."""
        return self.start + round(self.days * MS_PER_DAY)

    @property
    def drift_at_ms(self) -> int | None:
        """When the fraud pattern changes, or None if it never does."""
        if self.drift_at == "auto":
            return self.start + (self.end_ms - self.start) * 2 // 3
        return self.drift_at


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"GeneratorConfig.{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"GeneratorConfig.{name} must be {bounds}, got {value!r}")


def _check_float(
    name: str, value: Any, low: float, high: float | None,
    *, low_open: bool = False, high_open: bool = False,
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise ConfigError(f"GeneratorConfig.{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value == float("inf"):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"GeneratorConfig.{name} must be in {bounds}, got {value!r}")


def _check_delay_range(name: str, value: Any) -> None:
    ok = (
        isinstance(value, tuple) and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and 0 < value[0] <= value[1] < float("inf")
    )
    if not ok:
        raise ConfigError(
            f"GeneratorConfig.{name} must be a (min_days, max_days) pair with "
            f"0 < min <= max, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One Kafka record as produced.

    kind is "valid", "malformed" or "duplicate" (the exact bytes of an
    earlier valid record, sent again). event_id and event_time_ms are those
    of the event for valid and duplicate records; for malformed ones they are
    set only where the broken payload still carries them (else None).
    """

    key: bytes
    value: bytes
    kind: str
    event_id: str | None
    event_time_ms: int | None


T = TypeVar("T")

# A transaction before it gets its id: (event_time, tiebreak, card, merchant,
# amount, channel, fraud_label_time). fraud_label_time is -1 for genuine
# transactions. Plain tuples because millions are made and sorted.
_Tx = tuple[int, int, int, int, float, str, int]


def _pick(cumulative: Sequence[float], u: float) -> int:
    """The index a uniform u in [0, 1) selects from cumulative weights.

    Zero-weight entries are never picked; the upper bound guards against
    u * total rounding up to total (what random.choices guards against too).
    """
    return bisect.bisect(cumulative, u * cumulative[-1], 0, len(cumulative) - 1)


def _quantile_table(items: Sequence[T], weights: Sequence[float], size: int) -> tuple[T, ...]:
    """`size` slots filled with items in proportion to their weights, so a
    weighted draw is one uniform and an index (weights rounded to 1/size)."""
    cum = _cumulative(weights)
    return tuple(items[_pick(cum, (i + 0.5) / size)] for i in range(size))


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = 0.0
    out = []
    for w in weights:
        total += w
        out.append(total)
    return out


# Genuine spending by category, as a quantile table (see _quantile_table).
_SPEND_TABLE: Final = _quantile_table(MERCHANT_CATEGORIES, _SPEND_CATEGORY_WEIGHTS, 1000)


class _World:
    """Cards and merchants: fixed for a seed, drawn once before any event."""

    def __init__(self, config: GeneratorConfig) -> None:
        rng = random.Random(f"lamina-generator:{config.seed}:world")
        home_cum = _cumulative([c[3] for c in _HOME_COUNTRIES])
        home_countries = [c[0] for c in _HOME_COUNTRIES]
        self.all_countries: tuple[str, ...] = (*home_countries, *_FOREIGN_COUNTRIES)

        # Merchants. The first ones cover every category so no pool is empty.
        self.merchant_ids: list[str] = []
        self.merchant_category: list[str] = []
        self.merchant_country: list[str] = []
        cat_cum = _cumulative(_MERCHANT_CATEGORY_WEIGHTS)
        for m in range(config.merchants):
            if m < len(MERCHANT_CATEGORIES):
                category = MERCHANT_CATEGORIES[m]
            else:
                category = MERCHANT_CATEGORIES[_pick(cat_cum, rng.random())]
            if rng.random() < _FOREIGN_MERCHANT_SHARE:
                country = rng.choice(_FOREIGN_COUNTRIES)
            else:
                country = home_countries[_pick(home_cum, rng.random())]
            self.merchant_ids.append(f"m-{m:05d}")
            self.merchant_category.append(category)
            self.merchant_country.append(country)
        self.by_category: dict[str, list[int]] = {c: [] for c in MERCHANT_CATEGORIES}
        self.by_country: dict[str, list[int]] = {}
        self.by_country_category: dict[tuple[str, str], list[int]] = {}
        for m, (category, country) in enumerate(
            zip(self.merchant_category, self.merchant_country, strict=True)
        ):
            self.by_category[category].append(m)
            self.by_country.setdefault(country, []).append(m)
            self.by_country_category.setdefault((country, category), []).append(m)

        # Cards, as parallel lists: attribute access in the hot loop is by index.
        self.card_ids: list[str] = []
        self.card_keys: list[bytes] = []
        self.card_country: list[str] = []
        self.card_currency: list[str] = []
        self.card_utc_offset: list[int] = []
        self.card_shift: list[int] = []
        self.card_typical: list[float] = []
        self.card_online: list[float] = []
        self.card_favourites: list[list[int]] = []
        # Favourites drawn by a quantile table: one uniform draw, no search.
        self.card_favourite_table: list[tuple[int, ...]] = []
        self.card_trip: list[tuple[int, int, str] | None] = []
        activity: list[float] = []
        spend_cum = _cumulative(_SPEND_CATEGORY_WEIGHTS)
        span = config.end_ms - config.start
        for k in range(config.cards):
            country, currency, offset, _ = _HOME_COUNTRIES[
                _pick(home_cum, rng.random())
            ]
            card_id = f"card-{k:06d}"
            self.card_ids.append(card_id)
            self.card_keys.append(card_id.encode())
            self.card_country.append(country)
            self.card_currency.append(currency)
            self.card_utc_offset.append(offset)
            self.card_shift.append(rng.choice(_CHRONOTYPE_SHIFTS))
            self.card_typical.append(round(rng.lognormvariate(3.4, 0.6), 2))  # median ~30
            self.card_online.append(rng.uniform(0.03, 0.40))
            activity.append(rng.lognormvariate(0.0, 0.8))  # a few heavy users
            favourites: list[int] = []
            for _ in range(rng.randint(3, 8)):
                category = MERCHANT_CATEGORIES[
                    _pick(spend_cum, rng.random())
                ]
                pool = self.pool(country, category)
                m = pool[int(rng.random() * len(pool))]
                if m not in favourites:
                    favourites.append(m)
            self.card_favourites.append(favourites)
            # Zipf-like: the first favourite is used most.
            self.card_favourite_table.append(_quantile_table(
                favourites, [1.0 / (i + 1) for i in range(len(favourites))], 64
            ))
            trip: tuple[int, int, str] | None = None
            if rng.random() < _TRIP_PROBABILITY:
                trip_start = config.start + int(rng.random() * span)
                trip_end = trip_start + int(rng.uniform(2.0, 8.0) * MS_PER_DAY)
                if rng.random() < 0.6:
                    destination = rng.choice([c for c in home_countries if c != country])
                else:
                    destination = rng.choice(_FOREIGN_COUNTRIES)
                trip = (trip_start, trip_end, destination)
            self.card_trip.append(trip)

        # Which card pays at UTC hour h: card k with weight activity[k] times
        # its diurnal profile at h, _DIURNAL[(h + phase) % 24], where the phase
        # (UTC offset minus chronotype shift) takes at most 24 values. So pick
        # a phase by the hour, then a card of that phase by activity: two
        # small cumulative tables instead of 24 per card.
        by_phase: dict[int, list[int]] = {}
        for k in range(config.cards):
            by_phase.setdefault((self.card_utc_offset[k] - self.card_shift[k]) % 24, []).append(k)
        phases = sorted(by_phase)  # only phases that have cards
        self.phase_cards = [by_phase[phase] for phase in phases]
        self.phase_activity_cum = [
            _cumulative([activity[k] for k in cards]) for cards in self.phase_cards
        ]
        self.phase_cum_by_utc_hour = [
            _cumulative([
                cum[-1] * _DIURNAL[(hour + phase) % 24]
                for phase, cum in zip(phases, self.phase_activity_cum, strict=True)
            ])
            for hour in range(24)
        ]

    def card_at(self, utc_hour: int, u: float, v: float) -> int:
        """The card that pays at a UTC hour of day, from two uniforms in [0, 1).
        (The generator's hot loop inlines this.)"""
        group = _pick(self.phase_cum_by_utc_hour[utc_hour], u)
        return self.phase_cards[group][_pick(self.phase_activity_cum[group], v)]

    def pool(self, country: str, category: str) -> list[int]:
        """Merchants of a category in a country; else, as people buy where
        they are, any merchant in the country; else of the category anywhere."""
        return (self.by_country_category.get((country, category))
                or self.by_country.get(country) or self.by_category[category])

    def categories_in(self, country: str, wanted: Sequence[str]) -> Sequence[str]:
        """The wanted categories that have a merchant in the country, or all
        of them if none has (small merchant counts leave gaps)."""
        present = [c for c in wanted if (country, c) in self.by_country_category]
        return present or wanted

    def unusual_hour_utc(self, k: int, rng: random.Random) -> int:
        """A UTC hour of day that is in card k's quiet hours (local 01-05)."""
        local = rng.choice(_QUIET_HOURS) + self.card_shift[k]
        return (local - self.card_utc_offset[k]) % 24

    def usual_hour_utc(self, k: int, rng: random.Random) -> int:
        """A UTC hour of day drawn from card k's own diurnal profile."""
        profile_hour = _pick(_DIURNAL_CUM, rng.random())
        return (profile_hour + self.card_shift[k] - self.card_utc_offset[k]) % 24


class _Generator:
    """Produces records in arrival order through a heap keyed on arrival time.

    Transactions are made hour block by hour block. Everything made while
    working on a block has an event time at or after the block's start, and
    arrives no earlier than its event time; so before starting a block, every
    record in the heap that arrives before the block's start can be emitted:
    nothing made later can arrive before it. The heap holds at most the
    records of the current block plus pending labels (label rate x delay), so
    memory does not grow with the number of transactions.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.world = _World(config)
        self.seed = config.seed
        self.end = config.end_ms
        # Separate streams: the content of valid events never depends on the
        # fault settings, and the burst schedule not on how many genuine
        # transactions there are.
        self.rng = random.Random(f"lamina-generator:{config.seed}:events")
        self.fault_rng = random.Random(f"lamina-generator:{config.seed}:faults")
        fraud_rng = random.Random(f"lamina-generator:{config.seed}:fraud")
        self.fraud_txs = self._plan_fraud(fraud_rng)
        self.heap: list[tuple[int, int, GeneratedRecord]] = []
        self.heap_seq = 0
        self.next_tx = 0
        self.next_bad = 0
        self.malformed_cum = _cumulative([w for _, w in _MALFORMED_KINDS])
        self.late_fraction = config.late_fraction
        self.late_min_ms = min(MS_PER_MINUTE, config.max_lateness_ms)
        # Normal delivery delays as a quantile table (exponential, mean 250 ms,
        # capped): one uniform draw per record instead of a log.
        cap = min(_NORMAL_DELAY_CAP_MS, config.max_lateness_ms)
        self.normal_delays = [
            min(cap, int(-250.0 * math.log(1.0 - (i + 0.5) / 1024))) for i in range(1024)
        ]

    # ---- fraud ---------------------------------------------------------

    def _plan_fraud(self, rng: random.Random) -> list[_Tx]:
        """All fraud transactions, sorted by event time (a few per compromised card)."""
        config, world = self.config, self.world
        drift = config.drift_at_ms
        compromised = rng.sample(range(config.cards), round(config.cards * config.fraud_card_rate))
        # Leave room for the longest burst (about 1 h) before the end.
        latest_start = max(config.start, self.end - 2 * MS_PER_HOUR)
        budget = config.transactions // 2  # fraud never outnumbers genuine
        fraud: list[_Tx] = []

        def at_hour(t0: int, utc_hour: int) -> int:
            """t0 moved to that hour of its day, unless that leaves its side
            of the drift or the period."""
            moved = t0 - t0 % MS_PER_DAY + utc_hour * MS_PER_HOUR + int(rng.random() * MS_PER_HOUR)
            if not config.start <= moved < latest_start:
                return t0
            if drift is not None and (moved >= drift) != (t0 >= drift):
                return t0
            return moved

        for k in compromised:
            t0 = config.start + int(rng.random() * (latest_start - config.start))
            if drift is not None and t0 >= drift:
                # Card testing hides in the card's ordinary hours.
                burst = self._card_testing(rng, k, at_hour(t0, world.usual_hour_utc(k, rng)))
            else:
                if rng.random() < 0.6:  # at the card's quiet hours
                    t0 = at_hour(t0, world.unusual_hour_utc(k, rng))
                burst = self._account_takeover(rng, k, t0)
            if len(fraud) + len(burst) > budget:
                continue
            # One dispute per burst: the cardholder reports them together.
            lo, hi = config.fraud_label_delay_days
            disputed = burst[-1][0] + int(
                (lo + (hi - lo) * rng.betavariate(1.0, 9.0)) * MS_PER_DAY
            )
            for tx in burst:
                label_at = disputed + int(rng.random() * 2 * MS_PER_HOUR)
                fraud.append((*tx[:6], label_at))
        fraud.sort()
        return fraud

    def _new_merchant(self, rng: random.Random, k: int, country: str, category: str) -> int:
        """A merchant (see _World.pool) that is not one of the card's favourites."""
        pool = self.world.pool(country, category)
        favourites = self.world.card_favourites[k]
        m = pool[int(rng.random() * len(pool))]
        for _ in range(5):
            if m not in favourites:
                break
            m = pool[int(rng.random() * len(pool))]
        return m

    def _account_takeover(self, rng: random.Random, k: int, t0: int) -> list[_Tx]:
        """Pre-drift: 3-8 large purchases within ~1 h at new merchants, often abroad."""
        world = self.world
        n = rng.randint(3, 8)
        times = sorted([t0] + [t0 + int(rng.random() * MS_PER_HOUR) for _ in range(n - 1)])
        if rng.random() < 0.6:
            country = (rng.choice(_FOREIGN_COUNTRIES) if rng.random() < 0.7
                       else rng.choice([c for c in world.all_countries
                                        if c != world.card_country[k]]))
        else:
            country = world.card_country[k]
        burst: list[_Tx] = []
        for i, t in enumerate(times):
            category = rng.choices(
                ("electronics", "fashion", "cash", "travel", "entertainment"),
                cum_weights=(0.30, 0.50, 0.70, 0.85, 1.0),
            )[0]
            m = self._new_merchant(rng, k, country, category)
            amount = world.card_typical[k] * rng.uniform(3.0, 10.0)
            category = world.merchant_category[m]
            if category == "cash":
                channel, amount = "atm", max(20.0, round(amount / 20.0) * 20.0)
            elif category == "travel":
                channel = "online"
            else:
                channel = "online" if rng.random() < 0.4 else "pos"
            burst.append((min(t, self.end - 1), i, k, m, round(amount, 2), channel, -1))
        return burst

    def _card_testing(self, rng: random.Random, k: int, t0: int) -> list[_Tx]:
        """Post-drift: 5-15 tiny online payments minutes apart, then 1-2 normal-sized ones."""
        world = self.world
        home = world.card_country[k]
        burst: list[_Tx] = []
        t = t0
        testing_categories = world.categories_in(home, ("online_services", "electronics"))
        buying_categories = world.categories_in(home, ("electronics", "fashion"))
        for _ in range(rng.randint(5, 15)):
            m = self._new_merchant(rng, k, home, rng.choice(testing_categories))
            amount = round(rng.uniform(0.5, 4.99), 2)
            burst.append((min(t, self.end - 1), len(burst), k, m, amount, "online", -1))
            t += rng.randint(10 * MS_PER_SECOND, 120 * MS_PER_SECOND)
        t += int(rng.uniform(2.0, 30.0) * MS_PER_MINUTE)
        for _ in range(rng.randint(1, 2)):
            m = self._new_merchant(rng, k, home, rng.choice(buying_categories))
            amount = round(world.card_typical[k] * rng.uniform(0.8, 2.0), 2)
            burst.append((min(t, self.end - 1), len(burst), k, m, amount, "online", -1))
            t += int(rng.uniform(1.0, 10.0) * MS_PER_MINUTE)
        return burst

    # ---- genuine -------------------------------------------------------

    def _genuine(self, k: int, t: int, tiebreak: int) -> _Tx:
        """A genuine purchase by card k at time t, following the card's habits."""
        world, rnd = self.world, self.rng.random
        trip = world.card_trip[k]
        channel = ""
        if trip is not None and trip[0] <= t < trip[1]:
            category = _SPEND_TABLE[int(rnd() * len(_SPEND_TABLE))]
            pool = world.pool(trip[2], category)
            m = pool[int(rnd() * len(pool))]
        else:
            u = rnd()
            if u < _FAVOURITE_SHARE:
                table = world.card_favourite_table[k]
                m = table[int(rnd() * len(table))]
            elif u < 1.0 - _CROSS_BORDER_ONLINE:
                category = _SPEND_TABLE[int(rnd() * len(_SPEND_TABLE))]
                pool = world.pool(world.card_country[k], category)
                m = pool[int(rnd() * len(pool))]
            else:
                category = ("online_services", "electronics", "fashion")[int(rnd() * 3)]
                country = world.all_countries[int(rnd() * len(world.all_countries))]
                pool = world.pool(country, category)
                m = pool[int(rnd() * len(pool))]
                channel = "online"
        category = world.merchant_category[m]
        amount = (world.card_typical[k] * _CATEGORY_AMOUNT_FACTOR[category]
                  * _AMOUNT_NOISE[int(rnd() * len(_AMOUNT_NOISE))])
        if category == "cash":
            channel, amount = "atm", max(20.0, round(amount / 20.0) * 20.0)
        elif category == "online_services":
            channel = "online"
        elif not channel:
            channel = "online" if rnd() < world.card_online[k] else "pos"
        return (t, tiebreak, k, m, max(0.01, round(amount, 2)), channel, -1)

    def _hour_blocks(self) -> Iterator[tuple[int, int, int]]:
        """(block_start, block_end, genuine transactions in it), hour by hour.

        Counts follow the rate (diurnal x weekly x a little noise) and sum to
        exactly `transactions` minus the fraud transactions."""
        config, world = self.config, self.world
        block_rng = random.Random(f"lamina-generator:{config.seed}:blocks")
        totals = [cum[-1] for cum in world.phase_cum_by_utc_hour]
        blocks: list[tuple[int, int, float]] = []
        lo = config.start
        while lo < self.end:
            hi = min(self.end, (lo // MS_PER_HOUR + 1) * MS_PER_HOUR)
            hour = lo // MS_PER_HOUR
            # 1970-01-01 was a Thursday (weekday 3).
            weekday = (hour // 24 + 3) % 7
            weight = (totals[hour % 24] * _WEEKLY[weekday] * block_rng.lognormvariate(0.0, 0.15)
                      * (hi - lo) / MS_PER_HOUR)
            blocks.append((lo, hi, weight))
            lo = hi
        genuine = config.transactions - len(self.fraud_txs)
        total_weight = sum(w for _, _, w in blocks)
        cumulative, assigned = 0.0, 0
        for i, (lo, hi, weight) in enumerate(blocks):
            cumulative += weight
            # The last block takes the rest, whatever float rounding did.
            upto = genuine if i == len(blocks) - 1 else round(genuine * cumulative / total_weight)
            upto = min(upto, genuine)
            yield lo, hi, upto - assigned
            assigned = upto

    # ---- delivery ------------------------------------------------------

    def _push(self, arrival: int, record: GeneratedRecord) -> None:
        heapq.heappush(self.heap, (arrival, self.heap_seq, record))
        self.heap_seq += 1

    def _emit_valid(self, key: bytes, doc: dict[str, Any], event_id: str, event_time: int) -> None:
        """Serialise a valid event and schedule its arrival, and perhaps a
        duplicate and a malformed record after it. A valid record never
        arrives more than max_lateness_ms after its event time."""
        value = orjson.dumps(doc)
        frng = self.fault_rng
        if frng.random() < self.late_fraction:
            delay = int(frng.uniform(self.late_min_ms, self.config.max_lateness_ms))
        else:
            delay = self.normal_delays[int(frng.random() * len(self.normal_delays))]
        arrival = event_time + delay
        heapq.heappush(self.heap, (arrival, self.heap_seq,
                                   GeneratedRecord(key, value, KIND_VALID, event_id, event_time)))
        self.heap_seq += 1
        if frng.random() < self.config.duplicate_fraction:
            self._push(
                arrival + frng.randint(*_DUPLICATE_DELAY_MS),
                GeneratedRecord(key, value, KIND_DUPLICATE, event_id, event_time),
            )
        if frng.random() < self.config.malformed_fraction:
            self._push(arrival + frng.randint(0, MS_PER_SECOND), self._malformed(key, doc))

    def _malformed(self, key: bytes, template: dict[str, Any]) -> GeneratedRecord:
        """A broken record modelled on a valid event, with its own `bad-` id."""
        frng = self.fault_rng
        kind = _MALFORMED_KINDS[
            _pick(self.malformed_cum, frng.random())
        ][0]
        doc = dict(template)
        event_id: str | None = f"bad-{self.seed}-{self.next_bad}"
        self.next_bad += 1
        doc["event_id"] = event_id
        event_time: int | None = doc["event_time"]
        if kind == "truncated":
            whole = orjson.dumps(doc)
            return GeneratedRecord(key, whole[: frng.randint(1, len(whole) - 2)], KIND_MALFORMED,
                                   None, None)
        if kind == "garbage":
            # 0xFF never occurs in UTF-8; newlines are kept out (see module doc).
            body = frng.randbytes(frng.randint(8, 200)).replace(b"\n", b"\xfe")
            return GeneratedRecord(key, b"\xff" + body, KIND_MALFORMED, None, None)
        if kind == "wrong_type":
            if frng.random() < 0.3:
                doc["event_time"] = str(doc["event_time"])
                event_time = None
            elif doc["event_type"] == "transaction":
                doc["amount"] = f"{doc['amount']:.2f}"
            else:
                doc["is_fraud"] = "true" if doc["is_fraud"] else "false"
        elif kind == "missing_field":
            required = _TX_REQUIRED if doc["event_type"] == "transaction" else _LABEL_REQUIRED
            missing = required[int(frng.random() * len(required))]
            del doc[missing]
            if missing == "event_id":
                event_id = None
            elif missing == "event_time":
                event_time = None
        elif kind == "unknown_schema_version":
            doc["schema_version"] = 99
        elif kind == "unknown_event_type":
            doc["event_type"] = frng.choice(("refund", "authorisation_v0", "Transaction", ""))
        else:
            # Oversized: the event itself is valid, padded with JSON whitespace
            # beyond the 64 KiB a record may be, so only the size rule refuses it.
            whole = orjson.dumps(doc)
            padded = whole[:-1] + b" " * _OVERSIZED_BYTES + b"}"
            return GeneratedRecord(key, padded, KIND_MALFORMED, event_id, event_time)
        return GeneratedRecord(key, orjson.dumps(doc), KIND_MALFORMED, event_id, event_time)

    # ---- the loop ------------------------------------------------------

    def run(self) -> Iterator[GeneratedRecord]:
        config, world, rng = self.config, self.world, self.rng
        rnd = rng.random
        seed, end, heap = self.seed, self.end, self.heap
        fraud, next_fraud = self.fraud_txs, 0
        phase_cards, phase_activity_cum = world.phase_cards, world.phase_activity_cum
        last_phase = len(phase_cards) - 1
        label_lo, label_hi = config.genuine_label_delay_days
        genuine_label_rate = config.genuine_label_rate
        for lo, hi, count in self._hour_blocks():
            # Nothing made from here on arrives before `lo` (see class doc).
            while heap and heap[0][0] < lo:
                yield heapq.heappop(heap)[2]
            # world.card_at, inlined: this loop runs once per transaction.
            phase_cum = world.phase_cum_by_utc_hour[(lo // MS_PER_HOUR) % 24]
            phase_total = phase_cum[-1]
            width = hi - lo
            txs: list[_Tx] = []
            made = 0
            while made < count:
                t = lo + int(rnd() * width)
                group = bisect.bisect(phase_cum, rnd() * phase_total, 0, last_phase)
                activity_cum = phase_activity_cum[group]
                k = phase_cards[group][
                    bisect.bisect(activity_cum, rnd() * activity_cum[-1], 0, len(activity_cum) - 1)
                ]
                txs.append(self._genuine(k, t, len(txs)))
                made += 1
                if made < count and rnd() < _SESSION_PROBABILITY:
                    for _ in range(min(count - made, rng.randint(1, 3))):
                        t += int(rng.uniform(2.0, 40.0) * MS_PER_MINUTE)
                        if t >= end:
                            break
                        txs.append(self._genuine(k, t, len(txs)))
                        made += 1
            while next_fraud < len(fraud) and fraud[next_fraud][0] < hi:
                f = fraud[next_fraud]
                txs.append((f[0], len(txs), *f[2:]))
                next_fraud += 1
            txs.sort()
            for t, _, k, m, amount, channel, fraud_label_at in txs:
                n = self.next_tx
                self.next_tx = n + 1
                tx_id = f"tx-{seed}-{n}"
                card_id = world.card_ids[k]
                key = world.card_keys[k]
                self._emit_valid(key, {
                    "event_id": tx_id,
                    "event_type": "transaction",
                    "schema_version": SCHEMA_VERSION,
                    "event_time": t,
                    "card_id": card_id,
                    "merchant_id": world.merchant_ids[m],
                    "merchant_category": world.merchant_category[m],
                    "amount": amount,
                    "currency": world.card_currency[k],
                    "country": world.merchant_country[m],
                    "channel": channel,
                }, tx_id, t)
                is_fraud = fraud_label_at >= 0
                if is_fraud:
                    label_at = fraud_label_at
                elif rnd() < genuine_label_rate:
                    label_at = t + int((label_lo + (label_hi - label_lo) * rnd()) * MS_PER_DAY)
                else:
                    continue
                if label_at >= end:
                    continue  # not arrived yet when the period ends
                label_id = f"lb-{seed}-{n}"
                self._emit_valid(key, {
                    "event_id": label_id,
                    "event_type": "label",
                    "schema_version": SCHEMA_VERSION,
                    "event_time": label_at,
                    "card_id": card_id,
                    "transaction_id": tx_id,
                    "is_fraud": is_fraud,
                    "label_source": "chargeback" if is_fraud else "confirmed_genuine",
                }, label_id, label_at)
        while heap:
            yield heapq.heappop(heap)[2]


def generate(config: GeneratorConfig) -> Iterator[GeneratedRecord]:
    """Stream every record of the synthetic dataset, in arrival (produce) order.

    Deterministic: the same config yields the same records, byte for byte.
    Exactly `config.transactions` valid transaction events are yielded, plus
    labels, duplicates and malformed records (see the module docstring).
    Memory is bounded by the records in flight, not by the dataset size.
    """
    return _Generator(config).run()


def _file_name(index: int) -> str:
    return f"events-{index:05d}.jsonl"


def write_files(
    config: GeneratorConfig, out_dir: Path, events_per_file: int = 100_000
) -> list[Path]:
    """Write the generated values as JSON Lines for a historical backfill.

    Files are `out_dir/events-00000.jsonl`, ... in arrival order, at most
    `events_per_file` lines each; each line is one record's value, exactly
    the bytes that would be on Kafka (malformed and duplicate records
    included; garbage lines are not UTF-8). Values never contain a newline
    byte -- a value that did would be refused with LaminaError, not escaped,
    so a line is always the value unchanged. Each file is written to a
    temporary name and renamed when complete; `events-NNNNN.jsonl` files
    left from an earlier, longer run are removed, so rerunning is idempotent.
    Returns the paths written, in order.
    """
    if not isinstance(events_per_file, int) or isinstance(events_per_file, bool) \
            or events_per_file < 1:
        raise ConfigError(f"events_per_file must be a positive integer, got {events_per_file!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    handle = None
    lines = 0
    try:
        for record in generate(config):
            if handle is None or lines == events_per_file:
                if handle is not None:
                    handle.close()
                    os.replace(handle.name, paths[-1])
                paths.append(out_dir / _file_name(len(paths)))
                handle = open(f"{paths[-1]}.tmp", "wb", buffering=1 << 20)  # noqa: SIM115
                lines = 0
            value = record.value
            if b"\n" in value:
                raise LaminaError(f"generated value of {record.event_id} contains a newline")
            handle.write(value)
            handle.write(b"\n")
            lines += 1
        if handle is not None:
            handle.close()
            os.replace(handle.name, paths[-1])
            handle = None
    finally:
        if handle is not None:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
    keep = {p.name for p in paths}
    for stale in out_dir.glob("events-[0-9][0-9][0-9][0-9][0-9].jsonl"):
        if stale.name not in keep:
            stale.unlink()
    log.info("generator wrote files", out_dir=out_dir, files=len(paths), seed=config.seed)
    return paths


def iter_jsonl(path: Path) -> Iterator[bytes]:
    """The values `write_files` wrote to `path`, as raw bytes, in order."""
    with path.open("rb") as handle:
        for line in handle:
            yield line[:-1] if line.endswith(b"\n") else line


def produce(
    config: GeneratorConfig,
    bootstrap_servers: str,
    topic: str,
    rate: float | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Send the generated records to `topic`, keyed by card id, in arrival order.

    `rate` caps the send rate in events/s (None: as fast as the client goes).
    A tqdm bar is shown on stderr when `progress` is true and stderr is a
    TTY. Flushes before returning, and raises InfraError if any send failed.
    Returns how many records of each kind were sent:
    {"valid": ..., "malformed": ..., "duplicate": ...}.
    """
    if rate is not None and not (isinstance(rate, int | float) and 0 < rate < float("inf")):
        raise ConfigError(f"rate must be a positive number of events/s, got {rate!r}")
    from tqdm import tqdm

    from lamina.kafkaio import make_producer

    counts = {KIND_VALID: 0, KIND_MALFORMED: 0, KIND_DUPLICATE: 0}
    failures: list[BaseException] = []
    producer = make_producer(bootstrap_servers)
    bar = tqdm(unit="ev", desc=f"produce {topic}",
               disable=not (progress and sys.stderr.isatty()))
    started = time.monotonic()
    sent = 0
    try:
        for record in generate(config):
            if rate is not None:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            future = producer.send(topic, key=record.key, value=record.value)
            future.add_errback(failures.append)
            counts[record.kind] += 1
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
        producer.flush()
        bar.update(sent % 1000)
    finally:
        bar.close()
        producer.close()
    if failures:
        raise InfraError(
            f"{len(failures)} of {sent} records were not delivered to {topic} "
            f"(first error: {failures[0]!r}); check the broker and rerun"
        )
    elapsed = time.monotonic() - started
    log.info("generator produced", topic=topic, seed=config.seed, sent=sent,
             seconds=round(elapsed, 1), **counts)
    return counts
