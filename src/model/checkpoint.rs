//! Hugging Face model directories: `config.json` + `model.safetensors` (+ `tokenizer.json`,
//! and our `heads.safetensors` for the adaptive layer and classifiers). Loading is key for
//! key: a missing or unexpected encoder tensor is an error that lists them, never a silent
//! re-initialisation; only variables declared new (fresh heads) keep their initial values.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Device, Tensor};

use super::bert::Encoder;
use super::config::{EncoderConfig, Family};
use crate::error::{Error, Result};

pub use super::dir::{ModelDir, CONFIG, HEADS, TOKENIZER, WEIGHTS};

/// Prefixes under which task models nest the encoder (`BertForMaskedLM` → `bert.`).
const ENCODER_PREFIXES: [&str; 3] = ["bert.", "roberta.", "camembert."];
/// Buffers that checkpoints carry but the encoder computes.
const BUFFERS: [&str; 2] = ["embeddings.position_ids", "embeddings.token_type_ids"];
/// Head tensors: ignored when the model being loaded has no such head.
const HEAD_PREFIXES: [&str; 5] = ["pooler.", "cls.", "lm_head.", "adaptive.", "classifiers."];
/// Which variables go to `model.safetensors` (the Hugging Face part).
const HF_PREFIXES: [&str; 5] = ["embeddings.", "encoder.", "pooler.", "cls.", "lm_head."];

/// Reads and checks `config.json` of a model directory.
pub fn read_config(dir: impl Into<ModelDir>) -> Result<EncoderConfig> {
    let dir = dir.into();
    let bytes = dir.read(CONFIG)?;
    let text = String::from_utf8(bytes).map_err(|e| Error::input(format!("{}: {e}", dir.name(CONFIG))))?;
    EncoderConfig::from_json(&text, &dir.name(CONFIG))
}

/// An encoder loaded from a model directory, with its variables.
pub struct LoadedEncoder {
    pub config: EncoderConfig,
    pub vs: nn::VarStore,
    pub encoder: Encoder,
}

/// Loads the encoder of a Hugging Face model directory onto `device` (heads are ignored).
pub fn load_encoder(dir: impl Into<ModelDir>, device: Device) -> Result<LoadedEncoder> {
    let dir = dir.into();
    let config = read_config(&dir)?;
    let family = config.family(CONFIG)?;
    let vs = nn::VarStore::new(device);
    let encoder = Encoder::new(&vs.root(), &config, family);
    load_weights(&vs, &dir, &[])?;
    Ok(LoadedEncoder { config, vs, encoder })
}

/// The checkpoint's name for a tensor, in our naming.
fn normalize(name: &str) -> String {
    let name = ENCODER_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name);
    // Old checkpoints call LayerNorm parameters gamma and beta.
    if let Some(base) = name.strip_suffix(".gamma") {
        format!("{base}.weight")
    } else if let Some(base) = name.strip_suffix(".beta") {
        format!("{base}.bias")
    } else {
        name.to_string()
    }
}

/// Copies the tensors of `dir` into the variables of `vs`. Variables whose names start with
/// one of `fresh` may be absent (new heads); any other absent variable, any tensor of the
/// checkpoint that is neither used nor a head, and any shape mismatch is an error.
pub fn load_weights(vs: &nn::VarStore, dir: impl Into<ModelDir>, fresh: &[&str]) -> Result<()> {
    let dir = dir.into();
    let mut tensors = Vec::new();
    for file in [WEIGHTS, HEADS] {
        let path = dir.file(file);
        if file == HEADS && !path.exists() {
            continue;
        }
        let read = Tensor::read_safetensors(&path).map_err(|e| Error::input(format!("{}: {e}", dir.name(file))))?;
        tensors.extend(read);
    }
    load_tensors(vs, tensors, fresh, &dir.name(WEIGHTS))
}

/// [`load_weights`] for tensors already read.
pub fn load_tensors(vs: &nn::VarStore, tensors: Vec<(String, Tensor)>, fresh: &[&str], source: &str) -> Result<()> {
    let mut by_name: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, tensor) in tensors {
        let name = normalize(&name);
        if !BUFFERS.contains(&name.as_str()) {
            by_name.insert(name, tensor);
        }
    }
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in variables {
            match by_name.remove(&name) {
                Some(t) if t.size() == var.size() => {
                    var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
                }
                Some(t) => wrong_shape.push(format!("{name} (checkpoint {:?}, model {:?})", t.size(), var.size())),
                None if fresh.iter().any(|p| name.starts_with(p)) => {}
                None => missing.push(name),
            }
        }
    });
    let unexpected: Vec<String> =
        by_name.into_keys().filter(|name| !HEAD_PREFIXES.iter().any(|p| name.starts_with(p))).collect();
    if missing.is_empty() && unexpected.is_empty() && wrong_shape.is_empty() {
        return Ok(());
    }
    let mut msg = format!("{source}: checkpoint does not match the model");
    for (what, list) in [("missing", &missing), ("unexpected", &unexpected), ("wrong shape", &wrong_shape)] {
        if !list.is_empty() {
            msg.push_str(&format!("; {what}: {}", list.join(", ")));
        }
    }
    Err(Error::input(msg))
}

/// Which Hugging Face class a saved model directory declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `BertModel` / `RobertaModel` / `CamembertModel`: encoder tensors without a prefix.
    Base,
    /// `…ForMaskedLM`: encoder tensors under `bert.`/`roberta.`, the MLM head beside them.
    MaskedLm,
}

/// Writes the variables of `vs` as a model directory: the Hugging Face part (encoder,
/// pooler, MLM head) to `model.safetensors`, the rest to `heads.safetensors`, and `config.json`.
pub fn save_weights(vs: &nn::VarStore, config: &EncoderConfig, arch: Arch, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let family = config.family(CONFIG)?;
    let prefix = match (arch, family) {
        (Arch::Base, _) => "",
        (Arch::MaskedLm, Family::Bert) => "bert.",
        // CamemBERT's task models nest the encoder under `roberta.` too.
        (Arch::MaskedLm, Family::Roberta) => "roberta.",
    };
    let mut hf = Vec::new();
    let mut ours = Vec::new();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in variables {
        let t = t.to_device(Device::Cpu).contiguous();
        if ["cls.", "lm_head."].iter().any(|p| name.starts_with(p)) {
            hf.push((name, t));
        } else if HF_PREFIXES.iter().any(|p| name.starts_with(p)) {
            hf.push((format!("{prefix}{name}"), t));
        } else {
            ours.push((name, t));
        }
    }
    let write = |list: &[(String, Tensor)], file: &str| -> Result<()> {
        let path = dir.join(file);
        Tensor::write_safetensors(list, &path).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
    };
    write(&hf, WEIGHTS)?;
    if !ours.is_empty() {
        write(&ours, HEADS)?;
    }
    let base = match family {
        Family::Bert => "Bert",
        Family::Roberta if config.model_type == "camembert" => "Camembert",
        Family::Roberta => "Roberta",
    };
    let class = match arch {
        Arch::Base => format!("{base}Model"),
        Arch::MaskedLm => format!("{base}ForMaskedLM"),
    };
    let mut json = serde_json::to_value(config)?;
    json["architectures"] = serde_json::json!([class]);
    std::fs::write(dir.join(CONFIG), serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}

/// The tensor names of a safetensors file, normalised like [`load_tensors`] does, read
/// from its header only.
pub fn tensor_names(path: &Path) -> Result<Vec<String>> {
    tensor_names_as(path, &path.display().to_string())
}

/// [`tensor_names`], with errors naming the file `source`.
pub fn tensor_names_as(path: &Path, source: &str) -> Result<Vec<String>> {
    use std::io::Read;
    let bad = |e: String| Error::input(format!("{source}: {e}"));
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(bad(format!("header of {len} bytes: not a safetensors file")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("not a safetensors header: {e}")))?;
    Ok(header.keys().filter(|k| *k != "__metadata__").map(|k| normalize(k)).collect())
}

/// Hugging Face's initialisation of the variables under `prefix` (all with ""): weights
/// N(0, 0.02), biases 0, LayerNorm 1 and 0, and a zero embedding for the padding token.
pub fn init_like_transformers(vs: &nn::VarStore, prefix: &str, pad_id: i64) {
    // In name order: the variables come in a per-process hash order, and each draw moves
    // the generator, so an unordered walk would give every process other weights.
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut v) in variables {
            if !name.starts_with(prefix) {
                continue;
            }
            if name.ends_with("LayerNorm.weight") || name.ends_with("layer_norm.weight") {
                let _ = v.fill_(1.0);
            } else if name.ends_with(".bias") {
                let _ = v.zero_();
            } else {
                let _ = v.normal_(0.0, 0.02);
            }
            if name == "embeddings.word_embeddings.weight" {
                let _ = v.get(pad_id).zero_();
            }
        }
    });
}
