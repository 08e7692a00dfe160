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
        self.forward_at_t(x, x, mask, train)
    }

    /// The block's output at some tokens `at` [batch, rows, hidden] of `x` [batch, seq,
    /// hidden]: their queries attend over the keys and values of every token of `x`.
    pub fn forward_at_t(&self, at: &Tensor, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, rows, h) = at.size3().expect("hidden states are [batch, rows, hidden]");
        let split = |y: Tensor| {
            let t = y.size()[1];
            y.view([b, t, self.heads, h / self.heads]).transpose(1, 2)
        };
        let q = split(self.query.forward(at));
        let k = split(self.key.forward(x));
        let v = split(self.value.forward(x));
        let context =
            attention(&q, &k, &v, mask, self.attention_dropout, train).transpose(1, 2).contiguous().view([b, rows, h]);
        let out = dropout(&self.dense.forward(&context), self.dropout, train);
        self.layer_norm.forward(&(out + at))
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
        self.forward_at_t(x, x, mask, train)
    }

    /// The layer's output at some tokens `at` of `x` ([`Attention::forward_at_t`]).
    pub fn forward_at_t(&self, at: &Tensor, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let a = self.attention.forward_at_t(at, x, mask, train);
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
        self.forward_rows_t(input_ids, attention_mask, token_type_ids, Rows::All, train)
    }

    /// [`Encoder::forward_t`] with the last hidden states of `rows` alone: [batch, seq,
    /// hidden] for [`Rows::All`], [batch, 1, hidden] for [`Rows::First`], [batch, rows,
    /// hidden] for [`Rows::At`]. Every layer but the last runs on every token; the last
    /// computes keys and values over every token and its queries, output projection,
    /// LayerNorms and feed-forward block at those rows only: what a pooler reading the first
    /// token, or a masked-LM loss over the chosen positions, needs. Each row's states are
    /// those [`Encoder::forward_t`] gives it.
    pub fn forward_rows_t(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        rows: Rows<'_>,
        train: bool,
    ) -> Tensor {
        let mask = attention_mask.map(|m| m.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1));
        let mut x = self.embeddings.forward_t(input_ids, token_type_ids, train);
        let Some((last, layers)) = self.layers.split_last() else {
            return rows.of(&x);
        };
        for layer in layers {
            x = layer.forward_t(&x, mask.as_ref(), train);
        }
        match rows {
            Rows::All => last.forward_t(&x, mask.as_ref(), train),
            _ => last.forward_at_t(&rows.of(&x), &x, mask.as_ref(), train),
        }
    }
}

/// The tokens whose last hidden states an encoder pass computes ([`Encoder::forward_rows_t`]).
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// Every token.
    All,
    /// The first token of each item.
    First,
    /// Token positions per item, int64 [batch, rows].
    At(&'a Tensor),
}

impl Rows<'_> {
    /// These rows of `x` [batch, seq, hidden].
    fn of(self, x: &Tensor) -> Tensor {
        match self {
            Rows::All => x.shallow_clone(),
            Rows::First => x.narrow(1, 0, 1),
            Rows::At(positions) => {
                let width = x.size()[2];
                x.gather(1, &positions.unsqueeze(-1).expand([-1, -1, width], false), false)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::OptimizerConfig, Device};

    fn encoder(vs: &nn::VarStore) -> Encoder {
        let cfg = EncoderConfig::from_json(
            r#"{"model_type": "roberta", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 24, "max_position_embeddings": 20}"#,
            "test",
        )
        .unwrap();
        Encoder::new(&vs.root(), &cfg, Family::Roberta)
    }

    /// The gradients of every variable from `loss` alone (zeroed before its backward pass).
    fn gradients(vs: &nn::VarStore, loss: Tensor) -> Vec<Tensor> {
        let mut sgd = nn::Sgd::default().build(vs, 0.0).unwrap();
        sgd.zero_grad();
        loss.backward();
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.iter().map(|(_, v)| v.grad().copy()).collect()
    }

    #[test]
    fn the_last_layer_at_some_rows_gives_those_rows_states_and_gradients() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = encoder(&vs);
        let ids = Tensor::from_slice(&[0i64, 5, 6, 7, 8, 2, 0, 9, 10, 2, 1, 1]).view([2, 6]);
        let mask = ids.ne(1).to_kind(Kind::Int64);
        let positions = Tensor::from_slice(&[1i64, 4, 0, 3]).view([2, 2]);
        let weights = Tensor::randn([2, 2, 16], (Kind::Float, Device::Cpu));
        let close = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        for m in [Some(&mask), None] {
            let all = enc.forward_t(&ids, m, None, false);
            let width = [-1, -1, 16];
            let at = enc.forward_rows_t(&ids, m, None, Rows::At(&positions), false);
            let gathered = all.gather(1, &positions.unsqueeze(-1).expand(width, false), false);
            assert_eq!(at.size(), [2, 2, 16]);
            assert!(close(&at, &gathered) < 1e-5, "{}", close(&at, &gathered));
            let first = enc.forward_rows_t(&ids, m, None, Rows::First, false);
            assert_eq!(first.size(), [2, 1, 16]);
            assert!(close(&first, &all.narrow(1, 0, 1)) < 1e-5);
            // The same loss through either path trains every variable the same way.
            let full = gradients(
                &vs,
                (all.gather(1, &positions.unsqueeze(-1).expand(width, false), false) * &weights).sum(Kind::Float),
            );
            let rows = gradients(
                &vs,
                (enc.forward_rows_t(&ids, m, None, Rows::At(&positions), false) * &weights).sum(Kind::Float),
            );
            assert!(full.iter().any(|g| f64::try_from(g.abs().max()).unwrap() > 0.0));
            for (a, b) in full.iter().zip(&rows) {
                assert!(close(a, b) < 1e-5, "gradient differs by {}", close(a, b));
            }
        }
    }
}
