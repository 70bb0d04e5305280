//! # visionthink-model
//!
//! Qwen2.5-VL defined once ([`graph`]) against a small [`Backend`] trait of coarse operations;
//! [`CandleBackend`] executes it on CPU (and CUDA with the `cuda` feature), differentiably;
//! for inference on the CPU it attends with a fused, tiled kernel ([`attention`]) and decodes
//! with its own matrix-vector products ([`gemv`]).
//! The WebGPU executor ([`wgpu_backend`], `wgpu` feature) implements the same trait, so both run
//! the same graph, with the same weight names and the same order of operations. The parameter
//! tree is named once (one walk used by loading, [`graph::checkpoint_layout`], export and
//! [`Qwen25VL::map_weights`]); a [`Session`] holds one sequence's KV cache and M-RoPE positions on
//! one backend. Errors carry stable names ([`Error::name`]).

pub mod attention;
pub mod backend;
pub mod candle_backend;
mod error;
/// Token selection (greedy, temperature, top-k, top-p): it uses no tensor library, so it lives
/// in the core, where the episode driver samples identically for every executor.
pub mod generate {
    pub use visionthink_core::sampling::*;
}
pub mod gemv;
pub mod gguf;
pub mod gguf_stream;
pub mod graph;
pub mod qgemv;
pub mod session;
pub mod storage;
pub mod weights;
#[cfg(feature = "wgpu")]
pub mod wgpu_backend;

pub use backend::{Backend, Mask};
pub use candle_backend::CandleBackend;
pub use graph::{KvCache, Qwen25VL};
pub use session::{Feed, Session};
pub use storage::WeightStorage;
pub use weights::WeightStore;
#[cfg(feature = "wgpu")]
pub use wgpu_backend::{WgpuBackend, WgpuOptions};

pub use error::{Error, Result};
