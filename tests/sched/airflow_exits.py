"""Runs every task of a rendered local-mode DAG once, the way a worker runs it (the operator's
`execute`, the real taft binary), and reports what Airflow would do next: `ok`, `retry` (an
AirflowException: Airflow's retries apply) or `fail` (AirflowFailException: no retry).

Usage: airflow_exits.py DAG_FILE DAG_ID. Prints `outcome TASK_ID OUTCOME` lines (among Airflow's logs).
"""

import sys

from airflow.dag_processing.dagbag import DagBag

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowException, AirflowFailException


def main():
    path, dag_id = sys.argv[1], sys.argv[2]
    bag = DagBag(dag_folder=path)
    if bag.import_errors:
        print(f"import errors: {bag.import_errors}")
        sys.exit(1)
    for task in bag.dags[dag_id].tasks:
        try:
            task.execute({})
            outcome = "ok"
        except AirflowFailException:
            outcome = "fail"
        except AirflowException:
            outcome = "retry"
        print(f"outcome {task.task_id} {outcome}", flush=True)


if __name__ == "__main__":
    main()
