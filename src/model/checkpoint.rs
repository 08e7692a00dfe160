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
    let mut loader = Loader::new(vs);
    for file in [WEIGHTS, HEADS] {
        let path = dir.file(file);
        if file == HEADS && !path.exists() {
            continue;
        }
        // One tensor in memory at a time: the peak is the model plus its largest tensor.
        read_each(&path, &dir.name(file), |name, tensor| loader.take(&name, tensor))?;
    }
    loader.finish(fresh, &dir.name(WEIGHTS))
}

/// [`load_weights`] for tensors already read.
pub fn load_tensors(vs: &nn::VarStore, tensors: Vec<(String, Tensor)>, fresh: &[&str], source: &str) -> Result<()> {
    let mut loader = Loader::new(vs);
    for (name, tensor) in tensors {
        loader.take(&name, tensor)?;
    }
    loader.finish(fresh, source)
}

/// Copies checkpoint tensors into the variables of a store, one at a time, and keeps account
/// of what matched.
struct Loader {
    variables: BTreeMap<String, Tensor>,
    unexpected: Vec<String>,
    wrong_shape: Vec<String>,
}

impl Loader {
    fn new(vs: &nn::VarStore) -> Loader {
        Loader { variables: vs.variables().into_iter().collect(), unexpected: Vec::new(), wrong_shape: Vec::new() }
    }

    fn take(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        let name = normalize(name);
        if BUFFERS.contains(&name.as_str()) {
            return Ok(());
        }
        match self.variables.remove(&name) {
            Some(mut var) if tensor.size() == var.size() => {
                tch::no_grad(|| var.copy_(&tensor.to_kind(var.kind()).to_device(var.device())));
            }
            Some(var) => {
                self.wrong_shape.push(format!("{name} (checkpoint {:?}, model {:?})", tensor.size(), var.size()))
            }
            None if HEAD_PREFIXES.iter().any(|p| name.starts_with(p)) => {}
            None => self.unexpected.push(name),
        }
        Ok(())
    }

    fn finish(self, fresh: &[&str], source: &str) -> Result<()> {
        let missing: Vec<String> =
            self.variables.into_keys().filter(|name| !fresh.iter().any(|p| name.starts_with(p))).collect();
        let (mut unexpected, wrong_shape) = (self.unexpected, self.wrong_shape);
        unexpected.sort();
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
}

/// The largest safetensors header read.
const MAX_HEADER: u64 = 100 << 20;

/// Reads the tensors of a safetensors file (`name` in messages) one by one, in file order,
/// handing each to `each`: the file is never held whole.
pub fn read_each(path: &Path, name: &str, mut each: impl FnMut(String, Tensor) -> Result<()>) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let bad = |msg: String| Error::input(format!("{name}: not a safetensors file: {msg}"));
    let file = std::fs::File::open(path).map_err(|e| Error::input(format!("{name}: {e}")))?;
    let file_len = file.metadata()?.len();
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).map_err(|e| bad(e.to_string()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        return Err(bad(format!("a header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let data_start = 8 + header_len;
    let mut entries: Vec<(String, tch::Kind, Vec<i64>, u64, u64)> = Vec::with_capacity(header.len());
    for (tensor, info) in header {
        if tensor == "__metadata__" {
            continue;
        }
        let kind = match info["dtype"].as_str() {
            Some("F64") => tch::Kind::Double,
            Some("F32") => tch::Kind::Float,
            Some("F16") => tch::Kind::Half,
            Some("BF16") => tch::Kind::BFloat16,
            Some("I64") => tch::Kind::Int64,
            Some("I32") => tch::Kind::Int,
            Some("I16") => tch::Kind::Int16,
            Some("I8") => tch::Kind::Int8,
            Some("U8") => tch::Kind::Uint8,
            Some("BOOL") => tch::Kind::Bool,
            other => return Err(bad(format!("tensor `{tensor}`: dtype {other:?}"))),
        };
        let shape: Option<Vec<i64>> =
            info["shape"].as_array().and_then(|d| d.iter().map(|x| x.as_i64().filter(|&x| x >= 0)).collect());
        let offsets: Option<[u64; 2]> = info["data_offsets"].as_array().and_then(|o| match o.as_slice() {
            [a, b] => Some([a.as_u64()?, b.as_u64()?]),
            _ => None,
        });
        let (Some(shape), Some([begin, end])) = (shape, offsets) else {
            return Err(bad(format!("tensor `{tensor}`: no shape or data_offsets")));
        };
        let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let bytes = numel.and_then(|n| n.checked_mul(kind.elt_size_in_bytes() as u64));
        if begin > end || data_start + end > file_len || bytes != Some(end - begin) {
            return Err(bad(format!(
                "tensor `{tensor}`: data_offsets [{begin}, {end}] do not fit its shape or the file"
            )));
        }
        entries.push((tensor, kind, shape, begin, end));
    }
    entries.sort_by_key(|e| e.3);
    for (tensor, kind, shape, begin, end) in entries {
        let mut bytes = vec![0u8; (end - begin) as usize];
        file.read_exact_at(&mut bytes, data_start + begin).map_err(|e| bad(e.to_string()))?;
        let t = Tensor::f_from_data_size(&bytes, &shape, kind).map_err(|e| bad(format!("tensor `{tensor}`: {e}")))?;
        drop(bytes);
        each(tensor, t)?;
    }
    Ok(())
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

/// transformers' `_init_weights` of the variables under `prefix` (all with ""): weights
/// N(0, `initializer_range`), biases 0, LayerNorm 1 and 0, and a zero row for the padding
/// index of the embeddings that have one (the word embeddings; RoBERTa's position
/// embeddings too).
pub fn init_like_transformers(vs: &nn::VarStore, prefix: &str, cfg: &EncoderConfig, family: Family) {
    let std = cfg.initializer_range();
    let pad_id = cfg.pad_id();
    let padded = |name: &str| {
        name == "embeddings.word_embeddings.weight"
            || (family == Family::Roberta && name == "embeddings.position_embeddings.weight")
    };
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
                let _ = v.normal_(0.0, std);
            }
            if padded(&name) {
                let _ = v.get(pad_id).zero_();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_read_one_by_one_equal_the_written_ones_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let written = [
            ("a.weight", Tensor::randn([3, 5], (tch::Kind::Float, Device::Cpu))),
            ("b.ids", Tensor::arange(7, (tch::Kind::Int64, Device::Cpu))),
            ("c.half", Tensor::randn([2, 2, 2], (tch::Kind::Float, Device::Cpu)).to_kind(tch::Kind::Half)),
            ("d.scalar", Tensor::from(2.5f64)),
        ];
        Tensor::write_safetensors(&written, &path).unwrap();
        let mut read = Vec::new();
        read_each(&path, "t.safetensors", |name, t| {
            read.push((name, t));
            Ok(())
        })
        .unwrap();
        assert_eq!(read.len(), written.len());
        for (name, t) in &written {
            let got = &read.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(got.kind(), t.kind(), "{name}");
            assert!(got.equal(t), "{name}");
        }
        // Truncated: the data no longer fits the header's offsets.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_each(&path, "t.safetensors", |_, _| Ok(())).unwrap_err().to_string();
        assert!(err.contains("t.safetensors: not a safetensors file") && err.contains("data_offsets"), "{err}");
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap();
        let err = read_each(&path, "t.safetensors", |_, _| Ok(())).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file: a header of"), "{err}");
    }
}
