//! # visionthink
//!
//! The Rust SDK of VisionThink: [`VisionThink`] loads a Qwen2.5-VL checkpoint (HF layout) and
//! answers questions with the low-res-first protocol on candle (CPU, or CUDA with the `cuda`
//! feature) or on the WebGPU executor (`wgpu` feature); around the sans-I/O
//! [`visionthink_core`] it reads model directories and images from disk, judges over HTTP
//! (any OpenAI-compatible endpoint), scores rollouts in batch, and serves an OpenAI-compatible
//! endpoint (`serve` feature). [`RemoteEngine`] runs the same protocol against a chat server
//! (vLLM, `visionthink serve`); both are an [`Engine`]. The `visionthink` binary is built from this crate.
//!
//! ```
//! use visionthink::ModelDir;
//! # fn main() -> anyhow::Result<()> {
//! # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tokenizer");
//! let model = ModelDir::open(dir)?;
//! let mut episode = visionthink::core::protocol::Episode::new("What is the code?", Default::default());
//! let prompt = episode.initial_prompt();
//! let ids = model.tokenizer.encode_prompt(&prompt, &[99])?;
//! assert_eq!(ids.iter().filter(|&&t| t == visionthink::core::tokens::IMAGE_PAD).count(), 99);
//! # Ok(()) }
//! ```

pub use visionthink_core as core;

/// The README's Rust snippet, compiled as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub mod batch;
pub mod convert;
pub mod engine;
mod error;
pub mod files;
pub mod http_judge;
pub mod remote;
pub mod score;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "embedded-model")]
pub mod shipped;

pub use engine::{
    Answer, AskOptions, Cancel, CancelReason, DeviceChoice, Engine, Event, GenerateOptions,
    LoadOptions, Precision, Session, Timings, VisionThink, WeightStorage,
};
pub use files::{load_image, ModelDir};
pub use http_judge::{HttpJudge, HttpJudgeConfig};
pub use remote::{RemoteConfig, RemoteEngine};

pub use error::{Error, Result};
