//! The `train:` section of every training step: epochs and batches, learning rates and
//! groups, evaluation and the best checkpoint, precision, device and seed. Readable and
//! checked without the tensor library.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// CPU threads of a training step whose `train.threads` is not set (the workflow runner
/// sets it to share the cores among the steps running at once).
pub const THREADS_VAR: &str = "TAFT_THREADS";

/// Floating-point precision of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// fp16 autocast with dynamic loss scaling (CUDA only).
    Fp16,
    /// bf16 autocast (CUDA only; bf16 has fp32's range: no loss scaling).
    Bf16,
    /// fp16 on a CUDA device, fp32 on the CPU.
    Auto,
}

/// Whether a monitored metric is better lower or higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Min,
    Max,
}

/// Keep the checkpoint with the best evaluation metric (the step's output), and optionally
/// stop after `patience` evaluations without improvement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Best {
    /// A metric of the evaluation (`loss`, `perplexity`, `f1_weighted`, …).
    pub metric: String,
    pub mode: Mode,
    #[serde(default)]
    pub patience: Option<u64>,
}

/// Parameters under `prefix` train with their own learning rate and weight decay (biases
/// and LayerNorm parameters still get none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    pub prefix: String,
    pub lr: f64,
    pub weight_decay: f64,
}

/// The `train:` section of every training step (its defaults come from the step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: u64,
    /// Stop after this many optimizer steps (the schedule spans them).
    #[serde(default)]
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    /// Batches whose gradients add up to one optimizer step.
    pub grad_accum: u64,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (null: no clipping).
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    pub eval_each_epoch: bool,
    /// Also evaluate every N optimizer steps.
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Checkpoint under `<out>/_work/` every N optimizer steps (0: never).
    pub checkpoint_every: u64,
    /// Record the training loss every N optimizer steps.
    pub log_every: u64,
    #[serde(default)]
    pub best: Option<Best>,
    /// Parameters whose names start with one of these do not train.
    #[serde(default)]
    pub freeze: Vec<String>,
    #[serde(default)]
    pub groups: Vec<GroupRule>,
    pub precision: Precision,
    /// auto | cpu | cuda | cuda:N
    pub device: String,
    /// CPU threads of the tensor library (default: its own choice).
    #[serde(default)]
    pub threads: Option<usize>,
    pub seed: u64,
    /// Batch items of similar lengths together (windows of 50 batches of the sampler's
    /// order sorted by length, the batches shuffled): less padding, the same items per
    /// epoch. Steps whose examples all have one length (dapt's blocks) ignore it.
    #[serde(default)]
    pub group_by_length: bool,
}

impl TrainConfig {
    /// The CPU threads to use: `threads`, else `TAFT_THREADS`, else the CPUs this process
    /// may use ([`crate::runtime::cpus`]; libtorch's own default counts the node's cores,
    /// whatever a container's quota).
    pub fn cpu_threads(&self) -> Result<usize> {
        Self::threads_or_default(self.threads)
    }

    /// `threads` when given, else `TAFT_THREADS`, else the CPUs this process may use.
    pub fn threads_or_default(threads: Option<usize>) -> Result<usize> {
        match threads {
            Some(n) => Ok(n),
            None => Ok(Self::env_threads()?.unwrap_or_else(crate::runtime::cpus)),
        }
    }

    /// `TAFT_THREADS`, when set (a number in 1..=1024).
    pub fn env_threads() -> Result<Option<usize>> {
        let Ok(text) = std::env::var(THREADS_VAR) else { return Ok(None) };
        match text.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Some(n)),
            _ => Err(Error::config(format!("{THREADS_VAR}={text:?}: expected a number of threads in 1..=1024"))),
        }
    }

    /// Checks ranges and combinations (messages name the `train.` key).
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::config(format!("train.{msg}")));
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 || self.log_every == 0 {
            return fail("epochs, batch_size, grad_accum and log_every must be at least 1");
        }
        if self.max_steps == Some(0) || self.eval_every == Some(0) || self.threads == Some(0) {
            return fail("max_steps, eval_every and threads must be at least 1 when given");
        }
        if self.threads.is_some_and(|t| t > 1024) || self.epochs > 1_000_000 {
            return fail("threads must be at most 1024 and epochs at most 1000000");
        }
        let rates =
            std::iter::once((self.lr, self.weight_decay)).chain(self.groups.iter().map(|g| (g.lr, g.weight_decay)));
        for (lr, wd) in rates {
            if !(lr.is_finite() && lr > 0.0 && wd.is_finite() && wd >= 0.0) {
                return fail("lr must be a positive number and weight_decay a non-negative one (groups too)");
            }
        }
        if self.max_grad_norm.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
            return fail("max_grad_norm must be positive (or null for no clipping)");
        }
        if let Some(best) = &self.best {
            if !self.eval_each_epoch && self.eval_every.is_none() {
                return fail("best needs evaluations: set eval_each_epoch or eval_every");
            }
            if best.patience == Some(0) {
                return fail("best.patience must be at least 1");
            }
        }
        crate::model::DeviceName::parse(&self.device).map_err(|e| Error::config(format!("train.device: {e}")))?;
        Ok(())
    }
}
