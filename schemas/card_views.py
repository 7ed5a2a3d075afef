"""The default use case: card-transaction views and the fraud model's features.

:data:`CARD_VIEWS` aggregates ``transaction`` events per ``card_id``;
:data:`FEATURES` is the model's input, in order; :func:`model_features` turns
one event plus its view features (as of just before the event, see
``lamina.schemas.view_definitions``) into that vector -- the one function used online
(speed layer) and offline (training set), so there is no skew by
construction.

Why these views (the generator plants two fraud patterns, see
``lamina.generator``)
--------------------------------------------------------------------------
* Account takeover (before the drift): 3-8 transactions within about an
  hour, at merchants new to the card, 3-10x its typical amount, often at its
  quiet hours and abroad. Caught by: ``txn_count_1h``, ``amount_sum_1h``,
  ``amount_max_1h``, ``merchant_distinct_1h`` against ``txn_count_1h`` (new
  merchants make them equal), ``amount_over_mean_30d`` (the card's typical
  amount), ``country_distinct_24h`` and ``is_foreign`` (abroad), and
  ``hour_share_30d`` (the share of the card's last 30 days within +-1 h of
  this UTC hour: how usual the hour is *for this card*, whatever its time
  zone; a UTC "night" count would not work across time zones).
* Card testing (after the drift): 5-15 tiny (< 5) online payments 10-120 s
  apart, then 1-2 larger online ones. Caught by: ``small_online_count_10m``
  / ``_1h``, ``online_count_1h``, ``txn_count_10m`` and
  ``seconds_since_last_txn`` (tens of seconds), and on the larger payments
  that follow, the same counts together with ``amount_over_mean_7d``.
* Genuine look-alikes are in the data on purpose (sessions of 1-3 purchases,
  travellers, cross-border online shopping), so each signal is relative to
  the card's own history (7 d / 30 d means, hour profile, counts).

Defaults for missing values (no history, unknown currency)
----------------------------------------------------------
Counts, sums and distinct counts are 0 with no events; ``amount_mean_*`` and
``amount_max_*`` are 0.0 with no events. Ratios and durations that need a
history use -1.0 as "no history", which a model can tell apart from any real
value: ``amount_over_mean_7d``/``_30d``, ``seconds_since_last_txn`` and
``hour_share_30d``. ``is_foreign`` is -1.0 when the billing currency is not
in :data:`CURRENCY_COUNTRIES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from lamina.schemas.contract import FeatureContract, LabelRule
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Aggregate,
    Filter,
    GroupBy,
    Window,
    field_value,
)

# The card's windows, each with its hop (tile size) declared: 5 min tiles for
# the short windows, hourly for a day and a week, daily for 30 days and the
# lifetime. A hop is part of the definition and of its fingerprint.
_W: Final[Mapping[str, Window]] = {
    w.name: w
    for w in (
        Window("10m", 10 * MINUTE_MS, hop_ms=5 * MINUTE_MS),
        Window("1h", HOUR_MS, hop_ms=5 * MINUTE_MS),
        Window("24h", 24 * HOUR_MS, hop_ms=HOUR_MS),
        Window("7d", 7 * DAY_MS, hop_ms=HOUR_MS),
        Window("30d", 30 * DAY_MS, hop_ms=DAY_MS),
        Window("lifetime", None, hop_ms=DAY_MS),
    )
}
# Hour-of-day histogram: bucket h holds hour h (bounds 1..23 -> 24 buckets).
HOUR_BUCKETS: Final = tuple(float(h) for h in range(1, 24))

CARD_VIEWS: Final = GroupBy(
    name="card_transactions",
    event_type="transaction",
    entity_key="card_id",
    aggregates=(
        Aggregate("txn_count", "count", None,
                  (_W["10m"], _W["1h"], _W["24h"], _W["7d"], _W["30d"])),
        # Amounts in cents, exactly (scale 2): sums and means merge bit for bit
        # in any grouping, so tiles + head online equal the raw-event fold offline.
        Aggregate("amount_sum", "sum", "amount", (_W["1h"], _W["24h"], _W["7d"]), scale=2),
        Aggregate("amount_mean", "mean", "amount", (_W["7d"], _W["30d"]), scale=2),
        Aggregate("amount_max", "max", "amount", (_W["1h"], _W["24h"])),
        Aggregate("merchant_distinct", "approx_distinct", "merchant_id",
                  (_W["1h"], _W["24h"], _W["7d"])),
        Aggregate("country_distinct", "approx_distinct", "country", (_W["24h"], _W["7d"])),
        Aggregate("small_online_count", "count", None, (_W["10m"], _W["1h"]),
                  filters=(Filter("amount", "<", 5), Filter("channel", "==", "online"))),
        Aggregate("online_count", "count", None, (_W["1h"], _W["24h"]),
                  filters=(Filter("channel", "==", "online"),)),
        # Max, not last: the latest event time is the largest one, and max
        # needs no tie-breaking. Read as seconds_since_last_txn.
        Aggregate("last_event_time", "max", "event_time", (_W["lifetime"],)),
        Aggregate("hour_histogram", "histogram", "hour_of_day", (_W["30d"],),
                  buckets=HOUR_BUCKETS),
    ),
)

# View features the model reads as they are; the rest feed derived features.
_VIEW_INPUTS: Final = tuple(
    name for name in CARD_VIEWS.feature_names()
    if name not in ("last_event_time_lifetime", "hour_histogram_30d")
)
# A view feature that is None (no events) becomes this.
_VIEW_DEFAULT: Final = 0.0

REQUEST_FEATURES: Final = ("amount", "log_amount", "hour_of_day", "is_online", "is_foreign")
DERIVED_FEATURES: Final = (
    "amount_over_mean_7d", "amount_over_mean_30d", "seconds_since_last_txn", "hour_share_30d",
)
#: The model's input vector, in order.
FEATURES: Final[tuple[str, ...]] = (*REQUEST_FEATURES, *_VIEW_INPUTS, *DERIVED_FEATURES)
NO_HISTORY: Final = -1.0

_EUROZONE: Final = frozenset({
    "AT", "BE", "BG", "CY", "DE", "EE", "ES", "FI", "FR", "GR", "HR", "IE", "IT", "LT", "LU",
    "LV", "MT", "NL", "PT", "SI", "SK",
    # Not members, but use the euro.
    "AD", "MC", "ME", "SM", "VA", "XK",
})
#: Countries where a billing currency is the local one (ISO 4217 -> ISO 3166).
#: A payment elsewhere is cross-border. Currencies missing here give -1.
CURRENCY_COUNTRIES: Final[Mapping[str, frozenset[str]]] = {
    "EUR": _EUROZONE,
    "USD": frozenset({"US", "PR", "EC", "SV", "PA", "TL", "FM", "MH", "PW", "ZW"}),
    "GBP": frozenset({"GB", "IM", "JE", "GG"}),
    "CAD": frozenset({"CA"}),
    "AUD": frozenset({"AU", "KI", "NR", "TV"}),
    "NZD": frozenset({"NZ", "CK", "NU"}),
    "CHF": frozenset({"CH", "LI"}),
    "SGD": frozenset({"SG"}),
    "JPY": frozenset({"JP"}),
    "SEK": frozenset({"SE"}),
    "NOK": frozenset({"NO"}),
    "DKK": frozenset({"DK", "FO", "GL"}),
    "PLN": frozenset({"PL"}),
    "CZK": frozenset({"CZ"}),
    "HUF": frozenset({"HU"}),
    "RON": frozenset({"RO"}),
    "BRL": frozenset({"BR"}),
    "MXN": frozenset({"MX"}),
    "INR": frozenset({"IN"}),
    "CNY": frozenset({"CN"}),
    "HKD": frozenset({"HK"}),
}


def _number(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _ratio(numerator: float, denominator: Any) -> float:
    if denominator is None or denominator <= 0:
        return NO_HISTORY
    return numerator / float(denominator)


def model_features(event_payload: Mapping[str, Any],
                   view_features: Mapping[str, Any]) -> dict[str, float]:
    """The model's numeric input for one transaction, keys = :data:`FEATURES`.

    ``view_features`` are ``CARD_VIEWS`` features of the event's card as of
    just before ``event_payload["event_time"]`` (so never including the event
    itself); a missing key or a None value takes the default in the module
    docstring. Pure and deterministic: the speed layer and the training-set
    builder call exactly this.
    """
    amount = float(event_payload["amount"])
    event_time = int(event_payload["event_time"])
    hour = int(field_value(event_payload, "hour_of_day"))
    countries = CURRENCY_COUNTRIES.get(str(event_payload.get("currency")))
    if countries is None:
        is_foreign = NO_HISTORY
    else:
        is_foreign = 0.0 if event_payload.get("country") in countries else 1.0

    vector: dict[str, float] = {
        "amount": amount,
        "log_amount": math.log1p(amount),
        "hour_of_day": float(hour),
        "is_online": 1.0 if event_payload.get("channel") == "online" else 0.0,
        "is_foreign": is_foreign,
    }
    for name in _VIEW_INPUTS:
        vector[name] = _number(view_features.get(name), _VIEW_DEFAULT)

    vector["amount_over_mean_7d"] = _ratio(amount, view_features.get("amount_mean_7d"))
    vector["amount_over_mean_30d"] = _ratio(amount, view_features.get("amount_mean_30d"))
    last = view_features.get("last_event_time_lifetime")
    # Strictly-before views make last < event_time; max() guards a caller
    # passing views that include the event itself (0 s, never negative).
    vector["seconds_since_last_txn"] = (
        NO_HISTORY if last is None else max(0.0, (event_time - float(last)) / 1000.0))
    histogram: Sequence[int] = view_features.get("hour_histogram_30d") or ()
    total = sum(histogram)
    # +-1 h around the hour: a card's habits are not sharp to the hour, and
    # one hour alone is noisy with a month's handful of transactions.
    near = 0 if total == 0 else sum(histogram[(hour + d) % 24] for d in (-1, 0, 1))
    vector["hour_share_30d"] = NO_HISTORY if total == 0 else near / total
    return vector


#: The default use case's contract: card transactions scored for fraud.
CARD_FRAUD: Final = FeatureContract(
    name="card_fraud",
    query_event_type="transaction",
    groups=(CARD_VIEWS,),
    request_fields=("amount", "currency", "country", "channel", "event_time"),
    features=FEATURES,
    vectoriser=model_features,
    label=LabelRule(event_type="label", target_field="transaction_id", positive_field="is_fraud"),
    context_columns=("merchant_category", "channel"),
    slices=("merchant_category", "channel"),
)
