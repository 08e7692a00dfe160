//! `taft role`: speaker-role pretraining (SPEC §5, step 1a) — the first step of TAFT, TAFT
//! noAdapt and TAPT. Each utterance of the unlabeled split written by a customer or an
//! operator is classified by its speaker (label = author − 2), from the utterance alone
//! (max 50 tokens). Variant `adaptive` puts the adaptive layer between the encoder and the
//! pooler (TAFT); `direct` does not (noAdapt, TAPT). Training uses SPEC §4's per-batch
//! weighted loss; the checkpoint with the lowest validation loss (unweighted cross-entropy)
//! is kept and scored on the utterances of the labeled test split.

use serde::{Deserialize, Serialize};

use super::{io, Step};
use crate::error::{Error, Result};
use crate::model::config::AdaptiveConfig;
use crate::store::commit::Output;
use crate::train;

#[cfg(feature = "train")]
mod fit;

/// SPEC §5 1a: batch 128, 50 tokens, lr 2e-5, 10 epochs, fp32, the lowest validation loss.
const DEFAULTS: &str = "
variant: adaptive
max_length: 50
val_fraction: 0.25
split: hash
dropout: 0.1
adaptive: {}
pass_memory_mib: 512
train:
  epochs: 10
  batch_size: 128
  grad_accum: 1
  lr: 2.0e-5
  weight_decay: 0.01
  warmup_steps: 0
  max_grad_norm: null
  eval_each_epoch: true
  checkpoint_every: 100
  log_every: 10
  best: {metric: loss, mode: min}
  precision: fp32
  device: auto
  seed: 42
";

/// The task's class names, by label.
pub const ROLES: [&str; 2] = ["customer", "operator"];

/// With or without the adaptive layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// TAFT: encoder → adaptive layer → pooler → classifier.
    Adaptive,
    /// TAFT noAdapt and TAPT: encoder → pooler → classifier.
    Direct,
}

/// How the unlabeled utterances are split into training and validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Whole conversations by a seeded hash of their id, whatever the file order.
    Hash,
    /// **quirk** of the original: the first `1 − val_fraction` of the utterances in file
    /// order train, the rest validate.
    Contiguous,
}

/// Config of `taft role`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// A prep output and a model directory, in any order.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    pub variant: Variant,
    /// Tokens per utterance, special tokens included.
    pub max_length: usize,
    pub val_fraction: f64,
    pub split: SplitMode,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// The adaptive layer (variant `adaptive`): heads, ffn, dropout, layer_norm_eps, mask_padding.
    pub adaptive: AdaptiveConfig,
    /// On the CPU: the memory one forward pass's activations may take, estimated from the
    /// model's shape and the batch's padded length. A batch that needs more runs in parts,
    /// its utterances by length, each part padded to its own longest and its backward pass
    /// before the next part's forward: the loss and gradient are the batch's, the peak holds
    /// one part's activations. 0: every batch whole, as on CUDA.
    pub pass_memory_mib: u64,
    pub train: train::TrainConfig,
}

step_io!(RoleConfig);

pub struct Role;

impl Step for Role {
    const NAME: &'static str = "role";
    const ABOUT: &'static str = "Speaker-role pretraining (TAFT step 1a) of a model directory on a prep output's unlabeled utterances, with the adaptive layer (`variant: adaptive`) or without";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = RoleConfig;

    fn validate(config: &RoleConfig) -> Result<()> {
        io::DataAndModel::check_count(Self::NAME, &config.inputs)?;
        if config.max_length < 3 {
            return Err(Error::config("max_length must be at least 3 (the special tokens and one token)"));
        }
        if !(config.val_fraction > 0.0 && config.val_fraction < 1.0) {
            return Err(Error::config("val_fraction must be in (0, 1)"));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::config(format!("dropout {} must be in [0, 1)", config.dropout)));
        }
        config.adaptive.validate()?;
        config.train.validate()
    }

    async fn run(config: &RoleConfig, out: &mut Output) -> Result<serde_json::Value> {
        #[cfg(feature = "train")]
        {
            fit::run(config, out).await
        }
        #[cfg(not(feature = "train"))]
        {
            let _ = (config, out);
            Err(super::without_training(Self::NAME))
        }
    }
}
