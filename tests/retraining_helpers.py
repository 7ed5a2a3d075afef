"""The small-data retraining run of the DAG tests
(tests/integration/test_airflow_ui.py types it into the trigger form and
runs each task function again with it).

It retrains on this history: 8 days from 2026-01-01, ~4k transactions
(generator seed 11, 400 cards, 100 merchants), a tenth of the cards
compromised once.
"""

from __future__ import annotations

from typing import Any

#: The ``lamina_retraining`` run configuration for that history: labels as
#: known at the end of the period, mature after one day (backtest days 5-7,
#: training days 1-5, see tasks.retraining_windows), small training, and the
#: gate's absolute minimums lowered for small data (nothing else). Read it,
#: do not change it.
RETRAIN_CONF: dict[str, Any] = {
    "as_of": "2026-01-09T00:00:00+00:00", "label_maturity_days": 1.0,
    "backtest_days": 2.0, "train_days": 4.0, "workers": 1, "seed": 7,
    "train_params": {"epochs": 2, "batch_size": 256, "hidden": [16]},
    "gate_thresholds": {"min_examples": 200, "min_positives": 5, "min_roc_auc": 0.6,
                        "max_ece": 0.2},
}
