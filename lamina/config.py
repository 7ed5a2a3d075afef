"""One typed settings object in sections, loaded once.

Precedence, lowest first: the defaults below (they run on a laptop), a TOML
file (`--config FILE`, else `$LAMINA_CONFIG`, else `./lamina.toml` if it
exists), then environment variables. In the file a section is a table::

    home = "/var/lib/lamina"

    [kafka]
    bootstrap_servers = "kafka-1:9092,kafka-2:9092"

    [tile_store]
    kind = "redis"
    options = { url = "redis://cache:6379/0" }

and in the environment it is ``LAMINA_<SECTION>_<FIELD>`` in upper case
(``LAMINA_KAFKA_BOOTSTRAP_SERVERS``, ``LAMINA_TILE_STORE_KIND``; a table
setting such as ``options`` takes JSON there), with ``LAMINA_HOME`` for the
home. Unknown keys, values of the wrong type or out of range, and settings
that were renamed or removed are refused with a message naming them.

Locations left empty are derived from ``home`` (``Settings.master_uri``,
``views_uri``, ...); each can instead point at object storage or a server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lamina.errors import ConfigError


def _at_least(minimum: float) -> dict[str, Any]:
    return {"minimum": minimum}


#: What an environment variable may say for a true/false setting.
_BOOLEANS: dict[str, bool] = {"true": True, "1": True, "yes": True, "on": True,
                              "false": False, "0": False, "no": False, "off": False}


def _between(minimum: float, maximum: float) -> dict[str, Any]:
    return {"minimum": minimum, "maximum": maximum}


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    raw_topic: str = "events.raw"
    dlq_topic: str = "events.dlq"
    # Where the speed layer writes score records (schemas/records/scores/v1.json).
    scores_topic: str = "scores.v1"
    raw_partitions: int = field(default=3, metadata=_at_least(1))


@dataclass(frozen=True)
class MasterSettings:
    # The master dataset: a local path or an object-store URI delta-rs
    # understands. Empty: <home>/master.
    uri: str = ""


@dataclass(frozen=True)
class LanderSettings:
    group: str = "lamina-lander"
    # Static group membership (KIP-345): a lander restarted with the same id
    # takes its partitions back at once instead of after the session timeout.
    # Give each lander its own stable id (e.g. the pod name); empty = dynamic.
    instance_id: str = ""
    session_timeout_ms: int = field(default=10_000, metadata=_at_least(1))
    # Commit when either bound is reached (size-or-time rule); 0 s commits
    # after every poll that brought records.
    commit_max_events: int = field(default=50_000, metadata=_at_least(1))
    commit_max_seconds: float = field(default=2.0, metadata=_at_least(0))
    # A resent event_id is dropped when it landed on the same event date,
    # however old; this many newest dates of ids are kept in memory (older
    # dates are looked up in the table).
    dedup_cached_days: int = field(default=3, metadata=_at_least(1))
    # Events larger than this go to the dead-letter topic.
    max_event_bytes: int = field(default=64 * 1024, metadata=_at_least(1))


@dataclass(frozen=True)
class SpeedSettings:
    # The speed layer's own consumer group on the raw topic; also the name
    # its offsets are stored under in the tile store.
    group: str = "lamina-speed"
    instance_id: str = ""
    session_timeout_ms: int = field(default=10_000, metadata=_at_least(1))
    # How much older than an entity's newest event time an event may be and
    # still update the realtime tiles; later ones are counted and left to
    # the next batch run. At most the shortest window span of the views
    # (1 h for the card views), see lamina.speed.realtime.
    allowed_lateness_ms: int = field(default=30 * 60 * 1000, metadata=_at_least(0))
    # Events more than this far in the wall clock's future are refused
    # (counted): one would make every later event "late".
    max_future_ms: int = field(default=24 * 60 * 60 * 1000, metadata=_at_least(0))
    # A micro-batch is written when it holds this many records or is this old
    # (a backlog still makes large batches: a poll returns what is there).
    batch_max_events: int = field(default=5_000, metadata=_at_least(1))
    batch_max_wait_s: float = field(default=0.005, metadata=_at_least(0))
    # Entity states kept in memory; the least recently touched beyond this
    # are dropped after a write and seeded again from the store when needed.
    max_entities: int = field(default=200_000, metadata=_at_least(1))
    # Score each applied transaction with the registry's champion and write
    # the scores to kafka.scores_topic; false keeps the realtime tiles only.
    score: bool = True
    # How often the registry's champion alias is read (a move is loaded in
    # the background and swapped in between micro-batches).
    champion_poll_s: float = field(default=5.0, metadata=_at_least(0))
    # Prometheus metrics (lamina.speed.metrics): a text file rewritten every
    # metrics_interval_s (empty path: <home>/speed/metrics.prom; one file
    # per process, so give each process on a host its own), and /metrics on
    # 127.0.0.1:metrics_port (0: no HTTP server).
    metrics_path: str = ""
    metrics_interval_s: float = field(default=5.0, metadata=_at_least(0.1))
    metrics_port: int = field(default=0, metadata=_at_least(0))


@dataclass(frozen=True)
class ServingSettings:
    # Where `lamina serve` listens (loopback by default: put a proxy with TLS
    # in front before exposing it).
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=_between(1, 65535))
    # The bearer token every route but /health requires (also
    # LAMINA_SERVING_TOKEN). Empty: `lamina serve` refuses to start.
    token: str = field(default="", repr=False)
    # POST /v1/score: score ad-hoc events with the registry's champion
    # (false: the route answers 503 and /ready does not wait for a model).
    score: bool = True
    champion_poll_s: float = field(default=5.0, metadata=_at_least(0))
    # Entities per batch lookup (POST /v1/features/{group}:batch).
    max_batch_entities: int = field(default=1000, metadata=_at_least(1))
    # Unused since a batch lookup reads one store snapshot (read_entities);
    # kept so settings files that name it still load.
    batch_snapshot_attempts: int = field(default=3, metadata=_at_least(1))
    # Parsed batch records each view group keeps in memory (least recently
    # used out; 0: none), and four realtime tiles per record: a lookup of an
    # entity read recently skips parsing and decoding them (docs/decisions.md).
    record_cache: int = field(default=4096, metadata=_at_least(0))


@dataclass(frozen=True)
class LocationSettings:
    # A local path or an object-store URI. Empty: under <home>.
    uri: str = ""


@dataclass(frozen=True)
class RegistrySettings:
    # An MLflow tracking URI (sqlite:///..., http://...). Empty: the embedded
    # sqlite:///<home>/mlflow.db with artifacts in <home>/mlartifacts.
    tracking_uri: str = ""
    model_name: str = "lamina-fraud"


@dataclass(frozen=True)
class SparkSettings:
    # local[N], or a cluster (spark://host:7077, k8s://..., yarn).
    master: str = "local[2]"
    # Extra Spark configuration, e.g. {"spark.executor.memory": "4g"}.
    conf: dict[str, str] = field(default_factory=dict)
    # Merged over `conf` for the training step only: the GPU resource
    # requests of the barrier tasks (spark.executor.resource.gpu.amount,
    # spark.task.resource.gpu.amount), which would make every batch-view
    # task wait for a GPU if they were in `conf`. See infra/README.md.
    train_conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TileStoreSettings:
    # "sqlite" (embedded, the default) or "redis".
    kind: str = "sqlite"
    # Keyword options of the store (lamina.stores.<kind>). For sqlite an
    # empty "path" means <home>/tiles.db; for redis "url" is required.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AirflowSettings:
    """`lamina airflow up`: Airflow standalone on this machine (SQLite
    metadata, on 127.0.0.1), see lamina.orchestration.airflow_runner."""

    # AIRFLOW_HOME. Empty: <home>/airflow.
    home: str = ""
    # The UI and API port on 127.0.0.1; 0 picks a free one at each `up`.
    port: int = field(default=0, metadata=_between(0, 65535))
    # The DAG files. Empty: the repository's dags/ next to the installed
    # source (an editable install), else <airflow home>/dags.
    dags_folder: str = ""
    # AIRFLOW__CORE__PARALLELISM: task processes at once (the machine is small).
    parallelism: int = field(default=4, metadata=_at_least(1))
    # How long `up` waits for /api/v2/monitor/health to answer 200.
    start_timeout_s: float = field(default=240.0, metadata=_at_least(1))


@dataclass(frozen=True)
class Settings:
    # Where Lamina keeps its state on this machine (Kafka jars and data, and
    # every location below that is left empty). Relative paths are resolved
    # from the current directory.
    home: Path = Path(".lamina")
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    master: MasterSettings = field(default_factory=MasterSettings)
    lander: LanderSettings = field(default_factory=LanderSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    views: LocationSettings = field(default_factory=LocationSettings)
    training_sets: LocationSettings = field(default_factory=LocationSettings)
    models: LocationSettings = field(default_factory=LocationSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    tile_store: TileStoreSettings = field(default_factory=TileStoreSettings)
    airflow: AirflowSettings = field(default_factory=AirflowSettings)

    # --- derived locations ---------------------------------------------------
    @property
    def kafka_home(self) -> Path:
        return self.home / "kafka"

    @property
    def airflow_home(self) -> Path:
        return Path(self.airflow.home) if self.airflow.home else self.home / "airflow"

    @property
    def reports_dir(self) -> Path:
        """Where scheduled steps write the reports the Lamina page shows
        (``drift.json``, ``consistency.json``, see lamina.orchestration.summary)."""
        return self.home / "reports"

    @property
    def master_uri(self) -> str:
        return self.master.uri or str(self.home / "master")

    @property
    def views_uri(self) -> str:
        """The folder of the batch views: one Delta table per view group."""
        return self.views.uri or str(self.home / "views")

    def view_uri(self, group: str) -> str:
        base = self.views_uri
        return f"{base.rstrip('/')}/{group}" if "://" in base else str(Path(base) / group)

    @property
    def training_sets_uri(self) -> str:
        return self.training_sets.uri or str(self.home / "training_sets")

    @property
    def models_uri(self) -> str:
        return self.models.uri or str(self.home / "models")

    @property
    def registry_uri(self) -> str:
        """The MLflow tracking URI, or the home directory for the embedded
        registry (``ModelRegistry.local``)."""
        return self.registry.tracking_uri or str(self.home)

    def relocated(self, home: Path) -> Settings:
        """These settings with another home and every location derived from
        it (the demo's own home), Kafka and engine settings kept."""
        return dataclasses.replace(
            self, home=home, master=MasterSettings(), views=LocationSettings(),
            training_sets=LocationSettings(), models=LocationSettings(),
            registry=dataclasses.replace(self.registry, tracking_uri=""),
            tile_store=TileStoreSettings(kind="sqlite"))

    @property
    def speed_metrics_path(self) -> Path:
        """Where the speed layer writes its Prometheus text file."""
        return Path(self.speed.metrics_path) if self.speed.metrics_path \
            else self.home / "speed" / "metrics.prom"

    def tile_store_options(self) -> dict[str, Any]:
        options = dict(self.tile_store.options)
        if self.tile_store.kind == "sqlite" and not options.get("path"):
            options["path"] = str(self.home / "tiles.db")
        return options


SECTIONS: Mapping[str, type] = {f.name: f.default_factory for f in fields(Settings)  # type: ignore[misc]
                                if f.name != "home"}

#: Settings that existed once, and what to do instead.
REMOVED_SETTINGS: Mapping[str, str] = {
    "dedup_horizon_hours": "resends are now dropped whatever their age (same event_id on "
                           "the same event date); remove it, and set lander.dedup_cached_days "
                           "to tune memory",
}
#: Flat settings of earlier versions -> (section, field) now.
RENAMED_SETTINGS: Mapping[str, tuple[str, str]] = {
    "bootstrap_servers": ("kafka", "bootstrap_servers"),
    "raw_topic": ("kafka", "raw_topic"),
    "dlq_topic": ("kafka", "dlq_topic"),
    "raw_partitions": ("kafka", "raw_partitions"),
    "master_uri": ("master", "uri"),
    "lander_group": ("lander", "group"),
    "lander_instance_id": ("lander", "instance_id"),
    "lander_session_timeout_ms": ("lander", "session_timeout_ms"),
    "commit_max_events": ("lander", "commit_max_events"),
    "commit_max_seconds": ("lander", "commit_max_seconds"),
    "dedup_cached_days": ("lander", "dedup_cached_days"),
    "max_event_bytes": ("lander", "max_event_bytes"),
}


def env_name(section: str, name: str) -> str:
    return f"LAMINA_{section.upper()}_{name.upper()}"


def _refuse_old(name: str, where: str) -> None:
    if name in REMOVED_SETTINGS:
        raise ConfigError(f"{where}: setting '{name}' was removed: {REMOVED_SETTINGS[name]}")
    if name in RENAMED_SETTINGS:
        section, new = RENAMED_SETTINGS[name]
        raise ConfigError(
            f"{where}: setting '{name}' is now '{new}' in section [{section}] "
            f"(environment: {env_name(section, new)})")




def _coerce(where: str, spec: dataclasses.Field[Any], value: Any, *, from_env: bool) -> Any:
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
    kind = kind.split("[")[0]
    if kind == "dict":
        if from_env:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{where} must be a JSON object, got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table (JSON object), got {value!r}")
        return dict(value)
    if kind == "bool":
        if from_env and isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    target = {"int": int, "float": float, "str": str, "Path": Path}.get(kind)
    if target is None:
        raise ConfigError(f"{where} has an unsupported type {spec.type!r}")
    if isinstance(value, bool) or (target in (int, float, str, Path) and isinstance(value, dict)):
        raise ConfigError(f"{where} must be {target.__name__}, got {value!r}")
    if target is int and isinstance(value, float):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    try:
        coerced = target(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {target.__name__}, got {value!r}") from None
    minimum = spec.metadata.get("minimum")
    if minimum is not None and coerced < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {value!r}")
    maximum = spec.metadata.get("maximum")
    if maximum is not None and coerced > maximum:
        raise ConfigError(f"{where} must be at most {maximum}, got {value!r}")
    return coerced


def _section_values(section: str, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    specs = {f.name: f for f in fields(SECTIONS[section])}
    values = {}
    for key, value in raw.items():
        if key not in specs:
            raise ConfigError(f"{where}: unknown setting '{key}' in [{section}] "
                              f"(known: {', '.join(sorted(specs))})")
        values[key] = _coerce(f"{where}: [{section}] {key}", specs[key], value, from_env=False)
    return values


def load_settings(
    config_file: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from defaults, a TOML file and `LAMINA_*` variables."""
    env = os.environ if env is None else env
    home_spec = next(f for f in fields(Settings) if f.name == "home")
    home: Path | None = None
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}

    path = config_file or env.get("LAMINA_CONFIG")
    if path is None and Path("lamina.toml").exists():
        path = "lamina.toml"
    if path is not None:
        where = f"config file {path}"
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in raw.items():
            _refuse_old(key, where)
            if key == "home":
                home = _coerce(f"{where}: home", home_spec, value, from_env=False)
            elif key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: '{key}' is a section: write it as [{key}]")
                sections[key].update(_section_values(key, value, where))
            else:
                raise ConfigError(
                    f"{where}: unknown setting '{key}' (known: home and the sections "
                    f"{', '.join(f'[{s}]' for s in SECTIONS)})")

    for old in (*REMOVED_SETTINGS, *RENAMED_SETTINGS):
        variable = f"LAMINA_{old.upper()}"
        new = RENAMED_SETTINGS.get(old)
        if env.get(variable) and not (new and env_name(*new) == variable):
            _refuse_old(old, f"environment variable {variable}")
    if env.get("LAMINA_HOME"):
        home = _coerce("LAMINA_HOME", home_spec, env["LAMINA_HOME"], from_env=True)
    for section, cls in SECTIONS.items():
        for spec in fields(cls):
            variable = env_name(section, spec.name)
            value = env.get(variable)
            if value is not None and value != "":
                sections[section][spec.name] = _coerce(variable, spec, value, from_env=True)

    built: dict[str, Any] = {name: SECTIONS[name](**values) for name, values in sections.items()}
    if home is not None:
        built["home"] = home
    return Settings(**built)
