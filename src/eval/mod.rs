//! Evaluation: classification metrics with scikit-learn's definitions, charts (PNG), and
//! TensorBoard event files.

pub mod charts;
pub mod events;
pub mod metrics;
pub mod predictions;
pub mod stats;
