//! What steps read and write besides their config: prep outputs, model directories, and
//! the sorting of a step's inputs into the two.

use std::path::Path;

use crate::data::parquet::{read_conversations, CONVERSATIONS};
use crate::data::{Conversation, Split};
use crate::error::{Error, Result};
use crate::model::dir::{CONFIG, FILES, TOKENIZER, WEIGHTS};
use crate::store::commit::Output;
use crate::store::manifest::{Committed, Manifest};
use crate::store::Store;

/// The conversations of a committed prep output (checked against its manifest).
pub async fn read_prep(url: &str) -> Result<Vec<Conversation>> {
    let prep = Committed::open(url).await?;
    if !prep.has(CONVERSATIONS) {
        return Err(Error::input(format!(
            "{}: no {CONVERSATIONS}: not a prep output (made by `taft {}`)",
            prep.url(),
            prep.manifest.step
        )));
    }
    let bytes = prep.read(CONVERSATIONS).await?;
    read_conversations(bytes, &prep.store.url_of(CONVERSATIONS))
}

/// The pretraining corpus of SPEC §5: the unlabeled split (every conversation when there
/// is no unlabeled split).
pub fn pretraining_corpus(conversations: Vec<Conversation>) -> Vec<Conversation> {
    let unlabeled = conversations.iter().any(|c| c.split == Split::Unlabeled);
    conversations.into_iter().filter(|c| !unlabeled || c.split == Split::Unlabeled).collect()
}

/// The utterance texts of the pretraining corpus.
pub fn utterances(conversations: Vec<Conversation>) -> Vec<String> {
    pretraining_corpus(conversations).into_iter().flat_map(|c| c.utterances.into_iter().map(|u| u.text)).collect()
}

/// Copies the files of a model directory out of a store into `dest`. The files of a
/// committed step output are checked against its manifest.
pub async fn fetch_model_dir(url: &str, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let store = Store::open(url)?;
    let committed = Manifest::read(&store).await?.map(|manifest| Committed { store: store.clone(), manifest });
    for (file, required) in FILES {
        // Streamed to disk: the weights are never held in memory whole.
        let found = match &committed {
            Some(c) if c.has(file) => {
                c.download(file, &dest.join(file)).await?;
                true
            }
            Some(_) => false,
            None if store.head(file).await?.is_some() => {
                let mut reader = store.reader(file).await?;
                let mut to = tokio::fs::File::create(dest.join(file)).await?;
                tokio::io::copy_buf(&mut reader, &mut to).await?;
                tokio::io::AsyncWriteExt::flush(&mut to).await?;
                true
            }
            None => false,
        };
        if !found && required {
            return Err(Error::input(format!(
                "{}: no such file (a model directory needs {CONFIG}, {WEIGHTS} and {TOKENIZER})",
                store.url_of(file)
            )));
        }
    }
    Ok(())
}

/// Uploads every file of a local directory as part of the output, one streamed file at a
/// time (a model's weights are never held in memory whole).
pub async fn upload_dir(dir: &Path, out: &mut Output) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        out.put_file(&name, std::fs::File::open(dir.join(&name))?).await?;
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
