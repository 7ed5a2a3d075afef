"""Lamina's core: configuration, logging, errors, the CLI, the Kafka runtime
and the event generator. The layers live beside it (lamina.schemas,
lamina.master, lamina.batch, lamina.speed, lamina.serving) and meet only in
lamina.schemas and in the stores."""

__version__ = "0.1.0"
