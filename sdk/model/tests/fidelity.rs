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

/// The MLPs run in passes of a few dozen rows give the vision features and logits of one pass,
/// to float reordering (the product kernels block their sums by the matrix sizes).
#[test]
fn mlp_in_passes_gives_the_one_pass_values() {
    let run = |be: &CandleBackend| {
        let model = common::load(be, "tied_nested");
        let (feats, logits) = common::prefill(be, &model, &common::golden_case("tied_nested", 2));
        (
            visionthink_model::Backend::to_vec(be, &feats).unwrap(),
            logits,
        )
    };
    let (feats, logits) = run(&CandleBackend::cpu());
    // 8 KiB: passes of 32 vision rows and 42 text rows.
    let (feats_p, logits_p) = run(&CandleBackend::cpu().mlp_pass_bytes(1 << 13));
    assert!(feats.len() > 64 && feats.len() == feats_p.len());
    let scale = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let (df, dl) = (
        common::max_abs_diff(&feats, &feats_p) / scale(&feats),
        common::max_abs_diff(&logits, &logits_p) / scale(&logits),
    );
    assert!(df < 1e-5 && dl < 1e-5, "features {df:.2e}, logits {dl:.2e}");
}
