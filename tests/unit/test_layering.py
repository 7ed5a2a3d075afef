"""The layering rule as a failing check (ARCHITECTURE.md, "Where the shared
pieces live"): the layers meet only in the schemas, the stores, the models
package and the core. Every import in a module counts, including the ones
inside functions (a lazy import is still a dependency).

Composition roots that wire the layers together (the CLI, the demo) may
import them all; they are listed in ``ROOTS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Source folder -> its package under the lamina namespace (pyproject.toml).
PACKAGES = {
    "lamina": "lamina",
    "schemas": "lamina.schemas",
    "master": "lamina.master",
    "batch": "lamina.batch",
    "speed": "lamina.speed",
    "serving": "lamina.serving",
    "stores": "lamina.stores",
    "models": "lamina.models",
    "orchestration": "lamina.orchestration",
}
LAYERS = ("lamina.master", "lamina.batch", "lamina.speed", "lamina.serving")

#: Package -> packages it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "lamina.schemas": (*LAYERS, "lamina.stores", "lamina.models"),
    "lamina.stores": (*LAYERS, "lamina.models"),
    "lamina.models": LAYERS,
    "lamina.speed": ("lamina.batch", "lamina.master", "lamina.serving"),
    "lamina.serving": ("lamina.batch", "lamina.master", "lamina.speed"),
    "lamina.batch": ("lamina.speed", "lamina.serving"),
    "lamina.master": ("lamina.batch", "lamina.speed", "lamina.serving"),
    # The core (everything in lamina/ but the roots) serves every layer.
    "lamina": LAYERS,
}
#: Modules that wire the layers together (the CLI, the demo and its two
#: step modules, the settings -> objects wiring they share, and the
#: orchestration package Airflow runs).
ROOTS = ("lamina.cli", "lamina.demo", "lamina.demo_loop", "lamina.demo_steps",
         "lamina.runners", "lamina.orchestration")


def module_name(path: Path) -> str:
    folder = path.relative_to(REPO).parts[0]
    rest = path.relative_to(REPO / folder).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import in `source`, relative
    imports resolved against `module`."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from lamina import batch` imports lamina.batch.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def violations(module: str, imports: list[tuple[int, str]]) -> list[str]:
    if any(module == root or module.startswith(root + ".") for root in ROOTS):
        return []
    owner = max((p for p in FORBIDDEN if module == p or module.startswith(p + ".")),
                key=len, default=None)
    if owner is None:
        return []
    bad = []
    for line, target in imports:
        for forbidden in FORBIDDEN[owner]:
            if target == forbidden or target.startswith(forbidden + "."):
                bad.append(f"{module}:{line} imports {target} ({owner} must not import "
                           f"{forbidden})")
    return bad


def source_files() -> list[Path]:
    return sorted(p for folder in PACKAGES if (REPO / folder).is_dir()
                  for p in (REPO / folder).rglob("*.py"))


def test_layers_meet_only_in_schemas_stores_models_and_the_core():
    problems = []
    for path in source_files():
        module = module_name(path)
        found = imports_of(path.read_text(), module, is_package=path.name == "__init__.py")
        problems += violations(module, found)
    assert problems == [], "\n".join(problems)


def dag_violations(name: str, source: str) -> list[str]:
    """The imports of a DAG file that reach Lamina outside lamina.orchestration."""
    return [f"dags/{name}:{line} imports {target}"
            for line, target in imports_of(source, f"dags.{name}")
            if (target == "lamina" or target.startswith("lamina."))
            and target != "lamina.orchestration"
            and not target.startswith("lamina.orchestration.")]


def test_dag_files_import_only_the_orchestration_package():
    """DAG files stay thin: the only Lamina code they reach is the library
    functions in lamina.orchestration."""
    problems = [problem for path in sorted((REPO / "dags").glob("*.py"))
                for problem in dag_violations(path.name, path.read_text())]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("source", [
    "from lamina.batch.views import build_views\n",
    "def f():\n    import lamina.speed.realtime\n",
    "from lamina import cli\n",
])
def test_the_dag_check_catches_a_layer_import(source):
    assert dag_violations("x.py", source) != []
    assert dag_violations("x.py", "from lamina.orchestration import tasks\n") == []


def test_every_source_folder_is_checked():
    assert {"schemas", "batch", "master", "speed", "serving"} <= {
        p.relative_to(REPO).parts[0] for p in source_files()}


@pytest.mark.parametrize(("module", "source"), [
    ("lamina.speed.loop", "from lamina.batch.model import load_model\n"),
    ("lamina.serving.api", "def f():\n    import lamina.master.dataset\n"),
    ("lamina.schemas.view_definitions", "from ..batch import tiles\n"),
    ("lamina.schemas.view_definitions", "from lamina import speed\n"),
    ("lamina.batch.views", "from lamina.speed import realtime\n"),
    ("lamina.dedup", "from lamina.master.dataset import MasterDataset\n"),
])
def test_the_check_catches_a_forbidden_import(module, source):
    assert violations(module, imports_of(source, module)) != []


def test_the_check_allows_the_shared_pieces():
    source = ("from lamina.schemas.view_definitions import GroupBy\nfrom lamina.errors import X\n"
              "from . import sqlite\n")
    assert violations("lamina.speed.loop", imports_of(source, "lamina.speed.loop")) == []
    assert violations("lamina.cli", imports_of("import lamina.batch.views\n", "lamina.cli")) == []
