//! The frame every training step runs in: inputs sorted and fetched, the work on a blocking
//! thread with its `_work/` checkpoints, then metrics, TensorBoard events and the new model
//! directory written into the output.

use std::path::PathBuf;

use super::io::{fetch_model_dir, read_prep, upload_dir, DataAndModel};
use crate::data::Conversation;
use crate::error::{Error, Result};
use crate::model::checkpoint;
use crate::model::dir::{ModelDir, TAFT_JSON, TOKENIZER};
use crate::store::commit::Output;
use crate::train::work::WorkDir;
use crate::train::Fit;

/// What the work of a training step gets: the prep output's conversations, the input model
/// directory on local disk (`src`), the folder to write the new one to (`dst`), the
/// checkpoint folder of the output, and the step's lineage entry.
pub struct TrainingJob {
    pub conversations: Vec<Conversation>,
    pub src: ModelDir,
    pub dst: PathBuf,
    pub work: WorkDir,
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
        lineage: serde_json::json!({"step": step, "fingerprint": out.fingerprint()}),
    };
    let (fit, extra) =
        tokio::task::spawn_blocking(move || train(&job)).await.map_err(|e| Error::Other(format!("{step}: {e}")))??;
    crate::train::write_metrics(out, &fit.history).await?;
    upload_dir(&dst, out).await?;
    let mut summary = fit.summary();
    if let (Some(summary), Some(extra)) = (summary.as_object_mut(), extra.as_object()) {
        summary.extend(extra.clone());
    }
    Ok((fit, summary))
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
