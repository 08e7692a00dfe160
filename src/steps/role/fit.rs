//! `taft role` on tch: the utterances of each side, the classifier and its objective.

use std::cell::Cell;

use tch::{nn, Device, Tensor};

use super::{Role, RoleConfig, SplitMode, Variant, ROLES};
use crate::data::{Conversation, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::Report;
use crate::model::checkpoint::{self, Arch};
use crate::model::heads::Classifier;
use crate::steps::training::{self, Items, Padding, TrainingJob};
use crate::steps::Step;
use crate::store::commit::Output;
use crate::train::loss::{weighted_loss, weighted_loss_part};
use crate::train::{self, Fit, Metrics, Objective, Sampler, Shuffle};

pub async fn run(config: &RoleConfig, out: &mut Output) -> Result<serde_json::Value> {
    let (inputs, config) = (config.inputs.clone(), config.clone());
    let train = move |job: &TrainingJob| train_role(&config, job);
    training::run_scored(Role::NAME, &inputs, out, train, headline, &[]).await
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
    let (src, conversations) = (&job.src, &job.conversations);
    let device = config.train.device()?;
    let (encoder_config, family, tokenizer) = src.read_model()?;
    let adaptive = (config.variant == Variant::Adaptive).then_some(&config.adaptive);
    if let Some(a) = adaptive {
        if encoder_config.hidden_size % a.heads != 0 {
            return Err(Error::config(format!(
                "adaptive.heads {} must divide the model's hidden size {}",
                a.heads, encoder_config.hidden_size
            )));
        }
    }
    encoder_config.check_length("max_length", config.max_length, &src.url)?;

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
    // The original's unmasked adaptive layer saw every utterance padded to max_length.
    let width = adaptive.filter(|a| !a.mask_padding).map(|_| config.max_length);
    let items =
        |rows| Ok::<_, Error>(Items::new(&tokenizer, rows, config.max_length, Default::default())?.fixed_width(width));
    let (train_items, val_items, test_items) = (items(train_rows)?, items(val_rows)?, items(test_rows)?);

    tch::manual_seed(config.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let tasks = [("role".to_string(), ROLES.len() as i64)];
    let model = Classifier::new(&vs.root(), &encoder_config, family, adaptive, &tasks, config.dropout);
    checkpoint::load_weights(&vs, src, &["pooler.", "adaptive.", "classifiers."])?;
    // What a row of a given padded length keeps for the backward pass: the encoder's
    // layers, and the adaptive layer's.
    let row_bytes = {
        let e = encoder_config.clone();
        let a = adaptive.cloned();
        move |tokens: usize| {
            let layers = train::activation_bytes(
                e.num_hidden_layers,
                e.hidden_size,
                e.intermediate_size,
                e.num_attention_heads,
                tokens,
            );
            layers + a.as_ref().map_or(0, |a| train::activation_bytes(1, e.hidden_size, a.ffn, a.heads, tokens))
        }
    };
    let pass_bytes = (device == Device::Cpu && config.pass_memory_mib > 0).then_some(config.pass_memory_mib << 20);
    let objective = RoleObjective {
        model: &model,
        train: train_items,
        val: val_items,
        pad: encoder_config.pad_id(),
        batch_size: config.train.batch_size,
        group_by_length: config.train.group_by_length,
        device,
        single_class: Cell::new(0),
        padding: Padding::default(),
        pass_bytes,
        row_bytes: Box::new(row_bytes),
        parts: Cell::new((0, 0)),
    };
    let fit = train::fit(&config.train, &vs, &objective, &job.work)?;
    let (loss, report) = tch::no_grad(|| objective.predict(&test_items))?;
    let test = serde_json::json!({"labels": ROLES, "loss": loss, "report": report});

    let fields = serde_json::json!({
        "heads": {"role": ROLES},
        "adaptive": adaptive,
        "max_length": config.max_length,
        "role": {"variant": config.variant, "seed": config.train.seed, "best": fit.best, "test": headline(&test)},
    });
    training::write_model_dir(job, &vs, &encoder_config, Arch::Base, fields)?;
    let summary = serde_json::json!({
        "data": data,
        "test": test,
        "single_class_batches": objective.single_class.get(),
        "parts_per_batch": objective.parts_per_batch(),
        "train_padding": objective.padding.fraction(),
    });
    Ok((fit, summary))
}

/// The main scores of a test report.
fn headline(test: &serde_json::Value) -> serde_json::Value {
    let r = &test["report"];
    serde_json::json!({
        "loss": test["loss"],
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
    group_by_length: bool,
    device: Device,
    /// Training batches holding one class only (zero loss, SPEC §4), in this process.
    single_class: Cell<u64>,
    padding: Padding,
    /// On the CPU, the bytes of activations one forward pass may take (`pass_memory_mib`).
    pass_bytes: Option<u64>,
    /// Activation bytes of one row padded to a length.
    row_bytes: Box<dyn Fn(usize) -> u64>,
    /// (training batches, forward passes) in this process.
    parts: Cell<(u64, u64)>,
}

impl RoleObjective<'_> {
    fn logits(&self, items: &Items, rows: &[usize], train: bool) -> (Tensor, Tensor) {
        let (ids, mask, labels) = items.batch(rows, self.pad, self.device);
        let mut out = self.model.forward_t(&ids, &mask, train);
        (out.logits.remove("role").expect("the role classifier"), labels)
    }

    /// The mean number of forward passes a training batch took.
    fn parts_per_batch(&self) -> f64 {
        let (batches, passes) = self.parts.get();
        passes as f64 / batches.max(1) as f64
    }

    /// Unweighted cross-entropy and predictions over all of `items`.
    fn scan(&self, items: &Items) -> Result<(f64, Vec<i64>)> {
        items.scan(self.batch_size, |rows| Ok(self.logits(items, rows, false)))
    }

    /// The unweighted cross-entropy and the classification report on `items`.
    fn predict(&self, items: &Items) -> Result<(f64, Report)> {
        let (loss, preds) = self.scan(items)?;
        Ok((loss, Report::new(&items.labels, &preds, ROLES.len()).map_err(Error::Other)?))
    }
}

impl Objective for RoleObjective<'_> {
    fn sampler(&self) -> Box<dyn Sampler + '_> {
        self.train.grouped(self.group_by_length, Box::new(Shuffle(self.train.len())), self.batch_size)
    }

    fn loss(&self, batch: &[usize], _seed: u64, backward: &mut dyn FnMut(Tensor) -> Result<()>) -> Result<()> {
        let parts = self.pass_bytes.map_or_else(
            || vec![batch.to_vec()],
            |budget| passes(batch, &self.train.ids, self.train.width.unwrap_or(0), budget, &self.row_bytes),
        );
        let (batches, passes) = self.parts.get();
        self.parts.set((batches + 1, passes + parts.len() as u64));
        if parts.len() == 1 {
            self.train.count_padding(batch, &self.padding);
            let (logits, labels) = self.logits(&self.train, batch, true);
            let task = weighted_loss(&logits, &labels);
            if task.single_class {
                self.single_class.set(self.single_class.get() + 1);
            }
            return backward(task.loss);
        }
        // The batch's loss as the sum of its parts' shares: the batch's class weights, its mean.
        let labels: Vec<i64> = batch.iter().map(|&r| self.train.labels[r]).collect();
        for part in &parts {
            self.train.count_padding(part, &self.padding);
            let (logits, part_labels) = self.logits(&self.train, part, true);
            let task = weighted_loss_part(&logits, &part_labels, &labels);
            if task.single_class {
                self.single_class.set(self.single_class.get() + 1);
                return backward(task.loss);
            }
            backward(task.loss)?;
        }
        Ok(())
    }

    fn evaluate(&self) -> Result<Metrics> {
        let (loss, preds) = self.scan(&self.val)?;
        let report = Report::new(&self.val.labels, &preds, ROLES.len()).map_err(Error::Other)?;
        Ok(Metrics::from([
            ("loss".to_string(), loss),
            ("accuracy".to_string(), report.accuracy),
            ("f1_weighted".to_string(), report.weighted_avg.f1),
            ("f1_macro".to_string(), report.macro_avg.f1),
        ]))
    }
}

/// A batch's rows in forward passes whose activations stay within `budget` bytes (at least
/// one row a pass): the rows by length, longest first, each pass padded to its first row
/// (or to `width`, for batches of a fixed width), so that a pass holds rows of nearly one
/// length. A batch that fits runs whole, in its own order.
fn passes(
    batch: &[usize],
    ids: &[Vec<i64>],
    width: usize,
    budget: u64,
    row_bytes: &dyn Fn(usize) -> u64,
) -> Vec<Vec<usize>> {
    let len = |r: usize| ids[r].len().max(width);
    let longest = batch.iter().map(|&r| len(r)).max().unwrap_or(0);
    if row_bytes(longest).saturating_mul(batch.len() as u64) <= budget {
        return vec![batch.to_vec()];
    }
    let mut rows = batch.to_vec();
    rows.sort_by_key(|&r| std::cmp::Reverse(len(r)));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut fit = 0;
    for r in rows {
        match out.last_mut() {
            Some(part) if part.len() < fit => part.push(r),
            _ => {
                // A new pass, padded to this row's length: as many rows as the budget holds.
                fit = (budget / row_bytes(len(r)).max(1)).max(1) as usize;
                out.push(vec![r]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_over_the_budget_runs_in_passes_of_rows_of_nearly_one_length() {
        let ids: Vec<Vec<i64>> = [10, 50, 20, 50, 5, 30].iter().map(|&n| vec![7; n]).collect();
        let batch: Vec<usize> = (0..ids.len()).collect();
        let bytes = |tokens: usize| tokens as u64 * 100;
        // Six rows padded to 50 tokens: 30,000 bytes. Within the budget, the batch as it is.
        assert_eq!(passes(&batch, &ids, 0, 30_000, &bytes), vec![batch.clone()]);
        // 10,000 bytes: two rows of 50, three of at most 30, then the shortest alone.
        assert_eq!(passes(&batch, &ids, 0, 10_000, &bytes), vec![vec![1, 3], vec![5, 2, 0], vec![4]]);
        // Less than a row: a row a pass.
        assert_eq!(passes(&batch, &ids, 0, 1, &bytes).len(), 6);
        // Batches of a fixed width: every row counts as that wide.
        let fixed = passes(&batch, &ids, 60, 13_000, &bytes);
        assert_eq!(fixed.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        let mut all: Vec<usize> = fixed.concat();
        all.sort();
        assert_eq!(all, batch, "every row once");
    }
}
