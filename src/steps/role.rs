//! `taft role`: speaker-role pretraining (SPEC §5, step 1a) — the first step of TAFT, TAFT
//! noAdapt and TAPT. Each utterance of the unlabeled split written by a customer or an
//! operator is classified by its speaker (label = author − 2), from the utterance alone
//! (max 50 tokens). Variant `adaptive` puts the adaptive layer between the encoder and the
//! pooler (TAFT); `direct` does not (noAdapt, TAPT). Training uses SPEC §4's per-batch
//! weighted loss; the checkpoint with the lowest validation loss (unweighted cross-entropy)
//! is kept and scored on the utterances of the labeled test split.

use std::cell::Cell;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::io::{self, TrainingJob};
use super::Step;
use crate::data::{Conversation, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::Report;
use crate::model::adaptive::AdaptiveConfig;
use crate::model::checkpoint::{self, Arch, CONFIG, TOKENIZER};
use crate::model::heads::Classifier;
use crate::store::commit::Output;
use crate::text::TextTokenizer;
use crate::train::loss::{validation_loss, weighted_loss};
use crate::train::{self, Fit, Metrics, Objective};

/// SPEC §5 1a: batch 128, 50 tokens, lr 2e-5, 10 epochs, fp32, the lowest validation loss.
const DEFAULTS: &str = "
variant: adaptive
max_length: 50
val_fraction: 0.25
split: hash
dropout: 0.1
adaptive: {}
train:
  epochs: 10
  batch_size: 128
  grad_accum: 1
  lr: 2.0e-5
  weight_decay: 0.01
  warmup_steps: 0
  max_grad_norm: null
  eval_each_epoch: true
  checkpoint_every: 100
  log_every: 10
  best: {metric: loss, mode: min}
  precision: fp32
  device: auto
  seed: 42
";

/// The task's class names, by label.
pub const ROLES: [&str; 2] = ["customer", "operator"];

/// With or without the adaptive layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// TAFT: encoder → adaptive layer → pooler → classifier.
    Adaptive,
    /// TAFT noAdapt and TAPT: encoder → pooler → classifier.
    Direct,
}

/// How the unlabeled utterances are split into training and validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Whole conversations by a seeded hash of their id, whatever the file order.
    Hash,
    /// **quirk** of the original: the first `1 − val_fraction` of the utterances in file
    /// order train, the rest validate.
    Contiguous,
}

/// Config of `taft role`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// A prep output and a model directory, in any order.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    pub variant: Variant,
    /// Tokens per utterance, special tokens included.
    pub max_length: usize,
    pub val_fraction: f64,
    pub split: SplitMode,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// The adaptive layer (variant `adaptive`): heads, ffn, dropout, layer_norm_eps, mask_padding.
    pub adaptive: AdaptiveConfig,
    pub train: train::TrainConfig,
}

step_io!(RoleConfig);

pub struct Role;

impl Step for Role {
    const NAME: &'static str = "role";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = RoleConfig;

    fn validate(config: &RoleConfig) -> Result<()> {
        io::DataAndModel::check_count(Self::NAME, &config.inputs)?;
        if config.max_length < 3 {
            return Err(Error::config("max_length must be at least 3 (the special tokens and one token)"));
        }
        if !(config.val_fraction > 0.0 && config.val_fraction < 1.0) {
            return Err(Error::config("val_fraction must be in (0, 1)"));
        }
        if !(0.0..1.0).contains(&config.dropout) || !(0.0..1.0).contains(&config.adaptive.dropout) {
            return Err(Error::config("dropout and adaptive.dropout must be in [0, 1)"));
        }
        config.train.validate()
    }

    async fn run(config: &RoleConfig, out: &mut Output) -> Result<serde_json::Value> {
        let (inputs, config) = (config.inputs.clone(), config.clone());
        let (_, mut summary) = io::run_training(Self::NAME, &inputs, out, move |job| train_role(&config, job)).await?;
        let report = summary["test"].take();
        out.put("test_report.json", Bytes::from(serde_json::to_vec_pretty(&report)?)).await?;
        summary["test"] = headline(&report);
        Ok(summary)
    }
}

/// The utterances of a task: token ids (special tokens included, truncated) and labels.
struct Items {
    ids: Vec<Vec<i64>>,
    labels: Vec<i64>,
}

impl Items {
    fn new(tokenizer: &TextTokenizer, rows: Vec<(String, i64)>, max_length: usize) -> Result<Items> {
        let (texts, labels): (Vec<String>, Vec<i64>) = rows.into_iter().unzip();
        let mut ids = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(4096) {
            let enc = tokenizer.encode_batch(chunk, max_length)?;
            for row in 0..enc.batch {
                let range = row * enc.seq..(row + 1) * enc.seq;
                let len = enc.attention_mask[range.clone()].iter().filter(|&&m| m == 1).count();
                ids.push(enc.input_ids[range][..len].to_vec());
            }
        }
        Ok(Items { ids, labels })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    /// Padded ids, attention mask and labels of `rows`, on `device`.
    fn batch(&self, rows: &[usize], pad: i64, device: Device) -> (Tensor, Tensor, Tensor) {
        let width = rows.iter().map(|&r| self.ids[r].len()).max().unwrap_or(1);
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

/// (text, role label) of every customer or operator utterance of `conversations`.
fn role_rows<'a>(conversations: impl Iterator<Item = &'a Conversation>) -> Vec<(String, i64)> {
    conversations
        .flat_map(|c| c.utterances.iter())
        .filter(|u| u.speaker >= 2)
        .map(|u| (u.text.clone(), i64::from(u.speaker) - 2))
        .collect()
}

fn train_role(config: &RoleConfig, job: &TrainingJob) -> Result<(Fit, serde_json::Value)> {
    let (src, conversations) = (job.src.as_path(), &job.conversations);
    let device = config.train.device()?;
    let encoder_config = checkpoint::read_config(src)?;
    let family = encoder_config.family(CONFIG)?;
    let tokenizer = TextTokenizer::load(&src.join(TOKENIZER))?;
    let adaptive = (config.variant == Variant::Adaptive).then_some(&config.adaptive);
    if let Some(a) = adaptive {
        if a.heads <= 0 || encoder_config.hidden_size % a.heads != 0 || a.ffn <= 0 {
            return Err(Error::config(format!(
                "adaptive.heads {} must divide the model's hidden size {} (and adaptive.ffn {} be positive)",
                a.heads, encoder_config.hidden_size, a.ffn
            )));
        }
    }

    let unlabeled: Vec<&Conversation> = conversations.iter().filter(|c| c.split == Split::Unlabeled).collect();
    let (train_rows, val_rows) = match config.split {
        SplitMode::Hash => {
            let (val, train): (Vec<&Conversation>, Vec<&Conversation>) =
                unlabeled.iter().partition(|c| c.id.held_out(config.train.seed, config.val_fraction));
            (role_rows(train.into_iter()), role_rows(val.into_iter()))
        }
        SplitMode::Contiguous => {
            let mut rows = role_rows(unlabeled.iter().copied());
            let cut = ((1.0 - config.val_fraction) * rows.len() as f64) as usize;
            let val = rows.split_off(cut);
            (rows, val)
        }
    };
    let test_rows = role_rows(conversations.iter().filter(|c| c.split == Split::Test));
    for (rows, what) in [(&train_rows, "training"), (&val_rows, "validation"), (&test_rows, "test")] {
        if rows.is_empty() {
            return Err(Error::input(format!(
                "role: no customer or operator utterance for {what} (training and validation come from the unlabeled split, test from the test split)"
            )));
        }
    }
    let data = serde_json::json!({"train": train_rows.len(), "val": val_rows.len(), "test": test_rows.len()});
    tracing::info!(train = train_rows.len(), val = val_rows.len(), test = test_rows.len(), "speaker-role data");
    let train_items = Items::new(&tokenizer, train_rows, config.max_length)?;
    let val_items = Items::new(&tokenizer, val_rows, config.max_length)?;
    let test_items = Items::new(&tokenizer, test_rows, config.max_length)?;

    tch::manual_seed(config.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let tasks = [("role".to_string(), ROLES.len() as i64)];
    let model = Classifier::new(&vs.root(), &encoder_config, family, adaptive, &tasks, config.dropout);
    checkpoint::load_weights(&vs, src, &["pooler.", "adaptive.", "classifiers."])?;
    let objective = RoleObjective {
        model: &model,
        train: train_items,
        val: val_items,
        pad: encoder_config.pad_id(),
        batch_size: config.train.batch_size,
        device,
        single_class: Cell::new(0),
    };
    let fit = train::fit(&config.train, &vs, &objective, &job.work)?;
    let report = tch::no_grad(|| objective.predict(&test_items))?;
    let test = serde_json::json!({"labels": ROLES, "report": report});

    let fields = serde_json::json!({
        "heads": {"role": ROLES},
        "adaptive": adaptive,
        "max_length": config.max_length,
        "role": {"variant": config.variant, "best": fit.best, "test": headline(&test)},
    });
    io::write_model_dir(job, &vs, &encoder_config, Arch::Base, fields)?;
    let summary = serde_json::json!({"data": data, "test": test, "single_class_batches": objective.single_class.get()});
    Ok((fit, summary))
}

/// The main scores of a test report.
fn headline(test: &serde_json::Value) -> serde_json::Value {
    let r = &test["report"];
    serde_json::json!({
        "accuracy": r["accuracy"],
        "f1_weighted": r["weighted_avg"]["f1"],
        "f1_macro": r["macro_avg"]["f1"],
        "kappa": r["kappa"],
        "mcc": r["mcc"],
    })
}

struct RoleObjective<'a> {
    model: &'a Classifier,
    train: Items,
    val: Items,
    pad: i64,
    batch_size: usize,
    device: Device,
    /// Training batches holding one class only (zero loss, SPEC §4), in this process.
    single_class: Cell<u64>,
}

impl RoleObjective<'_> {
    fn logits(&self, items: &Items, rows: &[usize], train: bool) -> (Tensor, Tensor) {
        let (ids, mask, labels) = items.batch(rows, self.pad, self.device);
        let mut out = self.model.forward_t(&ids, &mask, train);
        (out.logits.remove("role").expect("the role classifier"), labels)
    }

    /// Unweighted cross-entropy and predictions over all of `items`.
    fn scan(&self, items: &Items) -> (f64, Vec<i64>) {
        let (mut sum, mut preds) = (0.0, Vec::with_capacity(items.len()));
        let all: Vec<usize> = (0..items.len()).collect();
        for rows in all.chunks(self.batch_size) {
            let (logits, labels) = self.logits(items, rows, false);
            sum += validation_loss(&logits, &labels).double_value(&[]) * rows.len() as f64;
            preds.extend(Vec::<i64>::try_from(&logits.argmax(-1, false).to_device(Device::Cpu)).expect("int64"));
        }
        (sum / items.len().max(1) as f64, preds)
    }

    fn predict(&self, items: &Items) -> Result<Report> {
        let (_, preds) = self.scan(items);
        Report::new(&items.labels, &preds, ROLES.len()).map_err(Error::Other)
    }
}

impl Objective for RoleObjective<'_> {
    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, batch: &[usize], _seed: u64) -> Result<Tensor> {
        let (logits, labels) = self.logits(&self.train, batch, true);
        let task = weighted_loss(&logits, &labels);
        if task.single_class {
            self.single_class.set(self.single_class.get() + 1);
        }
        Ok(task.loss)
    }

    fn evaluate(&self) -> Result<Metrics> {
        let (loss, preds) = self.scan(&self.val);
        let report = Report::new(&self.val.labels, &preds, ROLES.len()).map_err(Error::Other)?;
        Ok(Metrics::from([
            ("loss".to_string(), loss),
            ("accuracy".to_string(), report.accuracy),
            ("f1_weighted".to_string(), report.weighted_avg.f1),
            ("f1_macro".to_string(), report.macro_avg.f1),
        ]))
    }
}
