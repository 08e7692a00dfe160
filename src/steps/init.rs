//! `taft init`: the starting model directory — a pretrained Hugging Face model (path or store
//! URL), checked key for key and normalised, or a new encoder with a tokenizer trained on the
//! unlabeled utterances of a `prep` output.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::{io, Step};
use crate::error::{Error, Result};
use crate::model::checkpoint::{self, Arch, CONFIG, TOKENIZER, WEIGHTS};
use crate::model::config::{EncoderConfig, Family};
use crate::model::heads::{Classifier, MlmHead};
use crate::store::commit::Output;
use crate::text::{TextTokenizer, TokenizerKind};

/// Our description of a model directory, beside the Hugging Face files.
pub const TAFT_JSON: &str = "taft.json";

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
    type Config = InitConfig;

    fn validate(config: &InitConfig) -> Result<()> {
        if config.pretrained.is_none() && config.inputs.len() != 1 {
            return Err(Error::config(format!(
                "init from scratch takes one input (a prep output, for the tokenizer), got {}",
                config.inputs.len()
            )));
        }
        let s = &config.scratch;
        if s.num_attention_heads <= 0 || s.hidden_size % s.num_attention_heads != 0 {
            return Err(Error::config(format!(
                "scratch.hidden_size {} is not a multiple of scratch.num_attention_heads {}",
                s.hidden_size, s.num_attention_heads
            )));
        }
        if s.vocab_size < 50 || s.num_hidden_layers < 1 || s.intermediate_size < 1 || s.max_length < 8 {
            return Err(Error::config("scratch: vocab_size >= 50, num_hidden_layers >= 1, intermediate_size >= 1, max_length >= 8"));
        }
        Ok(())
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
        let work = tempfile::tempdir()?;
        let dir = work.path().join("model");
        let summary = match &config.pretrained {
            Some(url) => {
                let src = work.path().join("pretrained");
                io::fetch_model_dir(url, &src).await?;
                let config = config.clone();
                let (src2, dir2) = (src.clone(), dir.clone());
                tokio::task::spawn_blocking(move || from_pretrained(&config, &src2, &dir2))
                    .await
                    .map_err(|e| Error::Other(format!("init: {e}")))??
            }
            None => {
                let texts = io::utterances(io::read_prep(&config.inputs[0]).await?);
                let (config, dir2) = (config.clone(), dir.clone());
                tokio::task::spawn_blocking(move || from_scratch(&config, texts, &dir2))
                    .await
                    .map_err(|e| Error::Other(format!("init: {e}")))??
            }
        };
        let mut taft = summary.clone();
        taft["lineage"] = serde_json::json!([{"step": "init", "fingerprint": out.fingerprint()}]);
        std::fs::write(dir.join(TAFT_JSON), serde_json::to_vec_pretty(&taft)?)?;
        io::upload_dir(&dir, out).await?;
        Ok(summary)
    }
}

fn from_pretrained(config: &InitConfig, src: &Path, dir: &Path) -> Result<serde_json::Value> {
    let encoder_config = checkpoint::read_config(src)?;
    let family = encoder_config.family(CONFIG)?;
    let tokenizer = TextTokenizer::load(&src.join(TOKENIZER))?;
    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Classifier::new(&vs.root(), &encoder_config, family, None, &[], encoder_config.hidden_dropout_prob);
    // A masked-LM head in the checkpoint is kept (DAPT continues from it).
    let names = checkpoint::tensor_names(&src.join(WEIGHTS))?;
    let head = MlmHead::prefix(family);
    let arch = if names.iter().any(|n| n.starts_with(head)) {
        let _mlm = MlmHead::new(&MlmHead::path(&vs.root(), family), &encoder_config, family);
        Arch::MaskedLm
    } else {
        Arch::Base
    };
    // The pooler is a head: it starts fresh when the checkpoint has none.
    checkpoint::load_weights(&vs, src, &["pooler."])?;
    save(&vs, &encoder_config, arch, &tokenizer, dir)?;
    Ok(describe(&encoder_config, family, &tokenizer, config.pretrained.as_deref()))
}

fn from_scratch(config: &InitConfig, texts: Vec<String>, dir: &Path) -> Result<serde_json::Value> {
    let s = &config.scratch;
    let (family, kind) = match s.family {
        FamilyName::Roberta => (Family::Roberta, s.tokenizer.unwrap_or(TokenizerKind::Unigram)),
        FamilyName::Bert => (Family::Bert, s.tokenizer.unwrap_or(TokenizerKind::WordPiece)),
    };
    if texts.is_empty() {
        return Err(Error::input("init: the prep output has no utterances to train a tokenizer on"));
    }
    let tokenizer = TextTokenizer::train(texts.iter(), kind, s.vocab_size)?;
    let (model_type, positions, types) = match family {
        Family::Roberta => ("roberta", s.max_length + i64::from(tokenizer.pad_id) + 1, 1),
        Family::Bert => ("bert", s.max_length, 2),
    };
    let encoder_config = EncoderConfig {
        model_type: model_type.into(),
        vocab_size: tokenizer.vocab_size() as i64,
        hidden_size: s.hidden_size,
        num_hidden_layers: s.num_hidden_layers,
        num_attention_heads: s.num_attention_heads,
        intermediate_size: s.intermediate_size,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: s.dropout,
        attention_probs_dropout_prob: s.dropout,
        max_position_embeddings: positions,
        type_vocab_size: types,
        layer_norm_eps: 1e-12,
        pad_token_id: Some(i64::from(tokenizer.pad_id)),
        extra: serde_json::Map::from_iter([
            ("bos_token_id".to_string(), serde_json::json!(tokenizer.cls_id)),
            ("eos_token_id".to_string(), serde_json::json!(tokenizer.sep_id)),
            ("initializer_range".to_string(), serde_json::json!(0.02)),
        ]),
    };
    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Classifier::new(&vs.root(), &encoder_config, family, None, &[], s.dropout);
    checkpoint::init_like_transformers(&vs, "", i64::from(tokenizer.pad_id));
    save(&vs, &encoder_config, Arch::Base, &tokenizer, dir)?;
    Ok(describe(&encoder_config, family, &tokenizer, None))
}

fn save(vs: &nn::VarStore, config: &EncoderConfig, arch: Arch, tokenizer: &TextTokenizer, dir: &Path) -> Result<()> {
    checkpoint::save_weights(vs, config, arch, dir)?;
    std::fs::write(dir.join(TOKENIZER), tokenizer.to_json()?)?;
    Ok(())
}

fn describe(config: &EncoderConfig, family: Family, tokenizer: &TextTokenizer, pretrained: Option<&str>) -> serde_json::Value {
    let parameters = config.vocab_size * config.hidden_size
        + config.num_hidden_layers * (4 * config.hidden_size * config.hidden_size + 2 * config.hidden_size * config.intermediate_size);
    serde_json::json!({
        "format": 1,
        "family": match family { Family::Bert => "bert", Family::Roberta => "roberta" },
        "pretrained": pretrained,
        "vocab_size": tokenizer.vocab_size(),
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "approx_parameters": parameters,
        "special_tokens": tokenizer.special,
        "dtype": "float32",
    })
}
