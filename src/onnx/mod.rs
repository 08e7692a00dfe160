//! ONNX: the names of an exported model's inputs and outputs (what inference needs), and, in
//! the training build, ONNX written from Rust — the protobuf types generated from
//! `onnx.proto` at build time, a graph builder, and the classification model's graph (fp32
//! or dynamically quantized int8).

#[cfg(feature = "train")]
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

#[cfg(feature = "train")]
pub mod graph;
#[cfg(feature = "train")]
pub mod model;

use serde::{Deserialize, Serialize};

/// The fp32 model of an export output.
pub const MODEL: &str = "model.onnx";
/// The dynamically quantized model (`quantize: int8`).
pub const MODEL_INT8: &str = "model.int8.onnx";

/// Which model of an export output to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    #[default]
    Fp32,
    Int8,
}

impl Variant {
    pub fn file(self) -> &'static str {
        match self {
            Variant::Fp32 => MODEL,
            Variant::Int8 => MODEL_INT8,
        }
    }
}

/// How the encoder is written: `fused` with the operators ONNX Runtime's CPU and CUDA
/// providers implement for BERT-family models (`com.microsoft` Attention, BiasGelu/FastGelu)
/// and LayerNorm as InstanceNormalization over rows (ONNX Runtime's fastest kernel for it),
/// `portable` with standard ONNX operators only (opset 17) and LayerNormalization, for any
/// runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphKind {
    #[default]
    Fused,
    Portable,
}

impl GraphKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphKind::Fused => "fused",
            GraphKind::Portable => "portable",
        }
    }
}

/// Token ids, int64 [batch, sequence].
pub const INPUT_IDS: &str = "input_ids";
/// 1 for tokens, 0 for padding, int64 [batch, sequence].
pub const ATTENTION_MASK: &str = "attention_mask";

/// The logits output of a task, float [batch, classes].
pub fn logits_name(task: &str) -> String {
    format!("logits_{task}")
}

/// The probabilities output of a task (softmax of its logits), float [batch, classes].
pub fn probs_name(task: &str) -> String {
    format!("probs_{task}")
}

/// The encoded model (protobuf bytes).
#[cfg(feature = "train")]
pub fn encode(model: &proto::ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}
