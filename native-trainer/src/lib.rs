//! # visionthink-train
//!
//! The native VisionThink trainer: synthetic data ([`synth`]), an SFT warm start and
//! multi-turn GRPO with the official rewards ([`train`], [`grpo`]), checkpoints with exact
//! resume ([`checkpoint`]), and evaluation against always-high / always-low baselines
//! ([`eval`]), or of a served model through the SDK's remote engine ([`remote_eval`]). Everything runs the SDK's Qwen2.5-VL graph on candle, differentiably.
//!
//! ```no_run
//! use visionthink_train::config::TrainConfig;
//! let cfg = TrainConfig::load(Some(std::path::Path::new("native-trainer/configs/synth-grpo.toml")), &["run.steps=2".into()])?;
//! visionthink_train::train::grpo(&cfg, false, &Default::default())?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod data;
pub mod data_sources;
pub mod eval;
pub mod files;
pub mod fused;
pub mod grpo;
pub mod grpo_phase;
pub mod jsonl_data;
pub mod metrics;
pub mod optim;
#[cfg(feature = "parquet")]
pub mod parquet_data;
pub mod plots;
pub mod policy;
pub mod remote_eval;
pub mod rng;
pub mod rollout;
pub mod run;
pub mod sft_phase;
pub mod shapes;
pub mod synth;
pub mod train;
