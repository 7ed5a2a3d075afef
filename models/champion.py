"""The champion model of a long-running process (the speed layer, serving),
swapped without stopping (invariant 8).

:class:`ChampionHolder` knows the current :class:`Champion` -- registry
version, loaded Keras model, batch scorer, model card and the contract it
was checked against -- and follows the registry's ``champion`` alias:

* :meth:`ChampionHolder.check` is what the speed layer's consumer loop
  calls between micro-batches (and serving before each ad-hoc score). It
  never waits on the registry or TensorFlow: it swaps in
  a model a background thread has finished, starts that thread again when
  the poll interval has passed, and returns the champion to score the next
  batch with. Scoring a batch with the one object ``check`` returned is what
  makes "every batch is scored by exactly one version" true by
  construction: nothing mutates a :class:`Champion`.
* The background thread reads the alias; if it names another version it
  downloads the SavedModel (the registry's cache), loads it, builds its
  scorer and **verifies** it before handing it over: the model card's
  features must equal the contract's features, in order; the lineage's
  contract fingerprint, when the lineage records one, must equal the
  contract's; and the scorer must give one finite probability per row of
  a probe matrix, agreeing with the model's own graph. A model that fails
  is refused -- the old champion stays, the reason is logged and kept in
  :attr:`ChampionHolder.refused` -- and is never tried again (registry
  versions are immutable); moving the alias to another version is the fix.
  A download or load that *fails* (registry or store unreachable) is
  retried at the next poll.
* A rollback in the registry moves the alias back; it is seen the same way.
  The champion before the current one is kept in memory, so rolling back to
  it swaps at once without loading.

Only a fully built and verified :class:`Champion` is ever published, by one
reference assignment under a lock: no event is scored by a half-loaded
model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lamina.config import Settings
from lamina.logs import get_logger
from lamina.models.errors import ModelError
from lamina.models.registry import ModelRegistry, RegistryError
from lamina.models.saved_model import load_model, model_card
from lamina.models.scoring import numpy_scorer, score
from lamina.schemas.contract import FeatureContract

log = get_logger(__name__)

#: ``(float32 matrix (n, features)) -> float64 probabilities (n,)``.
Scorer = Callable[[np.ndarray], np.ndarray]

DEFAULT_POLL_SECONDS = 5.0
# The scorer and the model's own graph must agree this closely on the probe
# (float32 rounding of the same weights; see lamina.models.scoring).
_PROBE_TOLERANCE = 1e-5
_PROBE_ROWS = 16


@dataclass(frozen=True, eq=False)
class Champion:
    """A loaded, verified model: everything one micro-batch needs to be
    scored by exactly one version. Immutable."""

    version: int
    model: Any
    #: One call per micro-batch: the NumPy forward pass of the model's
    #: weights, or the model's own traced graph for models it cannot read.
    scorer: Scorer
    #: ``"numpy"`` or ``"tf.function"``: which scorer was built.
    scorer_kind: str
    card: Mapping[str, Any]
    features: tuple[str, ...]
    contract_fingerprint: str
    path: Path


class ChampionRefused(ModelError):
    """A model version failed verification against the contract."""


def registry_from_settings(settings: Settings) -> ModelRegistry:
    """The model registry the settings name (``settings.registry_uri``: an
    MLflow tracking URI, or the home of the embedded registry)."""
    location = settings.registry_uri
    name = settings.registry.model_name
    if "://" in location:
        return ModelRegistry(location, name=name)
    return ModelRegistry.local(Path(location), name=name)


def _probe_matrix(n_features: int) -> np.ndarray:
    # Deterministic, varied and of both signs; large enough to reach past a
    # normalisation layer's typical scale.
    grid = np.arange(_PROBE_ROWS * n_features, dtype=np.float64).reshape(_PROBE_ROWS, n_features)
    return (np.sin(grid * 0.731) * (1.0 + grid % 7) * 10.0).astype(np.float32)


def build_champion(version: int, path: Path, contract: FeatureContract, *,
                   lineage_fingerprint: str | None) -> Champion:
    """Load the SavedModel in `path` as `version` and verify it against
    `contract` (see the module docstring). Raises ChampionRefused naming
    the problem; a model that cannot be loaded at all raises ModelError."""
    card = model_card(path)
    card_features = tuple(card.get("features") or ())
    if card_features != contract.features:
        missing = [f for f in contract.features if f not in card_features]
        extra = [f for f in card_features if f not in contract.features]
        detail = (f"missing {missing}, not in the contract {extra}" if missing or extra
                  else "the same names in another order")
        raise ChampionRefused(
            f"version {version}: its card's features are not contract {contract.name!r}'s "
            f"({detail}); train it from this contract")
    expected = contract.fingerprint()
    if lineage_fingerprint is not None and lineage_fingerprint != expected:
        raise ChampionRefused(
            f"version {version}: trained for contract fingerprint {lineage_fingerprint}, "
            f"this process feeds {contract.name!r} {expected}; deploy the matching code "
            "or retrain")
    model = load_model(path)
    try:
        scorer: Scorer = numpy_scorer(model)
        kind = "numpy"
    except ModelError:
        # Not a build_model MLP: its own graph, still one call per batch.
        def scorer(x: np.ndarray, _model: Any = model) -> np.ndarray:
            return score(_model, x)
        kind = "tf.function"
    probe = _probe_matrix(len(contract.features))
    try:
        # The probe's large inputs saturate the sigmoid: exp overflows to
        # inf and the score is exactly 0, as it should be; no warning.
        with np.errstate(over="ignore"):
            got = np.asarray(scorer(probe), dtype=np.float64)
        reference = score(model, probe)
    except Exception as exc:  # any failure to score is a refusal, with its cause
        raise ChampionRefused(f"version {version}: scoring a probe batch failed: {exc}") from exc
    if got.shape != (len(probe),) or not np.isfinite(got).all() \
            or ((got < 0) | (got > 1)).any():
        raise ChampionRefused(
            f"version {version}: the scorer gave {got.shape} values for {len(probe)} rows "
            "or values that are not probabilities")
    gap = float(np.max(np.abs(got - reference)))
    if gap > _PROBE_TOLERANCE:
        raise ChampionRefused(
            f"version {version}: the {kind} scorer differs from the model's own graph by "
            f"{gap:.3g} on the probe batch")
    return Champion(version=version, model=model, scorer=scorer, scorer_kind=kind,
                    card=card, features=card_features, contract_fingerprint=expected,
                    path=Path(path))


class ChampionHolder:
    """The current champion of a long-running process, swapped between
    micro-batches when the registry's alias moves (module docstring).

    ``check`` is for the one consumer thread; the registry is read only by
    the holder's background thread (and by ``load_now``). Call ``close`` on
    shutdown.
    """

    def __init__(self, registry: ModelRegistry, contract: FeatureContract, *,
                 poll_seconds: float = DEFAULT_POLL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if poll_seconds < 0:
            raise ValueError(f"poll_seconds must be >= 0, got {poll_seconds}")
        self.registry = registry
        self.contract = contract
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._current: Champion | None = None
        self._previous: Champion | None = None
        self._ready: Champion | None = None  # built by the loader, not yet swapped in
        self._loader: threading.Thread | None = None
        self._next_poll = 0.0
        self._refused: dict[int, str] = {}
        self._swaps = 0

    @classmethod
    def from_settings(cls, settings: Settings, contract: FeatureContract, *,
                      poll_seconds: float = DEFAULT_POLL_SECONDS) -> ChampionHolder:
        return cls(registry_from_settings(settings), contract, poll_seconds=poll_seconds)

    # --- what the consumer loop reads --------------------------------------

    @property
    def current(self) -> Champion | None:
        """The champion scoring now (None before the first one is loaded)."""
        return self._current

    @property
    def refused(self) -> dict[int, str]:
        """Versions refused by verification -> why (a copy)."""
        with self._lock:
            return dict(self._refused)

    @property
    def swaps(self) -> int:
        """How many times a new champion was swapped in."""
        return self._swaps

    def check(self) -> Champion | None:
        """Swap in a champion the background loader finished, start the
        loader if the poll interval has passed, and return the champion to
        score the next micro-batch with. Never blocks on the registry or
        TensorFlow."""
        with self._lock:
            ready, self._ready = self._ready, None
            if ready is not None:
                self._publish(ready)
            loader = self._loader
            if (loader is None or not loader.is_alive()) and self._clock() >= self._next_poll:
                self._next_poll = self._clock() + self.poll_seconds
                self._loader = threading.Thread(
                    target=self._follow_alias, name="lamina-champion-loader", daemon=True)
                self._loader.start()
            return self._current

    def load_now(self) -> Champion | None:
        """Follow the alias in this thread and swap at once: for start-up,
        before the first micro-batch (returns None if the registry has no
        champion yet, or it was refused)."""
        self.wait_idle()
        self._follow_alias()
        return self.check()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for a running background load to finish (for shutdown and
        tests); True if none is running any more."""
        loader = self._loader
        if loader is not None:
            loader.join(timeout)
            return not loader.is_alive()
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop polling; wait for a load in flight (TensorFlow cannot be
        interrupted mid-load; the thread is a daemon, so exit never hangs)."""
        with self._lock:
            self._next_poll = float("inf")
        self.wait_idle(timeout)

    # --- the background side -----------------------------------------------

    def _publish(self, champion: Champion) -> None:
        # Under self._lock. One reference assignment: the consumer sees the
        # old champion or the new one, never anything in between.
        old = self._current
        if old is not None and old.version == champion.version:
            return
        self._previous, self._current = old, champion
        self._swaps += 1
        log.info("champion swapped in", model=self.registry.name, version=champion.version,
                 previous=old.version if old else None, scorer=champion.scorer_kind)

    def _follow_alias(self) -> None:
        """Read the alias; build and verify the version it names if it is
        not the current one; leave it in ``_ready``. Never raises: a failure
        keeps the old champion and is logged (the next poll tries again,
        unless the version was refused)."""
        try:
            version = self.registry.champion()
        except Exception as exc:  # registry unreachable: keep scoring, try again later
            log.warning("champion alias unreadable; keeping the current model",
                        model=self.registry.name, error=str(exc))
            return
        with self._lock:
            current, previous = self._current, self._previous
            pending = self._ready
            refused = self._refused.get(version) if version is not None else None
        if version is None:
            if current is not None:
                log.warning("registry has no champion alias; keeping the current model",
                            model=self.registry.name, version=current.version)
            return
        if current is not None and current.version == version:
            if pending is not None:  # the alias moved back before the swap: drop it
                with self._lock:
                    if self._ready is pending:
                        self._ready = None
            return
        if pending is not None and pending.version == version:
            return
        if refused is not None:
            return  # logged when refused; versions are immutable
        if previous is not None and previous.version == version:
            built: Champion = previous  # a rollback to the one before: already verified
        else:
            try:
                built = self._build(version)
            except ChampionRefused as exc:
                with self._lock:
                    self._refused[version] = str(exc)
                log.error("champion refused; keeping the current model",
                          model=self.registry.name, version=version,
                          current=current.version if current else None, reason=str(exc))
                return
            except Exception as exc:  # download or load failed: maybe transient
                log.error("champion load failed; keeping the current model, will retry",
                          model=self.registry.name, version=version,
                          current=current.version if current else None, error=str(exc))
                return
        with self._lock:
            self._ready = built
        log.info("champion loaded", model=self.registry.name, version=version,
                 scorer=built.scorer_kind)

    def _build(self, version: int) -> Champion:
        path = self.registry.download(version)
        try:
            extra = self.registry.lineage(version).extra
        except RegistryError:
            extra = {}
        fingerprint = extra.get("contract_fingerprint")
        if fingerprint is None:
            log.info("lineage names no contract fingerprint; checking features only",
                     model=self.registry.name, version=version)
        return build_champion(version, path, self.contract,
                              lineage_fingerprint=str(fingerprint) if fingerprint else None)
