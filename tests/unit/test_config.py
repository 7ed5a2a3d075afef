"""Settings: a removed setting is refused with what replaced it."""

from __future__ import annotations

import pytest

from lamina.config import load_settings
from lamina.errors import ConfigError


def test_the_removed_dedup_horizon_is_refused_naming_its_replacement(tmp_path):
    config = tmp_path / "lamina.toml"
    config.write_text("dedup_horizon_hours = 24\n")
    with pytest.raises(ConfigError, match="dedup_horizon_hours' was removed.*dedup_cached_days"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="LAMINA_DEDUP_HORIZON_HOURS"):
        load_settings(None, env={"LAMINA_DEDUP_HORIZON_HOURS": "24"})


def test_dedup_cached_days_comes_from_the_environment(tmp_path):
    assert load_settings(None, env={"LAMINA_DEDUP_CACHED_DAYS": "5"}).dedup_cached_days == 5
