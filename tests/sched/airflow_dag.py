"""Loads a rendered DAG file with Airflow's own DagBag and checks it against the workflow.

Usage: airflow_dag.py DAG_FILE EXPECTED.json
EXPECTED: {"dag_id", "tasks": {task_id: [upstream task ids]}, "gpu": [task ids], "mode", and
for kubernetes mode "secret", "image" and "pods": a file to write the pod of every task to
(the objects the operator would create, as YAML documents, for kubernetes-validate)}.
Prints one line per problem and exits 1 if there is any.
"""

import importlib.util
import json
import sys

from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException


def main():
    path, expected = sys.argv[1], json.load(open(sys.argv[2]))
    bag = DagBag(dag_folder=path)
    problems = [f"import error in {f}: {e}" for f, e in bag.import_errors.items()]
    dag = bag.dags.get(expected["dag_id"])
    if dag is None:
        problems.append(f"no DAG {expected['dag_id']!r} in {path} (found {sorted(bag.dags)})")
    else:
        if dag.max_active_runs != 1:
            problems.append(f"max_active_runs {dag.max_active_runs}: two runs would write the same outputs")
        got = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
        want = {k: sorted(v) for k, v in expected["tasks"].items()}
        if got != want:
            problems.append(f"tasks differ: got {got}, want {want}")
        for task in dag.tasks:
            if task.retries != 4 or not task.retry_exponential_backoff or task.max_retry_delay is None:
                problems.append(f"{task.task_id}: retries {task.retries}, backoff {task.retry_exponential_backoff}")
            if task.execution_timeout is None or task.execution_timeout.total_seconds() < 3600:
                problems.append(f"{task.task_id}: execution_timeout {task.execution_timeout}")
            if expected["mode"] == "kubernetes":
                if not isinstance(task, KubernetesPodOperator):
                    problems.append(f"{task.task_id}: a {type(task).__mro__}")
                    continue
                gpu = task.task_id in expected["gpu"]
                limits = task.container_resources.limits
                # The GPU limit places a GPU step; no node selector unless one is asked for.
                if gpu != ("nvidia.com/gpu" in limits) or task.node_selector or gpu != bool(task.tolerations):
                    problems.append(f"{task.task_id}: gpu {gpu} but limits {limits}, node selector {task.node_selector}")
                if not task.env_from or task.env_from[0].secret_ref.name != expected["secret"]:
                    problems.append(f"{task.task_id}: store secret missing: {task.env_from}")
                if task.image != expected["image"] or task.arguments[0] != task.task_id and "--config-yaml" not in task.arguments:
                    problems.append(f"{task.task_id}: image {task.image}, arguments {task.arguments}")
                if task.cmds != ["taft"] or task.deferrable:
                    problems.append(f"{task.task_id}: cmds {task.cmds}, deferrable {task.deferrable}")
                # Large images and GPU nodes that scale up take minutes to start.
                if task.startup_timeout_seconds < (1800 if gpu else 600):
                    problems.append(f"{task.task_id}: startup_timeout_seconds {task.startup_timeout_seconds}")
                if task.namespace is not None:
                    problems.append(f"{task.task_id}: namespace {task.namespace} (the connection's was not asked to be replaced)")
                if gpu and json.loads(task.arguments[-1]).get("train", {}).get("device") != "cuda":
                    problems.append(f"{task.task_id}: a GPU step that may train on the CPU: {task.arguments[-1][:200]}")
            elif not isinstance(task, BashOperator):
                problems.append(f"{task.task_id}: a {type(task).__mro__}")
    if expected["mode"] == "kubernetes" and dag is not None:
        from kubernetes.client import ApiClient

        pods = [ApiClient().sanitize_for_serialization(t.build_pod_request_obj()) for t in dag.tasks]
        for t, pod in zip(dag.tasks, pods):
            if pod["spec"]["containers"][0]["args"] != t.arguments or pod["spec"]["containers"][0]["image"] != t.image:
                problems.append(f"{t.task_id}: the pod does not run the task's command: {pod['spec']['containers'][0]}")
        with open(expected["pods"], "w") as f:
            f.write("\n---\n".join(json.dumps(p) for p in pods))
    # Only exit code 3 is retried: the module's own rule, on the messages its operators raise.
    spec = importlib.util.spec_from_file_location("rendered", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The shared rule: a failure with exit code 3 (or none known) is left to Airflow's
    # retries; any other becomes AirflowFailException, which Airflow does not retry.
    class Failing:
        def execute(self, context):
            raise AirflowException(self.message)

    class Probe(module.RetriesExit3, Failing):
        def __init__(self, code):
            self.message, self.code = f"failed with {code}", code

        def exit_code_of(self, error):
            return self.code

    for code, fails_fast in [(3, False), (None, False), (2, True), (1, True)]:
        try:
            Probe(code).execute({})
        except AirflowFailException:
            raised = True
        except AirflowException:
            raised = False
        if raised != fails_fast:
            problems.append(f"exit code {code}: {'no retry' if raised else 'retried'}")
    if expected["mode"] == "local":
        message = "Bash command failed. The command returned a non-zero exit code {}."
        if [module.bash_exit_code(message.format(c)) for c in (1, 2, 3)] != [1, 2, 3]:
            problems.append("local mode: the exit code of a failed command is not read")
    else:
        class Terminated:
            def __init__(self, code):
                self.name, self.state = "base", type("S", (), {"terminated": type("T", (), {"exit_code": code})})

        pod = type("Pod", (), {"status": type("St", (), {"container_statuses": [Terminated(2)]})})
        if module.exit_code(pod) != 2:
            problems.append("kubernetes mode: the base container's exit code is not read")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
