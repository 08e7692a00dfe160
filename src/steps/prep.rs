//! `taft prep`: JSON-lines conversations (or the synthetic generator) → validated
//! `conversations.parquet` and `stats.json`, streamed in bounded memory.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::Step;
use crate::data::ingest::{parse_record, LineReader};
use crate::data::parquet::{ConversationWriter, IdKind, CONVERSATIONS};
use crate::data::stats::Stats;
use crate::data::synthetic::SyntheticConfig;
use crate::data::{ConvId, Conversation};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::commit::{HashingWriter, Output};

/// The statistics file prep writes.
pub const STATS: &str = "stats.json";
/// Where `on_error: skip` sets bad records aside.
pub const REJECTS: &str = "rejects.jsonl";
/// Problems quoted in a failure message (all are counted).
const QUOTED_PROBLEMS: usize = 20;
/// Bytes of an over-long line kept in `rejects.jsonl`.
const QUOTED_BYTES: usize = 1024;

/// What to do with an invalid record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Report every problem and commit nothing.
    #[default]
    Fail,
    /// Set bad records aside in `rejects.jsonl` with their reasons, and count them.
    Skip,
}

/// Config of `taft prep`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepConfig {
    /// JSON-lines files or URLs (`.gz` is decompressed).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Output prefix URL.
    #[serde(default)]
    pub out: Option<String>,
    /// Generate the synthetic dataset instead of reading inputs.
    #[serde(default)]
    pub synthetic: Option<SyntheticConfig>,
    #[serde(default)]
    pub on_error: OnError,
    /// The longest line accepted, in bytes: a longer one is a bad record (named with its
    /// line number), read through without being held in memory.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: u64,
}

/// 16 MiB.
fn default_max_line_bytes() -> u64 {
    16 << 20
}

step_io!(PrepConfig);

pub struct Prep;

impl Step for Prep {
    const NAME: &'static str = "prep";
    const ABOUT: &'static str = "Validate JSON-lines conversations (or generate synthetic ones) into Parquet";
    type Config = PrepConfig;

    fn validate(config: &PrepConfig) -> Result<()> {
        if !(64..=1 << 32).contains(&config.max_line_bytes) {
            return Err(Error::config("max_line_bytes must be between 64 and 4294967296"));
        }
        match (&config.synthetic, config.inputs.is_empty()) {
            (None, true) => {
                Err(Error::config("prep has no input: give `--input URL` (JSON lines) or a `synthetic:` section"))
            }
            (Some(_), false) => Err(Error::config("prep takes either `inputs` or `synthetic`, not both")),
            (Some(synthetic), true) => synthetic.validate(),
            (None, false) => Ok(()),
        }
    }

    async fn run(config: &PrepConfig, out: &mut Output) -> Result<serde_json::Value> {
        let mut sink = Sink::new(config.on_error);
        let progress = Progress::new("prep", "conversations");
        if let Some(synthetic) = &config.synthetic {
            for conversation in synthetic.generate() {
                sink.accept(out, conversation, "synthetic", 0).await?;
                progress.inc(1);
                // CPU-bound: let the runtime's other tasks (the lease renewal) run.
                tokio::task::consume_budget().await;
            }
        }
        let mut line = Vec::new();
        let max = usize::try_from(config.max_line_bytes).unwrap_or(usize::MAX);
        for url in &config.inputs {
            let mut reader = LineReader::open(url).await?;
            while let Some((number, length)) = reader.next_line(&mut line, max).await? {
                tokio::task::consume_budget().await;
                if length > config.max_line_bytes {
                    let problem = format!(
                        "the line is {length} bytes long, more than max_line_bytes ({}): not read as a record",
                        config.max_line_bytes
                    );
                    line.truncate(QUOTED_BYTES);
                    sink.reject(out, url, number, &line, vec![problem]).await?;
                    progress.inc(1);
                    continue;
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match parse_record(&line) {
                    Ok(conversation) => sink.accept(out, conversation, url, number).await?,
                    Err(problems) => sink.reject(out, url, number, &line, problems).await?,
                }
                progress.inc(1);
            }
        }
        progress.finish();
        sink.finish(out, config).await
    }
}

/// Where records go: the Parquet writer, the rejects file, the statistics.
struct Sink {
    on_error: OnError,
    writer: Option<ConversationWriter<HashingWriter<object_store::buffered::BufWriter>>>,
    rejects: Option<HashingWriter<object_store::buffered::BufWriter>>,
    /// First place each id was seen, to report duplicates, by a 128-bit hash of the id
    /// (never the id itself: about 40 bytes per conversation, however long its id).
    seen: HashMap<u128, (u32, u64)>,
    sources: Vec<String>,
    first_id: Option<(IdKind, u32, u64)>,
    stats: Stats,
    problems: Vec<String>,
    problem_count: u64,
}

impl Sink {
    fn new(on_error: OnError) -> Self {
        Sink {
            on_error,
            writer: None,
            rejects: None,
            seen: HashMap::new(),
            sources: Vec::new(),
            first_id: None,
            stats: Stats::default(),
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    fn source_index(&mut self, source: &str) -> u32 {
        match self.sources.iter().position(|s| s == source) {
            Some(i) => i as u32,
            None => {
                self.sources.push(source.to_string());
                (self.sources.len() - 1) as u32
            }
        }
    }

    fn place(&self, (source, line): (u32, u64)) -> String {
        format!("{}:{line}", self.sources[source as usize])
    }

    async fn accept(&mut self, out: &mut Output, c: Conversation, source: &str, line: u64) -> Result<()> {
        let src = self.source_index(source);
        let kind = IdKind::of(&c.id);
        let first = *self.first_id.get_or_insert((kind, src, line));
        if first.0 != kind {
            let (want, found) = match first.0 {
                IdKind::Int => ("an integer", "a string"),
                IdKind::Str => ("a string", "an integer"),
            };
            let msg = format!(
                "field `id`: expected {want} like the first record's id ({}), found {found}",
                self.place((first.1, first.2))
            );
            let raw = serde_json::to_vec(&crate::data::ingest::to_record(&c))?;
            return self.reject(out, source, line, &raw, vec![msg]).await;
        }
        let key = id_key(&c.id);
        if let Some(&earlier) = self.seen.get(&key) {
            let msg = format!("field `id`: duplicate id {} (first at {})", c.id, self.place(earlier));
            let raw = serde_json::to_vec(&crate::data::ingest::to_record(&c))?;
            return self.reject(out, source, line, &raw, vec![msg]).await;
        }
        self.seen.insert(key, (src, line));
        if !self.problems.is_empty() {
            // The step will fail: stop writing, keep checking.
            return Ok(());
        }
        self.stats.add(&c);
        if self.writer.is_none() {
            let sink = out.create(CONVERSATIONS).await?;
            self.writer = Some(ConversationWriter::new(sink, kind, &out.store().url_of(CONVERSATIONS))?);
        }
        self.writer.as_mut().expect("created above").push(c).await
    }

    async fn reject(
        &mut self,
        out: &mut Output,
        source: &str,
        line: u64,
        raw: &[u8],
        problems: Vec<String>,
    ) -> Result<()> {
        self.problem_count += 1;
        match self.on_error {
            OnError::Fail => {
                for p in problems {
                    if self.problems.len() < QUOTED_PROBLEMS {
                        self.problems.push(format!("{source}:{line}: {p}"));
                    }
                }
                // Nothing will be committed: drop the partial output now.
                self.writer = None;
            }
            OnError::Skip => {
                tracing::warn!(source, line, problems = ?problems, "record rejected");
                self.stats.rejected += 1;
                if self.rejects.is_none() {
                    self.rejects = Some(out.create(super::prep::REJECTS).await?);
                }
                let record = serde_json::json!({
                    "source": source,
                    "line": line,
                    "errors": problems,
                    "record": String::from_utf8_lossy(raw),
                });
                let mut bytes = serde_json::to_vec(&record)?;
                bytes.push(b'\n');
                self.rejects.as_mut().expect("created above").write_all(&bytes).await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self, out: &mut Output, config: &PrepConfig) -> Result<serde_json::Value> {
        if self.on_error == OnError::Fail && self.problem_count > 0 {
            let more = self.problem_count.saturating_sub(self.problems.len() as u64);
            let mut msg = format!(
                "{} invalid record(s); nothing was committed (`on_error: skip` sets them aside in {REJECTS})",
                self.problem_count
            );
            for p in &self.problems {
                msg.push_str("\n  ");
                msg.push_str(p);
            }
            if more > 0 {
                msg.push_str(&format!("\n  … and {more} more"));
            }
            return Err(Error::input(msg));
        }
        let Some(writer) = self.writer.take() else {
            return Err(Error::input(format!(
                "no valid conversations in the input ({} rejected)",
                self.stats.rejected
            )));
        };
        let (rows, sink) = writer.finish().await?;
        out.record(sink.entry());
        if let Some(mut rejects) = self.rejects.take() {
            rejects.shutdown().await?;
            out.record(rejects.entry());
        }
        let mut stats = self.stats.to_json();
        stats["sources"] = match &config.synthetic {
            Some(s) => serde_json::json!({"synthetic": s}),
            None => serde_json::json!(config.inputs),
        };
        out.put(STATS, Bytes::from(serde_json::to_vec_pretty(&stats)?)).await?;
        tracing::info!(conversations = rows, rejected = self.stats.rejected, "prepared");
        Ok(serde_json::json!({
            "conversations": rows,
            "rejected": self.stats.rejected,
            "by_split": stats["conversations"],
        }))
    }
}

/// A 128-bit hash of a conversation id (the key of duplicate detection).
fn id_key(id: &ConvId) -> u128 {
    use sha2::{Digest, Sha256};
    let digest = match id {
        ConvId::Int(i) => Sha256::digest(format!("i:{i}").as_bytes()),
        ConvId::Str(s) => Sha256::digest(format!("s:{s}").as_bytes()),
    };
    u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"))
}
