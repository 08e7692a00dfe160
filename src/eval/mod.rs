//! Evaluation: classification metrics with scikit-learn's definitions, and TensorBoard
//! event files.

pub mod events;
pub mod metrics;
