//! Training building blocks: AdamW with parameter groups and state we own (so a checkpoint
//! can hold it), the linear learning-rate schedule, and masked-LM data preparation.

pub mod mlm;
pub mod optim;
pub mod schedule;
