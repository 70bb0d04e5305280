//! # visionthink-model
//!
//! Qwen2.5-VL defined once ([`graph`]) against a small [`Backend`] trait of coarse operations;
//! [`CandleBackend`] executes it on CPU (and CUDA with the `cuda` feature), differentiably.
//! The WebGPU executor implements the same trait, so both run the same graph, with the same
//! weight names and the same order of operations.

pub mod backend;
pub mod candle_backend;
/// Token selection (greedy, temperature, top-k, top-p): it uses no tensor library, so it lives
/// in the core, where the episode driver samples identically for every executor.
pub mod generate {
    pub use visionthink_core::sampling::*;
}
pub mod graph;
pub mod session;
pub mod weights;
#[cfg(feature = "wgpu")]
pub mod wgpu_backend;

pub use backend::{Backend, Mask};
pub use candle_backend::CandleBackend;
pub use graph::{KvCache, Qwen25VL};
pub use session::{Feed, Session};
pub use weights::WeightStore;
#[cfg(feature = "wgpu")]
pub use wgpu_backend::{WgpuBackend, WgpuOptions};

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

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
