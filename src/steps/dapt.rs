//! `taft dapt`: masked-LM continued pretraining on the unlabeled utterances (SPEC §5, step
//! 1b). Utterances are tokenized with their special tokens, concatenated and cut into
//! blocks (the short tail dropped); 15 % of the non-special tokens are chosen each time a
//! block is drawn (80 % mask, 10 % random, 10 % kept) and the loss is taken on them only.
//! Whole conversations go to training or evaluation by a seeded hash of their id. The
//! output is a `…ForMaskedLM` model directory.
//!
//! `first_token_words` (off by default, the spec's DAPT) adds a second loss: each block
//! starts with the first special token (`<s>`, `[CLS]`), and that position's state, read
//! through the masked-LM head, predicts the block's words (cross-entropy against the share
//! of each non-special token in the block, before masking). Masked LM never trains the
//! first token's state; this makes it a summary of its text, the state that a direct head
//! (noAdapt, TAPT, DAPT's classifier) reads.

use serde::{Deserialize, Serialize};

use super::{io, Step};
use crate::error::{Error, Result};
use crate::store::commit::Output;
use crate::train::TrainConfig;

#[cfg(feature = "train")]
mod fit;

/// SPEC §5 1b: blocks of 512, 15 % masking, 80/20 split, lr 2e-5, weight decay 0.01,
/// batch 8, 20 epochs, evaluation each epoch, a checkpoint every 100 steps.
const DEFAULTS: &str = "
block_size: 512
mlm_probability: 0.15
eval_fraction: 0.2
first_token_words: 0.0
blocks_per_pass: 0
pass_memory_mib: 512
train:
  epochs: 20
  batch_size: 8
  grad_accum: 1
  lr: 2.0e-5
  weight_decay: 0.01
  warmup_steps: 0
  max_grad_norm: 1.0
  eval_each_epoch: true
  checkpoint_every: 100
  log_every: 10
  precision: fp32
  device: auto
  seed: 42
";

/// Config of `taft dapt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaptConfig {
    /// A prep output and a model directory, in any order.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// Tokens per block (at most the model's positions).
    pub block_size: usize,
    /// Share of the non-special tokens chosen for the loss.
    pub mlm_probability: f64,
    /// Share of the conversations held out for evaluation.
    pub eval_fraction: f64,
    /// Weight of the first token's word prediction, added to the masked-LM loss (0: off).
    pub first_token_words: f64,
    /// Blocks per forward pass: a batch of more runs in parts, each part's backward pass
    /// before the next part's forward, so the peak holds one part's activations. The loss
    /// and gradient are the whole batch's; only the dropout masks are drawn per part. 0: as
    /// many as `pass_memory_mib` allows.
    pub blocks_per_pass: usize,
    /// With `blocks_per_pass: 0`, on the CPU: the memory one pass's activations may take,
    /// estimated from the model's shape and the block size; a batch that needs more runs in
    /// parts of as many blocks as fit (at least one). 0: no limit. On CUDA a batch runs
    /// whole unless `blocks_per_pass` is set.
    pub pass_memory_mib: u64,
    /// Use only the first N utterances of the corpus (the original used 300).
    #[serde(default)]
    pub max_utterances: Option<usize>,
    pub train: TrainConfig,
}

step_io!(DaptConfig);

pub struct Dapt;

impl Step for Dapt {
    const NAME: &'static str = "dapt";
    const ABOUT: &'static str = "Masked-LM continued pretraining (DAPT) of a model directory on a prep output's unlabeled utterances; inputs: the prep output and the model, in any order";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = DaptConfig;

    fn validate(config: &DaptConfig) -> Result<()> {
        io::DataAndModel::check_count(Self::NAME, &config.inputs)?;
        if config.block_size < 8 {
            return Err(Error::config("block_size must be at least 8"));
        }
        if !(config.mlm_probability > 0.0 && config.mlm_probability < 1.0) {
            return Err(Error::config("mlm_probability must be in (0, 1)"));
        }
        if !(config.eval_fraction > 0.0 && config.eval_fraction < 1.0) {
            return Err(Error::config("eval_fraction must be in (0, 1)"));
        }
        if !(config.first_token_words >= 0.0 && config.first_token_words.is_finite()) {
            return Err(Error::config(format!(
                "first_token_words must be a finite weight ≥ 0 (0: off), not {}",
                config.first_token_words
            )));
        }
        config.train.validate()
    }

    async fn run(config: &DaptConfig, out: &mut Output) -> Result<serde_json::Value> {
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
