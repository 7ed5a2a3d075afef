"""Dead letters: bad input is never silently dropped (invariant 9).

A dead letter carries its source (topic, partition, offset), the reason and
the original bytes. Sinks are durable when `send` returns, and the lander
calls `send` *before* the Delta commit that moves the offsets past the bad
events: a crash in between repeats a dead letter, never loses one. Because a
dead letter is keyed by its source, a reader can count distinct ones.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from lamina.errors import InfraError


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    original: bytes

    @property
    def key(self) -> str:
        return f"{self.source_topic}:{self.source_partition}:{self.source_offset}"


class DeadLetterSink(Protocol):
    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Store `letters` durably; raise if any could not be stored."""


class KafkaDeadLetters:
    """Dead letters on a Kafka topic: key = source, value = original bytes,
    headers = reason and source fields. Sends with acks=all and waits."""

    def __init__(self, producer: Any, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    def send(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        futures = [
            self._producer.send(
                self.topic,
                key=letter.key.encode(),
                value=letter.original,
                headers=[
                    ("reason", letter.reason.encode()),
                    ("source_topic", letter.source_topic.encode()),
                    ("source_partition", str(letter.source_partition).encode()),
                    ("source_offset", str(letter.source_offset).encode()),
                ],
            )
            for letter in letters
        ]
        self._producer.flush()
        for future in futures:
            try:
                future.get(timeout=60)
            except Exception as exc:
                raise InfraError(
                    f"could not write a dead letter to topic {self.topic}: {exc}; "
                    "the lander stops without committing, so nothing is lost"
                ) from exc


class FileDeadLetters:
    """Dead letters as JSON lines (original bytes in base64), fsynced; used
    by `lamina import`, which must work without a broker."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            for letter in letters:
                out.write(
                    orjson.dumps(
                        {
                            "key": letter.key,
                            "reason": letter.reason,
                            "original_b64": base64.b64encode(letter.original).decode(),
                        }
                    )
                    + b"\n"
                )
            out.flush()
            os.fsync(out.fileno())


def read_file_dead_letters(path: Path) -> list[dict[str, Any]]:
    """Read a FileDeadLetters file back (original bytes decoded)."""
    out = []
    for line in path.read_bytes().splitlines():
        entry = orjson.loads(line)
        entry["original"] = base64.b64decode(entry.pop("original_b64"))
        out.append(entry)
    return out
