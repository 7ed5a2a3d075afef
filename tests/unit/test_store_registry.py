"""Choosing a tile store by its short name: the class is imported only when
chosen, and a bad name or option is one clear ConfigError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import ConfigError
from lamina.stores import STORES, BatchView, TileRow, open_store, store_class
from lamina.stores.base import check_offsets, realtime_ranges

REPO = Path(__file__).resolve().parents[2]


def test_importing_the_stores_imports_no_store_client() -> None:
    code = ("import sys, lamina.stores; "
            "print(sorted(m for m in ('redis', 'lamina.stores.redis', 'lamina.stores.sqlite') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_short_names_map_to_their_classes() -> None:
    assert set(STORES) == {"sqlite", "redis"}
    for name in STORES:
        assert store_class(name).name == name


def test_an_unknown_store_or_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown tile store 'mongo'; known: sqlite, redis"):
        open_store("mongo")
    with pytest.raises(ConfigError, match="missing a required argument: 'path'; its options"):
        open_store("sqlite", pth=str(tmp_path / "x.db"))
    with pytest.raises(ConfigError, match="unexpected keyword argument 'timeout'"):
        open_store("sqlite", path=str(tmp_path / "x.db"), timeout=3)
    with pytest.raises(ConfigError, match="in-memory database cannot be shared"):
        open_store("sqlite", path=":memory:")
    with pytest.raises(ConfigError, match="synchronous must be one of"):
        open_store("sqlite", path=str(tmp_path / "x.db"), synchronous="SOMETIMES")
    with pytest.raises(ConfigError, match="publish_chunk must be a positive integer"):
        open_store("sqlite", path=str(tmp_path / "x.db"), publish_chunk=0)
    with pytest.raises(ConfigError, match="prefix must be a word"):
        open_store("redis", url="redis://127.0.0.1:1/0", prefix="a b")


def test_an_unreachable_redis_says_where_it_looked() -> None:
    from lamina.stores import StoreUnavailable

    with pytest.raises(StoreUnavailable, match=r"redis://127.0.0.1:1/0 is unreachable .*"
                                               r"redis-server running"):
        open_store("redis", url="redis://127.0.0.1:1/0", socket_timeout_s=0.5)


def test_rows_and_views_refuse_malformed_values() -> None:
    with pytest.raises(ValueError, match="not a multiple of hop"):
        TileRow("g", "e", 300_000, 1, b"")
    with pytest.raises(ValueError, match="not a view name"):
        TileRow("G-1", "e", 300_000, 0, b"")
    with pytest.raises(ValueError, match="partials must be bytes"):
        text: Any = "text"
        TileRow("g", "e", 300_000, 0, text)
    with pytest.raises(ValueError, match="horizon_ms .* must be after cutoff_ms"):
        BatchView(group="g", cutoff_ms=10, horizon_ms=10, batch_version=1)
    with pytest.raises(ValueError, match="batch_version must be an integer >= 0"):
        BatchView(group="g", cutoff_ms=0, horizon_ms=10, batch_version=-1)
    with pytest.raises(ValueError, match="is not a Kafka topic name"):
        check_offsets("speed", {("bad topic", 0): 1})
    with pytest.raises(ValueError, match="offset of 't' must be an integer >= 0"):
        check_offsets("speed", {("t", 0): -1})


def test_realtime_ranges_start_at_the_cutoff_or_the_longest_window() -> None:
    hour, five = 3_600_000, 300_000
    assert realtime_ranges(0, 10 * hour + 7, {five: hour, hour: None}) == [
        (five, 9 * hour, 10 * hour + 7), (hour, 0, 10 * hour + 7)]
    assert realtime_ranges(0, 7, {five: hour}) == [(five, 0, 7)]
