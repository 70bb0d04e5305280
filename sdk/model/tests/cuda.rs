//! The candle executor on an NVIDIA GPU (`--features cuda`) against the same HF transformers
//! goldens as the CPU (fidelity.rs), the KV-cache continuation, and the trainer's gradients
//! against the CPU's. Needs a GPU: `tests/gpu.sh` builds this test here and runs it on a GPU
//! machine; without the feature it compiles to nothing.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device};
use visionthink_model::CandleBackend;

mod common;

#[test]
fn cuda_logits_vision_and_greedy_tokens_match_transformers() {
    let be = CandleBackend::cuda(DType::F32).unwrap();
    // The variants whose folders are here (tests/gpu.sh's bundle carries `tied_nested` only,
    // to fit the GPU machine's transfer limit).
    let (logits, vision) = common::check_models(&be, 1e-4, true, |variant| {
        let present = common::fixtures().join("models").join(variant).exists();
        present.then(|| common::load(&be, variant))
    });
    eprintln!(
        "CUDA f32: worst relative difference: logits {logits:.2e}, vision features {vision:.2e}"
    );
}

#[test]
fn cuda_second_turn_reuses_the_kv_cache() {
    let d = common::incremental_vs_scratch(&CandleBackend::cuda(DType::F32).unwrap());
    eprintln!("CUDA f32: incremental vs from-scratch logits: {d:.2e}");
    assert!(d < 1e-4, "incremental vs from-scratch logits differ by {d}");
}

#[test]
fn cuda_gradients_equal_the_cpu_gradients() {
    let cpu = common::gradients(&CandleBackend::trainable_cpu(), "tied_nested");
    let gpu = common::gradients(
        &CandleBackend::differentiable(Device::new_cuda(0).unwrap(), DType::F32),
        "tied_nested",
    );
    assert_eq!(cpu.len(), gpu.len());
    let mut worst = 0f32;
    for (i, ((dims, c), (gdims, g))) in cpu.iter().zip(&gpu).enumerate() {
        assert_eq!(dims, gdims, "parameter #{i}");
        let (Some(c), Some(g)) = (c, g) else {
            panic!("parameter #{i} {dims:?}: a gradient on one device only");
        };
        let scale = c.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let rel = common::max_abs_diff(c, g) / scale;
        assert!(
            rel < 1e-3,
            "parameter #{i} {dims:?}: CUDA vs CPU gradient {rel:.2e}"
        );
        worst = worst.max(rel);
    }
    eprintln!(
        "CUDA vs CPU gradients: worst relative difference {worst:.2e} over {} parameters",
        cpu.len()
    );
}
