//! A small builder of ONNX graphs over the types generated from `onnx.proto`: nodes with one
//! output, initializers stored as little-endian `raw_data`, named inputs and outputs with
//! symbolic dimensions.

use super::proto::{
    attribute_proto, tensor_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The opset the graphs are written for (LayerNormalization needs 17).
pub const OPSET: i64 = 17;
/// The IR version of opset 17.
pub const IR_VERSION: i64 = 8;
/// ONNX Runtime's contrib operators (version 1 of the domain).
pub const MS_DOMAIN: &str = "com.microsoft";

/// A dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// An element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    I64,
    I8,
    U8,
}

impl Elem {
    fn code(self) -> i32 {
        (match self {
            Elem::F32 => tensor_proto::DataType::Float,
            Elem::I64 => tensor_proto::DataType::Int64,
            Elem::I8 => tensor_proto::DataType::Int8,
            Elem::U8 => tensor_proto::DataType::Uint8,
        }) as i32
    }
}

/// An attribute of a node.
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

/// A graph under construction.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    count: usize,
}

impl Graph {
    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares a graph output: `value` renamed to `name` through an Identity node.
    pub fn output(&mut self, value: &str, name: &str, elem: Elem, dims: &[Dim]) {
        self.nodes.push(NodeProto {
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            name: Some(format!("{name}/Identity")),
            op_type: Some("Identity".into()),
            ..Default::default()
        });
        self.outputs.push(value_info(name, elem, dims));
    }

    /// Adds a node of one output, named after `hint` (unique); returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], hint: &str) -> String {
        self.node_n(op, inputs, attrs, hint, 1).pop().expect("one output")
    }

    /// Adds a node of ONNX Runtime's contrib domain (`com.microsoft`), one output.
    pub fn node_ms(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], hint: &str) -> String {
        let y = self.node(op, inputs, attrs, hint);
        if let Some(node) = self.nodes.last_mut() {
            node.domain = Some(MS_DOMAIN.to_string());
        }
        y
    }

    /// Adds a node of `n` outputs; returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], hint: &str, n: usize) -> Vec<String> {
        self.count += 1;
        let base = format!("{hint}/{op}_{}", self.count);
        let outputs: Vec<String> = (0..n).map(|i| if n == 1 { base.clone() } else { format!("{base}:{i}") }).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: Some(base),
            op_type: Some(op.to_string()),
            attribute: attrs.iter().map(|(name, a)| attribute(name, a)).collect(),
            ..Default::default()
        });
        outputs
    }

    /// A float initializer.
    pub fn f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "{name}");
        self.raw(name, Elem::F32, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// An int64 initializer.
    pub fn i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> String {
        self.raw(name, Elem::I64, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// An int8 initializer.
    pub fn i8(&mut self, name: &str, dims: &[i64], data: &[i8]) -> String {
        self.raw(name, Elem::I8, dims, data.iter().map(|&v| v as u8).collect())
    }

    /// A uint8 initializer.
    pub fn u8(&mut self, name: &str, dims: &[i64], data: &[u8]) -> String {
        self.raw(name, Elem::U8, dims, data.to_vec())
    }

    /// A scalar constant (named after its value, shared by every use).
    pub fn scalar_f32(&mut self, value: f32) -> String {
        let name = format!("const/f32/{value:e}");
        if !self.initializers.iter().any(|t| t.name.as_deref() == Some(&name)) {
            self.f32(&name, &[], &[value]);
        }
        name
    }

    /// A float constant of any shape (named after its values, shared by every use).
    pub fn const_f32(&mut self, dims: &[i64], values: &[f32]) -> String {
        let name = format!("const/f32/{dims:?}/{values:?}");
        if !self.initializers.iter().any(|t| t.name.as_deref() == Some(&name)) {
            self.f32(&name, dims, values);
        }
        name
    }

    /// An int64 constant of any shape (named after its values, shared by every use).
    pub fn const_i64(&mut self, dims: &[i64], values: &[i64]) -> String {
        let name = format!("const/i64/{dims:?}/{values:?}");
        if !self.initializers.iter().any(|t| t.name.as_deref() == Some(&name)) {
            self.i64(&name, dims, values);
        }
        name
    }

    fn raw(&mut self, name: &str, elem: Elem, dims: &[i64], raw: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(elem.code()),
            name: Some(name.to_string()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// The model: this graph with opset 17 (and `com.microsoft` 1 when a node uses it) and the
    /// given metadata (`key`, `value` pairs).
    pub fn into_model(self, name: &str, metadata: &[(&str, String)]) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }];
        if self.nodes.iter().any(|n| n.domain.as_deref() == Some(MS_DOMAIN)) {
            opset_import.push(OperatorSetIdProto { domain: Some(MS_DOMAIN.to_string()), version: Some(1) });
        }
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import,
            producer_name: Some("taft".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(name.to_string()),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: Some(k.to_string()), value: Some(v.clone()) })
                .collect(),
            ..Default::default()
        }
    }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem.code()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, a: &Attr) -> AttributeProto {
    let mut p = AttributeProto { name: Some(name.to_string()), ..Default::default() };
    match a {
        Attr::Int(v) => {
            p.i = Some(*v);
            p.r#type = Some(attribute_proto::AttributeType::Int as i32);
        }
        Attr::Float(v) => {
            p.f = Some(*v);
            p.r#type = Some(attribute_proto::AttributeType::Float as i32);
        }
        Attr::Ints(v) => {
            p.ints = v.clone();
            p.r#type = Some(attribute_proto::AttributeType::Ints as i32);
        }
    }
    p
}
