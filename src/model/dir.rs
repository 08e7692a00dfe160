//! The files of a model directory and what `taft.json` says about the model (family, heads,
//! lineage), readable without the tensor library.

use std::path::Path;

use crate::error::{Error, Result};

/// The Hugging Face config of the encoder.
pub const CONFIG: &str = "config.json";
/// The Hugging Face part of the weights (encoder, pooler, masked-LM head).
pub const WEIGHTS: &str = "model.safetensors";
/// Tensors that are not part of a Hugging Face model (adaptive layer, classifiers).
pub const HEADS: &str = "heads.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";
/// Our description of a model directory, beside the Hugging Face files.
pub const TAFT_JSON: &str = "taft.json";

/// The files of a model directory: (name, required).
pub const FILES: [(&str, bool); 5] =
    [(CONFIG, true), (WEIGHTS, true), (TOKENIZER, true), (HEADS, false), (TAFT_JSON, false)];

/// A model directory copied to local disk, and the URL it came from: errors name the URL
/// the user gave, never the local copy.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: std::path::PathBuf,
    pub url: String,
}

impl From<&Path> for ModelDir {
    fn from(path: &Path) -> ModelDir {
        ModelDir::local(path)
    }
}

impl From<&std::path::PathBuf> for ModelDir {
    fn from(path: &std::path::PathBuf) -> ModelDir {
        ModelDir::local(path)
    }
}

impl From<&ModelDir> for ModelDir {
    fn from(dir: &ModelDir) -> ModelDir {
        dir.clone()
    }
}

impl ModelDir {
    pub fn new(path: &Path, url: &str) -> ModelDir {
        ModelDir { path: path.to_path_buf(), url: url.trim_end_matches('/').to_string() }
    }

    /// A local directory named by itself.
    pub fn local(path: &Path) -> ModelDir {
        ModelDir::new(path, &path.display().to_string())
    }

    /// The local path of a file of the directory.
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.path.join(name)
    }

    /// The URL of a file of the directory, for messages.
    pub fn name(&self, file: &str) -> String {
        format!("{}/{file}", self.url)
    }

    /// Reads a file of the directory; a missing or unreadable file is an input error naming it.
    pub fn read(&self, file: &str) -> Result<Vec<u8>> {
        std::fs::read(self.file(file)).map_err(|e| Error::input(format!("{}: {e}", self.name(file))))
    }

    /// `taft.json` as a JSON object (empty when the directory has none).
    pub fn taft_json(&self) -> Result<serde_json::Value> {
        if !self.file(TAFT_JSON).exists() {
            return Ok(serde_json::json!({}));
        }
        let bytes = self.read(TAFT_JSON)?;
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v @ serde_json::Value::Object(_)) => Ok(v),
            Ok(_) => Err(Error::input(format!("{}: expected a JSON object", self.name(TAFT_JSON)))),
            Err(e) => Err(Error::input(format!("{}: {e}", self.name(TAFT_JSON)))),
        }
    }
}

/// The classifier heads a `taft.json` names (`heads`: class names by task), status first,
/// then satisfaction, then the rest (the order the model was built in).
pub fn heads(taft: &serde_json::Value, source: &str) -> Result<Vec<(String, Vec<String>)>> {
    let bad = |what: &str| {
        Error::input(format!("{source}: {what}: not a model with classifiers (a finetune or role output)"))
    };
    let heads = taft["heads"].as_object().ok_or_else(|| bad("no `heads`"))?;
    let mut out = Vec::new();
    for (name, classes) in heads {
        let classes: Vec<String> = classes
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad(&format!("heads.{name}")))?
            .iter()
            .map(|c| c.as_str().map(str::to_string).ok_or_else(|| bad(&format!("heads.{name}"))))
            .collect::<Result<_>>()?;
        out.push((name.clone(), classes));
    }
    out.sort_by_key(|(name, _)| match name.as_str() {
        "status" => 0,
        "satisfaction" => 1,
        _ => 2,
    });
    if out.is_empty() {
        return Err(bad("`heads` is empty"));
    }
    Ok(out)
}

/// The truncation rule a `taft.json` records (`truncation`, `head_tail`; a model without
/// them was trained keeping the head).
pub fn truncation(taft: &serde_json::Value, source: &str) -> Result<crate::text::Truncation> {
    let fields = serde_json::json!({"truncation": taft.get("truncation"), "head_tail": taft.get("head_tail")});
    let fields = match fields {
        serde_json::Value::Object(map) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => serde_json::Map::new(),
    };
    serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| Error::input(format!("{source}: truncation: {e}")))
}

/// Whether a model's items are utterances (the speaker-role head) rather than conversations.
pub fn utterance_level(heads: &[(String, Vec<String>)]) -> bool {
    heads.iter().any(|(name, _)| name == "role")
}

impl ModelDir {
    /// The encoder config, its family and the tokenizer, checked against each other: every
    /// token id must have an embedding and the padding ids must agree.
    pub fn read_model(
        &self,
    ) -> Result<(super::config::EncoderConfig, super::config::Family, crate::text::TextTokenizer)> {
        let bytes = self.read(CONFIG)?;
        let text = String::from_utf8(bytes).map_err(|e| Error::input(format!("{}: {e}", self.name(CONFIG))))?;
        let config = super::config::EncoderConfig::from_json(&text, &self.name(CONFIG))?;
        let family = config.family(&self.name(CONFIG))?;
        let tokenizer = crate::text::TextTokenizer::from_bytes(&self.read(TOKENIZER)?, &self.name(TOKENIZER))?;
        let max_id = i64::from(tokenizer.max_id());
        if max_id >= config.vocab_size {
            return Err(Error::input(format!(
                "{}: token ids go up to {max_id}, but the model ({}) has embeddings for {} tokens only",
                self.name(TOKENIZER),
                self.name(CONFIG),
                config.vocab_size
            )));
        }
        if i64::from(tokenizer.pad_id) != config.pad_id() {
            return Err(Error::input(format!(
                "{}: the padding token {} has id {}, but {} says pad_token_id {}",
                self.name(TOKENIZER),
                tokenizer.special.pad,
                tokenizer.pad_id,
                self.name(CONFIG),
                config.pad_id()
            )));
        }
        Ok((config, family, tokenizer))
    }
}
