//! `taft dapt` on tch: the masked-LM blocks, the objective and its evaluation.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Reduction, Tensor};

use super::{Dapt, DaptConfig};
use crate::error::{Error, Result};
use crate::model::checkpoint::{self, Arch};
use crate::model::heads::{Classifier, MlmHead};
use crate::steps::training::{self, TrainingJob};
use crate::steps::{io, Step};
use crate::store::commit::Output;
use crate::train::mlm::{group_blocks, Masking, IGNORE};
use crate::train::{self, Fit, Metrics, Objective, Sampler, Shuffle};

pub async fn run(config: &DaptConfig, out: &mut Output) -> Result<serde_json::Value> {
    let (inputs, config) = (config.inputs.clone(), config.clone());
    let (_, summary) = training::run_training(Dapt::NAME, &inputs, out, move |job| train_mlm(&config, job)).await?;
    Ok(summary)
}

fn train_mlm(config: &DaptConfig, job: &TrainingJob) -> Result<(Fit, serde_json::Value)> {
    let src = &job.src;
    let device = config.train.device()?;
    let (encoder_config, family, tokenizer) = src.read_model()?;
    encoder_config.check_length("block_size", config.block_size, &src.url)?;

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
    tracing::info!(
        train_blocks = train_blocks.len(),
        eval_blocks = eval_blocks.len(),
        block = config.block_size,
        "masked-LM data"
    );

    tch::manual_seed(config.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = Classifier::new(&vs.root(), &encoder_config, family, None, &[], encoder_config.hidden_dropout_prob);
    let head = MlmHead::new(&MlmHead::path(&vs.root(), family), &encoder_config, family);
    checkpoint::init_like_transformers(&vs, MlmHead::prefix(family), &encoder_config, family);
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
    training::write_model_dir(job, &vs, &encoder_config, Arch::MaskedLm, fields)?;
    Ok((fit, serde_json::json!({"data": data})))
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
    fn sampler(&self) -> Box<dyn Sampler + '_> {
        Box::new(Shuffle(self.blocks.len()))
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
