//! The pipeline steps. Each is a typed config plus `run`; [`drive`] gives every step the
//! same contract: resolve and validate the config, fingerprint it with the inputs, skip when
//! the output is up to date, otherwise run and commit atomically.

/// Implements [`StepIo`] for a config with `inputs: Vec<String>` and `out: Option<String>`.
macro_rules! step_io {
    ($config:ty) => {
        impl $crate::steps::StepIo for $config {
            fn inputs(&self) -> &[String] {
                &self.inputs
            }
            fn out(&self) -> Option<&str> {
                self.out.as_deref()
            }
        }
    };
}

pub mod compare;
pub mod dapt;
pub mod encode;
pub mod evaluate;
pub mod export;
pub mod finetune;
pub mod init;
pub mod io;
pub mod predict;
pub mod prep;
pub mod role;
#[cfg(feature = "train")]
pub mod training;

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::config::RawConfig;
use crate::error::{Error, Result};
use crate::store::commit::{Begin, Output};
use crate::store::manifest::{self, Manifest};
use crate::store::Store;

/// The registry of steps: one line per step gives its kind (as named on the command line
/// and in workflows), its type, and whether this build can run it. Everything that
/// dispatches on a step kind (the CLI, workflows, [`check`], [`run`]) is generated here.
macro_rules! registry {
    ($($variant:ident => $step:ty, runs: $runs:expr;)*) => {
        /// Every step kind, as named on the command line and in workflows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum StepKind {
            $($variant,)*
        }

        impl StepKind {
            pub const ALL: &'static [StepKind] = &[$(StepKind::$variant,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(StepKind::$variant => <$step as Step>::NAME,)*
                }
            }

            /// One line on what the step does (the CLI's help).
            pub fn about(self) -> &'static str {
                match self {
                    $(StepKind::$variant => <$step as Step>::ABOUT,)*
                }
            }

            /// Whether this build carries what the step needs (training needs the `train` feature).
            pub fn runs_here(self) -> bool {
                match self {
                    $(StepKind::$variant => $runs,)*
                }
            }
        }

        /// Resolves and validates a step's config without running it.
        pub fn check(kind: StepKind, raw: &RawConfig, overrides: &Overrides) -> Result<()> {
            match kind {
                $(StepKind::$variant => resolve::<$step>(raw, overrides).map(drop),)*
            }
        }

        /// Runs one step under the step contract.
        pub async fn run(kind: StepKind, raw: &RawConfig, overrides: &Overrides) -> Result<Report> {
            if !kind.runs_here() {
                return Err(without_training(kind.name()));
            }
            match kind {
                $(StepKind::$variant => drive::<$step>(raw, overrides).await,)*
            }
        }
    };
}

registry! {
    Prep => prep::Prep, runs: true;
    Init => init::Init, runs: cfg!(feature = "train");
    Dapt => dapt::Dapt, runs: cfg!(feature = "train");
    Role => role::Role, runs: cfg!(feature = "train");
    Encode => encode::Encode, runs: cfg!(feature = "train");
    Finetune => finetune::Finetune, runs: cfg!(feature = "train");
    Evaluate => evaluate::Evaluate, runs: cfg!(feature = "train");
    Compare => compare::Compare, runs: true;
    Export => export::Export, runs: cfg!(all(feature = "train", feature = "serve"));
    Predict => predict::Predict, runs: cfg!(feature = "serve");
}

impl StepKind {
    pub fn parse(s: &str) -> Option<StepKind> {
        StepKind::ALL.iter().copied().find(|k| k.name() == s)
    }
}

/// The error of a step this build cannot run (see [`StepKind::runs_here`]).
pub(crate) fn without_training(step: &str) -> Error {
    Error::config(format!("`{step}` needs training (libtorch): this taft was built without the `train` feature"))
}

/// What a caller gives on top of the config document (CLI flags, workflow wiring).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces the config's `inputs` when not empty.
    pub inputs: Vec<String>,
    /// Replaces the config's `out`.
    pub out: Option<String>,
    /// Run even when the output is up to date.
    pub force: bool,
}

/// What a step did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub step: String,
    pub out: String,
    pub up_to_date: bool,
    pub fingerprint: String,
    pub summary: serde_json::Value,
}

/// Inputs and output of a step config.
pub trait StepIo {
    fn inputs(&self) -> &[String];
    fn out(&self) -> Option<&str>;
}

/// One pipeline step.
pub trait Step {
    const NAME: &'static str;
    /// One line on what the step does.
    const ABOUT: &'static str;
    /// Built-in config (YAML) laid beneath the user's: keys the user leaves out, at any depth.
    const DEFAULTS: &'static str = "{}";
    type Config: DeserializeOwned + Serialize + StepIo + Send + Sync;

    /// The user's config with the built-in one laid beneath it: [`Step::DEFAULTS`], or, for
    /// a step whose defaults depend on a choice in the config (finetune's `method`), more.
    fn with_defaults(raw: &RawConfig) -> Result<RawConfig> {
        raw.with_defaults(Self::DEFAULTS)
    }

    /// Checks what serde cannot (ranges, combinations) before any work starts.
    fn validate(config: &Self::Config) -> Result<()>;

    /// The URLs whose fingerprints enter the step's fingerprint (default: its inputs).
    fn fingerprint_inputs(config: &Self::Config) -> Vec<String> {
        config.inputs().to_vec()
    }

    /// Every location the step reads (default: its inputs); its output may not overlap one.
    fn reads(config: &Self::Config) -> Vec<String> {
        config.inputs().to_vec()
    }

    /// Does the work, writing files through `out`; returns the summary for the manifest.
    fn run(config: &Self::Config, out: &mut Output) -> impl Future<Output = Result<serde_json::Value>> + Send;
}

fn resolve<S: Step>(raw: &RawConfig, overrides: &Overrides) -> Result<S::Config> {
    let mut raw = S::with_defaults(raw)?;
    if !overrides.inputs.is_empty() {
        let list = overrides.inputs.iter().map(|s| serde_yaml::Value::String(s.clone())).collect();
        raw.set("inputs", serde_yaml::Value::Sequence(list)).map_err(Error::config)?;
    }
    if let Some(out) = &overrides.out {
        raw.set("out", serde_yaml::Value::String(out.clone())).map_err(Error::config)?;
    }
    let config: S::Config = raw.resolve()?;
    if config.out().is_none() {
        return Err(Error::config(format!(
            "config {}: no output: give `--out URL` or `out:` in the config",
            raw.source
        )));
    }
    S::validate(&config).map_err(|e| match e {
        Error::Config(msg) => Error::config(format!("config {}: {msg}", raw.source)),
        other => other,
    })?;
    Ok(config)
}

/// The step contract (DESIGN.md): fingerprint, up-to-date check, run, atomic commit.
pub async fn drive<S: Step>(raw: &RawConfig, overrides: &Overrides) -> Result<Report> {
    crate::store::check_environment()?;
    let config = resolve::<S>(raw, overrides)?;
    let out_url = config.out().expect("checked by resolve").to_string();
    crate::store::location::check_output(&out_url, &S::reads(&config))?;
    let store = Store::create(&out_url)?;
    let mut inputs = Vec::new();
    for url in S::fingerprint_inputs(&config) {
        inputs.push(manifest::input_fingerprint(&url).await?);
    }
    let config_json = serde_json::to_value(&config)?;
    let span = tracing::info_span!("step", step = S::NAME, out = %out_url);
    async move {
        match Output::begin(store, S::NAME, config_json, inputs, overrides.force).await? {
            Begin::UpToDate(manifest) => {
                tracing::info!(fingerprint = %manifest.fingerprint, "up to date");
                Ok(report(S::NAME, &out_url, true, manifest))
            }
            Begin::Fresh(mut output) => {
                tracing::info!(fingerprint = %output.fingerprint(), pid = std::process::id(), "started");
                let summary = match until_stopped(S::run(&config, &mut output)).await {
                    Ok(summary) => summary,
                    Err(e) => {
                        output.abandon().await;
                        return Err(e);
                    }
                };
                let manifest = output.commit(summary).await?;
                tracing::info!(files = manifest.files.len(), peak_rss_mib = peak_rss_mib(), "committed");
                Ok(report(S::NAME, &out_url, false, manifest))
            }
        }
    }
    .instrument(span)
    .await
}

/// How long a step has after SIGTERM to reach a safe point (a training step writes a
/// checkpoint there) before it is given up: `TAFT_STOP_GRACE_S`, else 20 s (within
/// Kubernetes' default 30 s grace period).
fn stop_grace() -> std::time::Duration {
    let seconds = std::env::var("TAFT_STOP_GRACE_S").ok().and_then(|v| v.parse::<f64>().ok());
    std::time::Duration::from_secs_f64(seconds.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(20.0))
}

/// Runs a step's work; on SIGTERM or Ctrl-C it asks the work to stop at its next safe point
/// and waits for it at most [`stop_grace`]. Either way the step ends with
/// [`Error::Interrupted`] (exit 3: retry), unless its work finished meanwhile.
async fn until_stopped<F: std::future::Future<Output = Result<serde_json::Value>>>(
    work: F,
) -> Result<serde_json::Value> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        _ = crate::runtime::terminated() => {
            crate::runtime::request_stop();
            let grace = stop_grace();
            tracing::warn!(grace_s = grace.as_secs_f64(), "SIGTERM: stopping at the next safe point");
            match tokio::time::timeout(grace, &mut work).await {
                Ok(r) => r,
                Err(_) => Err(Error::Interrupted(format!(
                    "stopped by SIGTERM: no safe point within {} s; nothing was committed",
                    grace.as_secs_f64()
                ))),
            }
        }
    }
}

/// The largest resident set of this process so far, in MiB (`VmHWM`; `None` off Linux).
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

fn report(step: &str, out: &str, up_to_date: bool, manifest: Manifest) -> Report {
    Report {
        step: step.to_string(),
        out: out.to_string(),
        up_to_date,
        fingerprint: manifest.fingerprint,
        summary: manifest.summary,
    }
}
