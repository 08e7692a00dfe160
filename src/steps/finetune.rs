//! `taft finetune`: step 2 of every method of the paper (SPEC §5). From step 1's model (or a
//! pretrained encoder), train one classifier per conversation-level task — status (`status`
//! or `pc`) and satisfaction (`satis3`, `satis7` or none) — on the labeled splits:
//!
//! | method | parent | encoder | trains |
//! |---|---|---|---|
//! | `taft` | `role`, variant adaptive | frozen | adaptive layer (lr 1e-3, wd 1e-5), pooler, classifiers (5e-5) |
//! | `noadapt` | `role`, variant direct | frozen | pooler, classifiers (5e-5) |
//! | `tapt` | `role`, variant direct | trained | everything (5e-5) |
//! | `dapt` | `dapt` | trained | everything (2e-5), one task at a time |
//! | `finetune` | `init` | trained | everything (5e-5) |
//!
//! Each task's training set is drawn by the imbalanced sampler, the two task loaders are
//! walked together with max-size cycle (one encoder pass per task batch), and the SPEC §4
//! weighted losses are mixed 0.8 / 0.2. The checkpoint with the best validation weighted F1
//! of the status task is kept and scored on the test split beside the majority-class
//! baseline.

use serde::{Deserialize, Serialize};

use super::Step;
use crate::config::RawConfig;
use crate::data::tasks::{SatisfactionTask, StatusTask, Task, TaskQuirks};
use crate::error::{Error, Result};
use crate::store::commit::Output;
use crate::text::{HeadTail, Truncation, TruncationSide};
use crate::train::TrainConfig;

#[cfg(feature = "train")]
pub(crate) mod cache;
#[cfg(feature = "train")]
mod fit;

/// SPEC §5 step 2: batch 32, 2 epochs, fp16 on CUDA, dropout 0.5, losses mixed 0.8 / 0.2,
/// the best validation weighted F1 of the status task.
const DEFAULTS: &str = "
method: taft
status: status
satisfaction: satis3
max_length: 512
truncation: head
dropout: 0.5
loss_weights: {status: 0.8, satisfaction: 0.2}
loss_scale: raw
sampler: imbalanced
episodic: {weights: inverse_frequency, num_samples: null}
categories: {way: 2, shots: 4, queries: 4, tasks_per_batch: 2, episodes: null}
encoder_cache: false
encoder_cache_fp16: true
encoder_cache_memory_mib: 0
quirks: {}
train:
  epochs: 2
  batch_size: 32
  grad_accum: 1
  lr: 5.0e-5
  weight_decay: 0.01
  warmup_steps: 0
  max_grad_norm: null
  eval_each_epoch: true
  checkpoint_every: 100
  log_every: 10
  best: {metric: status/f1_weighted, mode: max}
  precision: auto
  device: auto
  seed: 42
";

/// The methods of the paper's Table 2, plus plain fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Taft,
    Noadapt,
    Tapt,
    Dapt,
    Finetune,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Taft => "taft",
            Method::Noadapt => "noadapt",
            Method::Tapt => "tapt",
            Method::Dapt => "dapt",
            Method::Finetune => "finetune",
        }
    }

    /// Whether the encoder stays as step 1 left it.
    pub fn frozen_encoder(self) -> bool {
        matches!(self, Method::Taft | Method::Noadapt)
    }
}

/// The satisfaction task, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SatisfactionChoice {
    Satis3,
    Satis7,
    None,
}

/// How each task's training items are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// With replacement, every class equally likely per draw (SPEC §5).
    Imbalanced,
    /// Every item once per epoch.
    Shuffle,
    /// `episodic.num_samples` draws with replacement, by `episodic.weights` (SPEC §7).
    Episodic,
    /// N-way K-shot episodes (SPEC §7): see `categories`.
    Categories,
}

/// The weights of the episodic sampler's draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeWeights {
    /// 1 / count of the item's label: every class equally likely.
    InverseFrequency,
    /// Every item equally likely.
    Uniform,
}

/// `episodic:` of finetune.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodicConfig {
    pub weights: EpisodeWeights,
    /// Draws per epoch (null: as many as the task has items).
    #[serde(default)]
    pub num_samples: Option<usize>,
}

/// `categories:` of finetune: each batch is `tasks_per_batch` tasks of `way` classes ×
/// (`shots` + `queries`) items, laid out item-major.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoriesConfig {
    pub way: usize,
    pub shots: usize,
    pub queries: usize,
    pub tasks_per_batch: usize,
    /// Batches per epoch (null: as many as cover the task's items once).
    #[serde(default)]
    pub episodes: Option<usize>,
}

impl CategoriesConfig {
    /// Items per batch.
    pub fn batch_len(&self) -> usize {
        self.tasks_per_batch * self.way * (self.shots + self.queries)
    }
}

/// `cross_validation:` of finetune.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossValidation {
    pub folds: usize,
    /// Run only this fold (0-based) of the `folds`, with the split it has in the whole run:
    /// folds fan out as parallel steps (`foreach: {cross_validation.fold: [0, 1, …]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
}

/// The weights of the task losses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    pub status: f64,
    pub satisfaction: f64,
}

/// How each task's loss is scaled before its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossScale {
    /// As computed (the original's).
    Raw,
    /// Divided by the task's chance-level cross-entropy, ln K for K classes: a binary task
    /// (ln 2) and a four-class one (ln 4) start on the same scale, and neither takes the
    /// shared layers for itself by the size of its loss alone.
    Chance,
}

/// Config of `taft finetune`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// A prep output and a model directory (the method's parent), in any order; for taft and
    /// noadapt also the `encode` outputs (one per shard) of that model over that data, whose
    /// states the step reads instead of running the frozen encoder.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    pub method: Method,
    /// The status task (all methods but dapt).
    pub status: StatusTask,
    /// The satisfaction task, or `none` (all methods but dapt).
    pub satisfaction: SatisfactionChoice,
    /// The one task of the dapt method: status, pc, satis3 or satis7.
    #[serde(default)]
    pub task: Option<Task>,
    /// Tokens per conversation, special tokens included.
    pub max_length: usize,
    /// What a longer conversation keeps: `head` (the original's), `tail` or `head_tail`.
    #[serde(default)]
    pub truncation: TruncationSide,
    /// `head_tail`'s token counts (default: a quarter of the text tokens from the head, the
    /// rest from the tail).
    #[serde(default)]
    pub head_tail: Option<HeadTail>,
    /// Dropout before the classifiers.
    pub dropout: f64,
    pub loss_weights: LossWeights,
    /// `raw` or `chance` (each task's loss divided by ln of its class count).
    pub loss_scale: LossScale,
    pub sampler: SamplerKind,
    pub episodic: EpisodicConfig,
    pub categories: CategoriesConfig,
    /// taft and noadapt: run the frozen encoder once per conversation, in inference mode,
    /// and train what lies above it on the kept states (`false`: the original's way, the
    /// frozen encoder runs every step in training mode, its dropout active). Encode outputs
    /// among the inputs give those states without the pass.
    pub encoder_cache: bool,
    /// Keep the cached states as fp16 (else fp32).
    pub encoder_cache_fp16: bool,
    /// Process memory for cached states; past it they go to an unnamed file in the output's
    /// `_work/` (0, the default: all of them there; the kernel's page cache keeps them, outside
    /// the process's resident set, and can reclaim them under pressure).
    pub encoder_cache_memory_mib: u64,
    /// Pool the labeled splits and train `folds` times, each on a seeded split (SPEC §5:
    /// 67 / 33 into train and test, the train part 67 / 33 into train and validation); the
    /// output reports each fold and the mean ± standard deviation.
    #[serde(default)]
    pub cross_validation: Option<CrossValidation>,
    /// The original's label quirks (SPEC §2, §5).
    pub quirks: TaskQuirks,
    pub train: TrainConfig,
}

step_io!(FinetuneConfig);

impl FinetuneConfig {
    /// The tasks trained, in head order (status first).
    pub fn tasks(&self) -> Vec<Task> {
        if let Some(task) = self.task {
            return vec![task];
        }
        let mut tasks = vec![Task::from(self.status)];
        match self.satisfaction {
            SatisfactionChoice::Satis3 => tasks.push(SatisfactionTask::Satis3.into()),
            SatisfactionChoice::Satis7 => tasks.push(SatisfactionTask::Satis7.into()),
            SatisfactionChoice::None => {}
        }
        tasks
    }

    /// The truncation rule of the conversations.
    pub fn truncation(&self) -> Truncation {
        Truncation { truncation: self.truncation, head_tail: self.head_tail }
    }

    /// The loss weight of a task (with `loss_scale: chance`, divided by ln of its class
    /// count).
    pub fn weight(&self, task: Task) -> f64 {
        let weight = match task.head() {
            "status" => self.loss_weights.status,
            _ => self.loss_weights.satisfaction,
        };
        match self.loss_scale {
            LossScale::Raw => weight,
            LossScale::Chance => weight / (task.classes().len() as f64).ln(),
        }
    }
}

pub struct Finetune;

impl Step for Finetune {
    const NAME: &'static str = "finetune";
    const ABOUT: &'static str = "Step 2 of every method (taft, noadapt, tapt, dapt, finetune): train the status and satisfaction classifiers from the method's parent model; inputs: a prep output and the parent, in any order (taft and noadapt: also the encode outputs of the parent, whose states they read)";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = FinetuneConfig;

    /// The dapt method's own defaults (SPEC §5): one task at a time, batch 16, 5 epochs, lr
    /// 2e-5, the best validation weighted F1 of that task.
    fn with_defaults(raw: &RawConfig) -> Result<RawConfig> {
        let str_of = |key: &str| raw.value.get(key).and_then(serde_yaml::Value::as_str).map(str::to_string);
        let layer = if str_of("method").as_deref() == Some("dapt") {
            let head = match str_of("task").as_deref() {
                Some("satis3" | "satis7") => "satisfaction",
                _ => "status",
            };
            format!(
                "task: status\nsatisfaction: none\ntrain: {{epochs: 5, batch_size: 16, lr: 2.0e-5, best: {{metric: {head}/f1_weighted}}}}\n"
            )
        } else {
            "{}".to_string()
        };
        raw.with_defaults(&layer)?.with_defaults(DEFAULTS)
    }

    fn validate(config: &FinetuneConfig) -> Result<()> {
        if config.inputs.len() < 2 {
            return Err(Error::config(format!(
                "finetune takes a prep output and a model directory (and, for taft and noadapt, any encode outputs of them), got {} input(s)",
                config.inputs.len()
            )));
        }
        match (config.method, config.task) {
            (Method::Dapt, None) => {
                return Err(Error::config("task: the dapt method trains one task: give status, pc, satis3 or satis7"))
            }
            (Method::Dapt, Some(_)) if config.satisfaction != SatisfactionChoice::None => {
                return Err(Error::config(
                    "satisfaction: the dapt method trains one task at a time (`task`); leave satisfaction out",
                ))
            }
            (Method::Dapt, Some(_)) => {}
            (method, Some(_)) => {
                return Err(Error::config(format!(
                    "task: only the dapt method takes `task`; method `{}` trains `status` and `satisfaction`",
                    method.name()
                )))
            }
            (_, None) => {}
        }
        if config.max_length < 3 {
            return Err(Error::config("max_length must be at least 3 (the special tokens and one token)"));
        }
        config.truncation().check(config.max_length, 2).map_err(Error::config)?;
        if config.sampler == SamplerKind::Categories {
            let c = config.categories;
            if c.way < 2 || c.shots + c.queries == 0 || c.tasks_per_batch == 0 {
                return Err(Error::config("categories: way >= 2, shots + queries >= 1 and tasks_per_batch >= 1"));
            }
            if c.batch_len() != config.train.batch_size {
                return Err(Error::config(format!(
                    "categories: tasks_per_batch × way × (shots + queries) = {} must equal train.batch_size ({})",
                    c.batch_len(),
                    config.train.batch_size
                )));
            }
            if config.train.group_by_length {
                return Err(Error::config(
                    "train.group_by_length would reorder the categories sampler's episodes; leave it off",
                ));
            }
        }
        if config.sampler == SamplerKind::Episodic && config.episodic.num_samples == Some(0) {
            return Err(Error::config("episodic.num_samples must be at least 1"));
        }
        if let Some(cv) = config.cross_validation {
            if !(2..=100).contains(&cv.folds) {
                return Err(Error::config(format!("cross_validation.folds {} must be in 2..=100", cv.folds)));
            }
            if let Some(fold) = cv.fold.filter(|&f| f >= cv.folds) {
                return Err(Error::config(format!(
                    "cross_validation.fold {fold} must be below cross_validation.folds ({})",
                    cv.folds
                )));
            }
        }
        if config.encoder_cache && !config.method.frozen_encoder() {
            return Err(Error::config(format!(
                "encoder_cache: method `{}` trains the encoder; only taft and noadapt keep it frozen",
                config.method.name()
            )));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::config(format!("dropout {} must be in [0, 1)", config.dropout)));
        }
        let LossWeights { status, satisfaction } = config.loss_weights;
        if !(status.is_finite()
            && satisfaction.is_finite()
            && status >= 0.0
            && satisfaction >= 0.0
            && status + satisfaction > 0.0)
        {
            return Err(Error::config("loss_weights: non-negative numbers, not both 0"));
        }
        config.train.validate()
    }

    async fn run(config: &FinetuneConfig, out: &mut Output) -> Result<serde_json::Value> {
        #[cfg(feature = "train")]
        {
            fit::run(config, out).await
        }
        #[cfg(not(feature = "train"))]
        {
            let _ = (config, out);
            Err(super::without_training(Self::NAME))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_scale_divides_each_weight_by_ln_of_the_class_count() {
        let mut config: FinetuneConfig = serde_yaml::from_str(DEFAULTS).unwrap();
        assert_eq!(config.loss_scale, LossScale::Raw);
        assert_eq!((config.weight(Task::Status), config.weight(Task::Satis3)), (0.8, 0.2));
        config.loss_scale = serde_yaml::from_str("chance").unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(config.weight(Task::Status), 0.8 / 4f64.ln()));
        assert!(close(config.weight(Task::Pc), 0.8 / 2f64.ln()));
        assert!(close(config.weight(Task::Satis3), 0.2 / 3f64.ln()));
        assert!(close(config.weight(Task::Satis7), 0.2 / 7f64.ln()));
        assert!(serde_yaml::from_str::<LossScale>("entropy").is_err());
    }
}
