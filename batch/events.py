"""Events of one type from a master-dataset snapshot, as typed Spark columns.

``read_master`` is the only I/O here: it opens one Delta version of the
master dataset with delta-spark. Everything else is a pure transformation
DataFrame -> DataFrame (no session, no I/O), testable on tiny frames:

* ``of_event_type`` keeps one event type (a partition filter: Spark prunes
  the other types' folders);
* ``first_of_each_event_id`` counts each ``event_id`` once -- a producer's
  resend can land twice (the lander's dedup has a horizon), and views must
  not count it twice (invariant 3, "Two kinds of duplicates");
* ``parse_payload`` turns the stored JSON bytes into typed columns, with a
  Spark schema derived from the event type's JSON Schema files.

The result of ``events_for`` has the envelope columns ``event_id``,
``event_time`` (int64 epoch ms, UTC, as in the payload) and
``schema_version``, the payload properties of every schema version (null
where a version lacks one; or only those asked for) and ``entity_key`` = the
group's entity-key property, as a string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lamina.errors import ConfigError
from lamina.schemas.event_schemas import SchemaRegistry, default_registry

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

#: Envelope columns kept from the master rows (payload copies are dropped).
ENVELOPE_COLUMNS = ("event_id", "event_time", "schema_version")


def read_master(spark: SparkSession, master_uri: str, snapshot: int) -> DataFrame:
    """The master dataset's rows as of Delta version ``snapshot``."""
    return spark.read.format("delta").option("versionAsOf", snapshot).load(master_uri)


def _spark_type(name: str, prop: Mapping[str, Any], source: str) -> DataType:
    """The Spark type of one JSON Schema property (the subset the registry
    allows: ``type``, ``const`` and ``enum`` of scalars)."""
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType

    json_type = prop.get("type")
    if json_type is None:
        examples = list(prop.get("enum", [])) + ([prop["const"]] if "const" in prop else [])
        kinds = {type(v) for v in examples}
        if kinds == {str}:
            json_type = "string"
        elif kinds == {bool}:
            json_type = "boolean"
        elif kinds and kinds <= {int}:
            json_type = "integer"
        elif kinds and kinds <= {int, float}:
            json_type = "number"
    by_name: dict[str, DataType] = {
        "string": StringType(), "integer": LongType(), "number": DoubleType(),
        "boolean": BooleanType(),
    }
    if isinstance(json_type, str) and json_type in by_name:
        return by_name[json_type]
    raise ConfigError(
        f"{source}: property {name!r} has no scalar JSON type (got {json_type!r}); "
        "batch views read string, integer, number and boolean properties"
    )


def payload_schema(event_type: str, registry: SchemaRegistry | None = None) -> StructType:
    """The Spark schema of ``event_type`` payloads: every property of every
    schema version, typed from the JSON Schema files.

    A property present in several versions must keep one type (what the
    compatibility check enforces); otherwise ConfigError names it.
    """
    from pyspark.sql.types import StructField, StructType

    registry = registry or default_registry()
    fields: dict[str, DataType] = {}
    for version in registry.versions(event_type):
        source = str(registry.source(event_type, version))
        for name, prop in registry.get(event_type, version)["properties"].items():
            spark_type = _spark_type(name, prop, source)
            if name in fields and fields[name] != spark_type:
                raise ConfigError(
                    f"{source}: property {name!r} is {spark_type.simpleString()} here but "
                    f"{fields[name].simpleString()} in an earlier version of {event_type!r}"
                )
            fields[name] = spark_type
    return StructType([StructField(n, t, nullable=True) for n, t in fields.items()])


def of_event_type(master_rows: DataFrame, event_type: str) -> DataFrame:
    """Master rows of one event type."""
    from pyspark.sql import functions as F

    return master_rows.where(F.col("event_type") == F.lit(event_type))


ORDER_COLUMNS = ("ingest_time", "kafka_topic", "kafka_partition", "kafka_offset")


def first_of_each_event_id(rows: DataFrame) -> DataFrame:
    """One row per ``event_id``: the first landed, by ``ingest_time`` then
    Kafka topic, partition and offset (a total order: an offset lands once,
    so the choice does not depend on the file layout). ``rows`` needs those
    columns; the result keeps every column."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = Window.partitionBy("event_id").orderBy(*ORDER_COLUMNS)
    return (rows.withColumn("_landed_rank", F.row_number().over(first))
            .where(F.col("_landed_rank") == 1)
            .drop("_landed_rank"))


def parse_payload(master_rows: DataFrame, schema: StructType, entity_key: str | None,
                  fields: Sequence[str] | None = None) -> DataFrame:
    """Typed columns from the JSON ``payload`` bytes.

    Keeps ``event_id``, ``event_time`` (the envelope's timestamp as int64
    epoch ms, the payload's unit) and ``schema_version``, then every field of
    ``schema`` from the payload; ``entity_key`` is the payload's
    ``entity_key`` property as a string (no such column when ``entity_key``
    is None: events read for their fields, e.g. labels). The envelope wins over a payload
    field of the same name (they agree for landed events: the lander took
    the envelope from the payload). ``fields`` limits the payload columns to
    those named (None: all); names that are not properties are ignored (a
    view's derived fields are computed later). The landing-order columns
    (``ORDER_COLUMNS``) are kept for ``first_of_each_event_id``.
    """
    from pyspark.sql import functions as F

    if entity_key is not None and entity_key not in schema.fieldNames():
        raise ConfigError(
            f"entity key {entity_key!r} is not a property of the event schema "
            f"(properties: {', '.join(schema.fieldNames())})"
        )
    parsed = F.from_json(F.col("payload").cast("string"), schema, {"mode": "PERMISSIVE"})
    wanted = set(schema.fieldNames() if fields is None else fields)
    payload_fields = [f for f in schema.fieldNames() if f in wanted
                      and f not in ENVELOPE_COLUMNS and f not in ("event_type", "entity_key")]
    return master_rows.select(
        F.col("event_id"),
        F.unix_millis(F.col("event_time")).alias("event_time"),
        F.col("schema_version"),
        *ORDER_COLUMNS,
        parsed.alias("p"),
    ).select(
        *ENVELOPE_COLUMNS,
        *ORDER_COLUMNS,
        *([] if entity_key is None else
          [F.col(f"p.`{entity_key}`").cast("string").alias("entity_key")]),
        *[F.col(f"p.`{f}`").alias(f) for f in payload_fields],
    )


def events_for(master_rows: DataFrame, event_type: str, entity_key: str | None,
               fields: Sequence[str] | None = None,
               registry: SchemaRegistry | None = None) -> DataFrame:
    """The events of ``event_type`` keyed by ``entity_key`` (None: not
    keyed, no ``entity_key`` column), each
    ``event_id`` once, with typed payload columns (all, or ``fields``; see
    the module doc). The payload is parsed and narrowed before the
    deduplication, so the shuffle by event id carries only what is used."""
    schema = payload_schema(event_type, registry)
    typed = parse_payload(of_event_type(master_rows, event_type), schema, entity_key, fields)
    return first_of_each_event_id(typed).drop(*ORDER_COLUMNS)
