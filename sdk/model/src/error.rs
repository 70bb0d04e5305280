//! Errors of model loading and execution, with stable names.

/// Errors of model loading and execution.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A checkpoint file could not be read or parsed.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A tensor the graph needs is not in the checkpoint.
    #[error("missing tensor {0}")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// What the config implies.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },
    /// A tensor has a dtype we cannot upcast.
    #[error("tensor {name} has unsupported dtype {dtype} (supported: F32, BF16, F16)")]
    Dtype {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// The config is inconsistent with the graph.
    #[error("config: {0}")]
    Config(String),
    /// Inputs that do not fit the model (token ids, image rows, context length).
    #[error("input: {0}")]
    Input(String),
    /// The executor failed.
    #[error("backend: {0}")]
    Backend(String),
    /// No usable GPU adapter or device (no WebGPU, no Vulkan/Metal/DX12 driver).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The model does not fit the adapter's limits (names the limit and the need).
    #[error("adapter limit: {0}")]
    AdapterLimit(String),
    /// The GPU ran out of memory.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// The GPU device was lost (driver reset, tab backgrounded, …); reload the model.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// From the core.
    #[error(transparent)]
    Core(#[from] visionthink_core::Error),
}

impl Error {
    /// The error's stable name: the JS `Error.name` in the browser package, and the SDK's
    /// `Error::name` for the same kinds: `WebGPUNotAvailable`, `AdapterLimitError`,
    /// `OutOfMemory`, `DeviceLost`, `InputError`, `BackendError`, `ModelLoadError`, or the
    /// core's name.
    ///
    /// ```
    /// let e = visionthink_model::Error::DeviceLost("reset".into());
    /// assert_eq!(e.name(), "DeviceLost");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Error::NoAdapter(_) => "WebGPUNotAvailable",
            Error::AdapterLimit(_) => "AdapterLimitError",
            Error::OutOfMemory(_) => "OutOfMemory",
            Error::DeviceLost(_) => "DeviceLost",
            Error::Input(_) => "InputError",
            Error::Backend(_) => "BackendError",
            Error::Core(e) => e.name(),
            Error::Load { .. }
            | Error::MissingTensor(_)
            | Error::Shape { .. }
            | Error::Dtype { .. }
            | Error::Config(_) => "ModelLoadError",
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
