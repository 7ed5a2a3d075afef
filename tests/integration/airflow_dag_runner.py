"""Run one DAG with ``dag.test()`` in this process and print what it did as
JSON: the run's state, each task's state and XCom return value, and the
asset events it emitted (uri and extra).

``python airflow_dag_runner.py DAG_ID LOGICAL_DATE RUN_CONF_JSON``

The Airflow home, the dags folder and the Lamina settings come from the
environment (the test sets them), so each test module's Airflow stays in
its own process and home, whatever else the test process imported.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any


def main(dag_id: str, logical_date: str, run_conf: str) -> dict[str, Any]:
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
    if dag_id not in bag.dags:
        raise SystemExit(f"{dag_id} not in {sorted(bag.dags)}; import errors: "
                         f"{bag.import_errors}")
    run = bag.dags[dag_id].test(logical_date=datetime.fromisoformat(logical_date),
                                run_conf=json.loads(run_conf))
    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)).all()
        tasks: dict[str, Any] = {}
        for ti in tis:
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            xcom = session.scalars(select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run.run_id,
                XComModel.task_id == ti.task_id, XComModel.map_index == ti.map_index,
                XComModel.key == "return_value")).first()
            tasks[key] = {"state": str(ti.state),
                          "xcom": None if xcom is None else XComModel.deserialize_value(xcom)}
        events = session.execute(
            select(AssetModel.uri, AssetEvent.extra).join(
                AssetModel, AssetModel.id == AssetEvent.asset_id).where(
                AssetEvent.source_dag_id == dag_id,
                AssetEvent.source_run_id == run.run_id)).all()
        return {"run_id": run.run_id, "state": str(run.state), "tasks": tasks,
                "asset_events": [{"uri": uri, "extra": extra} for uri, extra in events]}


if __name__ == "__main__":
    result = main(*sys.argv[1:4])
    print("DAG_RESULT " + json.dumps(result, default=str))
