//! Errors of the SDK, with stable names.

/// Errors of the SDK: the core's, plus file and transport problems.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from the core (bad image, bad config, …).
    #[error(transparent)]
    Core(#[from] visionthink_core::Error),
    /// A file could not be read. The OS error is part of the message (and not also the
    /// error's `source()`, which would print it twice in a cause chain).
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// Loading or running the model failed. The model crate's kind is kept (`OutOfMemory`,
    /// `DeviceLost`, `AdapterLimit`, `NoAdapter`, `Input`, …) so callers can react to it; its
    /// message is part of this one (not also a `source()`, which would print it twice).
    #[error("model: {0}")]
    Model(visionthink_model::Error),
    /// The generation was stopped through its [`Cancel`](crate::Cancel) handle.
    #[error("generation stopped: {0}")]
    Cancelled(CancelReason),
    /// A remote engine's server could not be reached or answered something that is not a chat
    /// completion (after the configured retries).
    #[error("remote engine {url}: {reason}")]
    Remote {
        /// The server's base URL.
        url: String,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// What went wrong.
        reason: String,
    },
    /// A file's content is not what is expected.
    #[error("{path}: {reason}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// The error's stable name, the same as the browser package's JS `Error.name` for the
    /// same kinds (`ImageError`, `ProtocolError`, `OutOfMemory`, `DeviceLost`,
    /// `AdapterLimitError`, `WebGPUNotAvailable`, `InputError`, `BackendError`,
    /// `ModelLoadError`, `AbortError`), plus `ReadError` and `ContentError` for files and `RemoteError` for a remote engine.
    ///
    /// ```
    /// let e = visionthink::Error::from(visionthink_model::Error::OutOfMemory("4 GB".into()));
    /// assert_eq!(e.name(), "OutOfMemory");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Error::Core(e) => e.name(),
            Error::Model(e) => e.name(),
            Error::Cancelled(_) => "AbortError",
            Error::Read { .. } => "ReadError",
            Error::Content { .. } => "ContentError",
            Error::Remote { .. } => "RemoteError",
        }
    }
}

impl From<visionthink_model::Error> for Error {
    fn from(e: visionthink_model::Error) -> Self {
        Self::Model(e)
    }
}

/// Result alias of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a generation stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// [`Cancel::cancel`](crate::Cancel::cancel) was called.
    Requested,
    /// The deadline given to [`Cancel::with_deadline`](crate::Cancel::with_deadline) passed.
    DeadlinePassed,
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Requested => "cancelled",
            Self::DeadlinePassed => "deadline passed",
        })
    }
}
