//! Integration tests: one binary, a module per theme.

mod common;

mod cli;
mod contract;
#[cfg(feature = "train")]
mod dapt;
#[cfg(feature = "train")]
mod evaluate;
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
#[cfg(feature = "train")]
mod train;
mod workflow;
