"""Lineage identifiers every layer records: one code version, one fingerprint.

* :func:`code_version` -- the package version plus a hash of the source of
  the modules that produced an artefact. A batch view names the modules that
  compute tiles, a training set the ones that define its rows, a model the
  whole package; a change to that code gives a new version (so an
  idempotent job reruns), a change elsewhere does not. The hash is of the
  installed files, so it is the same in a checkout, a wheel or a Spark
  worker.
* :func:`fingerprint` -- a short hash of a definition made of frozen
  dataclasses, tuples, strings and numbers (view groups, feature contracts):
  their ``repr`` is stable across processes, so two runs with the same
  definition agree.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamina import __version__

#: The packages of the lamina distribution (pyproject.toml).
PACKAGES = ("lamina", "lamina.schemas", "lamina.master", "lamina.batch", "lamina.speed",
            "lamina.serving", "lamina.stores", "lamina.models")


def _sources(module_names: Sequence[str]) -> list[Path]:
    files: set[Path] = set()
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue  # a package of the distribution not built yet
        path = Path(module.__file__ or "")
        if path.name == "__init__.py" and name in PACKAGES:
            files.update(path.parent.rglob("*.py"))
        else:
            files.add(path)
    return sorted(files)


@functools.cache
def code_version(modules: tuple[str, ...] = PACKAGES) -> str:
    """``<version>+<12 hex>``: the package version and a hash of the source
    files of ``modules`` (a package name stands for all of its modules)."""
    digest = hashlib.sha256()
    for source in _sources(modules):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def fingerprint(definition: Any) -> str:
    """16 hex digits identifying a definition by its stable ``repr``."""
    return hashlib.sha256(repr(definition).encode()).hexdigest()[:16]
