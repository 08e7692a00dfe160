//! The encoder's configuration, read leniently from a Hugging Face `config.json` (unknown
//! keys are kept, so a model directory written back keeps them).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which embedding conventions the encoder follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT: positions 0..T, token types.
    Bert,
    /// RoBERTa, CamemBERT, XLM-R: positions start at `pad_token_id + 1` and skip padding.
    Roberta,
}

fn d_dropout() -> f64 {
    0.1
}
fn d_act() -> String {
    "gelu".into()
}
fn d_positions() -> i64 {
    512
}
fn d_types() -> i64 {
    2
}
fn d_eps() -> f64 {
    1e-12
}

/// A Hugging Face `config.json` for a BERT-family or RoBERTa-family encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_types")]
    pub type_vocab_size: i64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Every other key of the file, kept for the round trip.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl EncoderConfig {
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let config: EncoderConfig = serde_json::from_str(text)
            .map_err(|e| Error::input(format!("{source}: not an encoder config.json: {e}")))?;
        config.validate(source)?;
        Ok(config)
    }

    fn validate(&self, source: &str) -> Result<()> {
        self.family(source)?;
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::input(format!(
                "{source}: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        match self.hidden_act.as_str() {
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu" => Ok(()),
            other => Err(Error::input(format!("{source}: unsupported hidden_act `{other}`"))),
        }
    }

    /// The embedding conventions of `model_type`.
    pub fn family(&self, source: &str) -> Result<Family> {
        match self.model_type.as_str() {
            "bert" | "" => Ok(Family::Bert),
            "roberta" | "camembert" | "xlm-roberta" => Ok(Family::Roberta),
            other => Err(Error::input(format!(
                "{source}: unsupported model_type `{other}` (expected bert, roberta, camembert or xlm-roberta)"
            ))),
        }
    }

    /// Positions an input may use: RoBERTa-family models reserve `pad_id + 1` of them.
    pub fn usable_positions(&self) -> i64 {
        match self.model_type.as_str() {
            "roberta" | "camembert" | "xlm-roberta" => self.max_position_embeddings - self.pad_id() - 1,
            _ => self.max_position_embeddings,
        }
    }

    /// The padding token id (BERT 0, RoBERTa 1 unless the file says otherwise).
    pub fn pad_id(&self) -> i64 {
        self.pad_token_id.unwrap_or(match self.model_type.as_str() {
            "roberta" | "camembert" | "xlm-roberta" => 1,
            _ => 0,
        })
    }
}

/// Settings of the adaptive layer (defaults: the paper's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    pub heads: i64,
    pub ffn: i64,
    pub dropout: f64,
    pub layer_norm_eps: f64,
    /// Mask padding positions out of the attention (false: the original's behaviour).
    pub mask_padding: bool,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig { heads: 12, ffn: 2048, dropout: 0.1, layer_norm_eps: 1e-5, mask_padding: true }
    }
}
