//! `taft encode`: the frozen encoder's states as an artifact. Methods taft and noadapt never
//! train the encoder, so its states for a conversation are the same for every task, seed and
//! fold: this step runs a `role` output's encoder once (inference mode) over the labeled
//! conversations of a prep output, and `finetune` reads the states instead of running the
//! encoder itself (any number of encode outputs among its inputs, one per shard).
//!
//! `--shard i/n` keeps the conversations whose id hashes to shard i of n, so n runs fan out
//! over as many machines. An output holds:
//!
//! - `states.bin`: per conversation, its states as little-endian fp16 (or fp32) rows of
//!   `hidden` values, one row per token kept: the first token only for a model without an
//!   adaptive layer (noadapt's pooler reads nothing else), else every token (and, for an
//!   unmasked adaptive layer, the padding up to `max_length`).
//! - `index.bin`: one 32-byte record per conversation: the [`key`] of its token ids (16
//!   bytes), the byte offset of its states in `states.bin` and its token count (8 bytes each),
//!   all little-endian.
//! - the manifest's summary `states`: what the states were made from and how
//!   ([`StatesInfo`]), which finetune checks against its own inputs and settings.

// A build without training only reads and checks encode configs.
#![cfg_attr(not(feature = "train"), allow(dead_code))]

use serde::{Deserialize, Serialize};

use super::{io, Step};
use crate::data::shard::Shard;
use crate::error::{Error, Result};
use crate::store::commit::Output;
use crate::store::manifest::{input_fingerprint, Committed, Manifest};
use crate::store::Store;
use crate::text::{HeadTail, Truncation, TruncationSide};

#[cfg(feature = "train")]
mod build;

/// The states file of an encode output.
pub const STATES: &str = "states.bin";
/// The index file of an encode output.
pub const INDEX: &str = "index.bin";

/// finetune's defaults for the cut; fp16 states; batches of 32.
const DEFAULTS: &str = "
max_length: 512
truncation: head
fp16: true
batch_size: 32
device: auto
";

/// Config of `taft encode`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    /// A prep output and a model directory (a `role` output), in any order.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// Tokens per conversation, special tokens included (finetune's `max_length`).
    pub max_length: usize,
    /// What a longer conversation keeps (finetune's `truncation`).
    #[serde(default)]
    pub truncation: TruncationSide,
    /// `head_tail`'s token counts (finetune's `head_tail`).
    #[serde(default)]
    pub head_tail: Option<HeadTail>,
    /// Keep the states as fp16 (else fp32).
    pub fp16: bool,
    /// Conversations per encoder pass.
    pub batch_size: usize,
    /// auto | cpu | cuda | cuda:N
    pub device: String,
    /// CPU threads of the tensor library (default: `TAFT_THREADS`, else the CPUs this process may use).
    #[serde(default)]
    pub threads: Option<usize>,
    /// `i/n`: only shard i (0-based) of n.
    #[serde(default)]
    pub shard: Option<String>,
}

step_io!(EncodeConfig);

impl EncodeConfig {
    pub fn truncation(&self) -> Truncation {
        Truncation { truncation: self.truncation, head_tail: self.head_tail }
    }
}

/// A step output or model directory as the states record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub url: String,
    pub fingerprint: String,
    #[serde(default)]
    pub content: Option<String>,
}

impl Source {
    pub async fn of(url: &str) -> Result<Source> {
        let entry = input_fingerprint(url).await?;
        Ok(Source { url: url.to_string(), fingerprint: entry.fingerprint, content: entry.content })
    }

    /// The same output (by fingerprint and content, wherever it is).
    fn same(&self, other: &Source) -> bool {
        self.fingerprint == other.fingerprint && self.content == other.content
    }
}

/// What an encode output's states were made from and how (its summary's `states`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatesInfo {
    pub model: Source,
    pub data: Source,
    pub max_length: usize,
    pub truncation: TruncationSide,
    pub head_tail: Option<HeadTail>,
    /// Only the first token's state per conversation (a model without an adaptive layer).
    pub first_token_only: bool,
    /// Every conversation's states padded to this many tokens (an unmasked adaptive layer).
    pub width: Option<usize>,
    pub hidden: i64,
    pub fp16: bool,
    /// `i/n`.
    pub shard: String,
    pub conversations: usize,
}

/// One record of `index.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRecord {
    pub key: u128,
    pub offset: u64,
    pub tokens: u64,
}

const RECORD: usize = 32;

impl IndexRecord {
    pub fn write(records: &[IndexRecord]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(records.len() * RECORD);
        for r in records {
            bytes.extend(r.key.to_le_bytes());
            bytes.extend(r.offset.to_le_bytes());
            bytes.extend(r.tokens.to_le_bytes());
        }
        bytes
    }

    /// Parses `index.bin` (`name` for errors).
    pub fn read(bytes: &[u8], name: &str) -> Result<Vec<IndexRecord>> {
        if bytes.len() % RECORD != 0 {
            return Err(Error::input(format!(
                "{name}: {} bytes is not a whole number of {RECORD}-byte records",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(RECORD)
            .map(|r| IndexRecord {
                key: u128::from_le_bytes(r[..16].try_into().expect("16 bytes")),
                offset: u64::from_le_bytes(r[16..24].try_into().expect("8 bytes")),
                tokens: u64::from_le_bytes(r[24..].try_into().expect("8 bytes")),
            })
            .collect())
    }
}

/// The key of a conversation's token ids: the first 16 bytes of the sha256 of the ids as
/// little-endian i64.
pub fn key(ids: &[i64]) -> u128 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.to_le_bytes());
    }
    u128::from_le_bytes(hasher.finalize()[..16].try_into().expect("16 bytes"))
}

pub struct Encode;

impl Step for Encode {
    const NAME: &'static str = "encode";
    const ABOUT: &'static str = "Run a role output's frozen encoder once over the labeled conversations of a prep output and keep its states (fp16) for the taft and noadapt finetune steps, which take this output as an extra input; inputs: the prep output and the model, in any order; `--shard i/n` for fan-out";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = EncodeConfig;

    fn validate(config: &EncodeConfig) -> Result<()> {
        io::DataAndModel::check_count(Self::NAME, &config.inputs)?;
        if config.max_length < 3 {
            return Err(Error::config("max_length must be at least 3 (the special tokens and one token)"));
        }
        config.truncation().check(config.max_length, 2).map_err(Error::config)?;
        if !(1..=1 << 16).contains(&config.batch_size) {
            return Err(Error::config("batch_size must be in 1..=65536"));
        }
        if config.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
            return Err(Error::config("threads must be in 1..=1024"));
        }
        if let Some(s) = &config.shard {
            Shard::parse(s).map_err(Error::config)?;
        }
        crate::model::DeviceName::parse(&config.device).map(drop)
    }

    async fn run(config: &EncodeConfig, out: &mut Output) -> Result<serde_json::Value> {
        #[cfg(feature = "train")]
        {
            build::run(config, out).await
        }
        #[cfg(not(feature = "train"))]
        {
            let _ = (config, out);
            Err(super::without_training(Self::NAME))
        }
    }
}

/// Splits a step's inputs into encode outputs and the others (by the step that made them).
pub async fn split_inputs(inputs: &[String]) -> Result<(Vec<String>, Vec<Committed>)> {
    let (mut others, mut encoded) = (Vec::new(), Vec::new());
    for url in inputs {
        let store = Store::open(url)?;
        match Manifest::read(&store).await? {
            Some(manifest) if manifest.step == Encode::NAME => encoded.push(Committed { store, manifest }),
            _ => others.push(url.clone()),
        }
    }
    Ok((others, encoded))
}

/// What a step reading states expects of them.
pub struct Expected<'a> {
    pub data: &'a str,
    pub model: &'a str,
    pub max_length: usize,
    pub truncation: Truncation,
    /// Whether every token's state is needed (an adaptive layer reads them all).
    pub all_tokens: bool,
}

/// The states of complete shards, checked against what the reader expects.
pub struct Opened {
    pub info: StatesInfo,
    /// Per shard: the local states file and its index.
    pub shards: Vec<(std::path::PathBuf, Vec<IndexRecord>)>,
    /// Holds downloaded states files (remote stores) for as long as they are read.
    pub downloads: Option<tempfile::TempDir>,
}

/// Checks `encoded` (one output per shard) against `expected` and gives each shard's states
/// as a local file (downloaded, for a remote store) with its index.
pub async fn open(encoded: &[Committed], expected: &Expected<'_>) -> Result<Opened> {
    let infos: Vec<StatesInfo> = encoded
        .iter()
        .map(|c| {
            serde_json::from_value(c.manifest.summary["states"].clone()).map_err(|e| {
                Error::input(format!("{}: the manifest's summary has no `states` of an encode output: {e}", c.url()))
            })
        })
        .collect::<Result<_>>()?;
    let first = &infos[0];
    let (model, data) = (Source::of(expected.model).await?, Source::of(expected.data).await?);
    let urls = |what: &str| format!("{what} ({})", encoded.iter().map(Committed::url).collect::<Vec<_>>().join(", "));
    if !first.model.same(&model) {
        return Err(Error::config(format!(
            "{}: the states are of the model {}, not of this step's model {}",
            encoded[0].url(),
            first.model.url,
            model.url
        )));
    }
    if !first.data.same(&data) {
        return Err(Error::config(format!(
            "{}: the states are of the prep output {}, not of this step's data {}",
            encoded[0].url(),
            first.data.url,
            data.url
        )));
    }
    let cut = Truncation { truncation: first.truncation, head_tail: first.head_tail };
    if first.max_length != expected.max_length || cut != expected.truncation {
        return Err(Error::config(format!(
            "{}: the states are of conversations cut to max_length {} ({}); this step cuts them to {} ({})",
            encoded[0].url(),
            first.max_length,
            describe(cut),
            expected.max_length,
            describe(expected.truncation)
        )));
    }
    if expected.all_tokens && first.first_token_only {
        return Err(Error::config(format!(
            "{}: the states hold the first token only (a model without an adaptive layer); the adaptive layer reads every token",
            encoded[0].url()
        )));
    }
    let mut shards: Vec<Shard> = Vec::new();
    for (info, c) in infos.iter().zip(encoded) {
        let same = StatesInfo { shard: String::new(), conversations: 0, ..info.clone() };
        if same != (StatesInfo { shard: String::new(), conversations: 0, ..first.clone() }) {
            return Err(Error::config(format!(
                "{}: made otherwise than {} (model, data or settings)",
                c.url(),
                encoded[0].url()
            )));
        }
        shards.push(Shard::parse(&info.shard).map_err(|e| Error::input(format!("{}: {e}", c.url())))?);
    }
    let count = shards[0].count;
    let mut indexes: Vec<u32> = shards.iter().map(|s| s.index).collect();
    indexes.sort_unstable();
    if shards.iter().any(|s| s.count != count) || indexes != (0..count).collect::<Vec<_>>() {
        let found: Vec<String> = shards.iter().map(Shard::to_string).collect();
        return Err(Error::config(format!(
            "{}: the shards must be 0/n … n-1/n of one n, each once; found {}",
            urls("the encode inputs"),
            found.join(", ")
        )));
    }
    let mut downloads = None;
    let mut opened = Vec::with_capacity(encoded.len());
    for c in encoded {
        let index = IndexRecord::read(&c.read(INDEX).await?, &c.store.url_of(INDEX))?;
        let entry = c.entry(STATES)?;
        let path = match c.store.local_path(STATES) {
            Some(path) => path,
            None => {
                let dir = match &downloads {
                    Some(dir) => dir,
                    None => downloads.insert(tempfile::tempdir()?),
                };
                let path = dir.path().join(format!("{}-{STATES}", opened.len()));
                c.download(STATES, &path).await?;
                path
            }
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
        c.verify(STATES, size, &entry.sha256)?;
        opened.push((path, index));
    }
    Ok(Opened { info: first.clone(), shards: opened, downloads })
}

/// A truncation rule as the config writes it.
fn describe(cut: Truncation) -> String {
    let side =
        serde_json::to_value(cut.truncation).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    match cut.head_tail {
        Some(ht) => format!("truncation {side}, head_tail {{head: {}, tail: {}}}", ht.head, ht.tail),
        None => format!("truncation {side}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_records_round_trip_and_a_torn_index_is_named() {
        let records = vec![
            IndexRecord { key: key(&[0, 5, 2]), offset: 0, tokens: 3 },
            IndexRecord { key: u128::MAX, offset: 1 << 40, tokens: 512 },
        ];
        let bytes = IndexRecord::write(&records);
        assert_eq!(bytes.len(), 64);
        assert_eq!(IndexRecord::read(&bytes, "index.bin").unwrap(), records);
        let err = IndexRecord::read(&bytes[..40], "s3://b/enc/index.bin").unwrap_err().to_string();
        assert!(err.contains("s3://b/enc/index.bin") && err.contains("40 bytes"), "{err}");
        assert_ne!(key(&[0, 5, 2]), key(&[0, 5, 3]));
        assert_ne!(key(&[1]), key(&[1, 0]), "the length counts");
    }
}
