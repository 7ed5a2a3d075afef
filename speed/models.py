"""The speed layer's champion: ``lamina.models.champion`` (moved there so
serving loads and verifies the champion the same way; these names stay
importable from here)."""

from lamina.models.champion import (
    DEFAULT_POLL_SECONDS,
    Champion,
    ChampionHolder,
    ChampionRefused,
    Scorer,
    build_champion,
    registry_from_settings,
)

__all__ = ["DEFAULT_POLL_SECONDS", "Champion", "ChampionHolder", "ChampionRefused", "Scorer",
           "build_champion", "registry_from_settings"]
