//! BERT and RoBERTa/CamemBERT encoders on tch, one struct per Hugging Face submodule so that
//! checkpoint keys (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`,
//! …) are the variable names. Post-norm layers, fused attention, dropout only in training.
//!
//! Reference: transformers `models/bert/modeling_bert.py` and `models/roberta/modeling_roberta.py`.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{EncoderConfig, Family};
use super::dropout::{attention, dropout};

/// Word, position and token-type embeddings, LayerNorm, dropout (`BertEmbeddings`).
#[derive(Debug)]
pub struct Embeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
    dropout: f64,
    family: Family,
    pad_id: i64,
}

impl Embeddings {
    pub fn new(p: &nn::Path, cfg: &EncoderConfig, family: Family) -> Self {
        let ecfg = nn::EmbeddingConfig { padding_idx: cfg.pad_id(), ..Default::default() };
        Embeddings {
            word_embeddings: nn::embedding(p / "word_embeddings", cfg.vocab_size, cfg.hidden_size, ecfg),
            position_embeddings: nn::embedding(
                p / "position_embeddings",
                cfg.max_position_embeddings,
                cfg.hidden_size,
                Default::default(),
            ),
            token_type_embeddings: nn::embedding(
                p / "token_type_embeddings",
                cfg.type_vocab_size,
                cfg.hidden_size,
                Default::default(),
            ),
            layer_norm: nn::layer_norm(
                p / "LayerNorm",
                vec![cfg.hidden_size],
                nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() },
            ),
            dropout: cfg.hidden_dropout_prob,
            family,
            pad_id: cfg.pad_id(),
        }
    }

    /// The word embedding matrix (tied to the masked-LM decoder).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.word_embeddings.ws
    }

    pub fn forward_t(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>, train: bool) -> Tensor {
        let (batch, len) = input_ids.size2().expect("input_ids is [batch, seq]");
        let positions = match self.family {
            Family::Bert => {
                Tensor::arange(len, (Kind::Int64, input_ids.device())).unsqueeze(0).expand([batch, len], false)
            }
            // RoBERTa: padding keeps position pad_id; real tokens count from pad_id + 1.
            Family::Roberta => {
                let mask = input_ids.ne(self.pad_id).to_kind(Kind::Int64);
                mask.cumsum(1, Kind::Int64) * &mask + self.pad_id
            }
        };
        let types = match token_type_ids {
            Some(t) => t.shallow_clone(),
            None => input_ids.zeros_like(),
        };
        let x = self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(&positions)
            + self.token_type_embeddings.forward(&types);
        dropout(&self.layer_norm.forward(&x), self.dropout, train)
    }
}

/// Multi-head self-attention (`BertSelfAttention` + `BertSelfOutput`), fused kernel.
#[derive(Debug)]
pub struct Attention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    heads: i64,
    attention_dropout: f64,
    dropout: f64,
}

impl Attention {
    pub fn new(p: &nn::Path, cfg: &EncoderConfig) -> Self {
        let h = cfg.hidden_size;
        let s = p / "self";
        let o = p / "output";
        Attention {
            query: nn::linear(&s / "query", h, h, Default::default()),
            key: nn::linear(&s / "key", h, h, Default::default()),
            value: nn::linear(&s / "value", h, h, Default::default()),
            dense: nn::linear(&o / "dense", h, h, Default::default()),
            layer_norm: nn::layer_norm(
                &o / "LayerNorm",
                vec![h],
                nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() },
            ),
            heads: cfg.num_attention_heads,
            attention_dropout: cfg.attention_probs_dropout_prob,
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// `mask`: boolean [batch, 1, 1, seq], true where a key may be attended; `None` when
    /// every key may be (no padding), which lets CUDA take its flash-attention kernel.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, t, h) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let split = |y: Tensor| y.view([b, t, self.heads, h / self.heads]).transpose(1, 2);
        let q = split(self.query.forward(x));
        let k = split(self.key.forward(x));
        let v = split(self.value.forward(x));
        let context =
            attention(&q, &k, &v, mask, self.attention_dropout, train).transpose(1, 2).contiguous().view([b, t, h]);
        let out = dropout(&self.dense.forward(&context), self.dropout, train);
        self.layer_norm.forward(&(out + x))
    }
}

/// One encoder layer (`BertLayer`): attention, then the feed-forward block, both post-norm.
#[derive(Debug)]
pub struct Layer {
    attention: Attention,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
    activation: String,
    dropout: f64,
}

impl Layer {
    pub fn new(p: &nn::Path, cfg: &EncoderConfig) -> Self {
        Layer {
            attention: Attention::new(&(p / "attention"), cfg),
            intermediate: nn::linear(
                p / "intermediate" / "dense",
                cfg.hidden_size,
                cfg.intermediate_size,
                Default::default(),
            ),
            output: nn::linear(p / "output" / "dense", cfg.intermediate_size, cfg.hidden_size, Default::default()),
            output_norm: nn::layer_norm(
                p / "output" / "LayerNorm",
                vec![cfg.hidden_size],
                nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() },
            ),
            activation: cfg.hidden_act.clone(),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let a = self.attention.forward_t(x, mask, train);
        let i = self.intermediate.forward(&a);
        let i = activate(&i, &self.activation);
        let o = dropout(&self.output.forward(&i), self.dropout, train);
        self.output_norm.forward(&(o + a))
    }
}

/// The encoder: embeddings and `num_hidden_layers` layers; returns the last hidden states.
#[derive(Debug)]
pub struct Encoder {
    pub embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn new(p: &nn::Path, cfg: &EncoderConfig, family: Family) -> Self {
        let layers = (0..cfg.num_hidden_layers).map(|i| Layer::new(&(p / "encoder" / "layer" / i), cfg)).collect();
        Encoder { embeddings: Embeddings::new(&(p / "embeddings"), cfg, family), layers }
    }

    /// `input_ids`, `attention_mask` (1 token, 0 padding): int64 [batch, seq] → [batch, seq, hidden].
    /// `attention_mask` may be `None` when no item is padded.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let mask = attention_mask.map(|m| m.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1));
        let mut x = self.embeddings.forward_t(input_ids, token_type_ids, train);
        for layer in &self.layers {
            x = layer.forward_t(&x, mask.as_ref(), train);
        }
        x
    }
}

/// Hugging Face's activation by name (`ACT2FN`): `gelu` is exact, `gelu_new` and
/// `gelu_pytorch_tanh` the tanh approximation, `relu` ReLU (the names a config may use).
pub fn activate(x: &Tensor, name: &str) -> Tensor {
    match name {
        "relu" => x.relu(),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
        _ => x.gelu("none"),
    }
}
