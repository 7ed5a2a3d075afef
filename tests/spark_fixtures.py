"""A session-scoped local Spark session for tests (registered as a pytest
plugin in tests/conftest.py).

One JVM for the whole test run: starting a session with the Delta jars
costs seconds (more on a busy machine), so every Spark test shares it. Small
settings keep tiny test data fast: local[2], two shuffle partitions, no UI.
The Delta jars come from the Ivy cache in ~/.ivy2* (outside the repository;
the first run downloads them from Maven Central).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Settings every test session uses; tests that start their own Spark
#: process (kill -9 tests) pass the same ones.
TEST_SPARK_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.driver.memory": "1g",
}


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """A local[2] SparkSession with Delta Lake, UTC, shared by all tests."""
    from lamina.batch import spark as batch_spark

    session = batch_spark.spark_session("local[2]", app_name="lamina-tests",
                                        extra_conf=TEST_SPARK_CONF)
    yield session
    session.stop()
