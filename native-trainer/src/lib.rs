//! Placeholder for `visionthink-train`, the native multi-turn GRPO trainer.
//!
//! Not implemented yet: this crate only reserves the name and place in the workspace (issue 5).
//! The reward and advantage arithmetic it will use already lives in `visionthink-core`.
