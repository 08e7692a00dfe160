//! `taft init`: the starting model directory — a pretrained Hugging Face model (path or store
//! URL), checked key for key and normalised, or a new encoder with a tokenizer trained on the
//! unlabeled utterances of a `prep` output.

use serde::{Deserialize, Serialize};

use super::Step;
use crate::error::{Error, Result};
use crate::model::dir::{CONFIG, TOKENIZER, WEIGHTS};
use crate::store::commit::Output;
use crate::text::TokenizerKind;

pub use crate::model::dir::TAFT_JSON;

#[cfg(feature = "train")]
mod make;

/// The encoder family of a new model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyName {
    /// RoBERTa / CamemBERT conventions, Unigram tokenizer (the paper's family).
    #[default]
    Roberta,
    /// BERT conventions, WordPiece tokenizer.
    Bert,
}

/// A new encoder (defaults: a tiny one, for the demo and tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchConfig {
    pub family: FamilyName,
    /// Defaults to the family's (Unigram for roberta, WordPiece for bert).
    pub tokenizer: Option<TokenizerKind>,
    pub vocab_size: usize,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    /// Longest input in tokens (RoBERTa adds 2 positions for its padding offset).
    pub max_length: i64,
    pub dropout: f64,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        ScratchConfig {
            family: FamilyName::Roberta,
            tokenizer: None,
            vocab_size: 4000,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 128,
            max_length: 512,
            dropout: 0.1,
        }
    }
}

/// Config of `taft init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// A `prep` output (the tokenizer's corpus); needed without `pretrained`.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// A Hugging Face model directory (path or store URL): config.json, model.safetensors,
    /// tokenizer.json.
    #[serde(default)]
    pub pretrained: Option<String>,
    /// The new encoder, when there is no `pretrained`.
    #[serde(default)]
    pub scratch: ScratchConfig,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_seed() -> u64 {
    42
}

step_io!(InitConfig);

pub struct Init;

impl Step for Init {
    const NAME: &'static str = "init";
    const ABOUT: &'static str = "Make the starting model directory: a pretrained model (checked key for key), or a new encoder with a tokenizer trained on a prep output's unlabeled utterances";
    type Config = InitConfig;

    fn validate(config: &InitConfig) -> Result<()> {
        if config.pretrained.is_none() && config.inputs.len() != 1 {
            return Err(Error::config(format!(
                "init from scratch takes one input (a prep output, for the tokenizer), got {}",
                config.inputs.len()
            )));
        }
        let s = &config.scratch;
        let sizes = [
            ("vocab_size", s.vocab_size as i64, 50, 1 << 20),
            ("hidden_size", s.hidden_size, 1, 1 << 14),
            ("num_hidden_layers", s.num_hidden_layers, 1, 128),
            ("num_attention_heads", s.num_attention_heads, 1, 1 << 10),
            ("intermediate_size", s.intermediate_size, 1, 1 << 16),
            ("max_length", s.max_length, 8, 1 << 16),
        ];
        if let Some(problem) = crate::model::config::out_of_range("scratch.", &sizes) {
            return Err(Error::config(problem));
        }
        if s.hidden_size % s.num_attention_heads != 0 {
            return Err(Error::config(format!(
                "scratch.hidden_size {} is not a multiple of scratch.num_attention_heads {}",
                s.hidden_size, s.num_attention_heads
            )));
        }
        if !(0.0..1.0).contains(&s.dropout) {
            return Err(Error::config(format!("scratch.dropout {} must be in [0, 1)", s.dropout)));
        }
        Ok(())
    }

    fn reads(config: &InitConfig) -> Vec<String> {
        config.inputs.iter().cloned().chain(config.pretrained.clone()).collect()
    }

    fn fingerprint_inputs(config: &InitConfig) -> Vec<String> {
        let mut inputs = config.inputs.clone();
        if let Some(p) = &config.pretrained {
            let p = p.trim_end_matches('/');
            inputs.extend([CONFIG, WEIGHTS, TOKENIZER].map(|f| format!("{p}/{f}")));
        }
        inputs
    }

    async fn run(config: &InitConfig, out: &mut Output) -> Result<serde_json::Value> {
        #[cfg(feature = "train")]
        {
            make::run(config, out).await
        }
        #[cfg(not(feature = "train"))]
        {
            let _ = (config, out);
            Err(super::without_training(Self::NAME))
        }
    }
}
