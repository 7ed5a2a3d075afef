"""Lamina's core: configuration, logging, errors, lineage ids, the consumer
loop and dedup index, the Kafka runtime and topic admin, the event
generator, the CLI and the demo. The layers live beside it (lamina.master,
lamina.batch, lamina.speed, lamina.serving) and meet only in lamina.schemas,
the stores (lamina.stores), the models package (lamina.models) and this core
(tests/unit/test_layering.py checks it)."""

__version__ = "0.1.0"
