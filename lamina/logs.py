"""Structured logging: one line per event, `what key=value ...`.

Every log call names what happened and the identifiers that let someone
trace it (topic, partition, offset, event_id, snapshot)."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any


def _fmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="'):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class KeyValueLogger:
    """A thin wrapper: `log.info("landed", partition=3, offset=42)`."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, what: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            tail = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            self._logger.log(level, f"{what} {tail}" if tail else what)

    def debug(self, what: str, **fields: Any) -> None:
        self._log(logging.DEBUG, what, fields)

    def info(self, what: str, **fields: Any) -> None:
        self._log(logging.INFO, what, fields)

    def warning(self, what: str, **fields: Any) -> None:
        self._log(logging.WARNING, what, fields)

    def error(self, what: str, **fields: Any) -> None:
        self._log(logging.ERROR, what, fields)


def get_logger(name: str) -> KeyValueLogger:
    return KeyValueLogger(name)


#: What kafka-python logs at WARNING/ERROR on every reconnect attempt while
#: a broker is unreachable (kafka-python 3.0.12: about 20 lines a second for
#: a consumer and a producer). The client retries by itself; a Lamina
#: process says once that the broker is lost and once that it is back
#: (lamina.kafkaio.BrokerWatch).
#: Also its event loop's self-diagnosis ("Task ... ran for 0.155s (>0.100s
#: threshold). It is blocking the event loop"), which a busy machine
#: triggers and an operator cannot act on.
_KAFKA_CLIENT_NOISE = re.compile(
    r"KafkaConnectionError|NodeNotReadyError|socket disconnected|ECONNREFUSED|ECONNRESET"
    r"|No node available|Connection (?:lost|failed|refused|reset)"
    r"|Bootstrap (?:connection|attempt) to .* failed"
    r"|ran for [0-9.]+s \(>[0-9.]+s threshold\)"
)


_CONNECTION_ERROR_NAMES = {"KafkaConnectionError", "NodeNotReadyError"}


def _is_connection_error(exc_info: Any) -> bool:
    """True for a traceback of a lost connection (a reset socket, say),
    which kafka-python logs with `log.exception`."""
    exc = exc_info[1] if exc_info else None
    if exc is None:
        return False
    return isinstance(exc, ConnectionError | TimeoutError) or any(
        cls.__name__ in _CONNECTION_ERROR_NAMES for cls in type(exc).__mro__)


class KafkaClientNoise(logging.Filter):
    """Demotes kafka-python's per-retry connection errors (and its event
    loop's self-diagnosis) to DEBUG: shown, as DEBUG, only when the root
    logger is at DEBUG; dropped otherwise. Every other kafka-python warning
    or error passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka.") or record.levelno < logging.WARNING \
                or record.levelno >= logging.CRITICAL:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        if not (_KAFKA_CLIENT_NOISE.search(message) or _is_connection_error(record.exc_info)):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def configure(level: str | None = None) -> None:
    """Log to stderr at LAMINA_LOG_LEVEL (default INFO); idempotent.
    kafka-python logs at WARNING and above, without its per-retry
    connection errors (see KafkaClientNoise)."""
    level_name = (level or os.environ.get("LAMINA_LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    if not any(getattr(h, "_lamina", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        handler.addFilter(KafkaClientNoise())
        handler._lamina = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(getattr(logging, level_name, logging.INFO))
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # A fresh group coordinator answers NotCoordinator while it loads; the
    # client retries, so these warnings only alarm people.
    logging.getLogger("kafka.coordinator").setLevel(logging.ERROR)
