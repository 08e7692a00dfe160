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
        let sizes = [
            ("vocab_size", self.vocab_size, 1, 1 << 24),
            ("hidden_size", self.hidden_size, 1, 1 << 16),
            ("num_hidden_layers", self.num_hidden_layers, 1, 1024),
            ("num_attention_heads", self.num_attention_heads, 1, 1 << 12),
            ("intermediate_size", self.intermediate_size, 1, 1 << 18),
            ("max_position_embeddings", self.max_position_embeddings, 1, 1 << 20),
            ("type_vocab_size", self.type_vocab_size, 1, 1 << 10),
        ];
        if let Some(problem) = out_of_range("", &sizes) {
            return Err(Error::input(format!("{source}: {problem}")));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::input(format!("{source}: {name} {p} must be in [0, 1)")));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::input(format!("{source}: layer_norm_eps {} must be positive", self.layer_norm_eps)));
        }
        if !(0..self.vocab_size).contains(&self.pad_id()) {
            return Err(Error::input(format!(
                "{source}: pad_token_id {} is not a token of the vocabulary",
                self.pad_id()
            )));
        }
        if self.usable_positions() < 2 {
            return Err(Error::input(format!(
                "{source}: max_position_embeddings {} leaves no position for tokens",
                self.max_position_embeddings
            )));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
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

    /// Refuses an input length (the setting `key`) beyond the usable positions of the model at
    /// `model` (its URL, for the message).
    pub fn check_length(&self, key: &str, length: usize, model: &str) -> Result<()> {
        let positions = self.usable_positions();
        if length as u64 > positions.max(0) as u64 {
            return Err(Error::config(format!(
                "{key} {length} exceeds the {positions} positions of the model {model}"
            )));
        }
        Ok(())
    }

    /// The standard deviation of transformers' weight initialisation (`initializer_range`,
    /// 0.02 when the file has none).
    pub fn initializer_range(&self) -> f64 {
        self.extra.get("initializer_range").and_then(serde_json::Value::as_f64).unwrap_or(0.02)
    }

    /// The padding token id (BERT 0, RoBERTa 1 unless the file says otherwise).
    pub fn pad_id(&self) -> i64 {
        self.pad_token_id.unwrap_or(match self.model_type.as_str() {
            "roberta" | "camembert" | "xlm-roberta" => 1,
            _ => 0,
        })
    }
}

/// The first of `sizes` (name, value, min, max) outside its range, as a message naming
/// `prefix` + name; `None` when all are in range.
pub fn out_of_range(prefix: &str, sizes: &[(&str, i64, i64, i64)]) -> Option<String> {
    sizes
        .iter()
        .find(|(_, value, min, max)| !(min..=max).contains(&value))
        .map(|(name, value, min, max)| format!("{prefix}{name} {value} is out of range {min}..={max}"))
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

impl AdaptiveConfig {
    /// Checks what does not depend on the encoder (heads must also divide its hidden size).
    pub fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.heads) || !(1..=1 << 18).contains(&self.ffn) {
            return Err(Error::config(format!(
                "adaptive.heads {} must be in 1..=1024 and adaptive.ffn {} in 1..=262144",
                self.heads, self.ffn
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(format!("adaptive.dropout {} must be in [0, 1)", self.dropout)));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::config(format!("adaptive.layer_norm_eps {} must be positive", self.layer_norm_eps)));
        }
        Ok(())
    }
}
