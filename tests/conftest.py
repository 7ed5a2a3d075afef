"""Test-suite wiring: the fixture plugins, and the tier rule.

Tiers: `integration` marks every test that starts a JVM (Kafka, Spark),
TensorFlow, a broker, Redis or a browser; `make test-fast` runs the rest (pure
functions, Delta tables on local disk) for the inner loop. A test that uses
one of the component fixtures without the marker fails collection, so the
fast tier never starts a component by accident.

`make test` runs the two tiers side by side in two pytest-xdist workers
(``-n 2 --dist loadfile``): every integration module goes to one worker, in
collection order, exactly as a serial run would run them (the components
they start are sized for a 2-core machine and several tests time a kill or a
rebalance), while the other worker takes the fast tier's modules. A test
that needs its own machine is therefore never run beside another component.
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
            "(make test runs that folder in one worker, the rest beside it):\n  "
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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With ``--dist loadfile``: one work unit for the whole integration
    folder, one per fast-tier file (see the module docstring)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class IntegrationInOneWorker(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(INTEGRATION_DIR):
                return INTEGRATION_DIR
            return super()._split_scope(nodeid)

    return IntegrationInOneWorker(config, log)  # type: ignore[arg-type]


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
