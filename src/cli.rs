//! The command line: one subcommand per step (from the step registry), `run` for
//! workflows, and tools.

use std::path::PathBuf;

use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use taft::steps::StepKind;

#[derive(Debug, Parser)]
#[command(
    name = "taft",
    version,
    about = "Adapt a pretrained transformer encoder to scarce conversational data (TAFT), export it to ONNX and serve it"
)]
pub struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for schedulers;
    /// `auto` is text on a terminal, json otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "TAFT_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Step(StepCommand),
    /// Run a workflow file locally: steps in dependency order, independent ones in parallel.
    Run(RunArgs),
    /// Render a workflow file for a scheduler: an Argo WorkflowTemplate or an Airflow DAG.
    #[command(subcommand)]
    Render(RenderTarget),
    /// Write the synthetic dataset as JSON lines (`.gz` compresses), e.g. for benchmarks.
    Synth(SynthArgs),
    /// Serve an export output over HTTP on ONNX Runtime (POST /v1/predict, /health, /ready, /metrics).
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Show the compute back ends this build carries (libtorch, ONNX Runtime).
    Info,
}

/// `taft <step> …`: one subcommand per step this build can run.
#[derive(Debug)]
pub struct StepCommand {
    pub kind: StepKind,
    pub args: StepArgs,
}

impl FromArgMatches for StepCommand {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, sub) = matches
            .subcommand()
            .ok_or_else(|| clap::Error::raw(clap::error::ErrorKind::MissingSubcommand, "a step is required"))?;
        let kind = StepKind::parse(name).filter(|k| k.runs_here()).ok_or_else(|| {
            clap::Error::raw(clap::error::ErrorKind::InvalidSubcommand, format!("unknown step `{name}`"))
        })?;
        Ok(StepCommand { kind, args: StepArgs::from_arg_matches(sub)? })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for StepCommand {
    fn augment_subcommands(mut cmd: clap::Command) -> clap::Command {
        for kind in StepKind::ALL.iter().filter(|k| k.runs_here()) {
            cmd = cmd.subcommand(StepArgs::augment_args(clap::Command::new(kind.name())).about(kind.about()));
        }
        cmd
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        StepKind::parse(name).is_some_and(|k| k.runs_here())
    }
}

/// What every step takes.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// The step's YAML config (every key optional where it has a default).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The step's config as YAML (or JSON) text, as schedulers pass it.
    #[arg(long, value_name = "YAML", conflicts_with = "config")]
    pub config_yaml: Option<String>,
    /// Override a config key: `--set synthetic.seed=7` (the value is read as YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// An input URL or path (repeatable); replaces the config's `inputs`.
    #[arg(long = "input", short, value_name = "URL")]
    pub inputs: Vec<String>,
    /// The output URL or path; replaces the config's `out`.
    #[arg(long, short, value_name = "URL")]
    pub out: Option<String>,
    /// Run even if the output is up to date (and start over from any `_work/` checkpoint).
    #[arg(long)]
    pub force: bool,
    /// Only shard i (0-based) of n: `--shard 0/4` (steps that fan out: encode, predict); the same as
    /// `--set shard=i/n`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The export output to serve (a path or store URL).
    #[arg(long, short, value_name = "URL")]
    pub input: String,
    /// Address to bind (default 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind (default 8080; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Server settings (YAML: model, max_batch_size, max_wait_ms, queue_items, max_body_bytes,
    /// max_items, max_text_chars, threads).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a setting: `--set max_batch_size=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow YAML file.
    pub workflow: PathBuf,
    /// Replace the workflow's store root (a path or URL).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Redo every step even if up to date.
    #[arg(long)]
    pub force: bool,
    /// Steps run at once at most (default: as many as there are CPUs; steps start only
    /// while their threads fit in the CPUs either way).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// Validate the workflow and print the plan without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Set a key of a step's config: `--set init.pretrained=models/camembert-base`.
    #[arg(long = "set", value_name = "STEP.KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RenderTarget {
    /// An Argo Workflows WorkflowTemplate (or Workflow): a container template per step kind,
    /// a DAG task per step, retries on exit code 3.
    Argo(ArgoArgs),
    /// An Airflow 3 DAG file: a KubernetesPodOperator per step (or, `--mode local`, a
    /// BashOperator running this machine's taft binary).
    Airflow(AirflowArgs),
}

/// What both renderers take.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The workflow YAML file.
    pub workflow: PathBuf,
    /// Replace the workflow's store root (an s3://, gs:// or az:// URL for containers).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Set a key of a step's config: `--set init.pretrained=s3://bucket/models/camembert`.
    #[arg(long = "set", value_name = "STEP.KEY=VALUE")]
    pub sets: Vec<String>,
    /// The step image, without tag (default: the workflow's `image`, else ghcr.io/taft-project/taft).
    #[arg(long)]
    pub image: Option<String>,
    /// The image tag (default: this program's version).
    #[arg(long)]
    pub tag: Option<String>,
    /// The Kubernetes Secret whose keys become the steps' environment (store credentials).
    #[arg(long, default_value = "taft-store")]
    pub secret: String,
    /// The namespace to run in.
    #[arg(long)]
    pub namespace: Option<String>,
    /// The service account the step pods run as (Argo: by default `taft`, which the Helm
    /// chart creates with the rights Argo's executor needs; `''`: the namespace's default).
    #[arg(long)]
    pub service_account: Option<String>,
    /// A Secret for pulling the image from a private registry (repeatable).
    #[arg(long = "image-pull-secret", value_name = "NAME")]
    pub image_pull_secrets: Vec<String>,
    /// A node label `gpu: true` steps require (repeatable; by default none: the
    /// `nvidia.com/gpu` limit places them on GPU nodes).
    #[arg(long = "gpu-node-selector", value_name = "KEY=VALUE")]
    pub gpu_node_selector: Vec<String>,
    /// Steps running at once at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub parallelism: u32,
    /// Write here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ArgoArgs {
    #[command(flatten)]
    pub common: RenderArgs,
    /// The resource to write.
    #[arg(long, value_enum, default_value_t = ArgoKind::Workflowtemplate)]
    pub kind: ArgoKind,
    /// Declare a workflow parameter with its default, for configs to use as
    /// `{{workflow.parameters.NAME}}` (e.g. the data a submission names: `-p NAME=…`).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArgoKind {
    Workflowtemplate,
    Workflow,
}

#[derive(Debug, Args)]
pub struct AirflowArgs {
    #[command(flatten)]
    pub common: RenderArgs,
    /// `kubernetes`: a pod per step; `local`: the taft binary on the Airflow worker.
    #[arg(long, value_enum, default_value_t = AirflowMode::Kubernetes)]
    pub mode: AirflowMode,
    /// The taft binary local mode runs (default: this one).
    #[arg(long, value_name = "PATH")]
    pub taft: Option<PathBuf>,
    /// The Airflow pool the tasks take slots of.
    #[arg(long)]
    pub pool: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AirflowMode {
    Kubernetes,
    Local,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Generator settings (YAML: seed, train, val, test, unlabeled, min_utterances,
    /// max_utterances, learnable, noise, status_share, satisfaction_utterances).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a generator setting: `--set learnable=true`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Multiply every split size.
    #[arg(long, default_value_t = 1)]
    pub scale: usize,
    /// Where to write the JSON lines (a path or URL; `.gz` compresses).
    #[arg(long, short, value_name = "URL")]
    pub out: String,
}
