//! Training: the `train:` config every training step shares, the sampler trait, and (with
//! the `train` feature) the fit loop on tch with AdamW, the schedule, the SPEC §4 losses,
//! masked-LM data and `_work/` checkpoints.

pub mod config;
#[cfg(feature = "train")]
pub mod fit;
#[cfg(feature = "train")]
pub mod loss;
#[cfg(feature = "train")]
pub mod mlm;
#[cfg(feature = "train")]
pub mod optim;
pub mod sampler;
#[cfg(feature = "train")]
pub mod schedule;
#[cfg(feature = "train")]
pub mod work;

pub use config::{Best, GroupRule, Mode, Precision, TrainConfig, THREADS_VAR};
#[cfg(feature = "train")]
pub use fit::{fit, write_metrics, Fit, Metrics, Objective};
pub use sampler::{mix, Sampler, Shuffle};
