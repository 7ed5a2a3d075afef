"""One typed settings object, loaded once.

Precedence, lowest first: the defaults below (they run on a laptop), a TOML
file (`--config FILE`, else `$LAMINA_CONFIG`, else `./lamina.toml` if it
exists), then environment variables `LAMINA_<FIELD>` (upper case). Unknown
keys and values of the wrong type are refused with a message naming them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lamina.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    # Where Lamina keeps its state on this machine (Kafka jars and data,
    # the master dataset, logs). Relative paths are resolved from the cwd.
    home: Path = Path(".lamina")
    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    raw_topic: str = "events.raw"
    dlq_topic: str = "events.dlq"
    raw_partitions: int = 3
    # Master dataset: a local path or an object-store URI delta-rs understands.
    master_uri: str = ""
    # Lander: commit when either bound is reached (size-or-time rule).
    lander_group: str = "lamina-lander"
    # Static group membership (KIP-345): a lander restarted with the same id
    # takes its partitions back at once instead of after the session timeout.
    # Give each lander its own stable id (e.g. the pod name); empty = dynamic.
    lander_instance_id: str = ""
    lander_session_timeout_ms: int = 10_000
    commit_max_events: int = 50_000
    commit_max_seconds: float = 2.0
    # A resent event_id is dropped when it landed on the same event date,
    # however old; this many newest dates of ids are kept in memory (older
    # dates are looked up in the table).
    dedup_cached_days: int = 3
    # Events larger than this go to the dead-letter topic.
    max_event_bytes: int = 64 * 1024

    @property
    def master_path(self) -> str:
        return self.master_uri or str(self.home / "master")

    @property
    def kafka_home(self) -> Path:
        return self.home / "kafka"


def _coerce(name: str, kind: Any, value: Any) -> Any:
    target = {"int": int, "float": float, "str": str, "Path": Path}.get(
        kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    )
    if target is None:
        raise ConfigError(f"setting '{name}' has an unsupported type {kind!r}")
    if target is int and isinstance(value, bool):
        raise ConfigError(f"setting '{name}' must be an integer, got {value!r}")
    try:
        coerced = target(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"setting '{name}' must be {target.__name__}, got {value!r}"
        ) from None
    if target in (int, float) and coerced <= 0:
        raise ConfigError(f"setting '{name}' must be positive, got {value!r}")
    return coerced


#: Settings that existed once, and what to do instead.
REMOVED_SETTINGS: Mapping[str, str] = {
    "dedup_horizon_hours": "resends are now dropped whatever their age (same event_id on "
                           "the same event date); remove it, and set dedup_cached_days "
                           "to tune memory",
}


def _refuse_removed(name: str, where: str) -> None:
    if name in REMOVED_SETTINGS:
        raise ConfigError(f"{where}: setting '{name}' was removed: {REMOVED_SETTINGS[name]}")


def load_settings(
    config_file: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from defaults, a TOML file and `LAMINA_*` variables."""
    env = os.environ if env is None else env
    known = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}

    path = config_file or env.get("LAMINA_CONFIG")
    if path is None and Path("lamina.toml").exists():
        path = "lamina.toml"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in raw.items():
            _refuse_removed(key, f"config file {path}")
            if key not in known:
                raise ConfigError(
                    f"config file {path}: unknown setting '{key}' "
                    f"(known: {', '.join(sorted(known))})"
                )
            values[key] = _coerce(key, known[key], value)

    for key in REMOVED_SETTINGS:
        if env.get(f"LAMINA_{key.upper()}"):
            _refuse_removed(key, f"environment variable LAMINA_{key.upper()}")
    for key, kind in known.items():
        env_value = env.get(f"LAMINA_{key.upper()}")
        if env_value is not None and env_value != "":
            values[key] = _coerce(f"LAMINA_{key.upper()}", kind, env_value)
    return dataclasses.replace(Settings(), **values)
