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
    /// A step run as a child process failed; the exit code is the child's.
    #[error("`{command}` exited with {}", code.map_or("a signal".to_string(), |c| format!("code {c}")))]
    Child { command: String, code: Option<i32> },
    /// Another run holds the output being written (its lease). Retry later.
    #[error("{0}")]
    Busy(String),
    /// SIGTERM or Ctrl-C stopped the step (a pod preempted, a node drained): retry; a
    /// training step resumes from the checkpoint it wrote.
    #[error("{0}")]
    Interrupted(String),
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
    /// Transient failure (the store is unreachable, another run holds the output): retry.
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
            Error::Busy(_) | Error::Interrupted(_) => ExitKind::Transient,
            Error::Child { code, .. } => match code {
                Some(2) => ExitKind::BadInput,
                Some(3) => ExitKind::Transient,
                _ => ExitKind::Failure,
            },
            Error::Store { op, source, .. } => store_exit_kind(op, source),
            Error::Step { source, .. } => source.exit_kind(),
            // Writers (Parquet, buffered uploads) report store failures wrapped in their own
            // errors: a store failure anywhere in the chain decides.
            Error::Parquet { .. } | Error::Arrow(_) | Error::Json(_) | Error::Io(_) | Error::Other(_) => {
                let mut cause = std::error::Error::source(self);
                while let Some(c) = cause {
                    if let Some(store) = c.downcast_ref::<S>() {
                        return store_exit_kind("", store);
                    }
                    if let Some(store) = c
                        .downcast_ref::<std::io::Error>()
                        .and_then(|io| io.get_ref())
                        .and_then(|e| e.downcast_ref::<S>())
                    {
                        return store_exit_kind("", store);
                    }
                    cause = c.source();
                }
                ExitKind::Failure
            }
        }
    }
}

fn store_exit_kind(op: &str, source: &object_store::Error) -> ExitKind {
    use object_store::Error as S;
    match source {
        // The URL names nothing, or something that cannot be a key, or the credentials are
        // refused: fix the input.
        S::NotFound { .. } | S::InvalidPath { .. } | S::NotSupported { .. } | S::NotImplemented { .. } => {
            ExitKind::BadInput
        }
        S::UnknownConfigurationKey { .. } | S::Unauthenticated { .. } | S::PermissionDenied { .. } => {
            ExitKind::BadInput
        }
        // A store that cannot even be built: a malformed URL, a missing bucket or account.
        _ if op == "open" => ExitKind::BadInput,
        S::AlreadyExists { .. } | S::Precondition { .. } | S::NotModified { .. } => ExitKind::Failure,
        _ => permanence(source).unwrap_or(ExitKind::Transient),
    }
}

/// A permanent cause somewhere in the chain of a store error: a disk that is full or
/// read-only, a permission, a request the server refuses as malformed. `None` when the
/// failure may pass (a network error, a server error, a timeout).
fn permanence(error: &(dyn std::error::Error + 'static)) -> Option<ExitKind> {
    use std::io::ErrorKind as K;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                K::PermissionDenied | K::NotFound => return Some(ExitKind::BadInput),
                K::ReadOnlyFilesystem
                | K::StorageFull
                | K::QuotaExceeded
                | K::FileTooLarge
                | K::NotADirectory
                | K::IsADirectory
                | K::InvalidInput
                | K::Unsupported => return Some(ExitKind::Failure),
                _ => {}
            }
        }
        // HTTP stores: a 4xx answer other than timeout and throttling will not change.
        let text = c.to_string();
        if let Some(code) =
            text.split("status code: ").nth(1).and_then(|t| t.get(..3)).and_then(|t| t.parse::<u16>().ok())
        {
            if (400..500).contains(&code) && code != 408 && code != 429 {
                return Some(if matches!(code, 401 | 403 | 404) { ExitKind::BadInput } else { ExitKind::Failure });
            }
        }
        cause = c.source();
    }
    None
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

/// Environment variables whose values are secrets: never printed.
const SECRET_VARS: [&str; 11] = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
];

/// Elements of S3 error answers that carry credentials or what they signed.
const SECRET_ELEMENTS: [&str; 6] = [
    "AWSAccessKeyId",
    "SignatureProvided",
    "StringToSign",
    "StringToSignBytes",
    "CanonicalRequest",
    "CanonicalRequestBytes",
];

/// `text` with credentials removed: the values of the credential environment variables,
/// the query strings of URLs (SAS tokens, signatures) and the credential-bearing elements
/// of S3 error answers. Every error message and log line goes through it.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for var in SECRET_VARS {
        if let Ok(value) = std::env::var(var) {
            if value.len() >= 4 && out.contains(&value) {
                out = out.replace(&value, "***");
            }
        }
    }
    for element in SECRET_ELEMENTS {
        let (open, close) = (format!("<{element}>"), format!("</{element}>"));
        let mut from = 0;
        while let Some(start) = out[from..].find(&open).map(|i| i + from + open.len()) {
            let Some(end) = out[start..].find(&close).map(|i| i + start) else { break };
            out.replace_range(start..end, "***");
            from = start + 3 + close.len();
        }
    }
    // URL query strings: `scheme://…?query` up to the next space or quote.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')'))
            .map_or(rest.len(), |e| e + i);
        let url = &rest[..end];
        match url[i..].find('?') {
            Some(q) => {
                result.push_str(&url[..i + q]);
                result.push_str("?***");
            }
            None => result.push_str(url),
        }
        rest = &rest[end..];
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_query_strings_and_signed_elements() {
        let msg = "GET https://acct.blob.core.windows.net/c/x?sv=2024&sig=abc%2F then s3://b/k <Error><AWSAccessKeyId>AKIA123</AWSAccessKeyId><StringToSign>AWS4 x</StringToSign></Error>";
        let out = redact(msg);
        assert!(!out.contains("sig=abc") && !out.contains("AKIA123") && !out.contains("AWS4 x"), "{out}");
        assert!(out.contains("https://acct.blob.core.windows.net/c/x?***") && out.contains("s3://b/k"), "{out}");
        assert_eq!(redact("plain message: a/b"), "plain message: a/b");
    }

    #[test]
    fn full_or_read_only_disks_are_not_retried() {
        let io = |kind| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(kind)),
        };
        assert_eq!(store_exit_kind("write", &io(std::io::ErrorKind::StorageFull)), ExitKind::Failure);
        assert_eq!(store_exit_kind("write", &io(std::io::ErrorKind::ReadOnlyFilesystem)), ExitKind::Failure);
        assert_eq!(store_exit_kind("write", &io(std::io::ErrorKind::PermissionDenied)), ExitKind::BadInput);
        assert_eq!(store_exit_kind("read", &io(std::io::ErrorKind::ConnectionReset)), ExitKind::Transient);
        let http = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 400 Bad Request: x".into(),
        };
        assert_eq!(store_exit_kind("read", &http), ExitKind::Failure);
        let http = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 503 Slow Down".into(),
        };
        assert_eq!(store_exit_kind("read", &http), ExitKind::Transient);
        let open = object_store::Error::Generic { store: "S3", source: "Missing bucket name".into() };
        assert_eq!(store_exit_kind("open", &open), ExitKind::BadInput);
    }
}
