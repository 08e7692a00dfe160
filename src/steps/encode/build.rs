//! `taft encode` on tch: the model's encoder over the shard's labeled conversations, the
//! states streamed to a scratch file and uploaded as `states.bin`.

use std::io::{Seek, Write};

use tch::nn;

use super::{Encode, EncodeConfig, IndexRecord, Source, StatesInfo, INDEX, STATES};
use crate::data::shard::Shard;
use crate::data::Conversation;
use crate::error::{Error, Result};
use crate::model::adaptive::AdaptiveConfig;
use crate::model::bert::Encoder;
use crate::model::checkpoint;
use crate::model::dir::ModelDir;
use crate::steps::finetune::cache::{distinct, encode_each, tensor_bytes, CacheSettings};
use crate::steps::io::{fetch_model_dir, read_prep, DataAndModel};
use crate::steps::training::Items;
use crate::steps::Step;
use crate::store::commit::Output;

pub async fn run(config: &EncodeConfig, out: &mut Output) -> Result<serde_json::Value> {
    let inputs = DataAndModel::sort(Encode::NAME, &config.inputs).await?;
    let conversations = read_prep(&inputs.data).await?;
    let (model, data) = (Source::of(&inputs.model).await?, Source::of(&inputs.data).await?);
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("in");
    fetch_model_dir(&inputs.model, &src).await?;
    let dir = ModelDir::new(&src, &inputs.model);
    let scratch = out.store().local_path("_work").unwrap_or_else(|| tmp.path().join("scratch"));
    std::fs::create_dir_all(&scratch)?;
    let started = std::time::Instant::now();
    let job = config.clone();
    let folder = scratch.clone();
    let encoded = tokio::task::spawn_blocking(move || encode(&job, &dir, &conversations, &folder))
        .await
        .map_err(|e| Error::Other(format!("encode: {e}")))??;

    out.put_file(STATES, encoded.states).await?;
    out.put(INDEX, bytes::Bytes::from(IndexRecord::write(&encoded.index))).await?;
    // The scratch folder held only the unnamed states file: leave no empty `_work/` behind.
    std::fs::remove_dir(&scratch).ok();

    let info = StatesInfo {
        model,
        data,
        max_length: config.max_length,
        truncation: config.truncation,
        head_tail: config.head_tail,
        first_token_only: encoded.first_token_only,
        width: encoded.width,
        hidden: encoded.hidden,
        fp16: config.fp16,
        shard: config.shard.clone().unwrap_or_else(|| "0/1".into()),
        conversations: encoded.index.len(),
    };
    tracing::info!(conversations = info.conversations, shard = %info.shard, "encoded");
    Ok(serde_json::json!({
        "states": info,
        "conversations_read": encoded.read,
        "bytes": encoded.bytes,
        "seconds": started.elapsed().as_secs_f64(),
        "threads": encoded.threads,
    }))
}

/// What [`encode`] made.
struct Encoded {
    /// The states, written from its start (an unnamed scratch file).
    states: std::fs::File,
    index: Vec<IndexRecord>,
    bytes: u64,
    first_token_only: bool,
    width: Option<usize>,
    hidden: i64,
    /// Labeled conversations of the shard.
    read: usize,
    threads: usize,
}

fn encode(
    config: &EncodeConfig,
    dir: &ModelDir,
    conversations: &[Conversation],
    scratch: &std::path::Path,
) -> Result<Encoded> {
    let (encoder_config, family, tokenizer) = dir.read_model()?;
    encoder_config.check_length("max_length", config.max_length, &dir.url)?;
    let cut = config.truncation();
    let specials = tokenizer.batches(config.max_length, cut)?.specials();
    cut.check(config.max_length, specials).map_err(Error::config)?;
    let taft = dir.taft_json()?;
    let adaptive: Option<AdaptiveConfig> = match taft.get("adaptive") {
        None | Some(serde_json::Value::Null) => None,
        Some(a) => Some(
            serde_json::from_value(a.clone())
                .map_err(|e| Error::input(format!("{}: adaptive: {e}", dir.name("taft.json"))))?,
        ),
    };
    let shard = config.shard.as_deref().map(Shard::parse).transpose().map_err(Error::config)?;
    let rows: Vec<(Vec<String>, i64)> = conversations
        .iter()
        .filter(|c| c.split.is_labeled() && shard.is_none_or(|s| s.holds(&c.id)))
        .map(|c| (c.utterances.iter().map(|u| u.text.clone()).collect(), 0))
        .collect();
    let read = rows.len();
    let items = Items::new(&tokenizer, rows, config.max_length, cut)?;
    let rows = distinct(items.ids.iter());

    let threads = crate::train::TrainConfig::threads_or_default(config.threads)?;
    tch::set_num_threads(threads as i32);
    let device = crate::model::parse_device(&config.device)?;
    let vs = nn::VarStore::new(device);
    let encoder = Encoder::new(&vs.root(), &encoder_config, family);
    checkpoint::load_weights(&vs, dir, &[])?;

    let first_token_only = adaptive.is_none();
    let width = adaptive.as_ref().filter(|a| !a.mask_padding).map(|_| config.max_length);
    let settings = CacheSettings {
        first_token_only,
        fp16: config.fp16,
        memory_bytes: 0,
        scratch,
        batch_size: config.batch_size,
        pad: encoder_config.pad_id(),
        device,
    };
    let mut file = std::io::BufWriter::new(tempfile::tempfile_in(scratch)?);
    let mut index = Vec::with_capacity(rows.len());
    let mut offset = 0u64;
    encode_each(&encoder, &rows, width, &settings, |r, state| {
        let bytes = tensor_bytes(&state);
        file.write_all(&bytes)?;
        index.push(IndexRecord { key: super::key(rows[r]), offset, tokens: state.size()[0] as u64 });
        offset += bytes.len() as u64;
        Ok(())
    })?;
    let mut states = file.into_inner().map_err(|e| Error::Io(e.into_error()))?;
    states.rewind()?;
    Ok(Encoded {
        states,
        index,
        bytes: offset,
        first_token_only,
        width,
        hidden: encoder_config.hidden_size,
        read,
        threads,
    })
}
