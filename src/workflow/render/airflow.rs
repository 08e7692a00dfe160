//! Airflow 3: a DAG file with one task per concrete step. `kubernetes` mode runs each step
//! in a pod (KubernetesPodOperator); `local` mode runs the local binary (BashOperator), for a
//! single machine and for tests. Either way a task fails at once unless the step exited 3.

use serde_json::{json, Value};

use super::{
    deadline_s, object_store_root, on_gpu, resources, step_config, Target, MAX_RETRY_DELAY_S, RETRIES, RETRY_DELAY_S,
    RETRY_EXIT_CODE, RUN_AS_USER,
};
use crate::error::{Error, Result};
use crate::workflow::{join_url, Workflow};

/// Where the DAG's tasks run.
#[derive(Debug, Clone)]
pub enum Mode {
    Kubernetes,
    /// The `taft` binary at this path, on the Airflow worker.
    Local(std::path::PathBuf),
}

/// The DAG file's text.
pub fn render(workflow: &Workflow, target: &Target, mode: &Mode) -> Result<String> {
    let root = match mode {
        Mode::Kubernetes => object_store_root(workflow)?.to_string(),
        Mode::Local(_) => local_root(&workflow.store)?,
    };
    let mut steps = Vec::new();
    for step in &workflow.steps {
        let mut after: Vec<&str> = step.deps.iter().map(|&d| workflow.steps[d].name.as_str()).collect();
        after.dedup();
        let mut config = step_config(workflow, step, &root)?;
        if step.gpu && matches!(mode, Mode::Kubernetes) {
            config = on_gpu(step.kind, config);
        }
        steps.push(json!({
            "task_id": step.name,
            "kind": step.kind.name(),
            "out": join_url(&root, &step.key),
            "config": config,
            "after": after,
            "resources": resources(step.kind, step.gpu),
            "gpu": step.gpu,
            "timeout_s": deadline_s(step.kind),
            // Pulling a large image, or a GPU node scaling up, takes minutes.
            "startup_timeout_s": if step.gpu { 1800 } else { 600 },
        }));
    }
    let dag_id: String =
        workflow.name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    // A Python expression for a JSON value: `json.loads("…")` (JSON string escapes are
    // Python's), or a plain string literal.
    let literal = |v: &Value| serde_json::to_string(&serde_json::to_string(v).expect("json")).expect("json");
    let string = |s: &str| serde_json::to_string(s).expect("json");
    let mut out = String::new();
    let header = match mode {
        Mode::Kubernetes => "kubernetes (a pod per step)",
        Mode::Local(_) => "local (the taft binary on the worker)",
    };
    out.push_str(&format!(
        "\"\"\"Airflow DAG `{dag_id}`: the taft workflow {source}, mode {header}.\n\nRendered by `taft render airflow`; each task runs one step, `taft <step> --out URL\n--config-yaml CONFIG`. A step that is up to date exits 0 at once, so a rerun skips done\nwork. Exit code {RETRY_EXIT_CODE} (a transient failure) is retried with backoff; any other failure\n(2: bad input or config) fails the task at once.\n\"\"\"\n\n",
        source = workflow.source.replace('"', "'"),
    ));
    out.push_str(COMMON);
    out.push_str(&format!(
        "RETRY_EXIT_CODE = {RETRY_EXIT_CODE}\nRETRIES = {RETRIES}\nRETRY_DELAY_S = {RETRY_DELAY_S}\nMAX_RETRY_DELAY_S = {MAX_RETRY_DELAY_S}\n"
    ));
    out.push_str(&format!(
        "POOL = json.loads({})\n",
        literal(&json!(target.pool.as_deref().filter(|s| !s.is_empty())))
    ));
    out.push_str(RETRY_RULE);
    match mode {
        Mode::Kubernetes => {
            out.push_str(&format!("IMAGE = {}\n", string(&format!("{}:{}", target.image, target.tag))));
            out.push_str(&format!("SECRET = {}\n", string(&target.secret)));
            // No namespace: the Kubernetes connection's.
            out.push_str(&format!("NAMESPACE = json.loads({})\n", literal(&json!(target.namespace))));
            out.push_str(&format!("RUN_AS_USER = {RUN_AS_USER}\n"));
            out.push_str(&format!(
                "SERVICE_ACCOUNT = json.loads({})\n",
                literal(&json!(target.service_account.as_deref().filter(|s| !s.is_empty())))
            ));
            let selector: serde_json::Map<String, Value> =
                target.gpu_node_selector.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            out.push_str(&format!("GPU_NODE_SELECTOR = json.loads({})\n", literal(&Value::Object(selector))));
            out.push_str(KUBERNETES);
        }
        Mode::Local(exe) => {
            let exe = exe.to_str().ok_or_else(|| Error::config(format!("{}: not UTF-8", exe.display())))?;
            out.push_str(&format!("TAFT = {}\n", string(exe)));
            out.push_str(LOCAL);
        }
    }
    out.push_str(&format!("STEPS = json.loads({})\n\n", literal(&Value::Array(steps))));
    out.push_str(&format!(
        "with DAG(\n    dag_id={},\n    schedule=None,\n    start_date=datetime(2024, 1, 1),\n    catchup=False,\n    max_active_tasks={},\n    # Two runs would write the same outputs: one at a time.\n    max_active_runs=1,\n    tags=[\"taft\"],\n) as dag:\n    tasks = {{s[\"task_id\"]: Step(step=s) for s in STEPS}}\n    for s in STEPS:\n        for upstream in s[\"after\"]:\n            tasks[upstream] >> tasks[s[\"task_id\"]]\n",
        string(&dag_id),
        target.parallelism
    ));
    Ok(out)
}

/// A local store root as an absolute path (the worker's working directory is not ours).
fn local_root(store: &str) -> Result<String> {
    if store.contains("://") {
        return Ok(store.to_string());
    }
    let path = std::path::Path::new(store);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| Error::Other(format!("current directory: {e}")))?.join(path)
    };
    Ok(abs.display().to_string())
}

const COMMON: &str = r#"from __future__ import annotations

import json
import re
import shlex
from datetime import datetime, timedelta

from airflow.sdk import DAG

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowException, AirflowFailException

"#;

/// What both modes' operators share: the retry settings, and a failure that is not the
/// transient exit code turned into one Airflow does not retry.
const RETRY_RULE: &str = r#"
RETRY = dict(
    retries=RETRIES,
    retry_delay=timedelta(seconds=RETRY_DELAY_S),
    retry_exponential_backoff=True,
    max_retry_delay=timedelta(seconds=MAX_RETRY_DELAY_S),
)


def limits(step: dict) -> dict:
    """A task's time limit and pool."""
    out = dict(execution_timeout=timedelta(seconds=step["timeout_s"]))
    if POOL:
        out["pool"] = POOL
    return out


class RetriesExit3:
    """Mixed into an operator whose `exit_code_of(error)` names the step's exit code (None if
    unknown): only the transient code (or an unknown one) is left to Airflow's retries."""

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowException as e:
            code = None if isinstance(e, AirflowFailException) else self.exit_code_of(e)
            if code is None or code == RETRY_EXIT_CODE:
                raise
            raise AirflowFailException(f"step exited {code}: {e}") from e

"#;

const LOCAL: &str = r#"
from airflow.providers.standard.operators.bash import BashOperator


def bash_exit_code(message: str) -> int | None:
    """The exit code a BashOperator failure message names."""
    found = re.search(r"exit code (\d+)", message)
    return int(found.group(1)) if found else None


class Step(RetriesExit3, BashOperator):
    """One taft step run by the local binary."""

    template_fields = ()  # the command is literal: configs hold braces

    def __init__(self, *, step: dict, **kwargs):
        command = " ".join(
            shlex.quote(a)
            for a in [TAFT, step["kind"], "--out", step["out"], "--config-yaml", json.dumps(step["config"])]
        )
        super().__init__(
            task_id=step["task_id"],
            bash_command=command,
            env={"TAFT_LOG_FORMAT": "json", "TAFT_PROGRESS": "off"},
            append_env=True,
            skip_on_exit_code=None,
            **RETRY,
            **limits(step),
            **kwargs,
        )

    def exit_code_of(self, error):
        return bash_exit_code(str(error))


"#;

const KUBERNETES: &str = r#"
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s


def exit_code(pod) -> int | None:
    """The exit code of the step's container in a finished pod, if it has one."""
    for status in (pod.status.container_statuses or []) if pod and pod.status else []:
        if status.name == "base" and status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None


RESTRICTED_POD = k8s.V1PodSecurityContext(
    run_as_non_root=True,
    run_as_user=RUN_AS_USER,
    run_as_group=RUN_AS_USER,
    fs_group=RUN_AS_USER,
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)
RESTRICTED_CONTAINER = k8s.V1SecurityContext(
    allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
)


class Step(RetriesExit3, KubernetesPodOperator):
    """One taft step in a pod of the step image (command `taft`)."""

    # The arguments are literal: configs hold braces.
    template_fields = tuple(f for f in KubernetesPodOperator.template_fields if f != "arguments")

    def __init__(self, *, step: dict, **kwargs):
        gpu = step["gpu"]
        super().__init__(
            task_id=step["task_id"],
            name=step["task_id"].lower().replace("_", "-"),
            namespace=NAMESPACE,
            image=IMAGE,
            cmds=["taft"],
            arguments=[step["kind"], "--out", step["out"], "--config-yaml", json.dumps(step["config"])],
            env_vars=[
                k8s.V1EnvVar(name="TAFT_LOG_FORMAT", value="json"),
                # Threads default to the CPUs requested (a step's `threads` setting wins).
                k8s.V1EnvVar(
                    name="TAFT_THREADS",
                    value_from=k8s.V1EnvVarSource(
                        resource_field_ref=k8s.V1ResourceFieldSelector(
                            container_name="base", resource="requests.cpu", divisor="1"
                        )
                    ),
                ),
            ],
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=SECRET))],
            container_resources=k8s.V1ResourceRequirements(
                requests=step["resources"]["requests"], limits=step["resources"]["limits"]
            ),
            node_selector=GPU_NODE_SELECTOR if gpu else None,
            tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if gpu else None,
            service_account_name=SERVICE_ACCOUNT,
            security_context=RESTRICTED_POD,
            container_security_context=RESTRICTED_CONTAINER,
            get_logs=True,
            startup_timeout_seconds=step["startup_timeout_s"],
            # The exit code is read from the pod: never deferred to a trigger.
            deferrable=False,
            # A failed pod stays for its exit code (and for whoever debugs it); one that never
            # started is deleted (see `cleanup`).
            on_finish_action="delete_succeeded_pod",
            **RETRY,
            **limits(step),
            **kwargs,
        )

    def cleanup(self, pod, remote_pod, *args, **kwargs):
        phase = getattr(getattr(remote_pod, "status", None), "phase", None)
        if phase == "Pending":  # never started (no node, no image): nothing in it to keep
            self.process_pod_deletion(remote_pod, reraise=False)
        return super().cleanup(pod, remote_pod, *args, **kwargs)

    def exit_code_of(self, error):
        try:
            return exit_code(self.pod_manager.read_pod(self.pod)) if self.pod else None
        except Exception:  # the pod is gone: let Airflow retry
            return None


"#;
