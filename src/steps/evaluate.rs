//! `taft evaluate`: a trained model (a `finetune` or `role` output) scored on one split of a
//! `prep` output (SPEC §6): per task the metrics, a classification report (TSV and JSON, as
//! scikit-learn gives it), a confusion-matrix heatmap, the model's training curves, and every
//! prediction with its class probabilities. `test_resamples: N` adds the original's protocol:
//! N imbalanced resamples of each task's set, walked in lockstep and cut to the shorter,
//! reported as mean ± standard deviation beside the full-set figures.

use serde::{Deserialize, Serialize};

use super::{io, Step};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::store::commit::Output;

#[cfg(feature = "train")]
mod score;

/// Scores on the test split, batches of 32, no resampling.
const DEFAULTS: &str = "
split: test
batch_size: 32
test_resamples: 0
seed: 42
device: auto
";

/// Config of `taft evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {
    /// A model (a finetune or role output) and a prep output, in any order.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// The split scored: train, val or test.
    pub split: Split,
    pub batch_size: usize,
    /// The original protocol: this many imbalanced resamples of each task's set (0: none).
    pub test_resamples: usize,
    /// Seed of the resamples.
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N
    pub device: String,
    /// CPU threads of the tensor library (default: `TAFT_THREADS`, else the CPUs this process may use).
    #[serde(default)]
    pub threads: Option<usize>,
}

step_io!(EvaluateConfig);

pub struct Evaluate;

impl Step for Evaluate {
    const NAME: &'static str = "evaluate";
    const ABOUT: &'static str = "Score a finetune (or role) output on a split of a prep output: metrics, classification reports (TSV, JSON), confusion-matrix and training-curve charts (PNG), predictions.parquet; inputs: the model and the prep output, in any order";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = EvaluateConfig;

    fn validate(config: &EvaluateConfig) -> Result<()> {
        io::DataAndModel::check_count(Self::NAME, &config.inputs)?;
        if config.split == Split::Unlabeled {
            return Err(Error::config("split: the unlabeled split has no labels to score; use train, val or test"));
        }
        if !(1..=1 << 16).contains(&config.batch_size) || config.test_resamples > 10_000 {
            return Err(Error::config("batch_size must be in 1..=65536 and test_resamples at most 10000"));
        }
        if config.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
            return Err(Error::config("threads must be in 1..=1024"));
        }
        crate::model::DeviceName::parse(&config.device).map(drop)
    }

    async fn run(config: &EvaluateConfig, out: &mut Output) -> Result<serde_json::Value> {
        #[cfg(feature = "train")]
        {
            score::run(config, out).await
        }
        #[cfg(not(feature = "train"))]
        {
            let _ = (config, out);
            Err(super::without_training(Self::NAME))
        }
    }
}
