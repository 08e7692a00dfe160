//! Inference on ONNX Runtime: an exported model (`model.onnx`, `tokenizer.json`, `taft.json`)
//! loaded into an ort session, the items of conversations, batch prediction and the HTTP
//! server. No libtorch here: the serving build carries this module alone.

pub mod items;
pub mod server;

use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{Error, Result};
use crate::model::dir::{TAFT_JSON, TOKENIZER};
use crate::store::manifest::Committed;
use crate::text::{BatchEncoder, Encoded, TextTokenizer};

pub use crate::onnx::{Variant, MODEL, MODEL_INT8};

/// An ort session of an ONNX file.
pub fn session(bytes: &[u8], threads: Option<usize>, source: &str) -> Result<Session> {
    let env = crate::runtime::ort_environment()?;
    let fail = |e: String| Error::input(format!("{source}: ONNX Runtime cannot load the model: {e}"));
    let mut builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
    builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| fail(e.to_string()))?;
    builder = builder.with_inter_threads(1).map_err(|e| fail(e.to_string()))?;
    if let Some(n) = threads {
        builder = builder.with_intra_threads(n).map_err(|e| fail(e.to_string()))?;
    }
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
    /// Items are utterances (a speaker-role model), not conversations.
    pub utterance_level: bool,
    /// `taft.json` of the export.
    pub taft: serde_json::Value,
    pub variant: Variant,
    session: Mutex<Session>,
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
        tokio::task::spawn_blocking(move || Exported::from_bytes(&url, &model, &tokenizer, &taft, variant, threads))
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
        let tokenizer = TextTokenizer::from_bytes(tokenizer, &format!("{url}/{TOKENIZER}"))?;
        let session = session(model, threads, &format!("{url}/{}", variant.file()))?;
        Ok(Exported {
            url: url.to_string(),
            encoder: tokenizer.batches(max_length)?,
            tokenizer,
            utterance_level: crate::model::dir::utterance_level(&heads),
            heads,
            max_length,
            taft,
            variant,
            session: Mutex::new(session),
        })
    }

    pub fn head_names(&self) -> Vec<String> {
        self.heads.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Class probabilities of each text, per head: `[head][item][class]`. Texts are run in
    /// batches of `batch_size` of similar lengths (little padding); the results come back
    /// in the texts' order.
    pub fn probabilities<S: AsRef<str>>(&self, texts: &[S], batch_size: usize) -> Result<Vec<Vec<Vec<f32>>>> {
        let lengths: Vec<usize> = texts.iter().map(|t| t.as_ref().len()).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let names = self.head_names();
        let mut probs: Vec<Vec<Vec<f32>>> = self.heads.iter().map(|_| vec![Vec::new(); texts.len()]).collect();
        for rows in order.chunks(batch_size.max(1)) {
            let batch: Vec<&str> = rows.iter().map(|&i| texts[i].as_ref()).collect();
            let enc = self.encoder.encode(&batch)?;
            let out = {
                let mut session = self.session.lock().map_err(|_| Error::Other("ONNX session poisoned".into()))?;
                run(&mut session, &enc, &names)?
            };
            for (h, (_, p)) in out.iter().enumerate() {
                let width = self.heads[h].1.len();
                for (k, &row) in rows.iter().enumerate() {
                    probs[h][row] = p[k * width..(k + 1) * width].to_vec();
                }
            }
        }
        Ok(probs)
    }
}

/// The index of the largest probability (the first on ties).
pub fn argmax(p: &[f32]) -> usize {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a))).unwrap_or(0)
}
