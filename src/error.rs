//! The crate's one error type. Variants carry what a user needs to fix the problem: the file,
//! the tensor or key, the expected and the found value.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// Every fallible operation in mlx-engine returns this error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MLX reported an error (the message MLX's error handler received).
    #[error("mlx: {message}")]
    Mlx { message: String },
    /// An operating-system error while touching a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model or data file whose content is malformed or inconsistent.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// An array or tensor whose shape is not the one an operation needs.
    #[error("{op}: shape {found:?}, expected {expected}")]
    Shape {
        op: String,
        expected: String,
        found: Vec<i64>,
    },
    /// One of our C++ kernels (`kernels/`) refused a call: `op` is the Rust entry that made
    /// it, `message` the kernel's own description of the problem.
    #[error("kernel {op}: {message}")]
    Kernel { op: String, message: String },
    /// A format, type or architecture we recognise but do not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A caller passed an argument outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A sequence would grow past the model's context window.
    #[error("context full: {needed} positions needed, the limit is {limit}")]
    ContextFull { needed: usize, limit: usize },
    /// Tokenizer construction, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A grammar or JSON schema that cannot be compiled, or a token it does not allow
    /// (llguidance's message).
    #[error("grammar: {0}")]
    Grammar(String),
    /// A model could not be obtained (registry, cache, download, mirror).
    #[error("{0}")]
    Fetch(String),
}

impl Error {
    /// A `Format` error for `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An `Io` error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
