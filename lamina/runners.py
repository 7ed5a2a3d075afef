"""What the CLI and the demo share: objects built from the settings, and the
printed summary of the master dataset."""

from __future__ import annotations

from typing import Any

from lamina.config import Settings


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def master_dataset(settings: Settings) -> Any:
    from lamina.master.dataset import MasterDataset

    return MasterDataset(settings.master_uri)


def event_validator(settings: Settings) -> Any:
    from lamina.schemas.validation import EventValidator

    return EventValidator(max_event_bytes=settings.lander.max_event_bytes)


def run_lander(settings: Settings, *, idle_exit_s: float | None = None,
               max_events: int | None = None, progress: bool = True) -> Any:
    """Start a lander with the settings; returns its LanderStats."""
    from tqdm import tqdm

    from lamina import kafkaio
    from lamina.master.deadletters import KafkaDeadLetters
    from lamina.master.lander import Lander

    consumer = kafkaio.make_consumer(
        settings.kafka.bootstrap_servers,
        group_id=settings.lander.group,
        group_instance_id=settings.lander.instance_id or None,
        session_timeout_ms=settings.lander.session_timeout_ms,
    )
    producer = kafkaio.make_producer(settings.kafka.bootstrap_servers)
    lander = Lander(
        dataset=master_dataset(settings),
        consumer=consumer,
        topic=settings.kafka.raw_topic,
        dead_letters=KafkaDeadLetters(producer, settings.kafka.dlq_topic),
        validator=event_validator(settings),
        commit_max_events=settings.lander.commit_max_events,
        commit_max_seconds=settings.lander.commit_max_seconds,
        dedup_cached_days=settings.lander.dedup_cached_days,
    )
    lander.install_signal_handlers()
    bar = tqdm(unit=" events", desc="landing", disable=not progress)

    def show(stats: Any) -> None:
        bar.n = stats.consumed
        bar.set_postfix(landed=stats.landed, dead=stats.dead_lettered,
                        dup=stats.duplicates_dropped, snapshot=stats.last_snapshot)

    try:
        stats = lander.run(idle_exit_s=idle_exit_s, max_events=max_events, on_commit=show)
        show(stats)
    finally:
        bar.close()
        producer.close()
    return stats


def run_speed(settings: Settings, *, idle_exit_s: float | None = None,
              max_events: int | None = None, progress: bool = True) -> Any:
    """Start the speed layer with the settings: the card views' realtime
    tiles in the configured tile store and, with ``[speed] score``, each
    applied transaction scored by the registry's champion to
    ``kafka.scores_topic``; returns its SpeedStats."""
    from tqdm import tqdm

    from lamina import kafkaio
    from lamina.errors import ConfigError
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.speed.metrics import MeteredSink, SpeedMetrics
    from lamina.speed.realtime import RealtimeTiles, SpeedLayer, StreamScoring, check_lateness
    from lamina.stores import open_store

    speed = settings.speed
    check_lateness(CARD_VIEWS, speed.allowed_lateness_ms)  # before anything is opened
    if speed.metrics_port > 65535:
        raise ConfigError(f"[speed] metrics_port must be 0 (off) or a port up to 65535, "
                          f"got {speed.metrics_port}")
    if settings.tile_store.kind == "sqlite" and not settings.tile_store.options.get("path"):
        settings.home.mkdir(parents=True, exist_ok=True)  # the default store lives there
    store = open_store(settings.tile_store.kind, **settings.tile_store_options())
    closers: list[Any] = []
    try:
        scoring = None
        if speed.score:
            from lamina.schemas.card_views import CARD_FRAUD
            from lamina.speed.models import ChampionHolder
            from lamina.speed.sink import make_score_sink

            holder = ChampionHolder.from_settings(settings, CARD_FRAUD,
                                                  poll_seconds=speed.champion_poll_s)
            closers.append(holder.close)
            holder.load_now()  # score from the first batch when a champion exists
            sink, close_sink = make_score_sink(settings.kafka.bootstrap_servers,
                                               settings.kafka.scores_topic)
            closers.append(close_sink)
            scoring = StreamScoring(CARD_FRAUD, holder, sink)
        tiles = RealtimeTiles(store, CARD_VIEWS, consumer=speed.group,
                              validator=event_validator(settings),
                              allowed_lateness_ms=speed.allowed_lateness_ms,
                              max_future_ms=speed.max_future_ms,
                              max_entities=speed.max_entities, scoring=scoring)
        try:
            metrics = SpeedMetrics(tiles.stats, path=settings.speed_metrics_path,
                                   interval_s=speed.metrics_interval_s, port=speed.metrics_port)
        except OSError as exc:
            raise ConfigError(f"[speed] metrics_port {speed.metrics_port}: cannot listen on "
                              f"127.0.0.1 ({exc.strerror}); choose a free port or 0") from exc
        closers.append(metrics.close)
        if scoring is not None:
            scoring.sink = MeteredSink(scoring.sink, metrics.latencies)
        consumer = kafkaio.make_consumer(
            settings.kafka.bootstrap_servers,
            group_id=speed.group,
            group_instance_id=speed.instance_id or None,
            session_timeout_ms=speed.session_timeout_ms,
        )
        layer = SpeedLayer(consumer=consumer, topic=settings.kafka.raw_topic, tiles=tiles,
                           batch_max_events=speed.batch_max_events,
                           batch_max_wait_s=speed.batch_max_wait_s, metrics=metrics)
        layer.install_signal_handlers()
        bar = tqdm(unit=" events", desc="speed", disable=not progress)

        def show(stats: Any) -> None:
            bar.n = stats.consumed
            bar.set_postfix(applied=stats.applied, scored=stats.scored, late=stats.late,
                            dup=stats.duplicates, invalid=stats.invalid,
                            model=stats.model_version)

        try:
            stats = layer.run(idle_exit_s=idle_exit_s, max_events=max_events, on_commit=show)
            show(stats)
        finally:
            bar.close()
    finally:
        for close in reversed(closers):
            close()
        store.close()
    return stats


def print_dataset_info(info: dict[str, Any]) -> None:
    print(f"master dataset  {info['uri']}")
    print(f"snapshot        {info['snapshot']}  ({info['snapshots']} snapshots)")
    print(f"rows            {info['rows']:,}")
    print(f"size            {human_bytes(info['bytes'])} in {info['files']} files")
    if info["partitions"]:
        print(f"\n{'event_type':<14}{'event_date':<12}{'rows':>12}{'files':>7}{'size':>12}")
        for p in info["partitions"]:
            print(f"{p['event_type']:<14}{p['event_date']:<12}{p['rows']:>12,}"
                  f"{p['files']:>7}{human_bytes(p['bytes']):>12}")
    if info["offsets"]:
        print("\nsource offsets landed (Delta transaction ids)")
        for app, version in info["offsets"].items():
            print(f"  {app:<40} {version}")
