//! The adaptive layer of TAFT (SPEC §3): one transformer encoder layer between the pretrained
//! encoder and the classification head. It is trained on the task while the encoder stays
//! frozen, so it is where domain information (from the encoder) meets task information.
//!
//! It follows PyTorch `nn.TransformerEncoderLayer` exactly — parameter names
//! (`self_attn.in_proj_weight`, `linear1`, `norm1`, …), post-LayerNorm, ReLU, batch first —
//! so weights move between the two unchanged. **quirk**: the original passes no padding mask,
//! so padding positions attend and are attended; `mask_padding: false` reproduces that.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub use super::config::AdaptiveConfig;
use super::dropout::{attention, dropout};
use super::heads::torch_linear;

/// `nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)`.
#[derive(Debug)]
pub struct AdaptiveLayer {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    linear1: nn::Linear,
    linear2: nn::Linear,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
    cfg: AdaptiveConfig,
}

impl AdaptiveLayer {
    pub fn new(p: &nn::Path, d_model: i64, cfg: &AdaptiveConfig) -> Self {
        let attn = p / "self_attn";
        let ln = nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() };
        // As `nn.TransformerEncoderLayer` starts: MultiheadAttention's in_proj_weight
        // xavier-uniform, its in_proj and out_proj biases zero, out_proj's weight and the
        // feed-forward layers as `nn.Linear`, LayerNorm 1 and 0.
        let bound = (6.0 / (4 * d_model) as f64).sqrt();
        let out_bound = 1.0 / (d_model as f64).sqrt();
        let out_proj = nn::LinearConfig {
            ws_init: nn::Init::Uniform { lo: -out_bound, up: out_bound },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        AdaptiveLayer {
            in_proj_weight: attn.var(
                "in_proj_weight",
                &[3 * d_model, d_model],
                nn::Init::Uniform { lo: -bound, up: bound },
            ),
            in_proj_bias: attn.zeros("in_proj_bias", &[3 * d_model]),
            out_proj: nn::linear(&attn / "out_proj", d_model, d_model, out_proj),
            linear1: torch_linear(p / "linear1", d_model, cfg.ffn),
            linear2: torch_linear(p / "linear2", cfg.ffn, d_model),
            norm1: nn::layer_norm(p / "norm1", vec![d_model], ln),
            norm2: nn::layer_norm(p / "norm2", vec![d_model], ln),
            cfg: cfg.clone(),
        }
    }

    /// `x` [batch, seq, d_model]; `attention_mask` [batch, seq] (1 token, 0 padding).
    pub fn forward_t(&self, x: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let qkv = x.linear(&self.in_proj_weight, Some(&self.in_proj_bias)).chunk(3, -1);
        self.attend(x, &qkv[0], &qkv[1], &qkv[2], attention_mask, train)
    }

    /// [`AdaptiveLayer::forward_t`] at the first token alone, [batch, 1, d_model]: all that a
    /// pooler reading the first token needs. Keys and values are every token's; the query,
    /// the output projection, the LayerNorms and the feed-forward layers run on one token per
    /// item instead of all of them.
    pub fn first_token_t(&self, x: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let d = x.size()[2];
        let first = x.narrow(1, 0, 1);
        let (w, b) = (&self.in_proj_weight, &self.in_proj_bias);
        let q = first.linear(&w.narrow(0, 0, d), Some(&b.narrow(0, 0, d)));
        let kv = x.linear(&w.narrow(0, d, 2 * d), Some(&b.narrow(0, d, 2 * d))).chunk(2, -1);
        self.attend(&first, &q, &kv[0], &kv[1], attention_mask, train)
    }

    /// The layer's output at the tokens `x` [batch, rows, d_model] whose queries are `q`,
    /// attending over the keys `k` and values `v` of every token [batch, seq, d_model].
    fn attend(&self, x: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let (b, rows, d) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let heads = self.cfg.heads;
        let split = |y: &Tensor| {
            let n = y.size()[1];
            y.view([b, n, heads, d / heads]).transpose(1, 2)
        };
        let mask = self.cfg.mask_padding.then(|| attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1));
        let p = self.cfg.dropout;
        let context = attention(&split(q), &split(k), &split(v), mask.as_ref(), p, train)
            .transpose(1, 2)
            .contiguous()
            .view([b, rows, d]);
        let attended = dropout(&self.out_proj.forward(&context), p, train);
        let x = self.norm1.forward(&(x + attended));
        let ff = dropout(&self.linear1.forward(&x).relu(), p, train);
        let ff = dropout(&self.linear2.forward(&ff), p, train);
        self.norm2.forward(&(x + ff))
    }
}
