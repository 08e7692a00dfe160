//! `taft evaluate` on tch: the model rebuilt from its directory, every item of the split
//! scored once (batches of similar lengths), then per task the metrics, reports, charts,
//! resamples and predictions.

use bytes::Bytes;
use tch::{nn, Device, Kind};

use super::{Evaluate, EvaluateConfig};
use crate::data::samplers::{Imbalanced, Sampler};
use crate::data::tasks::{Task, TaskQuirks};
use crate::data::{ConvId, Conversation, Split};
use crate::error::{Error, Result};
use crate::eval::charts;
use crate::eval::metrics::Report;
use crate::eval::predictions::{self, TaskPredictions};
use crate::model::adaptive::AdaptiveConfig;
use crate::model::checkpoint;
use crate::model::dir::ModelDir;
use crate::model::heads::Classifier;
use crate::steps::io::{fetch_model_dir, read_prep, DataAndModel};
use crate::steps::Step;
use crate::store::commit::Output;
use crate::store::manifest::Committed;

/// One task of the model: its head, classes and the label rule of its items.
struct Head {
    name: String,
    classes: Vec<String>,
    /// The conversation task (None: the utterance-level speaker role).
    task: Option<Task>,
}

/// What the split holds for the model: one item per conversation (or utterance), its text
/// and its labels (by head).
struct Scored {
    ids: Vec<ConvId>,
    utterances: Option<Vec<i32>>,
    texts: Vec<Vec<String>>,
    labels: Vec<Vec<Option<i64>>>,
}

pub async fn run(config: &EvaluateConfig, out: &mut Output) -> Result<serde_json::Value> {
    let inputs = DataAndModel::sort(Evaluate::NAME, &config.inputs).await?;
    let conversations = read_prep(&inputs.data).await?;
    let tmp = tempfile::tempdir()?;
    fetch_model_dir(&inputs.model, tmp.path()).await?;
    let dir = ModelDir::new(tmp.path(), &inputs.model);
    let model = Committed::open(&inputs.model).await?;
    let history = if model.has("metrics.jsonl") { Some(model.read("metrics.jsonl").await?) } else { None };
    let config2 = config.clone();
    let (files, summary) = tokio::task::spawn_blocking(move || score(&config2, &dir, &conversations, history))
        .await
        .map_err(|e| Error::Other(format!("evaluate: {e}")))??;
    for (name, bytes) in files {
        out.put(&name, bytes).await?;
    }
    Ok(summary)
}

fn score(
    config: &EvaluateConfig,
    dir: &ModelDir,
    conversations: &[Conversation],
    history: Option<Bytes>,
) -> Result<(Vec<(String, Bytes)>, serde_json::Value)> {
    let (encoder_config, family, tokenizer) = dir.read_model()?;
    let taft = dir.taft_json()?;
    let heads = heads(&taft, dir)?;
    let adaptive: Option<AdaptiveConfig> = match taft.get("adaptive") {
        None | Some(serde_json::Value::Null) => None,
        Some(a) => Some(
            serde_json::from_value(a.clone())
                .map_err(|e| Error::input(format!("{}: adaptive: {e}", dir.name("taft.json"))))?,
        ),
    };
    let quirks: TaskQuirks = serde_json::from_value(taft["quirks"].clone()).unwrap_or_default();
    let max_length = taft["max_length"].as_u64().unwrap_or(512) as usize;
    let method = taft["method"].as_str().unwrap_or("");
    let scored = items(&heads, conversations, config.split, method, quirks)?;
    if scored.texts.is_empty() {
        return Err(Error::input(format!("evaluate: the {} split has nothing to score", config.split.as_str())));
    }

    let device = crate::model::parse_device(&config.device)?;
    let threads = crate::train::TrainConfig::threads_or_default(config.threads)?;
    tch::set_num_threads(threads as i32);
    let vs = nn::VarStore::new(device);
    let shapes: Vec<(String, i64)> = heads.iter().map(|h| (h.name.clone(), h.classes.len() as i64)).collect();
    let model = Classifier::new(&vs.root(), &encoder_config, family, adaptive.as_ref(), &shapes, 0.0);
    checkpoint::load_weights(&vs, dir, &[])?;
    let truncation = crate::model::dir::truncation(&taft, &dir.name("taft.json"))?;
    let width = adaptive.as_ref().filter(|a| !a.mask_padding).map(|_| max_length);
    let items = crate::steps::training::Items::new(
        &tokenizer,
        scored.texts.iter().map(|t| (t.clone(), 0)).collect(),
        max_length,
        truncation,
    )?
    .fixed_width(width);
    let probs =
        tch::no_grad(|| probabilities(&model, &items, &heads, encoder_config.pad_id(), config.batch_size, device));

    let train_labels = items_labels(&heads, conversations, Split::Train, method, quirks);
    let mut files = Vec::new();
    let mut tasks = serde_json::Map::new();
    for (h, head) in heads.iter().enumerate() {
        let classes: Vec<&str> = head.classes.iter().map(String::as_str).collect();
        let labeled: Vec<usize> = (0..scored.ids.len()).filter(|&i| scored.labels[h][i].is_some()).collect();
        if labeled.is_empty() {
            continue;
        }
        let y: Vec<i64> = labeled.iter().map(|&i| scored.labels[h][i].expect("labeled")).collect();
        let pred: Vec<i64> = labeled.iter().map(|&i| argmax(&probs[h][i])).collect();
        let report = Report::new(&y, &pred, classes.len()).map_err(Error::Other)?;
        let loss =
            labeled.iter().zip(&y).map(|(&i, &t)| -(probs[h][i][t as usize].max(1e-12) as f64).ln()).sum::<f64>()
                / y.len() as f64;
        let baseline = majority(&train_labels[h], classes.len()).map(|m| {
            let b = Report::new(&y, &vec![m; y.len()], classes.len()).expect("labels in range");
            serde_json::json!({"class": classes[m as usize], "accuracy": b.accuracy, "f1_macro": b.macro_avg.f1, "f1_weighted": b.weighted_avg.f1})
        });
        let resamples = (config.test_resamples > 0).then(|| resample(config, &heads, &scored, &probs, h));
        files.push((
            format!("report_{}.json", head.name),
            Bytes::from(serde_json::to_vec_pretty(&report.classification_report(&classes))?),
        ));
        files.push((format!("report_{}.tsv", head.name), Bytes::from(report.classification_tsv(&classes))));
        let task_name = head.task.map_or("role", Task::name);
        let title = format!("{task_name} — {} split ({} items)", config.split.as_str(), y.len());
        files.push((
            format!("confusion_{}.png", head.name),
            Bytes::from(charts::confusion_png(&title, &classes, &report.confusion.counts)?),
        ));
        tasks.insert(
            head.name.clone(),
            serde_json::json!({
                "task": task_name,
                "classes": classes,
                "items": y.len(),
                "loss": loss,
                "accuracy": report.accuracy,
                "precision_weighted": report.weighted_avg.precision,
                "recall_weighted": report.weighted_avg.recall,
                "f1_weighted": report.weighted_avg.f1,
                "precision_macro": report.macro_avg.precision,
                "recall_macro": report.macro_avg.recall,
                "f1_macro": report.macro_avg.f1,
                "kappa": report.kappa,
                "mcc": report.mcc,
                "confusion": report.confusion.counts,
                "baseline": baseline,
                "resamples": resamples,
            }),
        );
    }
    if let Some(bytes) = history {
        let records: Vec<serde_json::Value> =
            String::from_utf8_lossy(&bytes).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let (left, right) = charts::run_series(&records);
        let title = format!("training of {}", model_name(&dir.url));
        files.push(("curves.png".into(), Bytes::from(charts::curves_png(&title, &left, &right)?)));
    }
    let head_predictions: Vec<TaskPredictions> = heads
        .iter()
        .enumerate()
        .map(|(h, head)| TaskPredictions {
            head: &head.name,
            classes: &head.classes,
            labels: Some(&scored.labels[h]),
            probs: &probs[h],
        })
        .collect();
    files.push((
        "predictions.parquet".into(),
        predictions::write(&scored.ids, scored.utterances.as_deref(), &head_predictions)?,
    ));
    let metrics = serde_json::json!({
        "split": config.split.as_str(),
        // The model by name and lineage, not location: the same run elsewhere writes the
        // same file.
        "model": {
            "name": model_name(&dir.url),
            "method": taft["method"],
            // The seed of the step that trained the heads: runs that differ only by it are
            // grouped by `compare`.
            "seed": if taft["finetune"].is_object() { &taft["finetune"]["seed"] } else { &taft["role"]["seed"] },
            "lineage": taft["lineage"],
        },
        "tasks": tasks,
    });
    files.push(("metrics.json".into(), Bytes::from(serde_json::to_vec_pretty(&metrics)?)));
    let summary = serde_json::json!({
        "split": config.split.as_str(),
        "items": scored.ids.len(),
        "threads": threads,
        "tasks": tasks.iter().map(|(k, t)| (k.clone(), serde_json::json!({
            "task": t["task"], "accuracy": t["accuracy"], "f1_weighted": t["f1_weighted"], "f1_macro": t["f1_macro"],
            "kappa": t["kappa"], "mcc": t["mcc"], "baseline_f1_macro": t["baseline"]["f1_macro"],
        }))).collect::<serde_json::Map<_, _>>(),
    });
    Ok((files, summary))
}

/// The model's tasks, from its `taft.json`: `heads` (class names by head) and `tasks` (the
/// label rule of each conversation head).
fn heads(taft: &serde_json::Value, dir: &ModelDir) -> Result<Vec<Head>> {
    let source = dir.name("taft.json");
    let mut out = Vec::new();
    for (name, classes) in crate::model::dir::heads(taft, &source)? {
        let bad = |what: String| {
            Error::input(format!("{source}: {what}: not a model with classifiers (a finetune or role output)"))
        };
        let task = match name.as_str() {
            "role" => None,
            _ => Some(
                serde_json::from_value::<Task>(taft["tasks"][&name].clone())
                    .map_err(|_| bad(format!("tasks.{name}")))?,
            ),
        };
        if task.is_some_and(|t| t.classes().len() != classes.len()) {
            return Err(bad(format!("heads.{name} does not match tasks.{name}")));
        }
        out.push(Head { name, classes, task });
    }
    Ok(out)
}

/// The items of the split: conversations (conversation heads) or customer and operator
/// utterances (the role head), with their labels by head.
fn items(
    heads: &[Head],
    conversations: &[Conversation],
    split: Split,
    method: &str,
    quirks: TaskQuirks,
) -> Result<Scored> {
    let of_split = conversations.iter().filter(|c| c.split == split);
    if heads.iter().any(|h| h.task.is_none()) {
        let mut s =
            Scored { ids: Vec::new(), utterances: Some(Vec::new()), texts: Vec::new(), labels: vec![Vec::new()] };
        for c in of_split {
            for (i, u) in c.utterances.iter().enumerate().filter(|(_, u)| u.speaker >= 2) {
                s.ids.push(c.id.clone());
                s.utterances.as_mut().expect("set").push(i as i32);
                s.texts.push(vec![u.text.clone()]);
                s.labels[0].push(Some(i64::from(u.speaker) - 2));
            }
        }
        return Ok(s);
    }
    let mut s = Scored { ids: Vec::new(), utterances: None, texts: Vec::new(), labels: vec![Vec::new(); heads.len()] };
    for c in of_split {
        s.ids.push(c.id.clone());
        s.texts.push(c.utterances.iter().map(|u| u.text.clone()).collect());
        for (h, head) in heads.iter().enumerate() {
            s.labels[h].push(head.task.and_then(|t| t.label_for(method, c, quirks)));
        }
    }
    Ok(s)
}

/// The labels of a split by head (for the majority baseline).
fn items_labels(
    heads: &[Head],
    conversations: &[Conversation],
    split: Split,
    method: &str,
    quirks: TaskQuirks,
) -> Vec<Vec<i64>> {
    heads
        .iter()
        .map(|head| {
            let of_split = conversations.iter().filter(|c| c.split == split);
            match head.task {
                Some(t) => of_split.filter_map(|c| t.label_for(method, c, quirks)).collect(),
                None => of_split
                    .flat_map(|c| c.utterances.iter())
                    .filter(|u| u.speaker >= 2)
                    .map(|u| i64::from(u.speaker) - 2)
                    .collect(),
            }
        })
        .collect()
}

fn majority(labels: &[i64], classes: usize) -> Option<i64> {
    if labels.is_empty() {
        return None;
    }
    let mut counts = vec![0usize; classes];
    for &y in labels {
        counts[y as usize] += 1;
    }
    (0..classes).max_by_key(|&c| (counts[c], std::cmp::Reverse(c))).map(|c| c as i64)
}

fn argmax(p: &[f32]) -> i64 {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a))).unwrap_or(0) as i64
}

/// Class probabilities of every item by head, in batches of similar lengths.
fn probabilities(
    model: &Classifier,
    items: &crate::steps::training::Items,
    heads: &[Head],
    pad: i64,
    batch: usize,
    device: Device,
) -> Vec<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items.ids[i].len()));
    let mut probs: Vec<Vec<Vec<f32>>> = heads.iter().map(|_| vec![Vec::new(); items.len()]).collect();
    for rows in order.chunks(batch.max(1)) {
        let (ids, mask, _) = items.batch(rows, pad, device);
        let out = model.forward_t(&ids, &mask, false);
        for (h, head) in heads.iter().enumerate() {
            let p = out.logits[&head.name].to_kind(Kind::Float).softmax(-1, Kind::Float).to_device(Device::Cpu);
            let width = p.size()[1] as usize;
            let flat = Vec::<f32>::try_from(&p.view([-1])).expect("float probabilities");
            for (k, &row) in rows.iter().enumerate() {
                probs[h][row] = flat[k * width..(k + 1) * width].to_vec();
            }
        }
    }
    probs
}

/// The original protocol (SPEC §5): each resample draws every task's labeled items with the
/// imbalanced sampler, walks the tasks in lockstep and stops with the shorter; the metrics
/// of head `h` over the resamples, as mean and (population) standard deviation.
fn resample(
    config: &EvaluateConfig,
    heads: &[Head],
    scored: &Scored,
    probs: &[Vec<Vec<f32>>],
    h: usize,
) -> serde_json::Value {
    let labeled: Vec<Vec<usize>> =
        (0..heads.len()).map(|k| (0..scored.ids.len()).filter(|&i| scored.labels[k][i].is_some()).collect()).collect();
    let mut values: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for r in 0..config.test_resamples as u64 {
        let orders: Vec<Vec<usize>> = labeled
            .iter()
            .enumerate()
            .map(|(k, idx)| {
                let ys: Vec<i64> = idx.iter().map(|&i| scored.labels[k][i].expect("labeled")).collect();
                Imbalanced::new(&ys).order(config.seed, r).into_iter().map(|j| idx[j]).collect()
            })
            .collect();
        let n = orders.iter().map(Vec::len).filter(|&n| n > 0).min().unwrap_or(0);
        let take = &orders[h][..n.min(orders[h].len())];
        let y: Vec<i64> = take.iter().map(|&i| scored.labels[h][i].expect("labeled")).collect();
        let p: Vec<i64> = take.iter().map(|&i| argmax(&probs[h][i])).collect();
        let Ok(report) = Report::new(&y, &p, heads[h].classes.len()) else { continue };
        for (name, v) in [
            ("accuracy", report.accuracy),
            ("f1_weighted", report.weighted_avg.f1),
            ("f1_macro", report.macro_avg.f1),
            ("kappa", report.kappa),
            ("mcc", report.mcc),
        ] {
            values.entry(name).or_default().push(v);
        }
    }
    let stat = |v: &[f64]| {
        let (mean, std) = crate::eval::metrics::mean_std(v);
        serde_json::json!({"mean": mean, "std": std})
    };
    let size = labeled.iter().map(Vec::len).filter(|&n| n > 0).min().unwrap_or(0);
    serde_json::json!({
        "n": config.test_resamples,
        "seed": config.seed,
        "size": size,
        "metrics": values.iter().map(|(k, v)| (k.to_string(), stat(v))).collect::<serde_json::Map<_, _>>(),
    })
}

/// The last segment of a model's URL (its step's output key).
fn model_name(url: &str) -> &str {
    let url = url.trim_end_matches('/');
    url.rsplit('/').next().unwrap_or(url)
}
