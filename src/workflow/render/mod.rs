//! Renders a workflow for a scheduler: an Argo `WorkflowTemplate`/`Workflow` ([`argo`]) or an
//! Airflow DAG file ([`airflow`]). Each step becomes one container (or process) running
//! `taft <step> --out URL --config-yaml CONFIG`, the config carrying the step's inputs; the
//! dependencies and fan-out are the workflow's. A step that is up to date exits 0 at once,
//! so a resubmitted workflow skips done work, and only exit code 3 (transient) is retried.

pub mod airflow;
pub mod argo;

use serde_json::{json, Value};

use super::{join_url, Planned, Workflow};
use crate::error::{Error, Result};
use crate::steps::StepKind;

/// The exit code a scheduler retries (DESIGN.md: 3 = transient infrastructure failure).
pub const RETRY_EXIT_CODE: i32 = 3;
/// Retries of a step that exits 3, with exponential backoff from [`RETRY_DELAY_S`] (doubling,
/// up to [`MAX_RETRY_DELAY_S`], which the last retry reaches).
pub const RETRIES: u32 = 4;
pub const RETRY_DELAY_S: u32 = 30;
pub const MAX_RETRY_DELAY_S: u32 = RETRY_DELAY_S << (RETRIES - 1);
/// The user id the images run as (non-root).
pub const RUN_AS_USER: u32 = 10001;

/// How long a step's pod may run before it is stopped (seconds), by step kind: training days,
/// scoring hours, the rest less.
pub fn deadline_s(kind: StepKind) -> u64 {
    match kind.name() {
        "dapt" | "role" | "finetune" => 3 * 24 * 3600,
        "encode" | "evaluate" | "export" | "predict" => 12 * 3600,
        _ => 2 * 3600,
    }
}

/// A step's config as a `gpu: true` step runs it: on CUDA (`train.device`, or `device` for
/// encode and evaluate), so that a pod without a working GPU fails at once instead of training on CPU.
pub fn on_gpu(kind: StepKind, mut config: Value) -> Value {
    let Some(map) = config.as_object_mut() else { return config };
    match kind.name() {
        "dapt" | "role" | "finetune" => {
            let train = map.entry("train").or_insert_with(|| json!({}));
            if let Some(train) = train.as_object_mut() {
                train.entry("device").or_insert_with(|| json!("cuda"));
            }
        }
        "encode" | "evaluate" => {
            map.entry("device").or_insert_with(|| json!("cuda"));
        }
        _ => {}
    }
    config
}

/// What a rendered workflow needs beyond the workflow file.
#[derive(Debug, Clone)]
pub struct Target {
    /// The step image (without tag) and its tag.
    pub image: String,
    pub tag: String,
    /// The Kubernetes Secret whose keys become the steps' environment (store credentials:
    /// `AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT_KEY`, `AZURE_STORAGE_ACCOUNT_KEY`, …).
    pub secret: String,
    pub namespace: Option<String>,
    /// The step pods' service account (Argo: [`SERVICE_ACCOUNT`] when not given; `""`: the
    /// namespace's default).
    pub service_account: Option<String>,
    /// Secrets for pulling the image from a private registry.
    pub image_pull_secrets: Vec<String>,
    /// Node labels a `gpu: true` step must run on (none by default: the `nvidia.com/gpu`
    /// limit is what places a pod on a GPU node).
    pub gpu_node_selector: Vec<(String, String)>,
    /// Steps running at once at most.
    pub parallelism: u32,
    /// The Airflow pool the tasks take slots of.
    pub pool: Option<String>,
    /// More workflow parameters (name, default), for configs that name them.
    pub params: Vec<(String, String)>,
}

/// The default step image.
pub const IMAGE: &str = "ghcr.io/taft-project/taft";
/// The default service account of step pods (the Helm chart creates it, with the rights
/// Argo's executor needs).
pub const SERVICE_ACCOUNT: &str = "taft";

impl Target {
    pub fn new(workflow: &Workflow) -> Target {
        Target {
            image: workflow.image.clone().unwrap_or_else(|| IMAGE.to_string()),
            tag: env!("CARGO_PKG_VERSION").to_string(),
            secret: "taft-store".into(),
            namespace: None,
            service_account: None,
            image_pull_secrets: Vec::new(),
            gpu_node_selector: Vec::new(),
            parallelism: 8,
            pool: None,
            params: Vec::new(),
        }
    }
}

/// Requests and limits of a step's container: (cpu request, memory request, memory limit).
/// Training steps get the most; a GPU step adds `nvidia.com/gpu: 1`.
pub fn resources(kind: StepKind, gpu: bool) -> Value {
    let (cpu, memory, limit) = match kind.name() {
        "dapt" | "role" | "finetune" => ("4", "8Gi", "16Gi"),
        "encode" | "evaluate" | "export" => ("2", "4Gi", "8Gi"),
        "predict" => ("2", "2Gi", "4Gi"),
        "compare" => ("500m", "512Mi", "1Gi"),
        _ => ("1", "2Gi", "4Gi"),
    };
    let mut limits = json!({"memory": limit});
    if gpu {
        limits["nvidia.com/gpu"] = json!(1);
    }
    json!({"requests": {"cpu": cpu, "memory": memory}, "limits": limits})
}

/// The store root of a rendered workflow: an object-store URL (pods share no disk).
pub fn object_store_root(workflow: &Workflow) -> Result<&str> {
    let root = workflow.store.as_str();
    let remote =
        crate::store::REMOTE_SCHEMES.iter().any(|s| root.strip_prefix(s).is_some_and(|r| r.starts_with("://")));
    if remote {
        Ok(root)
    } else {
        Err(Error::config(format!(
            "workflow {}: store `{root}` is not an object-store URL ({}); steps in containers share no disk: give `--store s3://bucket/prefix`",
            workflow.source,
            crate::store::REMOTE_SCHEMES.map(|s| format!("{s}://")).join(", ")
        )))
    }
}

/// A step's config as its container reads it (`--config-yaml`): the workflow's config with
/// `inputs` set to the input URLs under `root`.
pub fn step_config(workflow: &Workflow, step: &Planned, root: &str) -> Result<Value> {
    let mut config: Value = serde_json::to_value(&step.config.value)?;
    if config.is_null() {
        config = json!({});
    }
    if !step.deps.is_empty() {
        let inputs: Vec<String> = step.deps.iter().map(|&d| join_url(root, &workflow.steps[d].key)).collect();
        config
            .as_object_mut()
            .ok_or_else(|| Error::config(format!("{}: the config is not a mapping", step.config.source)))?
            .insert("inputs".into(), json!(inputs));
    }
    Ok(config)
}

/// A name Kubernetes and Argo accept (lowercase letters, digits and `-`).
pub fn dns_name(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.trim_matches('-').to_string()
}
