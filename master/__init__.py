"""The master dataset: an append-only Delta Lake table of raw events, the
lander that fills it from Kafka exactly-once in effect, backfill import,
snapshots and compaction."""
