//! `taft dapt`: masked-LM continued pretraining on the unlabeled utterances (SPEC §5, step
//! 1b). Utterances are tokenized with their special tokens, concatenated and cut into
//! blocks (the short tail dropped); 15 % of the non-special tokens are chosen each time a
//! block is drawn (80 % mask, 10 % random, 10 % kept) and the loss is taken on them only.
//! Whole conversations go to training or evaluation by a seeded hash of their id. The
//! output is a `…ForMaskedLM` model directory.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use super::io::{self, TrainingJob};
use super::Step;
use crate::error::{Error, Result};
use crate::model::checkpoint::{self, Arch, CONFIG, TOKENIZER};
use crate::model::config::{EncoderConfig, Family};
use crate::model::heads::{Classifier, MlmHead};
use crate::store::commit::Output;
use crate::text::TextTokenizer;
use crate::train::mlm::{group_blocks, Masking, IGNORE};
use crate::train::{self, Fit, Metrics, Objective, TrainConfig};

/// SPEC §5 1b: blocks of 512, 15 % masking, 80/20 split, lr 2e-5, weight decay 0.01,
/// batch 8, 20 epochs, evaluation each epoch, a checkpoint every 100 steps.
const DEFAULTS: &str = "
block_size: 512
mlm_probability: 0.15
eval_fraction: 0.2
train:
  epochs: 20
  batch_size: 8
  grad_accum: 1
  lr: 2.0e-5
  weight_decay: 0.01
  warmup_steps: 0
  max_grad_norm: 1.0
  eval_each_epoch: true
  checkpoint_every: 100
  log_every: 10
  precision: fp32
  device: auto
  seed: 42
";

/// Config of `taft dapt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaptConfig {
    /// A prep output and a model directory, in any order.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub out: Option<String>,
    /// Tokens per block (at most the model's positions).
    pub block_size: usize,
    /// Share of the non-special tokens chosen for the loss.
    pub mlm_probability: f64,
    /// Share of the conversations held out for evaluation.
    pub eval_fraction: f64,
    /// Use only the first N utterances of the corpus (the original used 300).
    #[serde(default)]
    pub max_utterances: Option<usize>,
    pub train: TrainConfig,
}

step_io!(DaptConfig);

pub struct Dapt;

impl Step for Dapt {
    const NAME: &'static str = "dapt";
    const DEFAULTS: &'static str = DEFAULTS;
    type Config = DaptConfig;

    fn validate(config: &DaptConfig) -> Result<()> {
        io::DataAndModel::check_count(Self::NAME, &config.inputs)?;
        if config.block_size < 8 {
            return Err(Error::config("block_size must be at least 8"));
        }
        if !(config.mlm_probability > 0.0 && config.mlm_probability < 1.0) {
            return Err(Error::config("mlm_probability must be in (0, 1)"));
        }
        if !(config.eval_fraction > 0.0 && config.eval_fraction < 1.0) {
            return Err(Error::config("eval_fraction must be in (0, 1)"));
        }
        config.train.validate()
    }

    async fn run(config: &DaptConfig, out: &mut Output) -> Result<serde_json::Value> {
        let (inputs, config) = (config.inputs.clone(), config.clone());
        let (_, summary) = io::run_training(Self::NAME, &inputs, out, move |job| train_mlm(&config, job)).await?;
        Ok(summary)
    }
}

fn train_mlm(config: &DaptConfig, job: &TrainingJob) -> Result<(Fit, serde_json::Value)> {
    let src = job.src.as_path();
    let device = config.train.device()?;
    let encoder_config = checkpoint::read_config(src)?;
    let family = encoder_config.family(CONFIG)?;
    let tokenizer = TextTokenizer::load(&src.join(TOKENIZER))?;
    let positions = usable_positions(&encoder_config, family);
    if config.block_size as i64 > positions {
        return Err(Error::config(format!(
            "block_size {} exceeds the {positions} positions of the model in {}",
            config.block_size,
            src.display()
        )));
    }

    // Utterances in corpus order, each tagged with its side of the split.
    let mut texts: Vec<(bool, String)> = io::pretraining_corpus(job.conversations.clone())
        .into_iter()
        .flat_map(|c| {
            let held_out = c.id.held_out(config.train.seed, config.eval_fraction);
            c.utterances.into_iter().map(move |u| (held_out, u.text))
        })
        .collect();
    if let Some(n) = config.max_utterances {
        texts.truncate(n);
    }
    let (eval_texts, train_texts): (Vec<_>, Vec<_>) = texts.into_iter().partition(|(held_out, _)| *held_out);
    let blocks = |side: Vec<(bool, String)>, what: &str| -> Result<Vec<Vec<i64>>> {
        let texts: Vec<String> = side.into_iter().map(|(_, t)| t).collect();
        let ids = tokenizer.encode_ids(&texts)?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let blocks = group_blocks(ids, config.block_size);
        if blocks.is_empty() {
            return Err(Error::input(format!(
                "dapt: the {what} side has {} utterances, {tokens} tokens: not one block of {}; lower block_size or eval_fraction, or give more data",
                texts.len(),
                config.block_size
            )));
        }
        Ok(blocks)
    };
    let train_blocks = blocks(train_texts, "training")?;
    let eval_blocks = blocks(eval_texts, "evaluation")?;
    tracing::info!(train_blocks = train_blocks.len(), eval_blocks = eval_blocks.len(), block = config.block_size, "masked-LM data");

    tch::manual_seed(config.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = Classifier::new(&vs.root(), &encoder_config, family, None, &[], encoder_config.hidden_dropout_prob);
    let head = MlmHead::new(&MlmHead::path(&vs.root(), family), &encoder_config, family);
    let pad = encoder_config.pad_id();
    checkpoint::init_like_transformers(&vs, MlmHead::prefix(family), pad);
    checkpoint::load_weights(&vs, src, &[MlmHead::prefix(family), "pooler."])?;

    let masking = Masking {
        probability: config.mlm_probability,
        mask_id: i64::from(tokenizer.mask_id),
        vocab_size: encoder_config.vocab_size,
        special_ids: tokenizer.special_ids().into_iter().map(i64::from).collect(),
    };
    let data = serde_json::json!({
        "train_blocks": train_blocks.len(),
        "eval_blocks": eval_blocks.len(),
        "block_size": config.block_size,
    });
    let objective = MaskedLm::new(&model, &head, train_blocks, &eval_blocks, masking, config, device);
    let fit = train::fit(&config.train, &vs, &objective, &job.work)?;
    let fields = serde_json::json!({"heads": ["masked_lm"], "dapt": {"eval": fit.last_eval(), "data": data}});
    io::write_model_dir(job, &vs, &encoder_config, Arch::MaskedLm, fields)?;
    Ok((fit, serde_json::json!({"data": data})))
}

/// Positions a block may use: RoBERTa reserves `pad_id + 1` of them.
fn usable_positions(config: &EncoderConfig, family: Family) -> i64 {
    match family {
        Family::Bert => config.max_position_embeddings,
        Family::Roberta => config.max_position_embeddings - config.pad_id() - 1,
    }
}

/// The masked-LM objective over token blocks.
struct MaskedLm<'a> {
    model: &'a Classifier,
    head: &'a MlmHead,
    blocks: Vec<Vec<i64>>,
    /// Evaluation blocks masked once (the same masks at every evaluation), in batches.
    eval: Vec<(Tensor, Tensor)>,
    masking: Masking,
    device: Device,
}

impl<'a> MaskedLm<'a> {
    fn new(
        model: &'a Classifier,
        head: &'a MlmHead,
        blocks: Vec<Vec<i64>>,
        eval_blocks: &[Vec<i64>],
        masking: Masking,
        config: &DaptConfig,
        device: Device,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(train::mix(config.train.seed, u64::MAX));
        let eval = eval_blocks
            .chunks(config.train.batch_size)
            .map(|chunk| masked_batch(chunk.iter(), &masking, &mut rng, device))
            .collect();
        MaskedLm { model, head, blocks, eval, masking, device }
    }

    /// Cross-entropy of the chosen positions only (the head runs on those alone), summed
    /// or averaged; with no chosen position, a zero that keeps the graph.
    fn loss_of(&self, ids: &Tensor, labels: &Tensor, train: bool, reduction: Reduction) -> (Tensor, i64) {
        let mask = ids.ones_like();
        let hidden = self.model.encoder.forward_t(ids, &mask, None, train);
        let width = hidden.size()[2];
        let labels = labels.view([-1]);
        let chosen = labels.ne(IGNORE).nonzero().squeeze_dim(1);
        let count = chosen.size()[0];
        if count == 0 {
            return (hidden.sum(Kind::Float) * 0.0, 0);
        }
        let picked = hidden.view([-1, width]).index_select(0, &chosen);
        let logits = self.head.forward(&picked, self.model.encoder.embeddings.word_embeddings());
        let targets = labels.index_select(0, &chosen);
        (logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&targets, None, reduction, IGNORE, 0.0), count)
    }
}

fn masked_batch<'b>(
    blocks: impl Iterator<Item = &'b Vec<i64>>,
    masking: &Masking,
    rng: &mut ChaCha8Rng,
    device: Device,
) -> (Tensor, Tensor) {
    let (mut ids, mut labels, mut rows) = (Vec::new(), Vec::new(), 0i64);
    for block in blocks {
        let mut b = block.clone();
        labels.extend(masking.apply(&mut b, rng));
        ids.extend(b);
        rows += 1;
    }
    let shape = [rows, ids.len() as i64 / rows.max(1)];
    (Tensor::from_slice(&ids).view(shape).to(device), Tensor::from_slice(&labels).view(shape).to(device))
}

impl Objective for MaskedLm<'_> {
    fn train_len(&self) -> usize {
        self.blocks.len()
    }

    fn loss(&self, batch: &[usize], seed: u64) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (ids, labels) = masked_batch(batch.iter().map(|&i| &self.blocks[i]), &self.masking, &mut rng, self.device);
        Ok(self.loss_of(&ids, &labels, true, Reduction::Mean).0)
    }

    fn evaluate(&self) -> Result<Metrics> {
        let (mut sum, mut count) = (0.0, 0i64);
        for (ids, labels) in &self.eval {
            let (loss, n) = self.loss_of(ids, labels, false, Reduction::Sum);
            sum += loss.double_value(&[]);
            count += n;
        }
        let loss = sum / count.max(1) as f64;
        Ok(Metrics::from([("loss".to_string(), loss), ("perplexity".to_string(), loss.exp())]))
    }
}
