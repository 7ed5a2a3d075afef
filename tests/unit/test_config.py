"""Settings in sections: defaults that run on a laptop, a TOML file with
tables, `LAMINA_<SECTION>_<FIELD>` variables, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.config import Settings, load_settings
from lamina.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lamina.toml"
    path.write_text(text)
    return path


def test_defaults_put_every_location_under_home():
    settings = load_settings(None, env={"LAMINA_HOME": "/tmp/lh"})
    assert settings.master_uri == "/tmp/lh/master"
    assert settings.view_uri("card_transactions") == "/tmp/lh/views/card_transactions"
    assert settings.training_sets_uri == "/tmp/lh/training_sets"
    assert settings.models_uri == "/tmp/lh/models"
    assert settings.registry_uri == "/tmp/lh"
    assert settings.tile_store_options() == {"path": "/tmp/lh/tiles.db"}
    assert settings.spark.master == "local[2]"


def test_a_file_and_the_environment_set_sections_and_the_environment_wins(tmp_path):
    path = write(tmp_path, """
home = "/srv/lamina"
[kafka]
bootstrap_servers = "k1:9092,k2:9092"
[views]
uri = "s3://bucket/views"
[registry]
tracking_uri = "http://mlflow:5000"
[spark]
master = "spark://spark:7077"
conf = { "spark.executor.memory" = "4g" }
[tile_store]
kind = "redis"
options = { url = "redis://cache:6379/0" }
""")
    settings = load_settings(path, env={"LAMINA_KAFKA_RAW_TOPIC": "raw.v2",
                                        "LAMINA_TILE_STORE_OPTIONS": '{"url": "redis://r:1/0"}'})
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka.raw_topic == "raw.v2"
    assert settings.view_uri("g") == "s3://bucket/views/g"
    assert settings.registry_uri == "http://mlflow:5000"
    assert settings.spark.conf == {"spark.executor.memory": "4g"}
    assert settings.tile_store.kind == "redis"
    assert settings.tile_store_options() == {"url": "redis://r:1/0"}
    assert settings.master_uri == "/srv/lamina/master"


def test_a_setting_that_can_be_zero_can_be_zero_and_one_that_cannot_is_refused():
    assert load_settings(None, env={"LAMINA_LANDER_COMMIT_MAX_SECONDS": "0"}
                         ).lander.commit_max_seconds == 0.0
    with pytest.raises(ConfigError, match="LAMINA_LANDER_COMMIT_MAX_EVENTS must be at least 1"):
        load_settings(None, env={"LAMINA_LANDER_COMMIT_MAX_EVENTS": "0"})


@pytest.mark.parametrize(("text", "message"), [
    ("[kafka]\nbootstrap = 'x'\n", "unknown setting 'bootstrap' in \\[kafka\\]"),
    ("[sparks]\nmaster = 'x'\n", "unknown setting 'sparks'"),
    ("kafka = 'x'\n", "'kafka' is a section"),
    ("[kafka]\nraw_partitions = 'three'\n", "raw_partitions must be int"),
    ("[kafka]\nraw_partitions = 2.5\n", "must be an integer"),
    ("[spark]\nconf = 'x'\n", "must be a table"),
    ("[lander]\ncommit_max_events = true\n", "must be int"),
])
def test_a_bad_file_is_refused_naming_the_setting(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), env={})


def test_renamed_and_removed_settings_say_what_replaced_them(tmp_path):
    with pytest.raises(ConfigError, match="dedup_horizon_hours' was removed.*dedup_cached_days"):
        load_settings(write(tmp_path, "dedup_horizon_hours = 24\n"), env={})
    with pytest.raises(ConfigError, match="LAMINA_DEDUP_HORIZON_HOURS"):
        load_settings(None, env={"LAMINA_DEDUP_HORIZON_HOURS": "24"})
    with pytest.raises(ConfigError, match=r"now 'bootstrap_servers' in section \[kafka\].*"
                                          "LAMINA_KAFKA_BOOTSTRAP_SERVERS"):
        load_settings(None, env={"LAMINA_BOOTSTRAP_SERVERS": "x:1"})
    with pytest.raises(ConfigError, match=r"\[lander\]"):
        load_settings(write(tmp_path, "commit_max_events = 5\n"), env={})
    with pytest.raises(ConfigError, match="LAMINA_SPARK_CONF must be a JSON object"):
        load_settings(None, env={"LAMINA_SPARK_CONF": "not json"})


def test_names_kept_from_the_flat_settings_still_work():
    settings = load_settings(None, env={"LAMINA_LANDER_GROUP": "g", "LAMINA_MASTER_URI": "/m",
                                        "LAMINA_LANDER_INSTANCE_ID": "pod-1"})
    assert (settings.lander.group, settings.master_uri, settings.lander.instance_id) == (
        "g", "/m", "pod-1")


def test_relocated_settings_derive_every_location_from_the_new_home():
    settings = load_settings(None, env={"LAMINA_MASTER_URI": "/m", "LAMINA_VIEWS_URI": "/v",
                                        "LAMINA_KAFKA_RAW_TOPIC": "raw"})
    demo = settings.relocated(Path("/tmp/demo"))
    assert demo.master_uri == "/tmp/demo/master" and demo.views_uri == "/tmp/demo/views"
    assert demo.kafka.raw_topic == "raw"
    assert isinstance(demo, Settings)


def test_a_true_false_setting_is_read_from_the_file_and_the_environment(tmp_path):
    config = tmp_path / "lamina.toml"
    config.write_text("[speed]\nscore = false\n[serving]\nscore = false\n")
    assert load_settings(config, env={}).speed.score is False
    loaded = load_settings(config, env={"LAMINA_SERVING_SCORE": "true"})
    assert (loaded.speed.score, loaded.serving.score) == (False, True)
    assert load_settings(env={"LAMINA_SPEED_SCORE": "0"}).speed.score is False
    with pytest.raises(ConfigError, match="LAMINA_SPEED_SCORE must be true or false"):
        load_settings(env={"LAMINA_SPEED_SCORE": "maybe"})
    config.write_text('[speed]\nscore = "false"\n')
    with pytest.raises(ConfigError, match=r"\[speed\] score must be true or false"):
        load_settings(config, env={})
    config.write_text("[speed]\nscore = 1\n")
    with pytest.raises(ConfigError, match=r"\[speed\] score must be true or false"):
        load_settings(config, env={})


def test_serving_settings_are_checked_and_the_token_is_not_in_their_repr():
    settings = load_settings(env={"LAMINA_SERVING_TOKEN": "s3cret-token",
                                  "LAMINA_SERVING_PORT": "8123"})
    assert (settings.serving.token, settings.serving.port) == ("s3cret-token", 8123)
    assert "s3cret-token" not in repr(settings)
    with pytest.raises(ConfigError, match="LAMINA_SERVING_PORT must be at most 65535"):
        load_settings(env={"LAMINA_SERVING_PORT": "70000"})
