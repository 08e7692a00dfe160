//! `taft export`: a finetune or role output → an ONNX model written from Rust (opset 17):
//! the encoder, the adaptive layer when the model has one (with or without its padding mask,
//! as trained), the pooler and every task head, with inputs `input_ids` and `attention_mask`
//! (int64, dynamic batch and sequence) and per task `logits_<task>` and `probs_<task>`.
//! Beside it: `tokenizer.json` and `taft.json`. `graph: fused` (the default) writes the
//! encoder with ONNX Runtime's contrib operators (Attention, BiasGelu/FastGelu) and LayerNorm
//! as InstanceNormalization over rows; `graph: portable` with standard operators only, for
//! other runtimes.
//!
//! Before anything is committed the step runs the ONNX model through ONNX Runtime and the
//! trained model through libtorch on batches of several shapes (batch 1 and 8, short and
//! max-length sequences, padding) and fails if any output differs by more than `tolerance`.
//! `quantize: int8` adds `model.int8.onnx` (MatMul weights quantized dynamically, as ONNX
//! Runtime's dynamic quantizer does), checked by its argmax agreement with the fp32 model on
//! the validation split of a prep output given as the second input.

use serde::{Deserialize, Serialize};

use super::Step;
use crate::error::{Error, Result};
use crate::store::commit::Output;

#[cfg(all(feature = "train", feature = "serve"))]
mod build;

const DEFAULTS: &str = "
graph: fused
quantize: none
tolerance: 1.0e-4
min_agreement: 0.99
seed: 42
";

/// Whether to add a quantized model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    None,
    Int8,
}

/// Config of `taft export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// A finetune or role output; with `quantize: int8`, also a prep output (any order).
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// `fused` (ONNX Runtime's contrib operators for BERT-family encoders) or `portable`
    /// (standard ONNX operators only).
    pub graph: crate::onnx::GraphKind,
    pub quantize: Quantize,
    /// Largest absolute difference allowed between an ONNX output and the trained model's.
    pub tolerance: f64,
    /// Smallest share of validation items on which the int8 model's argmax equals fp32's.
    pub min_agreement: f64,
    /// Seed of the validation batches' token ids.
    pub seed: u64,
    /// CPU threads (default: `TAFT_THREADS`, else the CPUs this process may use).
    #[serde(default)]
    pub threads: Option<usize>,
}

step_io!(ExportConfig);

pub struct Export;

impl Step for Export {
    const NAME: &'static str = "export";
    const ABOUT: &'static str = "Export a finetune or role output to ONNX (model.onnx, tokenizer.json, taft.json), validated against the trained model; `quantize: int8` adds model.int8.onnx (then also give a prep output: its validation split checks the int8 model)";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = ExportConfig;

    fn validate(config: &ExportConfig) -> Result<()> {
        let want = match config.quantize {
            Quantize::None => 1,
            Quantize::Int8 => 2,
        };
        if config.inputs.len() != want {
            return Err(Error::config(match config.quantize {
                Quantize::None => format!("export takes one input (a finetune or role output), got {}", config.inputs.len()),
                Quantize::Int8 => format!(
                    "export with `quantize: int8` takes two inputs (a finetune or role output and a prep output, whose validation split checks the int8 model), got {}",
                    config.inputs.len()
                ),
            }));
        }
        if !(config.tolerance > 0.0 && config.tolerance <= 1.0) {
            return Err(Error::config(format!("tolerance {} must be in (0, 1]", config.tolerance)));
        }
        if !(0.0..=1.0).contains(&config.min_agreement) {
            return Err(Error::config(format!("min_agreement {} must be in [0, 1]", config.min_agreement)));
        }
        if config.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
            return Err(Error::config("threads must be in 1..=1024"));
        }
        Ok(())
    }

    async fn run(config: &ExportConfig, out: &mut Output) -> Result<serde_json::Value> {
        #[cfg(all(feature = "train", feature = "serve"))]
        {
            build::run(config, out).await
        }
        #[cfg(not(all(feature = "train", feature = "serve")))]
        {
            let _ = (config, out);
            Err(super::without_training(Self::NAME))
        }
    }
}
