//! The library's error type and how each kind of failure maps to a process exit code.

use std::fmt;

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, grouped by what a caller (a person or a scheduler) should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file, a `--set` value or a workflow is wrong. Not worth retrying.
    #[error("{0}")]
    Config(String),
    /// An input is missing or malformed. Not worth retrying.
    #[error("{0}")]
    Input(String),
    /// A store operation failed; whether to retry depends on the cause (see [`Error::exit_code`]).
    #[error("{op} {url}")]
    Store {
        op: &'static str,
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("parquet {url}")]
    Parquet {
        url: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("arrow")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("json")]
    Json(#[from] serde_json::Error),
    #[error("io")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
    /// A step of a workflow failed; the exit code is the cause's.
    #[error("step `{step}`")]
    Step {
        step: String,
        #[source]
        source: Box<Error>,
    },
}

/// The exit codes of every `taft` command (DESIGN.md, "The step contract").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Something else failed (a bug, an internal error).
    Failure = 1,
    /// Bad input or config: retrying will not help.
    BadInput = 2,
    /// Transient infrastructure failure (the store is unreachable): retry.
    Transient = 3,
}

impl Error {
    pub fn config(msg: impl fmt::Display) -> Self {
        Error::Config(msg.to_string())
    }

    pub fn input(msg: impl fmt::Display) -> Self {
        Error::Input(msg.to_string())
    }

    pub fn store(op: &'static str, url: impl Into<String>, source: object_store::Error) -> Self {
        Error::Store { op, url: url.into(), source }
    }

    /// How a process that failed with this error should exit.
    pub fn exit_kind(&self) -> ExitKind {
        use object_store::Error as S;
        match self {
            Error::Config(_) | Error::Input(_) => ExitKind::BadInput,
            Error::Store { source, .. } => store_exit_kind(source),
            Error::Step { source, .. } => source.exit_kind(),
            // Writers (Parquet, buffered uploads) report store failures wrapped in their own
            // errors: a store failure anywhere in the chain decides.
            Error::Parquet { .. } | Error::Arrow(_) | Error::Json(_) | Error::Io(_) | Error::Other(_) => {
                let mut cause = std::error::Error::source(self);
                while let Some(c) = cause {
                    if let Some(store) = c.downcast_ref::<S>() {
                        return store_exit_kind(store);
                    }
                    if let Some(store) = c
                        .downcast_ref::<std::io::Error>()
                        .and_then(|io| io.get_ref())
                        .and_then(|e| e.downcast_ref::<S>())
                    {
                        return store_exit_kind(store);
                    }
                    cause = c.source();
                }
                ExitKind::Failure
            }
        }
    }
}

fn store_exit_kind(source: &object_store::Error) -> ExitKind {
    use object_store::Error as S;
    match source {
        // The URL names nothing, or something that cannot be a key: fix the input.
        S::NotFound { .. } | S::InvalidPath { .. } | S::NotSupported { .. } => ExitKind::BadInput,
        S::UnknownConfigurationKey { .. } | S::Unauthenticated { .. } => ExitKind::BadInput,
        S::PermissionDenied { .. } => ExitKind::BadInput,
        // Everything else reached the network and gave up after retries.
        _ => ExitKind::Transient,
    }
}

/// The exit code for any error chain: the first library [`Error`] found decides.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain().find_map(|cause| cause.downcast_ref::<Error>()).map_or(ExitKind::Failure, Error::exit_kind) as u8
}

/// An error and its causes on one line, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
