"""Structured logging: one line per event, `what key=value ...`.

Every log call names what happened and the identifiers that let someone
trace it (topic, partition, offset, event_id, snapshot)."""

from __future__ import annotations

import logging
import os
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


def configure(level: str | None = None) -> None:
    """Log to stderr at LAMINA_LOG_LEVEL (default INFO); idempotent."""
    level_name = (level or os.environ.get("LAMINA_LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    if not any(getattr(h, "_lamina", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        handler._lamina = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(getattr(logging, level_name, logging.INFO))
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # A fresh group coordinator answers NotCoordinator while it loads; the
    # client retries, so these warnings only alarm people.
    logging.getLogger("kafka.coordinator").setLevel(logging.ERROR)
