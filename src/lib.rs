//! taft: adapt a pretrained transformer encoder to scarce conversational data with the TAFT
//! method, as a set of idempotent pipeline steps (see DESIGN.md).

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
#[cfg(feature = "serve")]
pub mod infer;
pub mod model;
pub mod onnx;
pub mod progress;
pub mod runtime;
pub mod steps;
pub mod store;
pub mod text;
pub mod train;
pub mod workflow;

pub use error::{Error, Result};
