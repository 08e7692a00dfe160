//! The command line: one subcommand per step, `run` for workflows, and tools.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "taft", version, about = "Adapt a pretrained transformer encoder to scarce conversational data (TAFT), export it to ONNX and serve it")]
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
    /// Validate JSON-lines conversations (or generate synthetic ones) into Parquet.
    Prep(StepArgs),
    /// Make the starting model directory: a pretrained model (checked key for key), or a new
    /// encoder with a tokenizer trained on a prep output's unlabeled utterances.
    #[cfg(feature = "train")]
    Init(StepArgs),
    /// Masked-LM continued pretraining (DAPT) of a model directory on a prep output's
    /// unlabeled utterances; inputs: the prep output and the model, in any order.
    #[cfg(feature = "train")]
    Dapt(StepArgs),
    /// Speaker-role pretraining (TAFT step 1a) of a model directory on a prep output's
    /// unlabeled utterances, with the adaptive layer (`variant: adaptive`) or without.
    #[cfg(feature = "train")]
    Role(StepArgs),
    /// Run a workflow file locally: steps in dependency order, independent ones in parallel.
    Run(RunArgs),
    /// Write the synthetic dataset as JSON lines (`.gz` compresses), e.g. for benchmarks.
    Synth(SynthArgs),
    /// Show the compute back ends this build carries (libtorch, ONNX Runtime).
    Info,
}

/// What every step takes.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// The step's YAML config (every key optional where it has a default).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a config key: `--set synthetic.seed=7` (the value is read as YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// An input URL or path (repeatable); replaces the config's `inputs`.
    #[arg(long = "input", short, value_name = "URL")]
    pub inputs: Vec<String>,
    /// The output URL or path; replaces the config's `out`.
    #[arg(long, short, value_name = "URL")]
    pub out: Option<String>,
    /// Run even if the output is up to date.
    #[arg(long)]
    pub force: bool,
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
    /// Steps run at once at most.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Validate the workflow and print the plan without running anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Generator settings (YAML: seed, train, val, test, unlabeled, min_utterances,
    /// max_utterances, learnable).
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
