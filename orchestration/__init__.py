"""The orchestration layer: what Airflow runs, and what operators see in it.

* ``lamina.orchestration.tasks`` -- the library functions the DAGs in
  ``dags/`` call, one per task (a logical date or snapshot in, small JSON of
  paths and versions out);
* the ``lamina airflow up | down | status`` runner and the Airflow UI plugin
  that serves the Lamina page.

Like the CLI, this package wires the layers together, so it may import any
of them (``tests/unit/test_layering.py`` lists it among the roots). DAG
files import only this package.
"""
