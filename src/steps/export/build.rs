//! `taft export` on tch and ONNX Runtime: the trained model rebuilt from its directory, its
//! parameters written into the ONNX graph, and both run side by side before the commit.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tch::{nn, Device, Kind, Tensor};

use super::{ExportConfig, Quantize};
use crate::data::{Conversation, Split};
use crate::error::{Error, Result};
use crate::infer::{self, items, Exported, Variant};
use crate::model::adaptive::AdaptiveConfig;
use crate::model::checkpoint;
use crate::model::config::{EncoderConfig, Family};
use crate::model::dir::{self, ModelDir, TAFT_JSON, TOKENIZER};
use crate::model::heads::Classifier;
use crate::onnx::model::{Param, Spec};
use crate::steps::io::{fetch_model_dir, read_prep};
use crate::store::commit::Output;
use crate::store::manifest::Manifest;
use crate::store::Store;
use crate::text::{Encoded, TextTokenizer};

/// The validation batches: (batch, sequence length) — batch 1 and 8, short and max-length.
const SHORT: usize = 8;

pub async fn run(config: &ExportConfig, out: &mut Output) -> Result<serde_json::Value> {
    let (model_url, prep_url, source) = sort_inputs(&config.inputs).await?;
    let tmp = tempfile::tempdir()?;
    fetch_model_dir(&model_url, tmp.path()).await?;
    let dir = ModelDir::new(tmp.path(), &model_url);
    let conversations = match &prep_url {
        Some(url) => Some(read_prep(url).await?),
        None => None,
    };
    let config2 = config.clone();
    let out_url = out.store().url().to_string();
    let (files, summary) = tokio::task::spawn_blocking(move || export(&config2, &dir, conversations, &out_url, source))
        .await
        .map_err(|e| Error::Other(format!("export: {e}")))??;
    for (name, bytes) in files {
        out.put(&name, bytes).await?;
    }
    Ok(summary)
}

/// The model (a finetune or role output), when given the prep output, and what made the
/// model (its step and fingerprint: where it came from without naming a location).
async fn sort_inputs(inputs: &[String]) -> Result<(String, Option<String>, serde_json::Value)> {
    let (mut models, mut preps) = (Vec::new(), Vec::new());
    let mut source = serde_json::Value::Null;
    for url in inputs {
        let manifest = Manifest::require(&Store::open(url)?).await?;
        match manifest.step.as_str() {
            "prep" => preps.push(url.clone()),
            "finetune" | "role" => {
                source = serde_json::json!({"step": manifest.step, "fingerprint": manifest.fingerprint});
                models.push(url.clone())
            }
            other => {
                return Err(Error::input(format!(
                    "{url}: made by `taft {other}`: export takes a finetune or role output (and a prep output for int8)"
                )))
            }
        }
    }
    match (models.as_slice(), preps.as_slice()) {
        ([m], []) => Ok((m.clone(), None, source)),
        ([m], [p]) => Ok((m.clone(), Some(p.clone()), source)),
        _ => Err(Error::input(format!(
            "export takes one finetune or role output (and, for int8, one prep output); got {} model(s) and {} prep output(s)",
            models.len(),
            preps.len()
        ))),
    }
}

fn export(
    config: &ExportConfig,
    dir: &ModelDir,
    conversations: Option<Vec<Conversation>>,
    out_url: &str,
    source: serde_json::Value,
) -> Result<(Vec<(String, Bytes)>, serde_json::Value)> {
    let (encoder_config, family, tokenizer) = dir.read_model()?;
    let mut taft = dir.taft_json()?;
    let heads = dir::heads(&taft, &dir.name(TAFT_JSON))?;
    let adaptive: Option<AdaptiveConfig> = match taft.get("adaptive") {
        None | Some(serde_json::Value::Null) => None,
        Some(a) => Some(
            serde_json::from_value(a.clone())
                .map_err(|e| Error::input(format!("{}: adaptive: {e}", dir.name(TAFT_JSON))))?,
        ),
    };
    let max_length =
        taft["max_length"].as_u64().ok_or_else(|| Error::input(format!("{}: no `max_length`", dir.name(TAFT_JSON))))?
            as usize;
    encoder_config.check_length("max_length", max_length, &dir.url)?;
    let threads = crate::train::TrainConfig::threads_or_default(config.threads)?;
    tch::set_num_threads(threads as i32);

    let vs = nn::VarStore::new(Device::Cpu);
    let shapes: Vec<(String, i64)> = heads.iter().map(|(n, c)| (n.clone(), c.len() as i64)).collect();
    let model = Classifier::new(&vs.root(), &encoder_config, family, adaptive.as_ref(), &shapes, 0.0);
    checkpoint::load_weights(&vs, dir, &[])?;
    let params: BTreeMap<String, Param> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let dims = t.size();
            let data = Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().view([-1]))
                .map_err(|e| Error::Other(format!("{name}: {e}")))?;
            Ok((name, Param { dims, data }))
        })
        .collect::<Result<_>>()?;

    // taft.json of the export: the model's, plus what the ONNX files are.
    let head_sizes: Vec<(String, usize)> = heads.iter().map(|(n, c)| (n.clone(), c.len())).collect();
    let outputs: Vec<String> =
        heads.iter().flat_map(|(n, _)| [crate::onnx::logits_name(n), crate::onnx::probs_name(n)]).collect();
    let mut files = Vec::new();
    taft["export"] = serde_json::json!({
        "opset": crate::onnx::graph::OPSET,
        "graph": config.graph.as_str(),
        "inputs": [crate::onnx::INPUT_IDS, crate::onnx::ATTENTION_MASK],
        "outputs": outputs,
        "source": source,
    });
    // What a reader of the file alone needs; the lineage (fingerprints, which depend on where
    // the steps wrote) stays in taft.json, so one model gives one file wherever it was made.
    let metadata = [
        ("taft.method", taft["method"].as_str().unwrap_or_default().to_string()),
        ("taft.heads", serde_json::to_string(&taft["heads"])?),
        ("taft.max_length", max_length.to_string()),
    ];
    let spec = Spec {
        config: &encoder_config,
        family,
        adaptive: adaptive.as_ref(),
        heads: &head_sizes,
        int8: false,
        graph: config.graph,
    };
    let fp32 = crate::onnx::encode(&crate::onnx::model::classifier(&spec, &params, &metadata)?);

    // Parity with the trained model.
    let names: Vec<String> = heads.iter().map(|(n, _)| n.clone()).collect();
    let mut session = infer::session(&fp32, Some(threads), &format!("{out_url}/{}", infer::MODEL))?;
    let mut diffs: BTreeMap<String, f64> = BTreeMap::new();
    let mut cases = Vec::new();
    for (batch, seq) in [(1, SHORT.min(max_length)), (1, max_length), (8, SHORT.min(max_length)), (8, max_length)] {
        let enc = probe(&tokenizer, &encoder_config, batch, seq, config.seed ^ (batch * 1000 + seq) as u64);
        let reference = tch::no_grad(|| torch_outputs(&model, &enc, &names));
        let onnx = infer::run(&mut session, &enc, &names)?;
        let mut case = serde_json::Map::new();
        for (h, name) in names.iter().enumerate() {
            for (k, output) in [crate::onnx::logits_name(name), crate::onnx::probs_name(name)].into_iter().enumerate() {
                let (a, b) = if k == 0 { (&reference[h].0, &onnx[h].0) } else { (&reference[h].1, &onnx[h].1) };
                let d = max_abs_diff(a, b);
                if d.is_nan() || d > config.tolerance {
                    return Err(Error::Other(format!(
                        "export validation: output `{output}` of the ONNX model differs from the trained model by {d:.3e} (tolerance {:e}) on a batch of {batch} × {seq} tokens; nothing was committed",
                        config.tolerance
                    )));
                }
                let slot = diffs.entry(output.clone()).or_insert(0.0);
                *slot = slot.max(d);
                case.insert(output, serde_json::json!(d));
            }
        }
        let padding = enc.attention_mask.iter().filter(|&&m| m == 0).count();
        cases.push(
            serde_json::json!({"batch": batch, "sequence": seq, "padding_tokens": padding, "max_abs_diff": case}),
        );
    }
    drop(session);

    let taft_bytes = serde_json::to_vec_pretty(&taft)?;
    let tokenizer_bytes = dir.read(TOKENIZER)?;
    let mut summary = serde_json::json!({
        "model": dir.url,
        "family": match family { Family::Bert => "bert", Family::Roberta => "roberta" },
        "adaptive": adaptive.as_ref().map(|a| serde_json::json!({"mask_padding": a.mask_padding})),
        "heads": heads.iter().map(|(n, c)| (n.clone(), serde_json::json!(c))).collect::<serde_json::Map<_, _>>(),
        "max_length": max_length,
        "graph": config.graph.as_str(),
        "threads": threads,
        "bytes": fp32.len(),
        "validation": {"tolerance": config.tolerance, "max_abs_diff": diffs, "cases": cases},
    });

    if config.quantize == Quantize::Int8 {
        let conversations =
            conversations.ok_or_else(|| Error::config("quantize: int8 needs a prep output among the inputs"))?;
        let int8 =
            crate::onnx::encode(&crate::onnx::model::classifier(&Spec { int8: true, ..spec }, &params, &metadata)?);
        let check =
            agreement(config, &fp32, &int8, &tokenizer_bytes, &taft_bytes, &conversations, Some(threads), out_url)?;
        summary["int8"] = check;
        summary["int8"]["bytes"] = serde_json::json!(int8.len());
        files.push((infer::MODEL_INT8.to_string(), Bytes::from(int8)));
    }
    files.push((infer::MODEL.to_string(), Bytes::from(fp32)));
    files.push((TOKENIZER.to_string(), Bytes::from(tokenizer_bytes)));
    files.push((TAFT_JSON.to_string(), Bytes::from(taft_bytes)));
    Ok((files, summary))
}

/// A batch of `batch` rows of random tokens: the first row `seq` tokens long, the others
/// shorter (padded), each with the classification token first and the separator last.
fn probe(tokenizer: &TextTokenizer, config: &EncoderConfig, batch: usize, seq: usize, seed: u64) -> Encoded {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let special: Vec<i64> = tokenizer.special_ids().into_iter().map(i64::from).collect();
    let vocab = (tokenizer.max_id() as i64 + 1).min(config.vocab_size);
    let pad = i64::from(tokenizer.pad_id);
    let mut enc = Encoded { input_ids: Vec::new(), attention_mask: Vec::new(), batch, seq };
    for row in 0..batch {
        let len = if row == 0 { seq } else { rng.random_range(2.min(seq)..=seq) };
        for i in 0..seq {
            let id = if i >= len {
                pad
            } else if i == 0 {
                i64::from(tokenizer.cls_id)
            } else if i + 1 == len {
                i64::from(tokenizer.sep_id)
            } else {
                loop {
                    let t = rng.random_range(0..vocab);
                    if !special.contains(&t) {
                        break t;
                    }
                }
            };
            enc.input_ids.push(id);
            enc.attention_mask.push(i64::from(i < len));
        }
    }
    enc
}

/// The trained model's (logits, probabilities) per head, row-major.
fn torch_outputs(model: &Classifier, enc: &Encoded, heads: &[String]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let shape = [enc.batch as i64, enc.seq as i64];
    let ids = Tensor::from_slice(&enc.input_ids).view(shape);
    let mask = Tensor::from_slice(&enc.attention_mask).view(shape);
    let out = model.forward_t(&ids, &mask, false);
    heads
        .iter()
        .map(|h| {
            let logits = out.logits[h].to_kind(Kind::Float);
            let probs = logits.softmax(-1, Kind::Float);
            let flat = |t: &Tensor| Vec::<f32>::try_from(&t.contiguous().view([-1])).expect("float outputs");
            (flat(&logits), flat(&probs))
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        // f64::max drops a NaN: once one is seen the result stays NaN.
        .fold(0.0, |m: f64, d| if m.is_nan() || d.is_nan() { f64::NAN } else { m.max(d) })
}

/// The int8 model against fp32 on the validation split: argmax agreement per head (each at
/// least `min_agreement`) and the largest probability difference.
#[allow(clippy::too_many_arguments)]
fn agreement(
    config: &ExportConfig,
    fp32: &[u8],
    int8: &[u8],
    tokenizer: &[u8],
    taft: &[u8],
    conversations: &[Conversation],
    threads: Option<usize>,
    out_url: &str,
) -> Result<serde_json::Value> {
    let a = Exported::from_bytes(out_url, fp32, tokenizer, taft, Variant::Fp32, threads)?;
    let b = Exported::from_bytes(out_url, int8, tokenizer, taft, Variant::Int8, threads)?;
    let mut texts = Vec::new();
    for c in conversations.iter().filter(|c| c.split == Split::Val) {
        let utterances: Vec<String> = c.utterances.iter().map(|u| u.text.clone()).collect();
        let authors: Vec<u8> = c.utterances.iter().map(|u| u.speaker).collect();
        for item in items::of_conversation(&c.id, &utterances, Some(&authors), a.utterance_level) {
            texts.push(item.text);
        }
    }
    if texts.is_empty() {
        return Err(Error::input(
            "quantize: int8: the prep output's validation split is empty: nothing to check the int8 model on",
        ));
    }
    let pa = a.probabilities(&texts, 32)?;
    let pb = b.probabilities(&texts, 32)?;
    let mut heads = serde_json::Map::new();
    let mut max_diff = 0f64;
    for (h, (name, _)) in a.heads.iter().enumerate() {
        let same = (0..texts.len()).filter(|&i| infer::argmax(&pa[h][i]) == infer::argmax(&pb[h][i])).count();
        let share = same as f64 / texts.len() as f64;
        let diff = (0..texts.len()).map(|i| max_abs_diff(&pa[h][i], &pb[h][i])).fold(0.0, f64::max);
        max_diff = max_diff.max(diff);
        if share < config.min_agreement {
            return Err(Error::Other(format!(
                "export validation: the int8 model agrees with fp32 on {:.2} % of the {} validation items of head `{name}` (min_agreement {:.2} %); nothing was committed",
                share * 100.0,
                texts.len(),
                config.min_agreement * 100.0
            )));
        }
        heads.insert(name.clone(), serde_json::json!({"agreement": share, "max_prob_diff": diff}));
    }
    Ok(
        serde_json::json!({"items": texts.len(), "heads": heads, "max_prob_diff": max_diff, "min_agreement": config.min_agreement}),
    )
}

#[cfg(test)]
mod tests {
    use super::max_abs_diff;

    #[test]
    fn a_nan_anywhere_makes_the_difference_nan() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        for at in 0..3 {
            let mut a = vec![1.0f32, 2.0, 3.0];
            a[at] = f32::NAN;
            assert!(max_abs_diff(&a, &[1.0, 2.0, 3.0]).is_nan(), "NaN at {at}");
        }
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }
}
