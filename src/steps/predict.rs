//! `taft predict`: an export output and conversations (a prep output, or JSON lines with
//! `texts` and optionally `id` and `authors`) → `predictions.parquet`: per item its id (and
//! utterance index for a speaker-role model), then per task the predicted label, its class
//! name and the class probabilities. Runs on ONNX Runtime, streaming: conversations are read,
//! scored and written a chunk at a time. `shard: i/n` (or `--shard i/n`) keeps the
//! conversations whose id hashes to shard i of n, so n runs fan out under a scheduler, each
//! with its own output, together covering the input once.

use serde::{Deserialize, Serialize};

use super::Step;
use crate::data::{ConvId, Split};
use crate::error::{Error, Result};
use crate::store::commit::Output;

const DEFAULTS: &str = "
batch_size: 32
model: fp32
";

/// Items scored per chunk: a multiple of the batch size (memory stays bounded by it).
const CHUNK_BATCHES: usize = 64;

/// Config of `taft predict`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictConfig {
    /// An export output and the conversations (a prep output or a JSON-lines file), in any order.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// Items per ONNX Runtime call.
    pub batch_size: usize,
    /// `fp32` (model.onnx) or `int8` (model.int8.onnx).
    pub model: crate::onnx::Variant,
    /// ONNX Runtime's threads (default: one per core).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Sessions of the model running at once, `threads` shared among them (default: chosen
    /// at load as `taft serve` chooses: one per thread for a model too small to split over
    /// threads, else one).
    #[serde(default)]
    pub instances: Option<usize>,
    /// Padding tokens an item may add to a run it joins (default: measured at load as
    /// `taft serve` measures it); a number fixes it, the same runs on every machine.
    #[serde(default)]
    pub join_tokens: Option<usize>,
    /// `i/n`: only shard i (0-based) of n.
    #[serde(default)]
    pub shard: Option<String>,
    /// Of a prep output, only this split (default: every split).
    #[serde(default)]
    pub split: Option<Split>,
}

step_io!(PredictConfig);

pub struct Predict;

impl Step for Predict {
    const NAME: &'static str = "predict";
    const ABOUT: &'static str = "Predict with an export output on ONNX Runtime: conversations (a prep output or JSON lines) → predictions.parquet (per task: label, class name, probabilities); `--shard i/n` for fan-out";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = PredictConfig;

    fn validate(config: &PredictConfig) -> Result<()> {
        if config.inputs.len() != 2 {
            return Err(Error::config(format!(
                "predict takes two inputs (an export output and a prep output or JSON-lines file), got {}",
                config.inputs.len()
            )));
        }
        if !(1..=4096).contains(&config.batch_size) {
            return Err(Error::config(format!("batch_size {} must be in 1..=4096", config.batch_size)));
        }
        if config.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
            return Err(Error::config("threads must be in 1..=1024"));
        }
        if config.instances.is_some_and(|k| !(1..=1024).contains(&k)) {
            return Err(Error::config("instances must be in 1..=1024"));
        }
        if config.join_tokens.is_some_and(|t| t > 1 << 20) {
            return Err(Error::config("join_tokens must be in 0..=1048576"));
        }
        #[cfg(feature = "serve")]
        if let Some(s) = &config.shard {
            crate::infer::items::Shard::parse(s).map_err(Error::config)?;
        }
        Ok(())
    }

    async fn run(config: &PredictConfig, out: &mut Output) -> Result<serde_json::Value> {
        #[cfg(feature = "serve")]
        {
            stream::run(config, out).await
        }
        #[cfg(not(feature = "serve"))]
        {
            let _ = (config, out);
            Err(Error::config("`predict` needs ONNX Runtime: this taft was built without the `serve` feature"))
        }
    }
}

/// One record of a JSON-lines input to predict.
#[derive(Debug, Deserialize)]
struct Record {
    #[serde(default)]
    id: Option<serde_json::Value>,
    texts: Vec<String>,
    #[serde(default)]
    authors: Option<Vec<u8>>,
}

/// A conversation to predict: its id, texts and (optionally) authors.
type Line = (ConvId, Vec<String>, Option<Vec<u8>>);

/// Parses line `number` of the file `file`; a line without an id gets the string id
/// `file:number` (never a number, which could be another line's id). The error names the
/// field.
fn parse_line(line: &[u8], file: &str, number: u64) -> std::result::Result<Line, String> {
    let de = &mut serde_json::Deserializer::from_slice(line);
    let r: Record = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            format!("not a JSON object: {inner}")
        } else {
            format!("field `{path}`: {inner}")
        }
    })?;
    let id = match r.id {
        None => ConvId::Str(format!("{file}:{number}")),
        Some(serde_json::Value::Number(n)) if n.is_i64() => ConvId::Int(n.as_i64().expect("checked")),
        Some(serde_json::Value::String(s)) if !s.is_empty() => ConvId::Str(s),
        Some(other) => return Err(format!("field `id`: expected an integer or a non-empty string, got {other}")),
    };
    if r.texts.is_empty() {
        return Err("field `texts`: empty (a conversation needs at least one text)".into());
    }
    if let Some(a) = &r.authors {
        if a.len() != r.texts.len() {
            return Err(format!("field `authors`: {} authors for {} texts", a.len(), r.texts.len()));
        }
    }
    Ok((id, r.texts, r.authors))
}

#[cfg(feature = "serve")]
mod stream {
    use std::sync::Arc;

    use parquet::arrow::AsyncArrowWriter;

    use super::{parse_line, PredictConfig, CHUNK_BATCHES};
    use crate::data::ingest::LineReader;
    use crate::data::parquet::{RowGroups, CONVERSATIONS};
    use crate::data::ConvId;
    use crate::error::{Error, Result};
    use crate::eval::predictions::{self, TaskPredictions};
    use crate::infer::items::{self, Item, Shard};
    use crate::infer::Exported;
    use crate::store::commit::{HashingWriter, Output};
    use crate::store::manifest::{Committed, Manifest};
    use crate::store::Store;

    /// Longest JSON line read (bytes).
    const MAX_LINE: usize = 64 << 20;

    pub async fn run(config: &PredictConfig, out: &mut Output) -> Result<serde_json::Value> {
        let (model_url, data_url, prep) = sort_inputs(&config.inputs).await?;
        if config.split.is_some() && !prep {
            return Err(Error::config(format!("split: {data_url} is a JSON-lines file, which has no splits")));
        }
        let shard = config.shard.as_deref().map(Shard::parse).transpose().map_err(Error::config)?;
        let loading = std::time::Instant::now();
        let mut model = Exported::open(&model_url, config.model, config.threads).await?;
        let (instances, join) = (config.instances, config.join_tokens);
        let model = tokio::task::spawn_blocking(move || {
            model.calibrate(instances, join, crate::infer::PREDICT_CALIBRATION_SECONDS).map(|_| model)
        })
        .await
        .map_err(|e| Error::Other(format!("model loading: {e}")))??;
        let load_seconds = loading.elapsed().as_secs_f64();
        tracing::info!(model = %model.url, instances = model.instances, threads = model.threads, join_tokens = model.join_tokens, seconds = load_seconds, "model loaded");
        let model = Arc::new(model);
        let started = std::time::Instant::now();
        let mut sink = Sink { writer: None, rows: 0, conversations: 0, skipped: 0 };
        let mut chunk: Vec<Item> = Vec::new();
        let chunk_items = config.batch_size * CHUNK_BATCHES;
        // Whether the ids are integers: one kind in a file (the `id` column's type), known
        // even when no conversation falls in this shard or split.
        let mut id_kind: Option<bool> = None;
        let kind_of = |id_kind: &mut Option<bool>, id: &ConvId, at: &str| {
            let is_int = matches!(id, ConvId::Int(_));
            match *id_kind {
                None => *id_kind = Some(is_int),
                Some(k) if k != is_int => {
                    return Err(Error::input(format!(
                        "{at}: field `id`: {} is {} but the ids before it are {} (a line without `id` has the string id FILE:LINE): give every line an id of one kind, or none",
                        id,
                        if is_int { "an integer" } else { "a string" },
                        if k { "integers" } else { "strings" }
                    )))
                }
                Some(_) => {}
            }
            Ok(())
        };
        let accept = |id: &ConvId, texts: &[String], authors: Option<&[u8]>, chunk: &mut Vec<Item>, sink: &mut Sink| {
            if shard.is_some_and(|s| !s.holds(id)) {
                sink.skipped += 1;
                return;
            }
            sink.conversations += 1;
            chunk.extend(items::of_conversation(id, texts, authors, model.utterance_level));
        };
        if prep {
            let committed = Committed::open(&data_url).await?;
            if !committed.has(CONVERSATIONS) {
                return Err(Error::input(format!("{data_url}: no {CONVERSATIONS}: not a prep output")));
            }
            let url = committed.store.url_of(CONVERSATIONS);
            let mut groups = RowGroups::open(&committed, CONVERSATIONS).await?;
            while let Some(group) = groups.next().await? {
                for c in group {
                    kind_of(&mut id_kind, &c.id, &url)?;
                    if config.split.is_some_and(|s| s != c.split) {
                        continue;
                    }
                    let texts: Vec<String> = c.utterances.iter().map(|u| u.text.clone()).collect();
                    let authors: Vec<u8> = c.utterances.iter().map(|u| u.speaker).collect();
                    accept(&c.id, &texts, Some(&authors), &mut chunk, &mut sink);
                }
                if chunk.len() >= chunk_items {
                    let string_ids = id_kind != Some(true);
                    sink.score(out, &model, std::mem::take(&mut chunk), string_ids, config.batch_size).await?;
                }
            }
        } else {
            let mut lines = LineReader::open(&data_url).await?;
            let file = data_url.rsplit('/').next().unwrap_or(&data_url).to_string();
            let mut buf = Vec::new();
            while let Some((number, length)) = lines.next_line(&mut buf, MAX_LINE).await? {
                let at = format!("{data_url}:{number}");
                if length as usize > MAX_LINE {
                    return Err(Error::input(format!("{at}: line of {length} bytes exceeds {MAX_LINE}")));
                }
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let (id, texts, authors) =
                    parse_line(&buf, &file, number).map_err(|e| Error::input(format!("{at}: {e}")))?;
                kind_of(&mut id_kind, &id, &at)?;
                accept(&id, &texts, authors.as_deref(), &mut chunk, &mut sink);
                if chunk.len() >= chunk_items {
                    let string_ids = id_kind != Some(true);
                    sink.score(out, &model, std::mem::take(&mut chunk), string_ids, config.batch_size).await?;
                }
            }
        }
        // An empty shard writes the schema a full one has.
        if !chunk.is_empty() || sink.writer.is_none() {
            sink.score(out, &model, chunk, id_kind != Some(true), config.batch_size).await?;
        }
        let writer = sink.writer.take().expect("created by score");
        let seconds = started.elapsed().as_secs_f64();
        let file = writer.close_into().await?;
        out.record(file.entry());
        tracing::info!(items = sink.rows, conversations = sink.conversations, "predicted");
        Ok(serde_json::json!({
            "model": model_url,
            "variant": config.model,
            "data": data_url,
            "shard": shard.map(|s| s.to_string()),
            "conversations": sink.conversations,
            "skipped_other_shards": sink.skipped,
            "items": sink.rows,
            "items_per_second": sink.rows as f64 / seconds.max(1e-9),
            "instances": model.instances,
            "threads": model.threads * model.instances,
            "join_tokens": model.join_tokens,
            "model_load_seconds": load_seconds,
        }))
    }

    /// The export output, the data, and whether the data is a prep output.
    async fn sort_inputs(inputs: &[String]) -> Result<(String, String, bool)> {
        let (mut models, mut data) = (Vec::new(), Vec::new());
        for url in inputs {
            let manifest = match Store::open(url) {
                Ok(store) => Manifest::read(&store).await?,
                Err(_) => None,
            };
            match manifest.map(|m| m.step) {
                Some(step) if step == "export" => models.push(url.clone()),
                Some(step) if step == "prep" => data.push((url.clone(), true)),
                Some(step) => {
                    return Err(Error::input(format!(
                    "{url}: made by `taft {step}`: predict takes an export output and a prep output or JSON-lines file"
                )))
                }
                None => data.push((url.clone(), false)),
            }
        }
        match (models.as_slice(), data.as_slice()) {
            ([m], [(d, prep)]) => Ok((m.clone(), d.clone(), *prep)),
            _ => Err(Error::input(format!(
                "predict takes an export output and conversations (a prep output or JSON-lines file); got {} export output(s) among: {}",
                models.len(),
                inputs.join(", ")
            ))),
        }
    }

    type FileWriter = HashingWriter<object_store::buffered::BufWriter>;

    struct Sink {
        writer: Option<PredictionWriter>,
        rows: u64,
        conversations: u64,
        skipped: u64,
    }

    struct PredictionWriter(AsyncArrowWriter<FileWriter>);

    impl PredictionWriter {
        async fn close_into(self) -> Result<FileWriter> {
            let mut w = self.0;
            w.finish().await.map_err(perr)?;
            Ok(w.into_inner())
        }
    }

    fn perr(source: parquet::errors::ParquetError) -> Error {
        Error::Parquet { url: "predictions.parquet".into(), source }
    }

    impl Sink {
        async fn score(
            &mut self,
            out: &mut Output,
            model: &Arc<Exported>,
            chunk: Vec<Item>,
            string_ids: bool,
            batch_size: usize,
        ) -> Result<()> {
            let m = Arc::clone(model);
            let texts: Vec<Vec<String>> = chunk.iter().map(|i| i.text.clone()).collect();
            let probs = tokio::task::spawn_blocking(move || m.probabilities(&texts, batch_size))
                .await
                .map_err(|e| Error::Other(format!("predict: {e}")))??;
            let ids: Vec<ConvId> = chunk.iter().map(|i| i.id.clone()).collect();
            let utterances: Option<Vec<i32>> =
                model.utterance_level.then(|| chunk.iter().map(|i| i.utterance.unwrap_or(0)).collect());
            let tasks: Vec<TaskPredictions> = model
                .heads
                .iter()
                .zip(&probs)
                .map(|((head, classes), p)| TaskPredictions { head, classes, labels: None, probs: p })
                .collect();
            let batch = predictions::batch(&ids, string_ids, utterances.as_deref(), &tasks)?;
            if self.writer.is_none() {
                let file = out.create("predictions.parquet").await?;
                let w =
                    AsyncArrowWriter::try_new(file, batch.schema(), Some(predictions::properties())).map_err(perr)?;
                self.writer = Some(PredictionWriter(w));
            }
            let w = self.writer.as_mut().expect("created above");
            w.0.write(&batch).await.map_err(perr)?;
            self.rows += chunk.len() as u64;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_name_the_field() {
        let parse_line = |line: &[u8], number| super::parse_line(line, "c.jsonl", number);
        let (id, texts, authors) = parse_line(br#"{"id": "a", "texts": ["x", "y"], "authors": [2, 3]}"#, 1).unwrap();
        assert_eq!((id, texts.len(), authors), (ConvId::Str("a".into()), 2, Some(vec![2, 3])));
        assert_eq!(parse_line(br#"{"id": 7, "texts": ["x"]}"#, 1).unwrap().0, ConvId::Int(7));
        // No id: the file and line, as a string that no integer id can equal.
        assert_eq!(parse_line(br#"{"texts": ["x"]}"#, 7).unwrap().0, ConvId::Str("c.jsonl:7".into()));
        let e = parse_line(br#"{"texts": ["x", 3]}"#, 1).unwrap_err();
        assert!(e.contains("texts[1]"), "{e}");
        assert!(parse_line(br#"{"texts": []}"#, 1).unwrap_err().contains("texts"));
        assert!(parse_line(br#"{"texts": ["x"], "authors": [1, 2]}"#, 1).unwrap_err().contains("authors"));
        assert!(parse_line(br#"{"texts": ["x"], "id": 1.5}"#, 1).unwrap_err().contains("`id`"));
        assert!(parse_line(b"{nope", 1).unwrap_err().contains("not a JSON object"));
        assert!(parse_line(br#"{"id": 1}"#, 1).unwrap_err().contains("texts"));
    }
}
