//! `taft dapt` on tch: the masked-LM blocks, the objective and its evaluation.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Reduction, Tensor};

use super::{Dapt, DaptConfig};
use crate::error::{Error, Result};
use crate::model::bert::Rows;
use crate::model::checkpoint::{self, Arch};
use crate::model::config::EncoderConfig;
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
    let summarise = config.first_token_words > 0.0;
    let (eval_texts, train_texts): (Vec<_>, Vec<_>) = texts.into_iter().partition(|(held_out, _)| *held_out);
    let blocks = |side: Vec<(bool, String)>, what: &str| -> Result<Vec<Vec<i64>>> {
        let texts: Vec<String> = side.into_iter().map(|(_, t)| t).collect();
        let ids = tokenizer.encode_ids(&texts)?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let blocks = if summarise {
            // Each block opens with the first special token, whose state predicts its words.
            let cls = i64::from(tokenizer.cls_id);
            group_blocks(ids, config.block_size - 1).into_iter().map(|b| [&[cls][..], &b].concat()).collect()
        } else {
            group_blocks(ids, config.block_size)
        };
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
    let per_pass = blocks_per_pass(config, &encoder_config, device);
    let data = serde_json::json!({
        "train_blocks": train_blocks.len(),
        "eval_blocks": eval_blocks.len(),
        "block_size": config.block_size,
        "first_token_words": config.first_token_words,
        "blocks_per_pass": per_pass,
    });
    let mut objective = MaskedLm::new(&model, &head, train_blocks, &eval_blocks, masking, config, device);
    objective.blocks_per_pass = per_pass;
    let fit = train::fit(&config.train, &vs, &objective, &job.work)?;
    let fields = serde_json::json!({"heads": ["masked_lm"], "dapt": {"eval": fit.last_eval(), "data": data}});
    training::write_model_dir(job, &vs, &encoder_config, Arch::MaskedLm, fields)?;
    Ok((fit, serde_json::json!({"data": data})))
}

/// Bytes of activations one block of `block` tokens keeps for the backward pass
/// ([`train::activation_bytes`]).
fn activation_bytes_per_block(encoder: &EncoderConfig, block: usize) -> u64 {
    train::activation_bytes(
        encoder.num_hidden_layers,
        encoder.hidden_size,
        encoder.intermediate_size,
        encoder.num_attention_heads,
        block,
    )
}

/// Blocks per forward pass (the batch size: the whole batch): `blocks_per_pass` when set,
/// else on the CPU as many as `pass_memory_mib` allows.
fn blocks_per_pass(config: &DaptConfig, encoder: &EncoderConfig, device: Device) -> usize {
    let batch = config.train.batch_size.max(1);
    if config.blocks_per_pass > 0 {
        return config.blocks_per_pass.min(batch);
    }
    if device != Device::Cpu || config.pass_memory_mib == 0 {
        return batch;
    }
    let per_block = activation_bytes_per_block(encoder, config.block_size).max(1);
    (((config.pass_memory_mib << 20) / per_block) as usize).clamp(1, batch)
}

/// The masked-LM objective over token blocks.
struct MaskedLm<'a> {
    model: &'a Classifier,
    head: &'a MlmHead,
    blocks: Vec<Vec<i64>>,
    /// Evaluation blocks masked once (the same masks at every evaluation), in batches.
    eval: Vec<(Tensor, Tensor)>,
    masking: Masking,
    /// Weight of the first token's word prediction (0: masked LM alone).
    words_weight: f64,
    /// 1 for the tokens that count as a block's words, 0 for the special ones (vocab).
    word_columns: Tensor,
    /// Blocks per forward pass (a batch of more runs in parts).
    blocks_per_pass: usize,
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
        let mut word_columns = vec![1f32; masking.vocab_size as usize];
        for &id in &masking.special_ids {
            if let Some(c) = word_columns.get_mut(id as usize) {
                *c = 0.0;
            }
        }
        let word_columns = Tensor::from_slice(&word_columns).to(device);
        MaskedLm {
            model,
            head,
            blocks,
            eval,
            masking,
            words_weight: config.first_token_words,
            word_columns,
            blocks_per_pass: config.train.batch_size,
            device,
        }
    }

    /// Cross-entropy of the chosen positions only (the head runs on those alone), summed
    /// or averaged; with no chosen position, a zero that keeps the graph. With
    /// `first_token_words`, also the first token's word prediction, summed or averaged
    /// over the blocks. The encoder's last layer computes the states the losses read alone
    /// (the chosen positions and, for the word prediction, the first token), with keys and
    /// values over every token ([`crate::model::bert::Encoder::forward_rows_t`]).
    fn loss_of(&self, ids: &Tensor, labels: &Tensor, train: bool, reduction: Reduction) -> Losses {
        let chosen = labels.ne(IGNORE);
        let wanted = if self.words_weight > 0.0 {
            let first = Tensor::arange(labels.size()[1], (Kind::Int64, labels.device())).eq(0).unsqueeze(0);
            chosen.logical_or(&first)
        } else {
            chosen
        };
        let (positions, valid) = wanted_rows(&wanted);
        // Blocks are full: no padding, no mask.
        let hidden = self.model.encoder.forward_rows_t(ids, None, None, Rows::At(&positions), train);
        let width = hidden.size()[2];
        let words = (self.words_weight > 0.0).then(|| {
            // The blocks as they were before masking; the first token sorts first in its row.
            let original = labels.where_self(&labels.ne(IGNORE), ids);
            let first = hidden.select(1, 0);
            let logits = self.head.forward(&first, self.model.encoder.embeddings.word_embeddings());
            first_token_words(&logits, &original, &self.word_columns, reduction)
        });
        let targets = labels.gather(1, &positions, false);
        let picked = targets.ne(IGNORE).logical_and(&valid).view([-1]).nonzero().squeeze_dim(1);
        let count = picked.size()[0];
        let masked_lm = if count == 0 {
            hidden.sum(Kind::Float) * 0.0
        } else {
            let states = hidden.view([-1, width]).index_select(0, &picked);
            let logits = self.head.forward(&states, self.model.encoder.embeddings.word_embeddings());
            let targets = targets.view([-1]).index_select(0, &picked);
            logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&targets, None, reduction, IGNORE, 0.0)
        };
        Losses { masked_lm, count, words }
    }
}

/// The positions where `wanted` [blocks, seq] is true, per block in order, padded to the
/// most any block has (at least one): int64 [blocks, rows], and which of them are real
/// (bool, the same shape).
fn wanted_rows(wanted: &Tensor) -> (Tensor, Tensor) {
    let (seq, device) = (wanted.size()[1], wanted.device());
    let counts = wanted.sum_dim_intlist(1, false, Kind::Int64);
    let rows = counts.max().int64_value(&[]).max(1);
    // Wanted positions sort before the rest, each group in position order.
    let key = wanted.logical_not().to_kind(Kind::Int64) * seq + Tensor::arange(seq, (Kind::Int64, device));
    let positions = key.argsort(1, false).narrow(1, 0, rows);
    let valid = Tensor::arange(rows, (Kind::Int64, device)).unsqueeze(0).lt_tensor(&counts.unsqueeze(1));
    (positions, valid)
}

/// What one batch's forward pass gives: the masked-LM loss over `count` chosen positions,
/// and the first token's word loss when it is on.
struct Losses {
    masked_lm: Tensor,
    count: i64,
    words: Option<Tensor>,
}

/// Cross-entropy between the first token's word logits (blocks × vocab) and each block's
/// word distribution: the share of each token among the block's words (`word_columns`: 1
/// for a word, 0 for a special token), summed or averaged over the blocks.
fn first_token_words(logits: &Tensor, blocks: &Tensor, word_columns: &Tensor, reduction: Reduction) -> Tensor {
    let (rows, vocab) = (blocks.size()[0], logits.size()[1]);
    let counts = Tensor::zeros([rows, vocab], (Kind::Float, logits.device())).scatter_add(
        1,
        blocks,
        &blocks.ones_like().to_kind(Kind::Float),
    ) * word_columns.unsqueeze(0);
    let share = &counts / counts.sum_dim_intlist(1, true, Kind::Float).clamp_min(1.0);
    let per_block =
        -(share * logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float)).sum_dim_intlist(1, false, Kind::Float);
    match reduction {
        Reduction::Sum => per_block.sum(Kind::Float),
        _ => per_block.mean(Kind::Float),
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

    fn loss(&self, batch: &[usize], seed: u64, backward: &mut dyn FnMut(Tensor) -> Result<()>) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (ids, labels) = masked_batch(batch.iter().map(|&i| &self.blocks[i]), &self.masking, &mut rng, self.device);
        let rows = ids.size()[0];
        let per_pass = self.blocks_per_pass.max(1) as i64;
        if per_pass >= rows {
            let losses = self.loss_of(&ids, &labels, true, Reduction::Mean);
            return backward(match losses.words {
                Some(words) => losses.masked_lm + words * self.words_weight,
                None => losses.masked_lm,
            });
        }
        // The batch's means as sums over its parts: the chosen positions of the whole batch,
        // its blocks.
        let chosen = labels.ne(IGNORE).sum(Kind::Int64).int64_value(&[]).max(1) as f64;
        for start in (0..rows).step_by(per_pass as usize) {
            let len = per_pass.min(rows - start);
            let losses = self.loss_of(&ids.narrow(0, start, len), &labels.narrow(0, start, len), true, Reduction::Sum);
            let masked_lm = losses.masked_lm / chosen;
            backward(match losses.words {
                Some(words) => masked_lm + words * (self.words_weight / rows as f64),
                None => masked_lm,
            })?;
        }
        Ok(())
    }

    /// The masked-LM loss and perplexity (`loss`: masked LM alone, so that runs with and
    /// without the word loss compare); with the word loss on, its mean per block.
    fn evaluate(&self) -> Result<Metrics> {
        let (mut sum, mut count, mut words, mut blocks) = (0.0, 0i64, 0.0, 0i64);
        for (ids, labels) in &self.eval {
            let losses = self.loss_of(ids, labels, false, Reduction::Sum);
            sum += losses.masked_lm.double_value(&[]);
            count += losses.count;
            if let Some(w) = losses.words {
                words += w.double_value(&[]);
                blocks += ids.size()[0];
            }
        }
        let loss = sum / count.max(1) as f64;
        let mut metrics = Metrics::from([("loss".to_string(), loss), ("perplexity".to_string(), loss.exp())]);
        if blocks > 0 {
            metrics.insert("first_token_words".to_string(), words / blocks as f64);
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_rows_lists_each_blocks_positions_in_order_padded_to_the_most() {
        let wanted =
            Tensor::from_slice(&[false, true, false, true, true, false, false, false, false, false, true, false])
                .view([3, 4]);
        let (positions, valid) = wanted_rows(&wanted);
        assert_eq!(positions.size(), [3, 2]);
        let valid: Vec<bool> = Vec::try_from(valid.reshape([-1])).unwrap();
        assert_eq!(valid, [true, true, true, false, true, false]);
        let positions: Vec<i64> = Vec::try_from(positions.reshape([-1])).unwrap();
        let real: Vec<i64> = positions.iter().zip(&valid).filter(|(_, v)| **v).map(|(p, _)| *p).collect();
        assert_eq!(real, [1, 3, 0, 2]);
        assert!(positions.iter().all(|p| (0..4).contains(p)));
        // Nothing wanted anywhere: one row per block, none real.
        let (positions, valid) = wanted_rows(&Tensor::zeros([2, 3], (Kind::Bool, Device::Cpu)));
        assert_eq!(positions.size(), [2, 1]);
        assert_eq!(i64::try_from(valid.sum(Kind::Int64)).unwrap(), 0);
    }

    #[test]
    fn the_memory_budget_splits_a_large_models_batch_and_keeps_a_small_ones_whole() {
        let encoder = |hidden: i64, layers: i64, heads: i64, ffn: i64| {
            let json = format!(
                r#"{{"model_type": "roberta", "vocab_size": 8000, "hidden_size": {hidden}, "num_hidden_layers": {layers}, "num_attention_heads": {heads}, "intermediate_size": {ffn}, "max_position_embeddings": 514}}"#
            );
            EncoderConfig::from_json(&json, "test").unwrap()
        };
        let config = |block_size: usize, batch: usize, sets: &str| {
            let mut config: DaptConfig = serde_yaml::from_str(super::super::DEFAULTS).unwrap();
            (config.block_size, config.train.batch_size) = (block_size, batch);
            match sets {
                "budget 0" => config.pass_memory_mib = 0,
                "2 per pass" => config.blocks_per_pass = 2,
                _ => {}
            }
            config
        };
        let distil = encoder(768, 6, 12, 3072);
        // About 156 MB of activations a 256-token block: three fit in 512 MiB, and the
        // batch of 8 runs as 3 + 3 + 2. Blocks of 512 (the spec's) take one each.
        assert_eq!(activation_bytes_per_block(&distil, 256), 155_713_536);
        assert_eq!(blocks_per_pass(&config(256, 8, ""), &distil, Device::Cpu), 3);
        assert_eq!(blocks_per_pass(&config(512, 8, ""), &distil, Device::Cpu), 1);
        // No budget, CUDA, or an explicit setting (at most the batch).
        assert_eq!(blocks_per_pass(&config(256, 8, "budget 0"), &distil, Device::Cpu), 8);
        assert_eq!(blocks_per_pass(&config(256, 8, ""), &distil, Device::Cuda(0)), 8);
        assert_eq!(blocks_per_pass(&config(256, 8, "2 per pass"), &distil, Device::Cuda(0)), 2);
        assert_eq!(blocks_per_pass(&config(256, 1, "2 per pass"), &distil, Device::Cpu), 1);
        // The demo's encoder (2 x 64, 16 blocks of 128): 44 MB in all, one pass.
        assert_eq!(blocks_per_pass(&config(128, 16, ""), &encoder(64, 2, 4, 128), Device::Cpu), 16);
    }

    #[test]
    fn the_first_tokens_target_is_the_share_of_each_word_in_its_block() {
        // Vocabulary of 5, token 0 special; two blocks.
        let logits = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 1.5, 1.0, 0.0, -0.5, 3.0, 0.25]).view([2, 5]);
        let blocks = Tensor::from_slice(&[0i64, 2, 2, 4, 0, 1, 3, 3, 3, 0]).view([2, 5]);
        let columns = Tensor::from_slice(&[0f32, 1.0, 1.0, 1.0, 1.0]);
        // Block 0's words: 2, 2, 4 (shares 2/3, 1/3); block 1's: 1, 3, 3, 3 (1/4, 3/4).
        let log_softmax = |row: &[f64]| -> Vec<f64> {
            let total = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            row.iter().map(|x| x - total).collect()
        };
        let a = log_softmax(&[0.5, -1.0, 2.0, 0.0, 1.5]);
        let b = log_softmax(&[1.0, 0.0, -0.5, 3.0, 0.25]);
        let want = [-(2.0 / 3.0 * a[2] + 1.0 / 3.0 * a[4]), -(0.25 * b[1] + 0.75 * b[3])];
        let sum = first_token_words(&logits, &blocks, &columns, Reduction::Sum).double_value(&[]);
        let mean = first_token_words(&logits, &blocks, &columns, Reduction::Mean).double_value(&[]);
        assert!((sum - (want[0] + want[1])).abs() < 1e-5, "{sum} vs {want:?}");
        assert!((mean - (want[0] + want[1]) / 2.0).abs() < 1e-5, "{mean} vs {want:?}");
    }
}
