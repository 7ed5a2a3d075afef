"""The Spark session, built once by an entry point (a CLI command, a DAG
task, a test fixture) and handed to the job; transforms never build one.

The session carries the Delta Lake extension (delta-spark's jars come from
Maven Central through Spark's Ivy, cached in the default ``~/.ivy2`` outside
the repository so CI and later runs reuse it), reads and writes times in
UTC, runs Python workers with this interpreter, and binds to loopback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from lamina.errors import InfraError
from lamina.logs import get_logger

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = get_logger(__name__)

DEFAULT_APP_NAME = "lamina-batch"

# Small data on one machine: a shuffle into Spark's default 200 partitions
# spends its time scheduling empty tasks. Cluster runs pass their own value.
LOCAL_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.sql.adaptive.enabled": "true",
    # Smaller input splits than the 128 MB default: more, shorter scan
    # tasks keep both cores busy to the end (part of the best bare-Spark
    # plan measured in the batch-views benchmark, docs/decisions.md).
    "spark.sql.files.maxPartitionBytes": "16m",
    "spark.driver.memory": "2g",
    "spark.ui.showConsoleProgress": "false",
    # Delta rebuilds table state (log replay, post-commit checksum) in
    # this many tasks; its default of 50 is for clusters and costs seconds
    # of task scheduling per commit on two cores.
    "spark.databricks.delta.snapshotPartitions": "2",
}

# Measured by the last spark_session() call in this process (seconds).
last_start_seconds: float | None = None


def spark_session(
    master: str = "local[2]",
    app_name: str = DEFAULT_APP_NAME,
    extra_conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """A SparkSession with Delta Lake, UTC session time and loopback binding.

    ``master`` is any Spark master URL (``local[2]``, ``spark://host:7077``).
    ``extra_conf`` overrides anything set here (e.g. ``spark.ui.enabled=false``
    in tests, more shuffle partitions on a cluster). If a session is already
    active in this process it is returned as is, settings untouched (a test
    suite's or a notebook's session is not reconfigured behind its back). The start time is
    logged and kept in ``last_start_seconds``. Raises InfraError when Java or
    the Delta jars cannot be found.
    """
    global last_start_seconds
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    # Workers must run this venv's Python, not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    conf: dict[str, str] = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        # Delta writes must not leave Spark's _SUCCESS markers or .crc noise
        # to confuse delta-rs readers; the log is the only truth.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    }
    if master.startswith("local"):
        conf.update(LOCAL_CONF)
    conf.update(extra_conf or {})

    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    started = time.monotonic()
    try:
        session = configure_spark_with_delta_pip(builder).getOrCreate()
    except Exception as exc:  # JVM launch failures surface as many types
        raise InfraError(
            f"could not start Spark (master={master}): {exc}. Check that Java 17 is "
            "installed and that Maven Central is reachable for the Delta jars "
            "(cached in ~/.ivy2 after the first run)"
        ) from exc
    last_start_seconds = time.monotonic() - started
    session.sparkContext.setLogLevel("WARN")
    log.info("spark session started", master=master, app=app_name,
             seconds=round(last_start_seconds, 2), spark_version=session.version)
    return session
