//! Integration tests: one binary, a module per theme.

mod common;

mod cli;
mod contract;
#[cfg(feature = "train")]
mod dapt;
#[cfg(feature = "train")]
mod encode;
#[cfg(feature = "train")]
mod evaluate;
#[cfg(all(feature = "train", feature = "serve"))]
mod export;
#[cfg(feature = "train")]
mod finetune;
#[cfg(feature = "train")]
mod init;
mod malformed;
mod metrics;
#[cfg(feature = "train")]
mod model;
mod prep;
#[cfg(feature = "train")]
mod role;
mod s3;
mod schedulers;
#[cfg(all(feature = "train", feature = "serve"))]
mod serve;
#[cfg(feature = "train")]
mod train;
mod workflow;
