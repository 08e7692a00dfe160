//! `taft init` on tch: load and check a pretrained model, or build a new encoder with a
//! tokenizer trained on the corpus.

use std::path::Path;

use tch::{nn, Device};

use super::{FamilyName, InitConfig, TAFT_JSON};
use crate::error::{Error, Result};
use crate::model::checkpoint::{self, Arch, TOKENIZER, WEIGHTS};
use crate::model::config::{EncoderConfig, Family};
use crate::model::dir::ModelDir;
use crate::model::heads::{Classifier, MlmHead};
use crate::steps::io;
use crate::store::commit::Output;
use crate::text::{TextTokenizer, TokenizerKind};

pub async fn run(config: &InitConfig, out: &mut Output) -> Result<serde_json::Value> {
    let work = tempfile::tempdir()?;
    let dir = work.path().join("model");
    let summary = match &config.pretrained {
        Some(url) => {
            let src = work.path().join("pretrained");
            io::fetch_model_dir(url, &src).await?;
            let config = config.clone();
            let (src, dir2) = (ModelDir::new(&src, url), dir.clone());
            tokio::task::spawn_blocking(move || from_pretrained(&config, &src, &dir2))
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

fn from_pretrained(config: &InitConfig, src: &ModelDir, dir: &Path) -> Result<serde_json::Value> {
    let (encoder_config, family, tokenizer) = src.read_model()?;
    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Classifier::new(&vs.root(), &encoder_config, family, None, &[], encoder_config.hidden_dropout_prob);
    // A masked-LM head in the checkpoint is kept (DAPT continues from it).
    let names = checkpoint::tensor_names_as(&src.file(WEIGHTS), &src.name(WEIGHTS))?;
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
    checkpoint::init_like_transformers(&vs, "", &encoder_config, family);
    save(&vs, &encoder_config, Arch::Base, &tokenizer, dir)?;
    Ok(describe(&encoder_config, family, &tokenizer, None))
}

fn save(vs: &nn::VarStore, config: &EncoderConfig, arch: Arch, tokenizer: &TextTokenizer, dir: &Path) -> Result<()> {
    checkpoint::save_weights(vs, config, arch, dir)?;
    std::fs::write(dir.join(TOKENIZER), tokenizer.to_json()?)?;
    Ok(())
}

fn describe(
    config: &EncoderConfig,
    family: Family,
    tokenizer: &TextTokenizer,
    pretrained: Option<&str>,
) -> serde_json::Value {
    let parameters = config.vocab_size * config.hidden_size
        + config.num_hidden_layers
            * (4 * config.hidden_size * config.hidden_size + 2 * config.hidden_size * config.intermediate_size);
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
