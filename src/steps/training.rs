//! The frame every training step runs in: inputs sorted and fetched, the work on a blocking
//! thread with its `_work/` checkpoints, then metrics, TensorBoard events and the new model
//! directory written into the output.

use std::path::PathBuf;

use super::io::{fetch_model_dir, read_prep, upload_dir, DataAndModel};
use crate::data::samplers::{ByLength, Sampler};
use crate::data::Conversation;
use crate::error::{Error, Result};
use crate::model::checkpoint;
use crate::model::dir::{ModelDir, TAFT_JSON, TOKENIZER};
use crate::store::commit::Output;
use crate::text::{Segments, TextTokenizer, Truncation};
use crate::train::loss::validation_loss;
use crate::train::work::WorkDir;
use crate::train::Fit;
use tch::{Device, Tensor};

/// What the work of a training step gets: the prep output's conversations, the input model
/// directory on local disk (`src`), the folder to write the new one to (`dst`), the
/// checkpoint folder of the output, and the step's lineage entry.
pub struct TrainingJob {
    pub conversations: Vec<Conversation>,
    pub src: ModelDir,
    pub dst: PathBuf,
    pub work: WorkDir,
    /// A local folder for scratch files: the output's `_work/` on local disk, else a
    /// temporary folder.
    pub scratch: PathBuf,
    pub lineage: serde_json::Value,
}

/// Runs a training step (inputs: a prep output and a model directory) around `train`, which
/// runs on a blocking thread and returns the fit and its extra summary fields; then writes
/// `metrics.jsonl`, the TensorBoard events and the new model directory into the output.
/// Returns the fit and the step's summary (the fit's, with the extra fields).
pub async fn run_training<F>(
    step: &'static str,
    inputs: &[String],
    out: &mut Output,
    train: F,
) -> Result<(Fit, serde_json::Value)>
where
    F: FnOnce(&TrainingJob) -> Result<(Fit, serde_json::Value)> + Send + 'static,
{
    let inputs = DataAndModel::sort(step, inputs).await?;
    let conversations = read_prep(&inputs.data).await?;
    let tmp = tempfile::tempdir()?;
    let (src, dst) = (tmp.path().join("in"), tmp.path().join("out"));
    fetch_model_dir(&inputs.model, &src).await?;
    let job = TrainingJob {
        conversations,
        src: ModelDir::new(&src, &inputs.model),
        dst: dst.clone(),
        work: WorkDir::new(out.store().clone(), out.fingerprint(), tokio::runtime::Handle::current())?
            .start_over(out.forced()),
        scratch: out.store().local_path("_work").unwrap_or_else(|| tmp.path().join("scratch")),
        lineage: serde_json::json!({"step": step, "fingerprint": out.fingerprint()}),
    };
    let (fit, extra) =
        tokio::task::spawn_blocking(move || train(&job)).await.map_err(|e| Error::Other(format!("{step}: {e}")))??;
    crate::train::write_metrics(out, &fit.history).await?;
    upload_dir(&dst, out).await?;
    let mut summary = fit.summary();
    if let (Some(summary), Some(extra)) = (summary.as_object_mut(), extra.as_object()) {
        summary.extend(extra.clone());
        // Results depend on libtorch's thread count: the manifest records it.
        summary.insert("threads".into(), serde_json::json!(tch::get_num_threads()));
    }
    Ok((fit, summary))
}

/// [`run_training`] for a step that scores its model on the test split: the summary's
/// `test` is written whole to `test_report.json` and replaced by `headline(report)`; the
/// summary's `extra_files` entries (name → JSON) are written beside it.
pub async fn run_scored<F>(
    step: &'static str,
    inputs: &[String],
    out: &mut Output,
    train: F,
    headline: fn(&serde_json::Value) -> serde_json::Value,
    extra_files: &[&str],
) -> Result<serde_json::Value>
where
    F: FnOnce(&TrainingJob) -> Result<(Fit, serde_json::Value)> + Send + 'static,
{
    let (_, mut summary) = run_training(step, inputs, out, train).await?;
    let report = summary["test"].take();
    out.put("test_report.json", bytes::Bytes::from(serde_json::to_vec_pretty(&report)?)).await?;
    for name in extra_files {
        if !summary[*name].is_null() {
            let json = serde_json::to_vec_pretty(&summary[*name])?;
            out.put(&format!("{name}.json"), bytes::Bytes::from(json)).await?;
        }
    }
    summary["test"] = headline(&report);
    Ok(summary)
}

/// Writes a trained model directory to `job.dst`: the weights as `arch`, the input's
/// tokenizer, and its `taft.json` with this step appended to the lineage and `fields` set.
pub fn write_model_dir(
    job: &TrainingJob,
    vs: &tch::nn::VarStore,
    config: &crate::model::config::EncoderConfig,
    arch: checkpoint::Arch,
    fields: serde_json::Value,
) -> Result<()> {
    checkpoint::save_weights(vs, config, arch, &job.dst)?;
    std::fs::copy(job.src.file(TOKENIZER), job.dst.join(TOKENIZER))?;
    let mut taft = job.src.taft_json()?;
    let mut chain = taft["lineage"].as_array().cloned().unwrap_or_default();
    chain.push(job.lineage.clone());
    taft["lineage"] = serde_json::Value::Array(chain);
    if let (Some(taft), Some(fields)) = (taft.as_object_mut(), fields.as_object()) {
        taft.extend(fields.clone());
    }
    std::fs::write(job.dst.join(TAFT_JSON), serde_json::to_vec_pretty(&taft)?)?;
    Ok(())
}

/// Real and computed (padded) tokens of the training batches, in this process.
#[derive(Debug, Default)]
pub struct Padding(std::cell::Cell<(u64, u64)>);

impl Padding {
    /// The share of the computed tokens that are padding.
    pub fn fraction(&self) -> f64 {
        let (real, total) = self.0.get();
        if total == 0 {
            0.0
        } else {
            1.0 - real as f64 / total as f64
        }
    }
}

/// The examples of a classification task: token ids (special tokens included, truncated to
/// the step's length) and labels.
pub struct Items {
    pub ids: Vec<Vec<i64>>,
    pub labels: Vec<i64>,
    /// Pad every batch to this many tokens (see [`Items::fixed_width`]).
    pub width: Option<usize>,
}

impl Items {
    pub fn new<T: Segments>(
        tokenizer: &TextTokenizer,
        rows: Vec<(T, i64)>,
        max_length: usize,
        truncation: Truncation,
    ) -> Result<Items> {
        let (texts, labels): (Vec<T>, Vec<i64>) = rows.into_iter().unzip();
        let encoder = tokenizer.batches(max_length, truncation)?;
        let mut ids = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(4096) {
            ids.extend(encoder.ids(chunk)?);
        }
        Ok(Items { ids, labels, width: None })
    }

    /// Batches padded to `width` tokens whatever their items' lengths: the original's
    /// adaptive layer without a padding mask (`mask_padding: false`) saw every conversation
    /// padded to `max_length`, and its output depends on the padding it attends.
    pub fn fixed_width(mut self, width: Option<usize>) -> Items {
        self.width = width;
        self
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The tokens of each item.
    pub fn lengths(&self) -> Vec<usize> {
        self.ids.iter().map(Vec::len).collect()
    }

    /// `sampler`, regrouped in batches of similar lengths when `group` is set.
    pub fn grouped(
        &self,
        group: bool,
        sampler: Box<dyn Sampler + Send + Sync>,
        batch_size: usize,
    ) -> Box<dyn Sampler + Send + Sync> {
        ByLength::wrap(group, sampler, || self.lengths(), batch_size)
    }

    /// The mean unweighted cross-entropy and the predictions (in item order) over every item,
    /// in batches of `batch_size` items of similar lengths (sorted: little padding; the
    /// order of the batches does not change the results). `logits` gives a batch's logits
    /// and labels.
    pub fn scan(
        &self,
        batch_size: usize,
        logits: impl Fn(&[usize]) -> Result<(Tensor, Tensor)>,
    ) -> Result<(f64, Vec<i64>)> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.ids[i].len()));
        let (mut sum, mut preds) = (0.0, vec![0i64; self.len()]);
        for rows in order.chunks(batch_size.max(1)) {
            let (logits, labels) = logits(rows)?;
            sum += validation_loss(&logits, &labels).double_value(&[]) * rows.len() as f64;
            let batch = Vec::<i64>::try_from(&logits.argmax(-1, false).to_device(Device::Cpu)).expect("int64");
            for (&row, p) in rows.iter().zip(batch) {
                preds[row] = p;
            }
        }
        Ok((sum / self.len().max(1) as f64, preds))
    }

    /// Adds a training batch of `rows` to `padding`.
    pub fn count_padding(&self, rows: &[usize], padding: &Padding) {
        let lengths = rows.iter().map(|&r| self.ids[r].len() as u64);
        let (real, width) = lengths.fold((0, self.width.unwrap_or(0) as u64), |(sum, max), l| (sum + l, max.max(l)));
        let (r, t) = padding.0.get();
        padding.0.set((r + real, t + width * rows.len() as u64));
    }

    /// The labels of `rows`, on `device`.
    pub fn labels(&self, rows: &[usize], device: Device) -> Tensor {
        let labels: Vec<i64> = rows.iter().map(|&r| self.labels[r]).collect();
        Tensor::from_slice(&labels).to(device)
    }

    /// Padded ids, attention mask and labels of `rows`, on `device`.
    pub fn batch(&self, rows: &[usize], pad: i64, device: Device) -> (Tensor, Tensor, Tensor) {
        let width = rows.iter().map(|&r| self.ids[r].len()).max().unwrap_or(1).max(self.width.unwrap_or(0));
        let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * width), Vec::with_capacity(rows.len() * width));
        for &r in rows {
            let row = &self.ids[r];
            ids.extend(row.iter().copied().chain(std::iter::repeat_n(pad, width - row.len())));
            mask.extend(std::iter::repeat_n(1i64, row.len()).chain(std::iter::repeat_n(0, width - row.len())));
        }
        let shape = [rows.len() as i64, width as i64];
        let labels: Vec<i64> = rows.iter().map(|&r| self.labels[r]).collect();
        (
            Tensor::from_slice(&ids).view(shape).to(device),
            Tensor::from_slice(&mask).view(shape).to(device),
            Tensor::from_slice(&labels).to(device),
        )
    }
}
