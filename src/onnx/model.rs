//! The classification model of every method as an ONNX graph: the BERT or RoBERTa/CamemBERT
//! encoder, the adaptive layer when the model has one (with or without its padding mask), the
//! pooler and one classifier per task, each with its logits and probabilities. The graph
//! follows `model::bert`, `model::adaptive` and `model::heads` operation for operation, and
//! reads the parameters by the same names. The adaptive layer, like
//! `AdaptiveLayer::first_token_t`, computes its output at the first token alone: the pooler
//! reads nothing else. Without an adaptive layer the encoder's last layer does the same
//! (`Encoder::forward_rows_t` with `Rows::First`): keys and values over every token, the rest
//! at the first.
//!
//! With `int8`, every linear layer's weight is quantized as ONNX Runtime's dynamic quantizer
//! does with `per_channel=True` (symmetric int8, one scale per output column, zero point 0).
//! The activations are quantized per token (symmetric, scale = max |x| / 127 over the token's
//! features, stored as uint8 with the fixed zero point 128 so that MatMulInteger takes ONNX
//! Runtime's fast uint8 × int8 path), not per tensor as DynamicQuantizeLinear does: a token's
//! scale never depends on the other rows of its batch, so neither does a prediction. Then
//! MatMulInteger → rescale by the token's scale times the column's weight scale. The pooler and the
//! classifiers stay fp32 (as the quantizer's `nodes_to_exclude` would keep them).
//!
//! The `fused` graph writes the same computation with ONNX Runtime's contrib operators:
//! `Attention` (the q, k, v projections as one [hidden, 3·hidden] weight, the heads and the
//! padding mask in one kernel, no transposes), `BiasGelu` / `FastGelu` (bias + activation), and
//! LayerNorm as InstanceNormalization over rows (`Builder::row_norm`: ONNX Runtime's CPU
//! kernel for it is two to three times faster than its LayerNormalization or
//! SkipLayerNormalization).
//! Under int8 the projections stay quantized MatMulIntegers and the attention core stays
//! standard operators; the rest is fused alike.

use std::collections::{BTreeMap, HashMap};

use super::graph::{Attr, Dim, Elem, Graph};
use super::proto::ModelProto;
use super::{logits_name, probs_name, GraphKind, ATTENTION_MASK, INPUT_IDS};
use crate::error::{Error, Result};
use crate::model::config::{AdaptiveConfig, EncoderConfig, Family};

/// A parameter: its shape and its values, row-major.
#[derive(Debug, Clone)]
pub struct Param {
    pub dims: Vec<i64>,
    pub data: Vec<f32>,
}

/// What the graph is made of.
pub struct Spec<'a> {
    pub config: &'a EncoderConfig,
    pub family: Family,
    pub adaptive: Option<&'a AdaptiveConfig>,
    /// The heads in output order: (task, number of classes).
    pub heads: &'a [(String, usize)],
    pub int8: bool,
    pub graph: GraphKind,
}

/// Masked positions get this added to their attention scores (a zero weight after softmax).
const MASKED: f32 = -1e9;
/// TensorProto data types for Cast.
const FLOAT: i64 = 1;
/// TensorProto.DataType UINT8.
const UINT8: i64 = 2;
const INT32: i64 = 6;
const INT64: i64 = 7;

/// Builds the model's graph from its parameters (named as `model::heads::Classifier` names them).
pub fn classifier(spec: &Spec, params: &BTreeMap<String, Param>, metadata: &[(&str, String)]) -> Result<ModelProto> {
    let fused = spec.graph == GraphKind::Fused;
    let mut b = Builder { g: Graph::default(), params, int8: spec.int8, fused, quantized: HashMap::new() };
    let batch_seq = [Dim::Named("batch"), Dim::Named("sequence")];
    let ids = b.g.input(INPUT_IDS, Elem::I64, &batch_seq);
    let mask = b.g.input(ATTENTION_MASK, Elem::I64, &batch_seq);
    let cfg = spec.config;
    let eps = cfg.layer_norm_eps as f32;

    // Embeddings: word + position + token type 0, then LayerNorm.
    let words = b.init("embeddings.word_embeddings.weight")?;
    let x = b.g.node("Gather", &[&words, &ids], &[], "embeddings/words");
    let positions = match spec.family {
        Family::Bert => {
            let shape = b.g.node("Shape", &[&ids], &[], "embeddings/positions");
            let one = b.g.const_i64(&[], &[1]);
            let seq = b.g.node("Gather", &[&shape, &one], &[("axis", Attr::Int(0))], "embeddings/positions");
            let zero = b.g.const_i64(&[], &[0]);
            b.g.node("Range", &[&zero, &seq, &one], &[], "embeddings/positions")
        }
        // RoBERTa: padding keeps position pad_id; real tokens count from pad_id + 1.
        Family::Roberta => {
            let pad = b.g.const_i64(&[], &[cfg.pad_id()]);
            let is_pad = b.g.node("Equal", &[&ids, &pad], &[], "embeddings/positions");
            let real = b.g.node("Not", &[&is_pad], &[], "embeddings/positions");
            let real = b.g.node("Cast", &[&real], &[("to", Attr::Int(INT64))], "embeddings/positions");
            let axis = b.g.const_i64(&[], &[1]);
            let count = b.g.node("CumSum", &[&real, &axis], &[], "embeddings/positions");
            let count = b.g.node("Mul", &[&count, &real], &[], "embeddings/positions");
            b.g.node("Add", &[&count, &pad], &[], "embeddings/positions")
        }
    };
    let table = b.init("embeddings.position_embeddings.weight")?;
    let pos = b.g.node("Gather", &[&table, &positions], &[], "embeddings/positions");
    let types = b.p("embeddings.token_type_embeddings.weight")?;
    let h = cfg.hidden_size as usize;
    if types.data.len() < h {
        return Err(Error::input("embeddings.token_type_embeddings.weight is empty".to_string()));
    }
    let type0 = b.g.f32("embeddings.token_type_embeddings.row0", &[h as i64], &types.data[..h]);
    let mut x = b.add_bias_norm(&x, &pos, &type0, "embeddings.LayerNorm", eps)?;

    let masks = if fused && !spec.int8 {
        // The fused Attention's raw mask: int32 [batch, seq], 1 for tokens.
        Masks::Raw(b.g.node("Cast", &[&mask], &[("to", Attr::Int(INT32))], "mask"))
    } else {
        Masks::Additive(b.additive_mask(&mask))
    };

    let heads = cfg.num_attention_heads;
    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        let s = format!("{p}.attention.self");
        let (q, k, v) =
            (b.p(&format!("{s}.query.weight"))?, b.p(&format!("{s}.key.weight"))?, b.p(&format!("{s}.value.weight"))?);
        let (qb, kb, vb) =
            (b.p(&format!("{s}.query.bias"))?, b.p(&format!("{s}.key.bias"))?, b.p(&format!("{s}.value.bias"))?);
        let projections = [(&q.data[..], &qb.data[..]), (&k.data[..], &kb.data[..]), (&v.data[..], &vb.data[..])];
        let attention = SelfAttention { name: &s, projections, heads, d: cfg.hidden_size };
        let (context, residual) = if spec.adaptive.is_none() && l + 1 == cfg.num_hidden_layers {
            // Without an adaptive layer the pooler reads the last layer's first token alone
            // (as `Rows::First` in `Encoder::forward_rows_t`).
            let additive = match &masks {
                Masks::Additive(m) => m.clone(),
                Masks::Raw(_) => b.additive_mask(&mask),
            };
            b.first_token_attention(&x, &attention, &additive)?
        } else {
            (b.self_attention(&x, &attention, Some(&masks))?, x.clone())
        };
        let dense = b.matmul_of(&context, &format!("{p}.attention.output.dense"))?;
        let a = b.add_bias_norm(&dense.0, &residual, &dense.1, &format!("{p}.attention.output.LayerNorm"), eps)?;
        let i = b.matmul_of(&a, &format!("{p}.intermediate.dense"))?;
        let i = b.bias_activate(&i, &cfg.hidden_act, &p);
        let o = b.matmul_of(&i, &format!("{p}.output.dense"))?;
        x = b.add_bias_norm(&o.0, &a, &o.1, &format!("{p}.output.LayerNorm"), eps)?;
    }

    if let Some(a) = spec.adaptive {
        let additive = match (&masks, a.mask_padding) {
            (_, false) => None,
            (Masks::Additive(m), true) => Some(m.clone()),
            (Masks::Raw(_), true) => Some(b.additive_mask(&mask)),
        };
        x = b.adaptive(&x, a, cfg.hidden_size, additive.as_deref())?;
    }

    // Pooler: tanh(dense(h[:, 0])), then one classifier per task. These run on one row per
    // item (no compute to save) and decide the argmax directly: they stay fp32.
    b.int8 = false;
    let first = b.g.const_i64(&[], &[0]);
    let cls = b.g.node("Gather", &[&x, &first], &[("axis", Attr::Int(1))], "pooler");
    let pooled = b.linear_of(&cls, "pooler.dense")?;
    let pooled = b.g.node("Tanh", &[&pooled], &[], "pooler");
    for (task, classes) in spec.heads {
        let logits = b.linear_of(&pooled, &format!("classifiers.{task}"))?;
        let probs = b.g.node("Softmax", &[&logits], &[("axis", Attr::Int(-1))], &format!("classifiers.{task}"));
        let dims = [Dim::Named("batch"), Dim::Fixed(*classes as i64)];
        b.g.output(&logits, &logits_name(task), Elem::F32, &dims);
        b.g.output(&probs, &probs_name(task), Elem::F32, &dims);
    }
    Ok(b.g.into_model("taft_classifier", metadata))
}

/// The padding mask in the form the graph's attention takes.
enum Masks {
    /// Float [batch, 1, 1, seq]: 0 for tokens, MASKED for padding, added to the scores.
    Additive(String),
    /// Int32 [batch, seq]: 1 for tokens (the fused Attention's `mask_index`).
    Raw(String),
}

struct Builder<'a> {
    g: Graph,
    params: &'a BTreeMap<String, Param>,
    int8: bool,
    fused: bool,
    /// Per-token quantized activations, their zero point and their scales by input (q, k and
    /// v share theirs).
    quantized: HashMap<String, [String; 3]>,
}

impl<'a> Builder<'a> {
    fn p(&self, name: &str) -> Result<&'a Param> {
        self.params.get(name).ok_or_else(|| Error::input(format!("the model has no parameter `{name}`")))
    }

    /// The additive attention mask [batch, 1, 1, seq] of the int64 mask input [batch, seq]: 0
    /// for tokens, MASKED for padding.
    fn additive_mask(&mut self, mask: &str) -> String {
        let m = self.g.node("Cast", &[mask], &[("to", Attr::Int(FLOAT))], "mask");
        let one = self.g.scalar_f32(1.0);
        let m = self.g.node("Sub", &[&one, &m], &[], "mask");
        let big = self.g.scalar_f32(MASKED);
        let m = self.g.node("Mul", &[&m, &big], &[], "mask");
        let axes = self.g.const_i64(&[2], &[1, 2]);
        self.g.node("Unsqueeze", &[&m, &axes], &[], "mask")
    }

    /// A parameter as an initializer of the same name.
    fn init(&mut self, name: &str) -> Result<String> {
        let p = self.p(name)?;
        Ok(self.g.f32(name, &p.dims, &p.data))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str, eps: f32) -> Result<String> {
        let w = self.init(&format!("{prefix}.weight"))?;
        let b = self.init(&format!("{prefix}.bias"))?;
        Ok(self.g.node(
            "LayerNormalization",
            &[x, &w, &b],
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
            prefix,
        ))
    }

    /// `x · Wᵀ + b` for the torch Linear `prefix` (weight [out, in], bias [out]).
    fn linear_of(&mut self, x: &str, prefix: &str) -> Result<String> {
        let (y, bias) = self.matmul_of(x, prefix)?;
        Ok(self.g.node("Add", &[&y, &bias], &[], prefix))
    }

    /// `x · Wᵀ` for the torch Linear `prefix`, and its bias as an initializer (for a fused
    /// node to add, or `linear_of`).
    fn matmul_of(&mut self, x: &str, prefix: &str) -> Result<(String, String)> {
        let w = self.p(&format!("{prefix}.weight"))?;
        let b = self.p(&format!("{prefix}.bias"))?;
        if w.dims.len() != 2 || b.data.len() as i64 != w.dims[0] {
            return Err(Error::input(format!(
                "{prefix}: weight {:?} and bias {:?} are not a linear layer",
                w.dims, b.dims
            )));
        }
        let y = self.matmul(x, prefix, &w.data, w.dims[0] as usize, w.dims[1] as usize);
        let bias = self.g.f32(&format!("{prefix}.bias"), &[w.dims[0]], &b.data);
        Ok((y, bias))
    }

    /// `x · Wᵀ + b` with `w` [out, in] row-major.
    fn linear(&mut self, x: &str, name: &str, w: &[f32], b: &[f32], out: usize, inp: usize) -> String {
        let y = self.matmul(x, name, w, out, inp);
        let bias = self.g.f32(&format!("{name}.bias"), &[out as i64], b);
        self.g.node("Add", &[&y, &bias], &[], name)
    }

    /// `x · Wᵀ` with `w` [out, in] row-major (quantized under int8).
    fn matmul(&mut self, x: &str, name: &str, w: &[f32], out: usize, inp: usize) -> String {
        let t = transpose(w, out, inp);
        let dims = [inp as i64, out as i64];
        if self.int8 {
            // Symmetric int8 per output column: scale = max |w| / 127, zero point 0.
            let mut scales = vec![0f32; out];
            for i in 0..inp {
                for o in 0..out {
                    scales[o] = scales[o].max(t[i * out + o].abs());
                }
            }
            for s in &mut scales {
                *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
            }
            let q: Vec<i8> = t
                .iter()
                .enumerate()
                .map(|(k, v)| (v / scales[k % out]).round_ties_even().clamp(-127.0, 127.0) as i8)
                .collect();
            let wq = self.g.i8(&format!("{name}.weight_quantized"), &dims, &q);
            let wzp = self.g.i8(&format!("{name}.weight_zero_point"), &[out as i64], &vec![0; out]);
            let ws = self.g.f32(&format!("{name}.weight_scale"), &[out as i64], &scales);
            let [xq, xzp, xs] = match self.quantized.get(x) {
                Some(q) => q.clone(),
                None => {
                    let q = self.quantize_per_token(x, name);
                    self.quantized.insert(x.to_string(), q.clone());
                    q
                }
            };
            let yi = self.g.node("MatMulInteger", &[&xq, &wq, &xzp, &wzp], &[], name);
            let yf = self.g.node("Cast", &[&yi], &[("to", Attr::Int(FLOAT))], name);
            let y = self.g.node("Mul", &[&yf, &xs], &[], name);
            self.g.node("Mul", &[&y, &ws], &[], name)
        } else {
            let wt = self.g.f32(&format!("{name}.weight_t"), &dims, &t);
            self.g.node("MatMul", &[x, &wt], &[], name)
        }
    }

    /// LayerNorm(x + skip + bias) with the parameters of `norm`; fused: the normalization
    /// as [`Builder::row_norm`].
    fn add_bias_norm(&mut self, x: &str, skip: &str, bias: &str, norm: &str, eps: f32) -> Result<String> {
        let y = self.g.node("Add", &[x, bias], &[], norm);
        let y = self.g.node("Add", &[&y, skip], &[], norm);
        if self.fused {
            return self.row_norm(&y, norm, eps);
        }
        self.layer_norm(&y, norm, eps)
    }

    /// LayerNorm over the last axis of `x` with the parameters of `norm`, as ONNX Runtime's
    /// fastest CPU kernel for it: `x` reshaped to [rows, 1, hidden] and normalized by
    /// InstanceNormalization (each row one instance of one channel, scale 1 and bias 0), then
    /// scaled and shifted by LayerNorm's weight and bias and given back its shape. ONNX
    /// Runtime's own LayerNormalization and SkipLayerNormalization kernels take 2.3–4.8 ns an
    /// element on a CPU, its InstanceNormalization 0.7–1.5 (bench/RESULTS.md).
    fn row_norm(&mut self, x: &str, norm: &str, eps: f32) -> Result<String> {
        let gamma = self.init(&format!("{norm}.weight"))?;
        let beta = self.init(&format!("{norm}.bias"))?;
        let hidden = self.p(&format!("{norm}.weight"))?.data.len() as i64;
        let rows = self.g.const_i64(&[3], &[-1, 1, hidden]);
        let y = self.g.node("Reshape", &[x, &rows], &[], norm);
        let (one, zero) = (self.g.const_f32(&[1], &[1.0]), self.g.const_f32(&[1], &[0.0]));
        let y = self.g.node("InstanceNormalization", &[&y, &one, &zero], &[("epsilon", Attr::Float(eps))], norm);
        let y = self.g.node("Mul", &[&y, &gamma], &[], norm);
        let y = self.g.node("Add", &[&y, &beta], &[], norm);
        let shape = self.g.node("Shape", &[x], &[], norm);
        Ok(self.g.node("Reshape", &[&y, &shape], &[], norm))
    }

    /// The activation `name` of `x + bias` (a `matmul_of` pair): BiasGelu or FastGelu when
    /// fused.
    fn bias_activate(&mut self, (x, bias): &(String, String), name: &str, hint: &str) -> String {
        if self.fused {
            match name {
                "gelu_new" | "gelu_pytorch_tanh" => return self.g.node_ms("FastGelu", &[x, bias], &[], hint),
                "relu" => {}
                _ => return self.g.node_ms("BiasGelu", &[x, bias], &[], hint),
            }
        }
        let y = self.g.node("Add", &[x, bias], &[], hint);
        self.activate(&y, name, hint)
    }

    /// Multi-head self-attention of `x` → the context before the output projection. Fused (and
    /// not int8): one `com.microsoft` Attention node over the concatenated [d, 3·d] weight.
    fn self_attention(&mut self, x: &str, a: &SelfAttention, mask: Option<&Masks>) -> Result<String> {
        let du = a.check()?;
        let SelfAttention { name, projections, heads, d } = *a;
        if self.fused && !self.int8 {
            let rows: Vec<f32> = projections.iter().flat_map(|(w, _)| w.iter().copied()).collect();
            let bias: Vec<f32> = projections.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            let w = self.g.f32(&format!("{name}.qkv.weight_t"), &[d, 3 * d], &transpose(&rows, 3 * du, du));
            let b = self.g.f32(&format!("{name}.qkv.bias"), &[3 * d], &bias);
            let attrs = [("num_heads", Attr::Int(heads)), ("mask_filter_value", Attr::Float(MASKED))];
            let inputs: Vec<&str> = match mask {
                Some(Masks::Raw(m)) => vec![x, &w, &b, m],
                Some(Masks::Additive(_)) => {
                    return Err(Error::Other(format!("{name}: the fused Attention takes the raw mask")))
                }
                None => vec![x, &w, &b],
            };
            return Ok(self.g.node_ms("Attention", &inputs, &attrs, name));
        }
        let suffixes = ["q", "k", "v"];
        let mut qkv: [String; 3] = Default::default();
        for (i, (w, b)) in projections.iter().enumerate() {
            qkv[i] = self.linear(x, &format!("{name}.{}", suffixes[i]), w, b, du, du);
        }
        let bias = match mask {
            Some(Masks::Additive(m)) => Some(m.as_str()),
            Some(Masks::Raw(_)) => {
                return Err(Error::Other(format!("{name}: standard attention takes the additive mask")))
            }
            None => None,
        };
        self.attention(&qkv, heads, d, bias, name)
    }

    /// Self-attention of `x` [batch, seq, d] at its first token alone: the query of that
    /// token over the keys and values of every one, standard operators with the additive
    /// `mask`. Returns the context [batch, 1, d] and the first token's states (its residual).
    fn first_token_attention(&mut self, x: &str, a: &SelfAttention, mask: &str) -> Result<(String, String)> {
        let du = a.check()?;
        let SelfAttention { name, projections, heads, d } = *a;
        let (zero, one) = (self.g.const_i64(&[1], &[0]), self.g.const_i64(&[1], &[1]));
        let first = self.g.node("Slice", &[x, &zero, &one, &one], &[], name);
        let [(qw, qb), (kw, kb), (vw, vb)] = projections;
        let qkv = [
            self.linear(&first, &format!("{name}.q"), qw, qb, du, du),
            self.linear(x, &format!("{name}.k"), kw, kb, du, du),
            self.linear(x, &format!("{name}.v"), vw, vb, du, du),
        ];
        Ok((self.attention(&qkv, heads, d, Some(mask), name)?, first))
    }

    /// Symmetric quantization of `x` [batch, seq, features] with one scale per token: x / s
    /// rounded half to even and clipped to ±127 (s [batch, seq, 1]), stored as uint8 plus the
    /// zero point 128. Returns (values, zero point, scale).
    fn quantize_per_token(&mut self, x: &str, name: &str) -> [String; 3] {
        let abs = self.g.node("Abs", &[x], &[], name);
        let max =
            self.g.node("ReduceMax", &[&abs], &[("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))], name);
        let levels = self.g.f32(&format!("{name}.int8_levels"), &[], &[127.0]);
        let scale = self.g.node("Div", &[&max, &levels], &[], name);
        // An all-zero token keeps a positive scale (its values quantize to 0 anyway).
        let tiny = self.g.f32(&format!("{name}.int8_min_scale"), &[], &[f32::MIN_POSITIVE]);
        let scale = self.g.node("Max", &[&scale, &tiny], &[], name);
        let scaled = self.g.node("Div", &[x, &scale], &[], name);
        let rounded = self.g.node("Round", &[&scaled], &[], name);
        let (lo, hi) = (
            self.g.f32(&format!("{name}.int8_lo"), &[], &[-127.0]),
            self.g.f32(&format!("{name}.int8_hi"), &[], &[127.0]),
        );
        let clipped = self.g.node("Clip", &[&rounded, &lo, &hi], &[], name);
        let zero = self.g.f32(&format!("{name}.uint8_zero"), &[], &[128.0]);
        let shifted = self.g.node("Add", &[&clipped, &zero], &[], name);
        let q = self.g.node("Cast", &[&shifted], &[("to", Attr::Int(UINT8))], name);
        let zero_point = self.g.u8(&format!("{name}.uint8_zero_point"), &[], &[128]);
        [q, zero_point, scale]
    }

    /// Scaled dot-product attention over projected q, k, v [batch, seq, hidden] → the
    /// context [batch, seq, hidden] (before the output projection).
    fn attention(
        &mut self,
        qkv: &[String; 3],
        heads: i64,
        hidden: i64,
        bias: Option<&str>,
        hint: &str,
    ) -> Result<String> {
        if heads <= 0 || hidden % heads != 0 {
            return Err(Error::input(format!("{hint}: {heads} heads do not divide {hidden}")));
        }
        let dh = hidden / heads;
        let split = self.g.const_i64(&[4], &[0, 0, heads, dh]);
        let q = self.g.node("Reshape", &[&qkv[0], &split], &[], hint);
        let q = self.g.node("Transpose", &[&q], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))], hint);
        let k = self.g.node("Reshape", &[&qkv[1], &split], &[], hint);
        let k = self.g.node("Transpose", &[&k], &[("perm", Attr::Ints(vec![0, 2, 3, 1]))], hint);
        let v = self.g.node("Reshape", &[&qkv[2], &split], &[], hint);
        let v = self.g.node("Transpose", &[&v], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))], hint);
        let s = self.g.node("MatMul", &[&q, &k], &[], hint);
        let scale = self.g.scalar_f32(1.0 / (dh as f32).sqrt());
        let mut s = self.g.node("Mul", &[&s, &scale], &[], hint);
        if let Some(bias) = bias {
            s = self.g.node("Add", &[&s, bias], &[], hint);
        }
        let p = self.g.node("Softmax", &[&s], &[("axis", Attr::Int(-1))], hint);
        let c = self.g.node("MatMul", &[&p, &v], &[], hint);
        let c = self.g.node("Transpose", &[&c], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))], hint);
        let merge = self.g.const_i64(&[3], &[0, 0, hidden]);
        Ok(self.g.node("Reshape", &[&c, &merge], &[], hint))
    }

    /// Hugging Face's activation by name (exact GELU unless the config says otherwise).
    fn activate(&mut self, x: &str, name: &str, hint: &str) -> String {
        if name == "relu" {
            return self.g.node("Relu", &[x], &[], hint);
        }
        let half = self.g.scalar_f32(0.5);
        let one = self.g.scalar_f32(1.0);
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => {
                // 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
                let c = self.g.scalar_f32(0.044715);
                let k = self.g.scalar_f32((2.0 / std::f32::consts::PI).sqrt());
                let x2 = self.g.node("Mul", &[x, x], &[], hint);
                let x3 = self.g.node("Mul", &[&x2, x], &[], hint);
                let t = self.g.node("Mul", &[&x3, &c], &[], hint);
                let t = self.g.node("Add", &[x, &t], &[], hint);
                let t = self.g.node("Mul", &[&t, &k], &[], hint);
                let t = self.g.node("Tanh", &[&t], &[], hint);
                let t = self.g.node("Add", &[&t, &one], &[], hint);
                let t = self.g.node("Mul", &[x, &t], &[], hint);
                self.g.node("Mul", &[&t, &half], &[], hint)
            }
            _ => {
                // 0.5 x (1 + erf(x / √2))
                let sqrt2 = self.g.scalar_f32(std::f32::consts::SQRT_2);
                let t = self.g.node("Div", &[x, &sqrt2], &[], hint);
                let t = self.g.node("Erf", &[&t], &[], hint);
                let t = self.g.node("Add", &[&t, &one], &[], hint);
                let t = self.g.node("Mul", &[x, &t], &[], hint);
                self.g.node("Mul", &[&t, &half], &[], hint)
            }
        }
    }

    /// The adaptive layer (`nn.TransformerEncoderLayer`, post-norm, ReLU) at the first token,
    /// [batch, 1, d]: the pooler reads nothing else (as `AdaptiveLayer::first_token_t`). Keys
    /// and values are every token's; the query, the output projection, the LayerNorms and the
    /// feed-forward layers run on one token per item. `mask`: the additive padding mask, only
    /// when the layer was trained with one.
    fn adaptive(&mut self, x: &str, cfg: &AdaptiveConfig, d: i64, mask: Option<&str>) -> Result<String> {
        let w = self.p("adaptive.self_attn.in_proj_weight")?;
        let b = self.p("adaptive.self_attn.in_proj_bias")?;
        let du = d as usize;
        if w.data.len() != 3 * du * du || b.data.len() != 3 * du {
            return Err(Error::input(format!("adaptive.self_attn.in_proj_weight {:?} is not [3·{d}, {d}]", w.dims)));
        }
        let name = "adaptive.self_attn";
        let (zero, one) = (self.g.const_i64(&[1], &[0]), self.g.const_i64(&[1], &[1]));
        let first = self.g.node("Slice", &[x, &zero, &one, &one], &[], name);
        let project = |s: &mut Self, input: &str, i: usize, suffix: &str| {
            let (w, b) = (&w.data[i * du * du..(i + 1) * du * du], &b.data[i * du..(i + 1) * du]);
            s.linear(input, &format!("{name}.{suffix}"), w, b, du, du)
        };
        let qkv = [project(self, &first, 0, "q"), project(self, x, 1, "k"), project(self, x, 2, "v")];
        let context = self.attention(&qkv, cfg.heads, d, mask, name)?;
        let eps = cfg.layer_norm_eps as f32;
        let a = self.matmul_of(&context, "adaptive.self_attn.out_proj")?;
        let x1 = self.add_bias_norm(&a.0, &first, &a.1, "adaptive.norm1", eps)?;
        let f = self.matmul_of(&x1, "adaptive.linear1")?;
        let f = self.bias_activate(&f, "relu", "adaptive");
        let f = self.matmul_of(&f, "adaptive.linear2")?;
        self.add_bias_norm(&f.0, &x1, &f.1, "adaptive.norm2", eps)
    }
}

/// One encoder layer's self-attention: its name, the q, k, v projections as (weight [d, d],
/// bias [d]), its heads and width d.
#[derive(Clone, Copy)]
struct SelfAttention<'p> {
    name: &'p str,
    projections: [(&'p [f32], &'p [f32]); 3],
    heads: i64,
    d: i64,
}

impl SelfAttention<'_> {
    /// Checks the projections' shapes and that the heads divide d; returns d.
    fn check(&self) -> Result<usize> {
        let (name, d, heads) = (self.name, self.d, self.heads);
        let du = d as usize;
        for (w, b) in &self.projections {
            if w.len() != du * du || b.len() != du {
                return Err(Error::input(format!("{name}: a q/k/v projection is not [{d}, {d}]")));
            }
        }
        if heads <= 0 || d % heads != 0 {
            return Err(Error::input(format!("{name}: {heads} heads do not divide {d}")));
        }
        Ok(du)
    }
}

/// `w` [rows, cols] row-major → its transpose [cols, rows].
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}
