//! Argo Workflows: a `WorkflowTemplate` (or `Workflow`) with one container template per step
//! kind (and GPU variant) and a DAG task per concrete step.

use serde_json::{json, Value};

use super::{dns_name, object_store_root, resources, step_config, Target, RETRIES, RETRY_DELAY_S, RETRY_EXIT_CODE};
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
        let config = step_config(workflow, step, store)?;
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
        "podGC": {"strategy": "OnPodSuccess"},
        "templates": templates,
    });
    if let Some(sa) = &target.service_account {
        spec["serviceAccountName"] = json!(sa);
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

/// The container template of one step kind: `taft <kind> --out … --config-yaml …`, retried
/// with backoff on exit code 3 only.
fn container_template(name: &str, kind: &str, step: &crate::workflow::Planned, target: &Target) -> Value {
    let mut template = json!({
        "name": name,
        "inputs": {"parameters": [{"name": "out"}, {"name": "config"}]},
        "retryStrategy": {
            "limit": RETRIES,
            "retryPolicy": "OnFailure",
            "expression": format!("asInt(lastRetry.exitCode) == {RETRY_EXIT_CODE}"),
            "backoff": {"duration": format!("{RETRY_DELAY_S}s"), "factor": 2, "cap": "10m"},
        },
        "container": {
            "image": "{{workflow.parameters.image}}:{{workflow.parameters.tag}}",
            "args": [kind, "--out", "{{inputs.parameters.out}}", "--config-yaml", "{{inputs.parameters.config}}"],
            "env": [{"name": "TAFT_LOG_FORMAT", "value": "json"}],
            "envFrom": [{"secretRef": {"name": "{{workflow.parameters.secret}}"}}],
            "resources": resources(step.kind, step.gpu),
        },
    });
    if step.gpu {
        let selector: serde_json::Map<String, Value> =
            target.gpu_node_selector.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        template["nodeSelector"] = Value::Object(selector);
        template["tolerations"] = json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    }
    template
}
