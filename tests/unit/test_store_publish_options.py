"""The store options `lamina batch publish` takes (--store-option KEY=VALUE),
and the one view fingerprint every layer records. Pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.batch.published import definition_fingerprint as batch_fingerprint
from lamina.batch.store_publish import parse_store_options, store_options
from lamina.errors import ConfigError
from lamina.lineage import fingerprint
from lamina.schemas.card_views import CARD_VIEWS
from lamina.stores.lookup import definition_fingerprint as store_fingerprint


def test_key_value_pairs_parse_and_a_malformed_one_is_named() -> None:
    assert parse_store_options(["path=/tmp/a=b.db", "publish_chunk=5", "publish_chunk=7"]) == {
        "path": "/tmp/a=b.db", "publish_chunk": "7"}
    with pytest.raises(ConfigError, match="'publish_chunk' is not KEY=VALUE"):
        parse_store_options(["publish_chunk"])
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_store_options(["=5"])


def test_store_options_are_typed_from_the_store_defaults(tmp_path: Path) -> None:
    options = store_options("sqlite", {"publish_chunk": "10", "synchronous": "FULL"}, tmp_path)
    assert options == {"publish_chunk": 10, "synchronous": "FULL",
                       "path": str(tmp_path / "tiles.db")}
    assert store_options("sqlite", {"path": "/elsewhere.db"}, tmp_path) == {
        "path": "/elsewhere.db"}
    assert store_options("redis", {"socket_timeout_s": "2.5", "url": "redis://h:1/2"},
                         tmp_path) == {"socket_timeout_s": 2.5, "url": "redis://h:1/2"}
    with pytest.raises(ConfigError, match="has no option 'paht'; its options: path"):
        store_options("sqlite", {"paht": "x"}, tmp_path)
    with pytest.raises(ConfigError, match="publish_chunk must be int like its default"):
        store_options("redis", {"publish_chunk": "many"}, tmp_path)
    with pytest.raises(ConfigError, match="unknown tile store 'mongo'"):
        store_options("mongo", {}, tmp_path)


def test_the_store_and_the_batch_layer_record_one_fingerprint() -> None:
    assert store_fingerprint(CARD_VIEWS) == batch_fingerprint(CARD_VIEWS) \
        == fingerprint(CARD_VIEWS)


def test_one_fingerprint_function_and_a_hop_is_part_of_it() -> None:
    from tests.unit.test_views import card_views_with_hop

    assert batch_fingerprint is store_fingerprint
    rehopped = card_views_with_hop(15 * 60_000)
    assert store_fingerprint(rehopped) == fingerprint(rehopped) != fingerprint(CARD_VIEWS)
