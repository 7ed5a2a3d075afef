"""Test-suite wiring: the fixture plugins, and the tier rule.

Tiers: `integration` marks every test that starts a JVM (Kafka, Spark),
TensorFlow, a broker, Redis or a browser; `make test-fast` runs the rest (pure
functions, Delta tables on local disk) for the inner loop. A test that uses
one of the component fixtures without the marker fails collection, so the
fast tier never starts a component by accident.

`make test` runs the tiers in two pytest-xdist workers (``-n 2 --dist
loadfile``) with a scheduler of our own (``pytest_xdist_make_scheduler``):
the integration folder is two work units. ``OWN_PROCESSES`` are the modules
that run Lamina's commands as subprocesses (standalone Airflow, ``dag.test()``
runners, the demo); they are one unit, in collection order. Every other
integration module is the other unit, in collection order, so the kill,
rebalance and outage tests keep one broker and one Spark session per worker
as a serial run has them. The two units start first, one per worker; the fast
tier's files fill each worker when its unit is done.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.kafka_fixtures", "tests.spark_fixtures", "tests.redis_fixtures",
                  "tests.browser_fixtures"]

#: Fixtures that start a real component.
COMPONENT_FIXTURES = frozenset({"kafka", "kafka_cluster3", "fresh_topics", "spark", "redis_server",
                                "redis_url", "browser"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = [item.nodeid for item in items if item.nodeid.startswith(INTEGRATION_DIR)
                 and item.get_closest_marker("integration") is None]
    if misplaced:
        raise pytest.UsageError(
            f"these tests are under {INTEGRATION_DIR} but not marked @pytest.mark.integration "
            "(make test schedules that folder as the integration work units):\n  "
            + "\n  ".join(misplaced))
    unmarked = [
        item.nodeid for item in items
        if COMPONENT_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start a real component but are not marked "
            "@pytest.mark.integration:\n  " + "\n  ".join(unmarked))


INTEGRATION_DIR = "tests/integration/"


#: Integration modules that start Lamina's own processes (standalone Airflow,
#: ``dag.test()`` in a subprocess, ``lamina demo``): one work unit, run beside
#: the rest of the integration folder (see the module docstring).
OWN_PROCESSES = frozenset({"test_airflow_summary.py", "test_airflow_ui.py",
                           "test_dags_end_to_end.py", "test_demo.py",
                           "test_demo_report_browser.py"})
OWN_PROCESSES_UNIT = INTEGRATION_DIR + "[own processes]"


def integration_unit(nodeid: str) -> str | None:
    """The integration work unit of a test id, or None for the fast tier."""
    if not nodeid.startswith(INTEGRATION_DIR):
        return None
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return OWN_PROCESSES_UNIT if module in OWN_PROCESSES else INTEGRATION_DIR


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With ``--dist loadfile``: the two integration units first, one per
    worker, then one unit per fast-tier file (see the module docstring)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class IntegrationUnitsFirst(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return integration_unit(nodeid) or super()._split_scope(nodeid)

        def _assign_work_unit(self, node: object) -> None:
            if not self.ordered:
                # xdist orders units by test count; the two long units go
                # first so that neither waits behind the other.
                self.ordered = True
                first = [u for u in (INTEGRATION_DIR, OWN_PROCESSES_UNIT) if u in self.workqueue]
                rest = [(u, tests) for u, tests in self.workqueue.items() if u not in first]
                ordered = [(u, self.workqueue[u]) for u in first] + rest
                self.workqueue.clear()
                self.workqueue.update(ordered)
            super()._assign_work_unit(node)  # type: ignore[arg-type]

    return IntegrationUnitsFirst(config, log)  # type: ignore[arg-type]


def _components_started() -> set[str]:
    import sys

    started = set()
    if "tensorflow" in sys.modules:
        started.add("TensorFlow")
    context = getattr(sys.modules.get("pyspark"), "SparkContext", None)
    if context is not None and getattr(context, "_active_spark_context", None) is not None:
        started.add("a Spark JVM")
    return started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    """A test without the integration marker that starts TensorFlow or a
    Spark JVM in this process fails: it belongs to the integration tier."""
    before = _components_started()
    result = yield
    if item.get_closest_marker("integration") is None:
        new = _components_started() - before
        if new:
            raise AssertionError(
                f"{item.nodeid} started {', '.join(sorted(new))} but is not marked "
                "@pytest.mark.integration")
    return result
