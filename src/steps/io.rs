//! What steps read and write besides their config: prep outputs, model directories, the
//! sorting of a step's inputs into the two, and the frame every training step runs in.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::data::parquet::{read_conversations, CONVERSATIONS};
use crate::data::{Conversation, Split};
use crate::error::{Error, Result};
use crate::model::checkpoint::{self, CONFIG, TOKENIZER, WEIGHTS};
use crate::store::commit::Output;
use crate::store::manifest::Manifest;
use crate::store::Store;
use crate::train::work::WorkDir;
use crate::train::Fit;
use super::init::TAFT_JSON;

/// The conversations of a committed prep output.
pub async fn read_prep(url: &str) -> Result<Vec<Conversation>> {
    let store = Store::open(url)?;
    Manifest::require(&store).await?;
    let bytes = store
        .get(CONVERSATIONS)
        .await?
        .ok_or_else(|| Error::input(format!("{}: no {CONVERSATIONS} (not a prep output?)", store.url())))?;
    read_conversations(bytes, &store.url_of(CONVERSATIONS))
}

/// The pretraining corpus of SPEC §5: the unlabeled split (every conversation when there
/// is no unlabeled split).
pub fn pretraining_corpus(conversations: Vec<Conversation>) -> Vec<Conversation> {
    let unlabeled = conversations.iter().any(|c| c.split == Split::Unlabeled);
    conversations.into_iter().filter(|c| !unlabeled || c.split == Split::Unlabeled).collect()
}

/// The utterance texts of the pretraining corpus.
pub fn utterances(conversations: Vec<Conversation>) -> Vec<String> {
    pretraining_corpus(conversations)
        .into_iter()
        .flat_map(|c| c.utterances.into_iter().map(|u| u.text))
        .collect()
}

/// Copies the files of a model directory out of a store into `dest`.
pub async fn fetch_model_dir(url: &str, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let store = Store::open(url)?;
    for (file, required) in [(CONFIG, true), (WEIGHTS, true), (TOKENIZER, true), (checkpoint::HEADS, false), (TAFT_JSON, false)] {
        match store.get(file).await? {
            Some(bytes) => std::fs::write(dest.join(file), &bytes)?,
            None if required => {
                return Err(Error::input(format!(
                    "{}: no such file (a model directory needs {CONFIG}, {WEIGHTS} and {TOKENIZER})",
                    store.url_of(file)
                )))
            }
            None => {}
        }
    }
    Ok(())
}

/// Uploads every file of a local directory as part of the output.
pub async fn upload_dir(dir: &Path, out: &mut Output) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let bytes = std::fs::read(dir.join(&name))?;
        out.put(&name, Bytes::from(bytes)).await?;
    }
    Ok(())
}

/// A training step's inputs: one prep output and one model directory, in any order,
/// recognised by the step that made them.
#[derive(Debug, Clone)]
pub struct DataAndModel {
    pub data: String,
    pub model: String,
}

impl DataAndModel {
    /// The config-time check: a training step takes exactly two inputs.
    pub fn check_count(step: &str, inputs: &[String]) -> Result<()> {
        if inputs.len() == 2 {
            return Ok(());
        }
        Err(Error::config(format!(
            "{step} takes two inputs (a prep output and a model directory), got {}",
            inputs.len()
        )))
    }

    pub async fn sort(step: &str, inputs: &[String]) -> Result<DataAndModel> {
        let (mut data, mut model) = (Vec::new(), Vec::new());
        for url in inputs {
            let manifest = Manifest::require(&Store::open(url)?).await?;
            if manifest.step == "prep" {
                data.push(url.clone());
            } else {
                model.push(url.clone());
            }
        }
        match (data.as_slice(), model.as_slice()) {
            ([d], [m]) => Ok(DataAndModel { data: d.clone(), model: m.clone() }),
            _ => Err(Error::config(format!(
                "{step} takes two inputs, a prep output and a model directory (init or a training step); got {} prep output(s) and {} other(s): {}",
                data.len(),
                model.len(),
                inputs.join(", ")
            ))),
        }
    }
}

/// What the work of a training step gets: the prep output's conversations, the input model
/// directory on local disk (`src`), the folder to write the new one to (`dst`), the
/// checkpoint folder of the output, and the step's lineage entry.
pub struct TrainingJob {
    pub conversations: Vec<Conversation>,
    pub src: PathBuf,
    pub dst: PathBuf,
    pub work: WorkDir,
    pub lineage: serde_json::Value,
}

/// Runs a training step (inputs: a prep output and a model directory) around `train`, which
/// runs on a blocking thread and returns the fit and its extra summary fields; then writes
/// `metrics.jsonl`, the TensorBoard events and the new model directory into the output.
/// Returns the fit and the step's summary (the fit's, with the extra fields).
pub async fn run_training<F>(step: &'static str, inputs: &[String], out: &mut Output, train: F) -> Result<(Fit, serde_json::Value)>
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
        src,
        dst: dst.clone(),
        work: WorkDir::new(out.store().clone(), out.fingerprint(), tokio::runtime::Handle::current())?,
        lineage: serde_json::json!({"step": step, "fingerprint": out.fingerprint()}),
    };
    let (fit, extra) = tokio::task::spawn_blocking(move || train(&job))
        .await
        .map_err(|e| Error::Other(format!("{step}: {e}")))??;
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
    std::fs::copy(job.src.join(TOKENIZER), job.dst.join(TOKENIZER))?;
    let mut taft = std::fs::read(job.src.join(TAFT_JSON))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let mut chain = taft["lineage"].as_array().cloned().unwrap_or_default();
    chain.push(job.lineage.clone());
    taft["lineage"] = serde_json::Value::Array(chain);
    if let (Some(taft), Some(fields)) = (taft.as_object_mut(), fields.as_object()) {
        taft.extend(fields.clone());
    }
    std::fs::write(job.dst.join(TAFT_JSON), serde_json::to_vec_pretty(&taft)?)?;
    Ok(())
}
