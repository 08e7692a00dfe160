//! `taft finetune` on tch: the method's parent checked, the conversations of each task
//! encoded, the multi-task objective (one encoder pass per task batch, weighted losses
//! mixed), evaluation on each task's full validation set, and the test report with the
//! majority-class baseline.

use std::cell::Cell;

use tch::{nn, Device, Tensor};

use super::cache::{CacheSettings, EncoderCache, StoredStates};
use super::{EpisodeWeights, Finetune, FinetuneConfig, Method, SamplerKind};
use crate::data::samplers::{Categories, Episodic, Imbalanced, MaxSizeCycle, Sampler, Shuffle};
use crate::data::tasks::Task;
use crate::data::{Conversation, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::{figure, mean_std, Report};
use crate::model::adaptive::AdaptiveConfig;
use crate::model::checkpoint::{self, Arch};
use crate::model::dir::ModelDir;
use crate::model::heads::Classifier;
use crate::steps::encode::{self, Opened};
use crate::steps::io::DataAndModel;
use crate::steps::training::{self, Items, Padding, TrainingJob};
use crate::steps::Step;
use crate::store::commit::Output;
use crate::text::TextTokenizer;
use crate::train::loss::{task_shares, weighted_loss};
use crate::train::sampler::mix;
use crate::train::work::WorkDir;
use crate::train::{self, Fit, GroupRule, Metrics, Objective, Precision, TrainConfig};

pub async fn run(config: &FinetuneConfig, out: &mut Output) -> Result<serde_json::Value> {
    let (inputs, encoded) = encode::split_inputs(&config.inputs).await?;
    let states = if encoded.is_empty() {
        None
    } else {
        if !config.method.frozen_encoder() {
            return Err(Error::config(format!(
                "inputs: {} is an encode output; method `{}` trains the encoder, only taft and noadapt read frozen states",
                encoded[0].url(),
                config.method.name()
            )));
        }
        let sorted = DataAndModel::sort(Finetune::NAME, &inputs).await?;
        let expected = encode::Expected {
            data: &sorted.data,
            model: &sorted.model,
            max_length: config.max_length,
            truncation: config.truncation(),
            all_tokens: config.method == Method::Taft,
        };
        Some(encode::open(&encoded, &expected).await?)
    };
    let config = config.clone();
    let train = move |job: &TrainingJob| train_tasks(&config, job, states.as_ref());
    training::run_scored(Finetune::NAME, &inputs, out, train, headlines, &["cross_validation"]).await
}

/// The step the method's parent must come from, and the role variant when it is `role`.
fn expected_parent(method: Method) -> (&'static str, Option<&'static str>) {
    match method {
        Method::Taft => ("role", Some("adaptive")),
        Method::Noadapt | Method::Tapt => ("role", Some("direct")),
        Method::Dapt => ("dapt", None),
        Method::Finetune => ("init", None),
    }
}

/// Checks that the model directory is the method's parent (its `taft.json` lineage) and
/// returns the parent's adaptive layer settings (taft).
fn check_parent(method: Method, src: &ModelDir) -> Result<Option<AdaptiveConfig>> {
    let taft = src.taft_json()?;
    let found = taft["lineage"].as_array().and_then(|l| l.last()).and_then(|e| e["step"].as_str()).unwrap_or("");
    let variant = taft["role"]["variant"].as_str();
    let (step, want_variant) = expected_parent(method);
    let describe = |step: &str, variant: Option<&str>| match variant {
        Some(v) => format!("a `{step}` output of variant {v}"),
        None if step.is_empty() => "a model directory without taft lineage".to_string(),
        None => format!("a `{step}` output"),
    };
    if found != step || (want_variant.is_some() && variant != want_variant) {
        return Err(Error::config(format!(
            "method `{}` needs {} as its model; {} is {}",
            method.name(),
            describe(step, want_variant),
            src.url,
            describe(found, if found == "role" { variant } else { None })
        )));
    }
    if method != Method::Taft {
        return Ok(None);
    }
    serde_json::from_value(taft["adaptive"].clone()).map(Some).map_err(|e| {
        Error::input(format!("{}: `adaptive` does not describe an adaptive layer: {e}", src.name("taft.json")))
    })
}

/// The method's frozen parts, learning-rate and weight-decay groups and precision (SPEC §5),
/// unless the config sets its own `train.freeze`, `train.groups` or `train.precision`:
/// weight decay on the encoder's weights only (the pooler and classifiers get none), the
/// adaptive layer at lr 1e-3 with weight decay 1e-5 (taft), and DAPT's fine-tuning in fp32.
fn method_training(method: Method, train: &TrainConfig) -> TrainConfig {
    let mut train = train.clone();
    if method.frozen_encoder() && train.freeze.is_empty() {
        train.freeze = vec!["embeddings.".into(), "encoder.".into()];
    }
    if train.groups.is_empty() {
        if method == Method::Taft {
            train.groups.push(GroupRule { prefix: "adaptive.".into(), lr: 1e-3, weight_decay: 1e-5 });
        }
        for prefix in ["pooler.", "classifiers."] {
            train.groups.push(GroupRule { prefix: prefix.into(), lr: train.lr, weight_decay: 0.0 });
        }
    }
    if method == Method::Dapt && train.precision == Precision::Auto {
        train.precision = Precision::Fp32;
    }
    train
}

/// The examples of one task on each split.
struct TaskData {
    task: Task,
    weight: f64,
    train: Items,
    val: Items,
    test: Items,
}

impl TaskData {
    fn new(
        task: Task,
        weight: f64,
        config: &FinetuneConfig,
        tokenizer: &TextTokenizer,
        all: &[Conversation],
        width: Option<usize>,
    ) -> Result<TaskData> {
        let rows = |split: Split| -> Vec<(Vec<String>, i64)> {
            all.iter()
                .filter(|c| c.split == split)
                .filter_map(|c| {
                    let label = task.label_for(config.method.name(), c, config.quirks)?;
                    Some((c.utterances.iter().map(|u| u.text.clone()).collect(), label))
                })
                .collect()
        };
        let (train, val, test) = (rows(Split::Train), rows(Split::Val), rows(Split::Test));
        for (rows, split) in [(&train, "train"), (&val, "val"), (&test, "test")] {
            if rows.is_empty() {
                return Err(Error::input(format!(
                    "finetune: no conversation of the {split} split has a label for the task `{}`",
                    task.name()
                )));
            }
        }
        let cut = config.truncation();
        let items = |rows| Ok::<_, Error>(Items::new(tokenizer, rows, config.max_length, cut)?.fixed_width(width));
        Ok(TaskData { task, weight, train: items(train)?, val: items(val)?, test: items(test)? })
    }

    fn sampler(&self, config: &FinetuneConfig) -> Result<Box<dyn Sampler + Send + Sync>> {
        let labels = &self.train.labels;
        let drawn: Box<dyn Sampler + Send + Sync> = match config.sampler {
            SamplerKind::Imbalanced => Box::new(Imbalanced::new(labels)),
            SamplerKind::Shuffle => Box::new(Shuffle(self.train.len())),
            SamplerKind::Episodic => {
                let weights = match config.episodic.weights {
                    EpisodeWeights::InverseFrequency => Imbalanced::new(labels).weights().to_vec(),
                    EpisodeWeights::Uniform => vec![1.0; labels.len()],
                };
                Box::new(Episodic {
                    indices: (0..labels.len()).collect(),
                    weights,
                    num_samples: config.episodic.num_samples.unwrap_or(labels.len()),
                })
            }
            SamplerKind::Categories => {
                let c = config.categories;
                let episodes = c.episodes.unwrap_or(labels.len().div_ceil(c.batch_len()).max(1));
                let sampler = Categories::new(labels, c.way, c.shots, c.queries, c.tasks_per_batch, episodes)
                    .map_err(|e| Error::config(format!("categories (task `{}`): {e}", self.task.name())))?;
                Box::new(sampler)
            }
        };
        let train = &config.train;
        Ok(self.train.grouped(train.group_by_length, drawn, train.batch_size))
    }

    /// The most frequent training label.
    fn majority(&self) -> i64 {
        let mut counts = vec![0usize; self.task.classes().len()];
        for &y in &self.train.labels {
            counts[y as usize] += 1;
        }
        (0..counts.len()).max_by_key(|&c| (counts[c], std::cmp::Reverse(c))).unwrap_or(0) as i64
    }
}

fn train_tasks(
    config: &FinetuneConfig,
    job: &TrainingJob,
    states: Option<&Opened>,
) -> Result<(Fit, serde_json::Value)> {
    match config.cross_validation {
        None => train_once(config, job, states, &job.conversations, &job.work, true),
        Some(cv) => cross_validate(config, job, states, cv),
    }
}

/// The scores averaged over folds.
const FOLD_SCORES: [&str; 5] = ["accuracy", "f1_weighted", "f1_macro", "kappa", "mcc"];

/// SPEC §5's cross-validation: the labeled conversations pooled, and per fold a seeded split
/// (33 % test, then 33 % of the rest validation). Finished folds are recorded under `_work/`,
/// so a killed run resumes in the fold it was in; the output's model is the last fold's.
/// With `fold`, only that fold runs (its split and seed those of the whole run).
fn cross_validate(
    config: &FinetuneConfig,
    job: &TrainingJob,
    states: Option<&Opened>,
    cv: super::CrossValidation,
) -> Result<(Fit, serde_json::Value)> {
    let labeled: Vec<&Conversation> = job.conversations.iter().filter(|c| c.split.is_labeled()).collect();
    let folds = cv.folds;
    let runs: Vec<usize> = match cv.fold {
        Some(fold) => vec![fold],
        None => (0..folds).collect(),
    };
    let mut records = Vec::with_capacity(runs.len());
    let mut last = None;
    for (i, &fold) in runs.iter().enumerate() {
        let is_last = i + 1 == runs.len();
        let name = format!("fold-{fold}");
        if !is_last {
            if let Some(record) = job.work.finished(&name)? {
                tracing::info!(fold, "fold finished before: skipped");
                records.push(record);
                continue;
            }
        }
        let conversations = fold_split(&labeled, mix(config.train.seed, fold as u64));
        tracing::info!(fold, folds, "cross-validation fold");
        let (fit, summary) = train_once(config, job, states, &conversations, &job.work.part(&name)?, is_last)?;
        let record = serde_json::json!({
            "fold": fold,
            "data": summary["data"],
            "best": fit.best,
            "test": headlines(&summary["test"]),
        });
        job.work.finish(&name, &record)?;
        records.push(record);
        last = Some((fit, summary));
    }
    let (fit, mut summary) = last.expect("the last fold always runs");
    let mut stats = serde_json::Map::new();
    if let Some(heads) = records[0]["test"].as_object() {
        for head in heads.keys() {
            let mut scores = serde_json::Map::new();
            for score in FOLD_SCORES {
                // A fold whose kappa is undefined (null) makes the mean undefined too, as
                // numpy's mean of the folds would.
                let values: Vec<f64> =
                    records.iter().map(|r| figure(&r["test"][head][score]).unwrap_or(f64::NAN)).collect();
                let (mean, std) = mean_std(&values);
                scores.insert(score.to_string(), serde_json::json!({"mean": mean, "std": std}));
            }
            stats.insert(head.clone(), scores.into());
        }
    }
    summary["cross_validation"] = serde_json::json!({"folds": records, "test": stats});
    Ok((fit, summary))
}

/// The labeled conversations of a fold: a seeded shuffle, the first 33 % test, then 33 % of
/// the rest validation, the remainder training.
fn fold_split(labeled: &[&Conversation], seed: u64) -> Vec<Conversation> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..labeled.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n_test = (labeled.len() as f64 * 0.33).round() as usize;
    let n_val = ((labeled.len() - n_test) as f64 * 0.33).round() as usize;
    order
        .iter()
        .enumerate()
        .map(|(rank, &i)| {
            let mut c = labeled[i].clone();
            c.split = if rank < n_test {
                Split::Test
            } else if rank < n_test + n_val {
                Split::Val
            } else {
                Split::Train
            };
            c
        })
        .collect()
}

/// One training run on `conversations` (their splits as given), checkpointing in `work`;
/// writes the model directory when `write`.
fn train_once(
    config: &FinetuneConfig,
    job: &TrainingJob,
    states: Option<&Opened>,
    conversations: &[Conversation],
    work: &WorkDir,
    write: bool,
) -> Result<(Fit, serde_json::Value)> {
    let src = &job.src;
    let adaptive = check_parent(config.method, src)?;
    let device = config.train.device()?;
    let (encoder_config, family, tokenizer) = src.read_model()?;
    encoder_config.check_length("max_length", config.max_length, &src.url)?;
    let specials = tokenizer.batches(config.max_length, config.truncation())?.specials();
    config.truncation().check(config.max_length, specials).map_err(Error::config)?;
    // The original's unmasked adaptive layer saw every conversation padded to max_length.
    let width = adaptive.as_ref().filter(|a| !a.mask_padding).map(|_| config.max_length);
    let tasks: Vec<TaskData> = config
        .tasks()
        .into_iter()
        .map(|task| TaskData::new(task, config.weight(task), config, &tokenizer, conversations, width))
        .collect::<Result<_>>()?;
    let data: serde_json::Map<String, serde_json::Value> = tasks
        .iter()
        .map(|t| {
            let counts = serde_json::json!({"train": t.train.len(), "val": t.val.len(), "test": t.test.len()});
            (t.task.name().to_string(), counts)
        })
        .collect();
    tracing::info!(data = %serde_json::Value::Object(data.clone()), "conversation tasks");

    tch::manual_seed(config.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let heads: Vec<(String, i64)> =
        tasks.iter().map(|t| (t.task.head().to_string(), t.task.classes().len() as i64)).collect();
    let model = Classifier::new(&vs.root(), &encoder_config, family, adaptive.as_ref(), &heads, config.dropout);
    // Step 1's encoder, adaptive layer and pooler; the task classifiers start fresh (step
    // 1's role classifier is left out).
    checkpoint::load_weights(&vs, src, &["classifiers."])?;
    let cache = match (states, config.encoder_cache) {
        (Some(opened), _) => Some(open_states(opened, &tasks, encoder_config.hidden_size, width)?),
        (None, true) => {
            let items: Vec<&Items> = tasks.iter().flat_map(|t| [&t.train, &t.val, &t.test]).collect();
            let settings = CacheSettings {
                first_token_only: model.adaptive.is_none(),
                fp16: config.encoder_cache_fp16,
                memory_bytes: config.encoder_cache_memory_mib << 20,
                scratch: &job.scratch,
                batch_size: config.train.batch_size,
                pad: encoder_config.pad_id(),
                device,
            };
            Some(EncoderCache::build(&model.encoder, &items, encoder_config.hidden_size, &settings)?)
        }
        (None, false) => None,
    };
    let objective = Tasks {
        model: &model,
        tasks: &tasks,
        config,
        pad: encoder_config.pad_id(),
        device,
        cache: cache.as_ref(),
        forwards: Cell::new(cache.as_ref().map_or(0, EncoderCache::passes)),
        single_class: Cell::new(0),
        padding: Padding::default(),
    };
    objective.combined()?; // a sampler the data cannot feed is a config error, before training
    let fit = train::fit(&method_training(config.method, &config.train), &vs, &objective, work)?;
    let test = tch::no_grad(|| objective.test())?;

    let classes: serde_json::Map<String, serde_json::Value> =
        tasks.iter().map(|t| (t.task.head().to_string(), serde_json::json!(t.task.classes()))).collect();
    let task_names: serde_json::Map<String, serde_json::Value> =
        tasks.iter().map(|t| (t.task.head().to_string(), serde_json::json!(t.task.name()))).collect();
    let fields = serde_json::json!({
        "heads": classes,
        "tasks": task_names,
        "method": config.method.name(),
        "adaptive": adaptive,
        "max_length": config.max_length,
        "truncation": config.truncation,
        "head_tail": config.head_tail,
        "quirks": config.quirks,
        "finetune": {"seed": config.train.seed, "best": fit.best, "test": headlines(&test)},
    });
    if write {
        training::write_model_dir(job, &vs, &encoder_config, Arch::Base, fields)?;
    }
    let summary = serde_json::json!({
        "method": config.method.name(),
        "seed": config.train.seed,
        "data": data,
        "test": test,
        "single_class_batches": objective.single_class.get(),
        "encoder_cache": cache.as_ref().map(EncoderCache::describe),
        "encoder_forwards": objective.forwards.get(),
        "train_padding": objective.padding.fraction(),
    });
    Ok((fit, summary))
}

/// The states of encode outputs as the step's cache, checked to hold every conversation of
/// every task and split.
fn open_states(opened: &Opened, tasks: &[TaskData], hidden: i64, width: Option<usize>) -> Result<EncoderCache> {
    if opened.info.hidden != hidden || opened.info.width != width {
        return Err(Error::config(format!(
            "the encode inputs hold states of width {:?} and size {}; this model needs width {width:?} and size {hidden}",
            opened.info.width, opened.info.hidden
        )));
    }
    let shards = opened
        .shards
        .iter()
        .map(|(path, index)| Ok((std::fs::File::open(path)?, index.clone())))
        .collect::<Result<Vec<_>>>()?;
    let cache = EncoderCache::open(StoredStates { hidden, fp16: opened.info.fp16, shards });
    for t in tasks {
        for (items, split) in [(&t.train, "train"), (&t.val, "val"), (&t.test, "test")] {
            cache.check_covers(items, &format!("the {split} split of task `{}`", t.task.name()))?;
        }
    }
    Ok(cache)
}

/// The main scores of each task of a test report, beside the majority baseline's.
fn headlines(test: &serde_json::Value) -> serde_json::Value {
    let Some(tasks) = test["tasks"].as_object() else { return serde_json::Value::Null };
    tasks
        .iter()
        .map(|(head, t)| {
            let r = &t["report"];
            let line = serde_json::json!({
                "task": t["task"],
                "accuracy": r["accuracy"],
                "f1_weighted": r["weighted_avg"]["f1"],
                "f1_macro": r["macro_avg"]["f1"],
                "kappa": r["kappa"],
                "mcc": r["mcc"],
                "baseline_f1_macro": t["baseline"]["f1_macro"],
            });
            (head.clone(), line)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The multi-task objective of SPEC §5.
struct Tasks<'a> {
    model: &'a Classifier,
    tasks: &'a [TaskData],
    config: &'a FinetuneConfig,
    pad: i64,
    device: Device,
    /// The frozen encoder's kept states (`encoder_cache`).
    cache: Option<&'a EncoderCache>,
    /// Conversations passed through the encoder, in this process.
    forwards: Cell<u64>,
    /// Task batches holding one class only (zero loss, SPEC §4), in this process.
    single_class: Cell<u64>,
    padding: Padding,
}

impl Tasks<'_> {
    fn logits(&self, task: &TaskData, items: &Items, rows: &[usize], train: bool) -> Result<(Tensor, Tensor)> {
        let mut out = match self.cache {
            Some(cache) => {
                let (hidden, mask) = cache.batch(items, rows, self.device)?;
                self.model.heads_t(hidden, &mask, train)
            }
            None => {
                let (ids, mask, _) = items.batch(rows, self.pad, self.device);
                self.forwards.set(self.forwards.get() + rows.len() as u64);
                self.model.forward_t(&ids, &mask, train)
            }
        };
        let labels = items.labels(rows, self.device);
        Ok((out.logits.remove(task.task.head()).expect("a classifier per task"), labels))
    }

    fn batch_size(&self) -> usize {
        self.config.train.batch_size
    }

    /// The combined sampler: one task's, or both walked with max-size cycle.
    fn combined(&self) -> Result<Box<dyn Sampler + '_>> {
        let config = self.config;
        Ok(match self.tasks {
            [one] => one.sampler(config)?,
            [a, b] => Box::new(MaxSizeCycle::new(
                (a.sampler(config)?, a.train.len()),
                (b.sampler(config)?, b.train.len()),
                config.train.batch_size,
            )),
            _ => unreachable!("one or two tasks"),
        })
    }

    /// Each task's report on the test split, with the majority-class baseline.
    fn test(&self) -> Result<serde_json::Value> {
        let mut tasks = serde_json::Map::new();
        for t in self.tasks {
            let (loss, preds) = t.test.scan(self.batch_size(), |rows| self.logits(t, &t.test, rows, false))?;
            let classes = t.task.classes().len();
            let report = Report::new(&t.test.labels, &preds, classes).map_err(Error::Other)?;
            let majority = vec![t.majority(); t.test.len()];
            let baseline = Report::new(&t.test.labels, &majority, classes).map_err(Error::Other)?;
            tasks.insert(
                t.task.head().to_string(),
                serde_json::json!({
                    "task": t.task.name(),
                    "classes": t.task.classes(),
                    "loss": loss,
                    "report": report,
                    "baseline": {
                        "class": t.task.classes()[t.majority() as usize],
                        "accuracy": baseline.accuracy,
                        "f1_macro": baseline.macro_avg.f1,
                        "f1_weighted": baseline.weighted_avg.f1,
                    },
                }),
            );
        }
        Ok(serde_json::json!({"tasks": tasks}))
    }
}

impl Objective for Tasks<'_> {
    fn sampler(&self) -> Box<dyn Sampler + '_> {
        self.combined().expect("the samplers are checked before training")
    }

    /// One part per task, its share of the weighted loss: each task's backward pass runs
    /// before the next task's forward, so the peak holds one task's activations, not both.
    fn loss(&self, batch: &[usize], _seed: u64, backward: &mut dyn FnMut(Tensor) -> Result<()>) -> Result<()> {
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); self.tasks.len()];
        match self.tasks {
            [_] => rows[0] = batch.to_vec(),
            [a, b] => {
                // Both samplers draw as many items per epoch as their task has.
                for &i in batch {
                    let (x, y) = MaxSizeCycle::unpack_for(i, a.train.len(), b.train.len());
                    rows[0].extend(x);
                    rows[1].extend(y);
                }
            }
            _ => unreachable!("one or two tasks"),
        }
        let present: Vec<_> = self.tasks.iter().zip(&rows).filter(|(_, r)| !r.is_empty()).collect();
        let shares = task_shares(&present.iter().map(|(t, _)| t.weight).collect::<Vec<_>>());
        for ((t, rows), share) in present.into_iter().zip(shares) {
            t.train.count_padding(rows, &self.padding);
            let (logits, labels) = self.logits(t, &t.train, rows, true)?;
            let task = weighted_loss(&logits, &labels);
            if task.single_class {
                self.single_class.set(self.single_class.get() + 1);
            }
            backward(task.loss * share)?;
        }
        Ok(())
    }

    fn evaluate(&self) -> Result<Metrics> {
        let mut metrics = Metrics::new();
        let (mut weighted, mut total) = (0.0, 0.0);
        for t in self.tasks {
            let (loss, preds) = t.val.scan(self.batch_size(), |rows| self.logits(t, &t.val, rows, false))?;
            let report = Report::new(&t.val.labels, &preds, t.task.classes().len()).map_err(Error::Other)?;
            let head = t.task.head();
            metrics.insert(format!("{head}/loss"), loss);
            metrics.insert(format!("{head}/accuracy"), report.accuracy);
            metrics.insert(format!("{head}/f1_weighted"), report.weighted_avg.f1);
            metrics.insert(format!("{head}/f1_macro"), report.macro_avg.f1);
            weighted += t.weight * loss;
            total += t.weight;
        }
        metrics.insert("loss".into(), weighted / total.max(f64::MIN_POSITIVE));
        Ok(metrics)
    }
}
