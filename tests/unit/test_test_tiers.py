"""The test command's scheduling rule (tests/conftest.py): which integration
work unit a test belongs to, and that the named modules exist."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import INTEGRATION_DIR, OWN_PROCESSES, OWN_PROCESSES_UNIT, integration_unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_own_process_module_exists_so_a_rename_cannot_move_it_silently() -> None:
    present = {p.name for p in (ROOT / INTEGRATION_DIR).glob("test_*.py")}
    assert present >= OWN_PROCESSES, sorted(OWN_PROCESSES - present)


def test_tests_map_to_the_two_integration_units_and_the_fast_tier_to_none() -> None:
    assert integration_unit("tests/integration/test_demo.py::test_x") == OWN_PROCESSES_UNIT
    assert integration_unit("tests/integration/test_airflow_ui.py::test_y[a/b]") \
        == OWN_PROCESSES_UNIT
    assert integration_unit("tests/integration/test_lander.py::test_z") == INTEGRATION_DIR
    assert integration_unit("tests/unit/test_demo.py::test_x") is None
    assert integration_unit("tests/unit/test_config.py") is None
