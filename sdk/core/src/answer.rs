//! The answer record of one low-res-first episode and the events streamed while it runs: the
//! same types for the Rust SDK and the browser, so both report identically.

use crate::protocol::{EndReason, Outcome};

/// Wall-clock timings of an answer, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Image preprocessing (both images).
    pub preprocess_ms: f64,
    /// Vision tower (with the WebGPU executor only the recording: the GPU work completes within
    /// the prefill readback and is counted in `prefill_ms`).
    pub vision_ms: f64,
    /// Prompt prefill (turn 1 and the tool turn).
    pub prefill_ms: f64,
    /// Token-by-token decoding.
    pub decode_ms: f64,
    /// Everything.
    pub total_ms: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Prompt tokens prefilled.
    pub prefill_tokens: usize,
    /// WebGPU executor only (0 elsewhere): the host's part of the decode steps, recording
    /// their work and submitting it, before waiting for the device (`decode_ms` includes it).
    pub decode_host_ms: f64,
    /// WebGPU executor only (0 elsewhere): compute dispatches of the decode steps.
    pub decode_dispatches: u64,
}

/// The answer record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    /// The final answer (last `<answer>…</answer>`, or the split-rule prediction when absent).
    pub text: String,
    /// The `<think>` contents of every turn.
    pub thinking: String,
    /// Whether the model asked for (and got) the full-resolution image (with the extended tool
    /// set: any tool image, a crop included).
    pub used_high_res: bool,
    /// Of the tool images, how many were crops (the extended tool set; 0 with the official one).
    pub crops: usize,
    /// The regions the crops cut, as `[left, top, right, bottom]` fractions of the image.
    pub crop_regions: Vec<[f64; 4]>,
    /// Every model turn's text.
    pub turns: Vec<String>,
    /// Visual tokens actually used (low-res, plus full-res if requested).
    pub visual_tokens: usize,
    /// Visual tokens a full-resolution-only model would have used.
    pub visual_tokens_full_res: usize,
    /// Why the episode ended.
    pub end: EndReason,
    /// Timings.
    pub timings: Timings,
}

/// A streamed event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A generated token and its text piece.
    Token {
        /// Model turn (0-based).
        turn: usize,
        /// The id.
        id: u32,
        /// Text decoded from the turn so far minus what was already emitted.
        text: &'a str,
    },
    /// The model asked for the full image (with the extended tools: a tool image, possibly a
    /// crop); it is being appended.
    ResizeRequested,
}

impl Answer {
    /// The record of a finished episode: the final answer is the last `<answer>…</answer>`, or
    /// the split-rule prediction when there is none.
    pub fn from_outcome(
        outcome: &Outcome,
        visual_tokens: usize,
        visual_tokens_full_res: usize,
        timings: Timings,
    ) -> Self {
        Self {
            text: outcome
                .answer
                .clone()
                .unwrap_or_else(|| outcome.prediction.clone()),
            thinking: outcome.thinking.clone(),
            used_high_res: outcome.used_high_res,
            crops: outcome.crops,
            crop_regions: outcome.crop_regions.clone(),
            turns: outcome.turns.clone(),
            visual_tokens,
            visual_tokens_full_res,
            end: outcome.end,
            timings,
        }
    }
}
