//! Argo Workflows: a `WorkflowTemplate` (or `Workflow`) with one container template per step
//! kind (and GPU variant) and a DAG task per concrete step.

use serde_json::{json, Value};

use super::{
    deadline_s, dns_name, object_store_root, on_gpu, resources, step_config, Target, MAX_RETRY_DELAY_S, RETRIES,
    RETRY_DELAY_S, RETRY_EXIT_CODE, RUN_AS_USER,
};
use crate::error::{Error, Result};
use crate::workflow::{join_url, Workflow};

/// Which Argo resource to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WorkflowTemplate,
    Workflow,
}

/// The workflow as an Argo resource. The image, tag, store root and Secret are workflow
/// parameters (`argo submit --from workflowtemplate/NAME -p store=s3://…`).
pub fn render(workflow: &Workflow, target: &Target, kind: Kind) -> Result<Value> {
    let root = object_store_root(workflow)?;
    let store = "{{workflow.parameters.store}}";
    let mut tasks = Vec::new();
    let mut kinds: Vec<(String, &crate::workflow::Planned)> = Vec::new();
    for step in &workflow.steps {
        let template = template_name(step.kind.name(), step.gpu);
        if !kinds.iter().any(|(name, _)| *name == template) {
            kinds.push((template.clone(), step));
        }
        let mut config = step_config(workflow, step, store)?;
        if step.gpu {
            config = on_gpu(step.kind, config);
        }
        let mut task = json!({
            "name": dns_name(&step.name),
            "template": template,
            "arguments": {"parameters": [
                {"name": "out", "value": join_url(store, &step.key)},
                {"name": "config", "value": serde_json::to_string(&config)?},
            ]},
        });
        if !step.deps.is_empty() {
            let mut deps: Vec<String> = step.deps.iter().map(|&d| dns_name(&workflow.steps[d].name)).collect();
            deps.dedup();
            task["dependencies"] = json!(deps);
        }
        tasks.push(task);
    }
    let mut seen = std::collections::HashMap::new();
    for step in &workflow.steps {
        if let Some(other) = seen.insert(dns_name(&step.name), &step.name) {
            return Err(Error::config(format!(
                "workflow {}: steps `{other}` and `{}` have the same Argo task name `{}`",
                workflow.source,
                step.name,
                dns_name(&step.name)
            )));
        }
    }
    let mut templates = vec![json!({"name": "main", "dag": {"tasks": tasks}})];
    templates.extend(kinds.iter().map(|(name, step)| container_template(name, step.kind.name(), step, target)));
    let mut parameters = vec![
        json!({"name": "image", "value": target.image, "description": "the taft step image"}),
        json!({"name": "tag", "value": target.tag, "description": "its tag"}),
        json!({"name": "store", "value": root, "description": "store root: each step's output is a prefix under it"}),
        json!({"name": "secret", "value": target.secret, "description": "Secret whose keys are the store credentials (env)"}),
    ];
    for (name, value) in &target.params {
        if parameters.iter().any(|p| p["name"] == name.as_str()) {
            return Err(Error::config(format!("--param {name}: the workflow already has that parameter")));
        }
        parameters.push(json!({"name": name, "value": value}));
    }
    let mut spec = json!({
        "entrypoint": "main",
        "arguments": {"parameters": parameters},
        "parallelism": target.parallelism,
        // Pods of failed steps stay for their logs until the workflow is deleted, a day
        // after success or a week after failure.
        "podGC": {"strategy": "OnPodSuccess"},
        "ttlStrategy": {"secondsAfterSuccess": 24 * 3600, "secondsAfterFailure": 7 * 24 * 3600},
        // Pod Security Standards, "restricted".
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "templates": templates,
    });
    let sa = target.service_account.as_deref().unwrap_or(super::SERVICE_ACCOUNT);
    if !sa.is_empty() {
        spec["serviceAccountName"] = json!(sa);
    }
    if !target.image_pull_secrets.is_empty() {
        spec["imagePullSecrets"] =
            json!(target.image_pull_secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>());
    }
    let name = dns_name(&workflow.name);
    let mut metadata = json!({"labels": {"app.kubernetes.io/name": "taft", "app.kubernetes.io/part-of": name}});
    match kind {
        Kind::WorkflowTemplate => metadata["name"] = json!(name),
        Kind::Workflow => metadata["generateName"] = json!(format!("{name}-")),
    }
    if let Some(ns) = &target.namespace {
        metadata["namespace"] = json!(ns);
    }
    let kind = match kind {
        Kind::WorkflowTemplate => "WorkflowTemplate",
        Kind::Workflow => "Workflow",
    };
    Ok(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}))
}

fn template_name(kind: &str, gpu: bool) -> String {
    if gpu {
        format!("{kind}-gpu")
    } else {
        kind.to_string()
    }
}

/// What Argo retries: exit code 3 (transient), a pod stopped by SIGTERM before it could
/// say so (143), and node-level errors (a pod evicted, deleted or lost with its node).
pub const RETRY_EXPRESSION: &str =
    "asInt(lastRetry.exitCode) == 3 || asInt(lastRetry.exitCode) == 143 || lastRetry.status == \"Error\"";

/// The container template of one step kind: `taft <kind> --out … --config-yaml …`, retried
/// with backoff on exit code 3 and pod-level errors only.
fn container_template(name: &str, kind: &str, step: &crate::workflow::Planned, target: &Target) -> Value {
    debug_assert!(RETRY_EXPRESSION.contains(&format!("== {RETRY_EXIT_CODE} ")));
    let mut template = json!({
        "name": name,
        "inputs": {"parameters": [{"name": "out"}, {"name": "config"}]},
        "activeDeadlineSeconds": deadline_s(step.kind),
        "retryStrategy": {
            "limit": RETRIES,
            "retryPolicy": "Always",
            "expression": RETRY_EXPRESSION,
            "backoff": {"duration": format!("{RETRY_DELAY_S}s"), "factor": 2, "cap": format!("{MAX_RETRY_DELAY_S}s")},
        },
        "container": {
            "image": "{{workflow.parameters.image}}:{{workflow.parameters.tag}}",
            // The entrypoint is named: no registry look-up of the image's.
            "command": ["taft"],
            "args": [kind, "--out", "{{inputs.parameters.out}}", "--config-yaml", "{{inputs.parameters.config}}"],
            "env": [
                {"name": "TAFT_LOG_FORMAT", "value": "json"},
                // Threads default to the CPUs requested (a step's `threads` setting wins).
                {"name": "TAFT_THREADS", "valueFrom": {"resourceFieldRef": {
                    "containerName": "main", "resource": "requests.cpu", "divisor": "1",
                }}},
            ],
            "envFrom": [{"secretRef": {"name": "{{workflow.parameters.secret}}"}}],
            "resources": resources(step.kind, step.gpu),
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
            },
        },
    });
    if step.gpu {
        if !target.gpu_node_selector.is_empty() {
            let selector: serde_json::Map<String, Value> =
                target.gpu_node_selector.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            template["nodeSelector"] = Value::Object(selector);
        }
        template["tolerations"] = json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    }
    template
}
