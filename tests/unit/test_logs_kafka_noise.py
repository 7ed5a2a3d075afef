"""kafka-python's per-retry connection errors are demoted; other errors,
Lamina's own included, are not."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from lamina.logs import KafkaClientNoise


def record(name: str, level: int, msg: str, *args: object,
           error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


@pytest.fixture
def root_at_info() -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(before)


RETRY_NOISE = [
    record("kafka.cluster", logging.WARNING,
           "No node available for metadata refresh - backoff/retry"),
    record("kafka.net.manager", logging.ERROR, "Connection failed: %s",
           "KafkaConnectionError: 111 ECONNREFUSED"),
    record("kafka.net.connection", logging.ERROR, "%s: Connection lost: %s",
           "<KafkaConnection node_id=0 (disconnected)>", "KafkaConnectionError: 111 ECONNREFUSED"),
    record("kafka.cluster", logging.ERROR, "Metadata refresh: failed %s",
           "KafkaConnectionError: 111 ECONNREFUSED"),
    record("kafka.coordinator", logging.ERROR,
           "Error sending FindCoordinatorRequest to node 0 [KafkaConnectionError: 111]"),
    record("kafka.net.transport", logging.ERROR, "%s: socket disconnected", "<KafkaTCPTransport>"),
    record("kafka.net.selector", logging.WARNING, "Task %s ran for %.3fs (>%.3fs threshold). "
           "It is blocking the event loop", "<Task>", 0.155, 0.1),
    # log.exception of a socket the stopping broker reset
    record("kafka.net.transport", logging.ERROR, "%s: Error receiving network data closing socket",
           "<KafkaTCPTransport [none]>", error=ConnectionResetError(104, "reset by peer")),
]


@pytest.mark.parametrize("noise", RETRY_NOISE, ids=lambda r: r.name)
def test_kafka_retry_errors_are_dropped_below_debug(root_at_info: None,
                                                    noise: logging.LogRecord) -> None:
    assert KafkaClientNoise().filter(noise) is False


def test_kafka_retry_errors_show_as_debug_when_debugging() -> None:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.DEBUG)
    try:
        noise = record("kafka.net.manager", logging.ERROR, "Connection failed: %s",
                       "KafkaConnectionError: 111 ECONNREFUSED")
        assert KafkaClientNoise().filter(noise) is True
        assert noise.levelno == logging.DEBUG and noise.levelname == "DEBUG"
    finally:
        root.setLevel(before)


@pytest.mark.parametrize("kept", [
    record("kafka.cluster", logging.ERROR, "Topic %s is not authorized for this client", "raw"),
    record("kafka.net.connection", logging.ERROR, "%s: SaslHandshake failed: %s", "<conn>",
           "UnsupportedSaslMechanismError"),
    record("kafka.producer.sender", logging.WARNING, "Got error produce response: %s",
           "MessageSizeTooLargeError"),
    record("kafka.net.selector", logging.ERROR, "Unhandled exception in task %s:", "<Task>",
           error=ValueError("a bug")),
    # Lamina's own lines about the same outage are not kafka-python's noise.
    record("lamina.kafkaio", logging.WARNING, "kafka broker lost, retrying node=0"),
    record("lamina.master.lander", logging.ERROR, "Connection failed: KafkaConnectionError"),
], ids=lambda r: f"{r.name}:{r.msg[:20]}")
def test_other_errors_pass_unchanged(root_at_info: None, kept: logging.LogRecord) -> None:
    level = kept.levelno
    assert KafkaClientNoise().filter(kept) is True
    assert kept.levelno == level
