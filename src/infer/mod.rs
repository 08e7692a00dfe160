//! Inference on ONNX Runtime: an exported model (`model.onnx`, `tokenizer.json`, `taft.json`)
//! loaded into an ort session, the items of conversations, batch prediction and the HTTP
//! server. No libtorch here: the serving build carries this module alone.

pub mod items;
pub mod server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{Error, Result};
use crate::model::dir::{TAFT_JSON, TOKENIZER};
use crate::store::manifest::Committed;
use crate::text::{BatchEncoder, Encoded, Segments, TextTokenizer};

pub use crate::onnx::{Variant, MODEL, MODEL_INT8};

/// An ort session of an ONNX file.
pub fn session(bytes: &[u8], threads: Option<usize>, source: &str) -> Result<Session> {
    let env = crate::runtime::ort_environment()?;
    let fail = |e: String| Error::input(format!("{source}: ONNX Runtime cannot load the model: {e}"));
    let mut builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
    builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| fail(e.to_string()))?;
    builder = builder.with_inter_threads(1).map_err(|e| fail(e.to_string()))?;
    // ONNX Runtime's own default is the node's cores, not the container's share.
    let n = threads.unwrap_or_else(crate::runtime::cpus);
    builder = builder.with_intra_threads(n).map_err(|e| fail(e.to_string()))?;
    builder.commit_from_memory(bytes).map_err(|e| fail(e.to_string()))
}

/// Runs a session on a batch; returns, per head in `heads` order, (logits, probabilities),
/// each row-major [batch, classes].
pub fn run(session: &mut Session, enc: &Encoded, heads: &[String]) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    let shape = [enc.batch, enc.seq];
    let fail = |e: ort::Error| Error::Other(format!("ONNX Runtime: {e}"));
    let ids = TensorRef::from_array_view((shape, &enc.input_ids[..])).map_err(fail)?;
    let mask = TensorRef::from_array_view((shape, &enc.attention_mask[..])).map_err(fail)?;
    let outputs =
        session.run(ort::inputs![crate::onnx::INPUT_IDS => ids, crate::onnx::ATTENTION_MASK => mask]).map_err(fail)?;
    let mut out = Vec::with_capacity(heads.len());
    for head in heads {
        let mut pair = [Vec::new(), Vec::new()];
        for (k, name) in [crate::onnx::logits_name(head), crate::onnx::probs_name(head)].iter().enumerate() {
            let value = outputs
                .get(name.as_str())
                .ok_or_else(|| Error::input(format!("the ONNX model has no output `{name}`")))?;
            let (_, data) = value.try_extract_tensor::<f32>().map_err(fail)?;
            pair[k] = data.to_vec();
        }
        let [logits, probs] = pair;
        out.push((logits, probs));
    }
    Ok(out)
}

/// An export output loaded for inference.
pub struct Exported {
    pub url: String,
    pub tokenizer: TextTokenizer,
    /// The tokenizer set up for batches of `max_length`.
    encoder: BatchEncoder,
    /// (task, class names) in output order.
    pub heads: Vec<(String, Vec<String>)>,
    pub max_length: usize,
    /// Every run is padded to `max_length` (an unmasked adaptive layer).
    pub fixed_width: bool,
    /// Items are utterances (a speaker-role model), not conversations.
    pub utterance_level: bool,
    /// `taft.json` of the export.
    pub taft: serde_json::Value,
    pub variant: Variant,
    /// ONNX Runtime's intra-op threads of each instance.
    pub threads: usize,
    /// Sessions of the model that run at once, each on its own runs ([`Exported::calibrate`]).
    pub instances: usize,
    /// Measured by [`Exported::calibrate`]: how many padding tokens one run saved is worth
    /// (a run takes another item only while the padding it adds costs less). None: runs are
    /// cut by [`MAX_PADDING`] alone, the same way on every machine.
    pub join_tokens: Option<usize>,
    /// One session per instance.
    sessions: Vec<Mutex<Session>>,
    /// The ONNX file, kept by [`Exported::open`] until [`Exported::calibrate`] has made the
    /// instances.
    source: Option<bytes::Bytes>,
}

impl Exported {
    /// Loads an export output (a path or store URL), checked against its manifest.
    pub async fn open(url: &str, variant: Variant, threads: Option<usize>) -> Result<Exported> {
        let committed = Committed::open(url).await?;
        if committed.manifest.step != "export" {
            return Err(Error::input(format!(
                "{}: made by `taft {}`, not an export output (run `taft export` on a finetune or role output)",
                committed.url(),
                committed.manifest.step
            )));
        }
        let file = variant.file();
        if !committed.has(file) {
            return Err(Error::input(format!(
                "{}: no {file}{}",
                committed.url(),
                if variant == Variant::Int8 { " (export with `quantize: int8`)" } else { "" }
            )));
        }
        let model = committed.read(file).await?;
        let tokenizer = committed.read(TOKENIZER).await?;
        let taft = committed.read(TAFT_JSON).await?;
        let url = committed.url().to_string();
        tokio::task::spawn_blocking(move || {
            let mut exported = Exported::from_bytes(&url, &model, &tokenizer, &taft, variant, threads)?;
            exported.source = Some(model);
            Ok(exported)
        })
        .await
        .map_err(|e| Error::Other(format!("model loading: {e}")))?
    }

    pub fn from_bytes(
        url: &str,
        model: &[u8],
        tokenizer: &[u8],
        taft: &[u8],
        variant: Variant,
        threads: Option<usize>,
    ) -> Result<Exported> {
        let taft_name = format!("{url}/{TAFT_JSON}");
        let taft: serde_json::Value =
            serde_json::from_slice(taft).map_err(|e| Error::input(format!("{taft_name}: {e}")))?;
        let heads = crate::model::dir::heads(&taft, &taft_name)?;
        let max_length = taft["max_length"]
            .as_u64()
            .filter(|&n| n >= 2)
            .ok_or_else(|| Error::input(format!("{taft_name}: no `max_length`")))? as usize;
        let truncation = crate::model::dir::truncation(&taft, &taft_name)?;
        // The original's unmasked adaptive layer was trained on conversations padded to
        // max_length: so are its inputs here, whatever else a run holds.
        let fixed_width = taft["adaptive"]["mask_padding"] == serde_json::json!(false);
        let tokenizer = TextTokenizer::from_bytes(tokenizer, &format!("{url}/{TOKENIZER}"))?;
        let threads = threads.unwrap_or_else(crate::runtime::cpus);
        let session = session(model, Some(threads), &format!("{url}/{}", variant.file()))?;
        let exported = Exported {
            url: url.to_string(),
            encoder: tokenizer.batches(max_length, truncation)?,
            fixed_width,
            tokenizer,
            utterance_level: crate::model::dir::utterance_level(&heads),
            heads,
            max_length,
            taft,
            variant,
            threads,
            instances: 1,
            join_tokens: None,
            sessions: vec![Mutex::new(session)],
            source: None,
        };
        // A warm-up run: every head's outputs must be there with `taft.json`'s classes, or
        // the model is refused now rather than answering shifted rows later.
        exported.probabilities(&["warm-up"], 1)?;
        Ok(exported)
    }

    /// Token ids of texts as the model was trained on them (truncated as in training).
    pub fn ids<T: Segments>(&self, texts: &[T]) -> Result<Vec<Vec<i64>>> {
        self.encoder.ids(texts)
    }

    /// Rows of token ids as one run: padded to the longest, or to `max_length` for an
    /// unmasked adaptive layer.
    pub fn pad(&self, rows: &[&[i64]]) -> crate::text::Encoded {
        self.encoder.pad_to(rows, if self.fixed_width { self.max_length } else { 0 })
    }

    pub fn head_names(&self) -> Vec<String> {
        self.heads.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Class probabilities of each text, per head: `[head][item][class]`, in the texts' order.
    /// With several instances ([`Exported::calibrate`]) the runs are shared among them, each
    /// instance on a thread of its own taking the next run as it finishes one.
    pub fn probabilities<T: Segments>(&self, texts: &[T], batch_size: usize) -> Result<Probs> {
        if self.sessions.len() == 1 {
            return self.probabilities_with(0, texts, batch_size, None, |_, _| {});
        }
        let ids = self.encoder.ids(texts)?;
        let order = by_length(&ids);
        let cut = self.cut(&order, &ids, batch_size);
        let names = self.head_names();
        let next = AtomicUsize::new(0);
        let parts: Vec<Result<Vec<(usize, Outputs)>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.sessions.len())
                .map(|instance| {
                    let (cut, ids, names, next) = (&cut, &ids, &names, &next);
                    scope.spawn(move || {
                        let mut scored = Vec::new();
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let Some(rows) = cut.get(k) else { return Ok(scored) };
                            match self.run_rows(instance, rows, ids, names) {
                                Ok(out) => scored.push((k, out)),
                                Err(e) => {
                                    // The other instances stop after their current run.
                                    next.store(cut.len(), Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(Error::Other(format!("{}: a model run panicked", self.url)))))
                .collect()
        });
        let mut probs = self.no_probs(texts.len());
        for part in parts {
            for (k, out) in part? {
                self.store(&mut probs, cut[k], &out);
            }
        }
        Ok(probs)
    }

    /// Sets up the sessions for serving or batch prediction and measures what batching is
    /// worth on this machine for this model.
    ///
    /// `instances`: sessions that run at once, the threads shared among them (`None`:
    /// chosen here). With several threads, one 128-token item is timed on all of them and,
    /// if that takes less than [`SPLIT_SECONDS`], on one: where the threads make it less than
    /// [`THREAD_EFFICIENCY`] × threads times faster (a small model, whose operators are too
    /// short to split), each thread gets a session of its own that runs runs of its own: more
    /// throughput, while a request alone loses little, as the threads gained it little. A
    /// large encoder keeps one session on all threads, so that a request alone gets every
    /// core.
    ///
    /// [`Exported::join_tokens`]: the time of one item of `CALIBRATION_TOKENS` tokens alone
    /// and of `CALIBRATION_ITEMS` such items in one run (the best of at least three runs and
    /// `seconds` each: a small model is timed over many runs, so that a moment
    /// when another process holds the CPU does not decide it). Each item
    /// batched saves (items × alone − together) / (items − 1) seconds; a padding token costs
    /// together / (items × tokens). On a large encoder on a CPU the GEMMs are already
    /// efficient for one conversation and padding is pure work: runs join only items of
    /// nearly equal length. On a small one a run's fixed cost dominates and runs stay long.
    /// A model whose runs are all `max_length` wide is not timed: its runs are plain chunks.
    /// A `join_tokens` given is taken as it is (not timed).
    pub fn calibrate(&mut self, instances: Option<usize>, join: Option<usize>, seconds: f64) -> Result<Option<usize>> {
        let source = self.source.take();
        let total = self.threads * self.instances;
        let name = format!("{}/{}", self.url, self.variant.file());
        let mut one_thread = None;
        let wanted = match instances {
            Some(k) => k.max(1),
            None if total >= 2 && !self.fixed_width && source.is_some() => {
                let row = self.calibration_row()?;
                let all =
                    self.best_run(&mut self.sessions[0].lock().unwrap_or_else(|e| e.into_inner()), &row, 1, seconds)?;
                // An item this long is made of operators that split well over threads; a
                // second session (a second copy of a large model) is not made to time it.
                if all >= SPLIT_SECONDS {
                    1
                } else {
                    let bytes = source.as_deref().unwrap_or_default();
                    let mut single = session(bytes, Some(1), &name)?;
                    let alone = self.best_run(&mut single, &row, 1, seconds)?;
                    one_thread = Some(single);
                    tracing::info!(
                        threads = total,
                        seconds_on_all = all,
                        seconds_on_one = alone,
                        "one item timed on all threads and on one"
                    );
                    if alone < THREAD_EFFICIENCY * total as f64 * all {
                        total
                    } else {
                        1
                    }
                }
            }
            None => 1,
        };
        if wanted != self.instances {
            let Some(bytes) = source.as_deref() else {
                return Err(Error::Other(format!("{name}: the model's instances are set when it is opened")));
            };
            let threads = (total / wanted).max(1);
            let mut sessions = Vec::with_capacity(wanted);
            if threads == 1 {
                sessions.extend(one_thread.take());
            }
            while sessions.len() < wanted {
                sessions.push(session(bytes, Some(threads), &name)?);
            }
            self.sessions = sessions.into_iter().map(Mutex::new).collect();
            (self.threads, self.instances) = (threads, wanted);
        }
        drop(one_thread);
        if self.fixed_width {
            return Ok(None);
        }
        if let Some(join) = join {
            self.join_tokens = Some(join);
            return Ok(Some(join));
        }
        let row = self.calibration_row()?;
        let mut session = self.sessions[0].lock().unwrap_or_else(|e| e.into_inner());
        let alone = self.best_run(&mut session, &row, 1, seconds)?;
        let together = self.best_run(&mut session, &row, CALIBRATION_ITEMS, seconds)?;
        drop(session);
        let join = join_tokens(alone, together, CALIBRATION_ITEMS, row.len());
        tracing::info!(
            seconds_alone = alone,
            seconds_together = together,
            items = CALIBRATION_ITEMS,
            join_tokens = join,
            "one item timed alone and with others"
        );
        self.join_tokens = Some(join);
        Ok(Some(join))
    }

    /// A row of `CALIBRATION_TOKENS` token ids (a word between the special tokens).
    fn calibration_row(&self) -> Result<Vec<i64>> {
        let tokens = CALIBRATION_TOKENS.min(self.max_length).max(2);
        let ids = self.encoder.ids(&["a"])?.remove(0);
        let (first, last, word) = (ids[0], ids[ids.len() - 1], ids[ids.len() / 2]);
        let mut row = vec![word; tokens];
        row[0] = first;
        row[tokens - 1] = last;
        Ok(row)
    }

    /// The best time of a run of `n` copies of `row` on `session`: at least three runs and
    /// `seconds`, after one untimed.
    fn best_run(&self, session: &mut Session, row: &[i64], n: usize, seconds: f64) -> Result<f64> {
        let names = self.head_names();
        let enc = self.encoder.pad(&vec![row; n]);
        run(session, &enc, &names)?;
        let (mut best, mut spent, mut runs) = (f64::INFINITY, 0.0, 0);
        while runs < 3 || (spent < seconds && runs < 1000) {
            let started = std::time::Instant::now();
            run(session, &enc, &names)?;
            let took = started.elapsed().as_secs_f64();
            (best, spent, runs) = (best.min(took), spent + took, runs + 1);
        }
        Ok(best)
    }

    /// `order` (items by ascending length) cut into runs of at most `batch_size`: plain chunks
    /// for fixed-width runs (they cost the same whatever their lengths), else by length
    /// ([`runs`]).
    fn cut<'a>(&self, order: &'a [usize], ids: &[Vec<i64>], batch_size: usize) -> Vec<&'a [usize]> {
        if self.fixed_width {
            order.chunks(batch_size.max(1)).collect()
        } else {
            runs(order, ids, batch_size.max(1), self.join_tokens)
        }
    }

    /// One run of the items `rows` on the session of `instance`, its outputs checked against
    /// the heads' classes.
    fn run_rows(&self, instance: usize, rows: &[usize], ids: &[Vec<i64>], names: &[String]) -> Result<Outputs> {
        let enc = self.pad(&rows.iter().map(|&i| ids[i].as_slice()).collect::<Vec<_>>());
        let out = {
            let session = &self.sessions[instance.min(self.sessions.len() - 1)];
            // A panic in an earlier run leaves the session as ONNX Runtime left it.
            let mut session = session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            run(&mut session, &enc, names)?
        };
        for (h, (_, p)) in out.iter().enumerate() {
            let width = self.heads[h].1.len();
            if p.len() != rows.len() * width {
                return Err(Error::input(format!(
                    "{}: output `{}` has {} values for {} items of {width} classes ({TAFT_JSON})",
                    self.url,
                    crate::onnx::probs_name(&self.heads[h].0),
                    p.len(),
                    rows.len()
                )));
            }
        }
        Ok(out)
    }

    /// Per head, an empty probability row for each of `items`.
    fn no_probs(&self, items: usize) -> Probs {
        self.heads.iter().map(|_| vec![Vec::new(); items]).collect()
    }

    /// The probabilities of a run's outputs ([`Exported::run_rows`]) put at its items' rows.
    fn store(&self, probs: &mut Probs, rows: &[usize], out: &Outputs) {
        for (h, (_, p)) in out.iter().enumerate() {
            let width = self.heads[h].1.len();
            for (k, &row) in rows.iter().enumerate() {
                probs[h][row] = p[k * width..(k + 1) * width].to_vec();
            }
        }
    }

    /// [`Exported::probabilities`] on the session of `instance`, calling `done(items, probs)`
    /// after each run with the items it scored. Texts are cut into runs of at most
    /// `batch_size` by length (padding within [`MAX_PADDING`] of their tokens, and, once calibrated, worth less than a run:
    /// [`Exported::join_tokens`]); the runs go shortest first, or, given each text's `age`
    /// rank (0 the oldest), the run holding the oldest text first.
    pub fn probabilities_with<S, F>(
        &self,
        instance: usize,
        texts: &[S],
        batch_size: usize,
        age: Option<&[usize]>,
        mut done: F,
    ) -> Result<Probs>
    where
        S: Segments,
        F: FnMut(&[usize], &Probs),
    {
        let ids = self.encoder.ids(texts)?;
        let order = by_length(&ids);
        let names = self.head_names();
        let mut probs = self.no_probs(texts.len());
        let mut cut = self.cut(&order, &ids, batch_size);
        if let Some(age) = age {
            oldest_first(&mut cut, age);
        }
        for rows in cut {
            let out = self.run_rows(instance, rows, &ids, &names)?;
            self.store(&mut probs, rows, &out);
            done(rows, &probs);
        }
        Ok(probs)
    }
}

/// Class probabilities by head, item and class.
pub type Probs = Vec<Vec<Vec<f32>>>;

/// One run's outputs, per head (logits, probabilities), each row-major [items, classes].
type Outputs = Vec<(Vec<f32>, Vec<f32>)>;

/// Item indices by ascending length of their token ids.
fn by_length(ids: &[Vec<i64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    order
}

/// The share of a run's tokens that may be padding: a run is cut shorter rather than pad more
/// (on a CPU-bound encoder padding is work; short runs cost little).
pub const MAX_PADDING: f64 = 0.15;

/// The length of the items [`Exported::calibrate`] times.
const CALIBRATION_TOKENS: usize = 128;
/// How many items it times in one run.
const CALIBRATION_ITEMS: usize = 8;
/// How long `taft serve` times each run of [`Exported::calibrate`] at least (once, at load).
pub const SERVE_CALIBRATION_SECONDS: f64 = 0.25;
/// The same for `taft predict`, whose whole job may take seconds.
pub const PREDICT_CALIBRATION_SECONDS: f64 = 0.05;
/// The share of a perfect speed-up (threads × faster) below which threads are worth more as
/// instances of their own.
const THREAD_EFFICIENCY: f64 = 0.9;
/// An item of `CALIBRATION_TOKENS` that takes this long on all threads is not timed on one.
const SPLIT_SECONDS: f64 = 0.01;
/// The share of an item's time that batching must save for items to share runs.
const MIN_SAVING: f64 = 0.1;

/// Padding tokens worth one run saved: from the time of one item alone and of `items` such
/// items of `tokens` tokens together (0 where batching saved less than [`MIN_SAVING`] of an
/// item's time: within the timing's spread, and an item that joins a run waits for its
/// partner).
fn join_tokens(alone: f64, together: f64, items: usize, tokens: usize) -> usize {
    let saved_per_item = (items as f64 * alone - together) / (items - 1) as f64;
    let per_token = together / (items * tokens) as f64;
    if saved_per_item > MIN_SAVING * alone && per_token > 0.0 {
        (saved_per_item / per_token).round().min(1e9) as usize
    } else {
        0
    }
}

/// Cuts `order` (items by ascending length) into runs of at most `batch` items whose padding
/// stays within [`MAX_PADDING`] and, given `join` (padding tokens worth one run saved), where
/// each item taken adds at most `join` padding tokens (the run's items padded to its length).
fn runs<'a>(order: &'a [usize], ids: &[Vec<i64>], batch: usize, join: Option<usize>) -> Vec<&'a [usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        let mut tokens = ids[order[start]].len();
        while end < order.len() && end - start < batch {
            let longest = ids[order[end]].len();
            let padded = (end - start + 1) * longest;
            if (padded - (tokens + longest)) as f64 > MAX_PADDING * padded as f64 {
                break;
            }
            let added = (end - start) * (longest - ids[order[end - 1]].len());
            if join.is_some_and(|join| added > join) {
                break;
            }
            tokens += longest;
            end += 1;
        }
        out.push(&order[start..end]);
        start = end;
    }
    out
}

/// Orders runs by the oldest item each holds (lowest `age` rank), shortest first among equals:
/// no item waits behind a run of items younger than itself.
fn oldest_first(cut: &mut [&[usize]], age: &[usize]) {
    cut.sort_by_key(|rows| rows.iter().map(|&i| age[i]).min());
}

/// The index of the largest probability (the first on ties).
pub fn argmax(p: &[f32]) -> usize {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_every_item_once_within_the_batch_and_padding_caps() {
        let lengths = [3usize, 4, 4, 5, 9, 10, 10, 10, 10, 10, 40, 41];
        let ids: Vec<Vec<i64>> = lengths.iter().map(|&n| vec![0; n]).collect();
        let order: Vec<usize> = (0..ids.len()).collect();
        let cut = runs(&order, &ids, 4, None);
        assert_eq!(cut.concat(), order, "every item once, in order");
        for r in &cut {
            assert!(r.len() <= 4);
            let longest = r.iter().map(|&i| lengths[i]).max().unwrap();
            let tokens: usize = r.iter().map(|&i| lengths[i]).sum();
            assert!((r.len() * longest - tokens) as f64 <= MAX_PADDING * (r.len() * longest) as f64, "{r:?}");
        }
        // 3, 4, 4 run together but not with 5 (20 % padding); 5 and 9 do not share a run;
        // 9 and three 10s fill a run of 4; 40 and 41 run together.
        assert_eq!(&cut[..3], &[&[0, 1, 2][..], &[3], &[4, 5, 6, 7]]);
        assert!(cut.iter().any(|r| r == &[10, 11]));
        assert_eq!(runs(&order, &ids, 1, None).len(), ids.len());
        // Padding worth more than any run: the same runs.
        assert_eq!(runs(&order, &ids, 4, Some(1000)), cut);
        // Padding worth nothing: only items of equal length share a run.
        assert_eq!(
            runs(&order, &ids, 4, Some(0)),
            vec![&[0][..], &[1, 2], &[3], &[4], &[5, 6, 7, 8], &[9], &[10], &[11]]
        );
        // Worth 2 tokens: 11 joins 10 and 10 (two tokens), 12 would add three; worth 1: 11
        // would add two, so it starts a run that 12 joins (one).
        let ids: Vec<Vec<i64>> = [10usize, 10, 11, 12].iter().map(|&n| vec![0; n]).collect();
        let order = [0usize, 1, 2, 3];
        assert_eq!(runs(&order, &ids, 4, None), vec![&[0, 1, 2, 3][..]]);
        assert_eq!(runs(&order, &ids, 4, Some(2)), vec![&[0, 1, 2][..], &[3]]);
        assert_eq!(runs(&order, &ids, 4, Some(1)), vec![&[0, 1][..], &[2, 3]]);
    }

    #[test]
    fn batching_is_worth_the_padding_a_run_saves() {
        // 8 items together as fast as 8 alone: no run saved, no padding worth it.
        assert_eq!(join_tokens(0.1, 0.8, 8, 128), 0);
        assert_eq!(join_tokens(0.1, 0.9, 8, 128), 0);
        // A large encoder: 8 x 128 tokens in 0.70 s against 0.1 s alone saves 14 ms per item
        // batched; a token costs 0.68 ms: 21 tokens.
        assert_eq!(join_tokens(0.1, 0.70, 8, 128), 21);
        // A large encoder on two threads: 8 items in 0.32 s against 0.042 s alone
        // saves 2.3 ms an item, 5 % of one: not worth making an item wait for a partner.
        assert_eq!(join_tokens(0.042, 0.32, 8, 128), 0);
        // A small one: a run's fixed cost is most of one item's time.
        assert_eq!(join_tokens(0.001, 0.002, 8, 128), 439);
    }

    #[test]
    fn the_run_holding_the_oldest_item_goes_first() {
        // Items 0..6 by ascending length, in runs [0, 1], [2], [3, 4], [5]; item 5 (the
        // longest) is the oldest, item 2 the next.
        let (a, b, c, d) = ([0usize, 1], [2usize], [3usize, 4], [5usize]);
        let mut cut: Vec<&[usize]> = vec![&a, &b, &c, &d];
        let age = [4, 5, 1, 3, 2, 0];
        oldest_first(&mut cut, &age);
        assert_eq!(cut, vec![&d[..], &b[..], &c[..], &a[..]]);
        // Equal ages keep the shortest first.
        let mut cut: Vec<&[usize]> = vec![&a, &b, &c, &d];
        oldest_first(&mut cut, &[0; 6]);
        assert_eq!(cut, vec![&a[..], &b[..], &c[..], &d[..]]);
    }
}
