//! The two training phases: the SFT warm start ([`sft`]) and multi-turn GRPO ([`grpo`]), with
//! checkpoints, exact resume, typed JSONL metrics ([`crate::metrics`]) and progress bars; the
//! machinery they share is in [`crate::run`].

pub use crate::grpo_phase::{grpo, make_judge};
pub use crate::metrics::{peak_rss_mb, METRICS};
pub use crate::run::Hooks;
pub use crate::sft_phase::sft;
