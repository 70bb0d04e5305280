//! Fidelity against HF transformers 5.24 (f32, CPU) on tiny random Qwen2.5-VL checkpoints
//! (tests/scripts/gen_model_fixtures.py): vision features and last-position logits within 1e-4
//! of the logit (feature) scale, argmax/top-5 and 8 greedy tokens identical, for low-res,
//! full-res and two-turn VisionThink prompts, tied/untied, nested/flat, single/sharded.
#![allow(clippy::unwrap_used)]

use visionthink_model::CandleBackend;

mod common;

#[test]
fn logits_vision_and_greedy_tokens_match_transformers() {
    let (logits, vision) = common::check_goldens(&CandleBackend::cpu(), 1e-4);
    eprintln!("worst relative difference: logits {logits:.2e}, vision features {vision:.2e}");
}

#[test]
fn second_turn_reuses_the_kv_cache_and_equals_a_from_scratch_run() {
    let d = common::incremental_vs_scratch(&CandleBackend::cpu());
    assert!(d < 1e-5, "incremental vs from-scratch logits differ by {d}");
}

#[test]
fn every_parameter_gets_a_gradient() {
    let grads = common::gradients(&CandleBackend::trainable_cpu(), "untied_flat");
    assert!(grads.len() > 30, "{} trainable tensors", grads.len());
    let mut missing = Vec::new();
    for (i, (dims, g)) in grads.iter().enumerate() {
        match g {
            Some(g) => {
                let norm: f32 = g.iter().map(|x| x * x).sum();
                if !(norm > 0.0 && norm.is_finite()) {
                    missing.push(format!("#{i} {dims:?}: zero gradient"));
                }
            }
            None => missing.push(format!("#{i} {dims:?}: no gradient")),
        }
    }
    assert!(
        missing.is_empty(),
        "parameters without gradient: {missing:?}"
    );
}
