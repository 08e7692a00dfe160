//! Heads on top of the encoder: the masked-LM head (decoder tied to the word embeddings),
//! the pooler, and the classifiers of the direct and multi-task models (SPEC §3).

use std::collections::BTreeMap;

use tch::nn::{self, Module};
use tch::Tensor;

use super::adaptive::{AdaptiveConfig, AdaptiveLayer};
use super::bert::{Encoder, Rows};
use super::config::{EncoderConfig, Family};

/// The masked-LM head: `transform` (dense, activation, LayerNorm), then the decoder whose
/// weight is the word embedding matrix, plus its own bias. Names follow `BertOnlyMLMHead`
/// (`cls.predictions.*`) or `RobertaLMHead` (`lm_head.*`).
#[derive(Debug)]
pub struct MlmHead {
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    bias: Tensor,
    activation: String,
}

impl MlmHead {
    /// The variable path of the head for a family.
    pub fn path<'a>(root: &nn::Path<'a>, family: Family) -> nn::Path<'a> {
        match family {
            Family::Bert => root / "cls" / "predictions",
            Family::Roberta => root / "lm_head",
        }
    }

    /// The variable-name prefix of the head for a family.
    pub fn prefix(family: Family) -> &'static str {
        match family {
            Family::Bert => "cls.predictions.",
            Family::Roberta => "lm_head.",
        }
    }

    pub fn new(p: &nn::Path, cfg: &EncoderConfig, family: Family) -> Self {
        let h = cfg.hidden_size;
        let ln = nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() };
        let (dense, norm) = match family {
            Family::Bert => (p / "transform" / "dense", p / "transform" / "LayerNorm"),
            Family::Roberta => (p / "dense", p / "layer_norm"),
        };
        MlmHead {
            dense: nn::linear(dense, h, h, Default::default()),
            layer_norm: nn::layer_norm(norm, vec![h], ln),
            bias: p.zeros("bias", &[cfg.vocab_size]),
            // BertPredictionHeadTransform follows `hidden_act`; RobertaLMHead is exact GELU.
            activation: match family {
                Family::Bert => cfg.hidden_act.clone(),
                Family::Roberta => "gelu".into(),
            },
        }
    }

    /// Vocabulary logits [.., vocab] for hidden states [.., hidden].
    pub fn forward(&self, hidden: &Tensor, word_embeddings: &Tensor) -> Tensor {
        let x = self.dense.forward(hidden);
        let x = super::bert::activate(&x, &self.activation);
        self.layer_norm.forward(&x).linear(word_embeddings, Some(&self.bias))
    }
}

/// `nn.Linear(in_dim, out_dim)` initialised as PyTorch initialises it: the weight
/// kaiming-uniform with a = √5, which is U(±1/√in_dim), and the bias U(±1/√in_dim). (tch's
/// default weight init is kaiming-uniform with ReLU's gain, √6 ≈ 2.45× wider.)
pub fn torch_linear<'a>(p: impl std::borrow::Borrow<nn::Path<'a>>, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    nn::linear(p, in_dim, out_dim, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias: true })
}

/// `tanh(W_p · h[:, 0] + b_p)` — Hugging Face's `pooler.dense`. A fresh pooler (a
/// checkpoint without one) starts as `nn.Linear`; a scratch encoder's is re-drawn with the
/// rest of the encoder (transformers' `_init_weights`).
#[derive(Debug)]
pub struct Pooler {
    dense: nn::Linear,
}

impl Pooler {
    pub fn new(p: &nn::Path, hidden: i64) -> Self {
        Pooler { dense: torch_linear(p / "dense", hidden, hidden) }
    }

    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        self.dense.forward(&hidden.select(1, 0)).tanh()
    }
}

/// Multi-output forward: logits per task, the pooled state, and the states the pooler read.
#[derive(Debug)]
pub struct ClassifierOutput {
    /// The states the pooler read from, at the first token [batch, 1, hidden]: the adaptive
    /// layer's output, or without one the encoder's (from [`Classifier::forward_t`]; from
    /// [`Classifier::heads_t`], the states it was given).
    pub hidden: Tensor,
    pub pooled: Tensor,
    pub logits: BTreeMap<String, Tensor>,
}

/// The classification model of every method: encoder → (adaptive layer) → pooler → dropout
/// → one classifier per task. With one task it is the step-1 model; with status and
/// satisfaction, the step-2 multi-task model (shared encoder, adaptive layer and pooler).
#[derive(Debug)]
pub struct Classifier {
    pub encoder: Encoder,
    pub adaptive: Option<AdaptiveLayer>,
    pub pooler: Pooler,
    classifiers: BTreeMap<String, nn::Linear>,
    dropout: f64,
}

impl Classifier {
    /// `tasks`: (name, number of classes). Variables: `<encoder names>`, `adaptive.*`,
    /// `pooler.dense.*`, `classifiers.<task>.*`.
    pub fn new(
        p: &nn::Path,
        cfg: &EncoderConfig,
        family: Family,
        adaptive: Option<&AdaptiveConfig>,
        tasks: &[(String, i64)],
        dropout: f64,
    ) -> Self {
        let h = cfg.hidden_size;
        Classifier {
            encoder: Encoder::new(p, cfg, family),
            adaptive: adaptive.map(|a| AdaptiveLayer::new(&(p / "adaptive"), h, a)),
            pooler: Pooler::new(&(p / "pooler"), h),
            classifiers: tasks
                .iter()
                .map(|(name, n)| (name.clone(), torch_linear(p / "classifiers" / name.as_str(), h, *n)))
                .collect(),
            dropout,
        }
    }

    pub fn forward_t(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> ClassifierOutput {
        // Without an adaptive layer the pooler reads the encoder's first token alone.
        let rows = if self.adaptive.is_some() { Rows::All } else { Rows::First };
        let hidden = self.encoder.forward_rows_t(input_ids, Some(attention_mask), None, rows, train);
        self.heads_t(hidden, attention_mask, train)
    }

    /// Everything above the encoder, from its hidden states [batch, tokens, hidden] (without
    /// an adaptive layer, the first token's are enough).
    pub fn heads_t(&self, mut hidden: Tensor, attention_mask: &Tensor, train: bool) -> ClassifierOutput {
        if let Some(adaptive) = &self.adaptive {
            // The pooler reads the first token: the adaptive layer's output there is all it needs.
            hidden = adaptive.first_token_t(&hidden, attention_mask, train);
        }
        let pooled = self.pooler.forward(&hidden);
        let dropped = super::dropout::dropout(&pooled, self.dropout, train);
        let logits = self.classifiers.iter().map(|(name, c)| (name.clone(), c.forward(&dropped))).collect();
        ClassifierOutput { hidden, pooled, logits }
    }
}
