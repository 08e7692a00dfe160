//! Integration tests: one binary, a module per theme.

mod common;

mod cli;
mod malformed;
mod prep;
mod s3;
mod workflow;
