//! Fidelity against HF transformers 5.24 (f32, CPU) on tiny random Qwen2.5-VL checkpoints
//! (tests/scripts/gen_model_fixtures.py): vision features and last-position logits within 1e-4
//! of the logit (feature) scale, argmax/top-5 and 8 greedy tokens identical, for low-res,
//! full-res and two-turn VisionThink prompts, tied/untied, nested/flat, single/sharded.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use visionthink_core::config::ModelConfig;
use visionthink_core::rope::rope_index;
use visionthink_core::tokenizer::QwenTokenizer;
use visionthink_model::{Backend, CandleBackend, Qwen25VL, WeightStore};

mod common;
use common::{fixtures, load, max_abs_diff, prepare};

#[test]
fn logits_vision_and_greedy_tokens_match_transformers() {
    let (logits, vision) = common::check_goldens(&CandleBackend::cpu(), 1e-4);
    eprintln!("worst relative difference: logits {logits:.2e}, vision features {vision:.2e}");
}

#[test]
fn second_turn_reuses_the_kv_cache_and_equals_a_from_scratch_run() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("models/golden.json")).unwrap(),
    )
    .unwrap();
    let tok = QwenTokenizer::from_bytes(
        &std::fs::read(fixtures().join("tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let be = CandleBackend::cpu();
    let model = load(&be, "tied_nested");
    let case = &golden["variants"]["tied_nested"][2];
    let c = prepare(case, &tok);
    let feats = model.vision.forward(&be, &c.pixels, &c.grids).unwrap();
    let (pos, _) = rope_index(&c.ids, &c.grids, 2).unwrap();
    // From scratch.
    let mut cache = model.new_cache();
    let full = model.embed(&be, &c.ids, Some(&feats)).unwrap();
    let scratch = model
        .last_logits(&be, &model.decode(&be, &full, &pos, &mut cache).unwrap())
        .unwrap();
    // Turn 1 (through the first image and the model turn), then only the new tokens.
    // Split a few tokens before the second image's <|vision_start|>: inside the tool turn.
    let second_image = c
        .ids
        .iter()
        .rposition(|&t| t == visionthink_core::tokens::VISION_START)
        .unwrap();
    let split = second_image - 5;
    let mut cache = model.new_cache();
    let first_feats = be.narrow_rows(&feats, 0, c.counts[0]).unwrap();
    let second_feats = be.narrow_rows(&feats, c.counts[0], c.counts[1]).unwrap();
    let e1 = model
        .embed(&be, &c.ids[..split], Some(&first_feats))
        .unwrap();
    model.decode(&be, &e1, &pos, &mut cache).unwrap();
    assert_eq!(cache.len(), split);
    let e2 = model
        .embed(&be, &c.ids[split..], Some(&second_feats))
        .unwrap();
    let inc = model
        .last_logits(&be, &model.decode(&be, &e2, &pos, &mut cache).unwrap())
        .unwrap();
    let d = max_abs_diff(&scratch, &inc);
    assert!(d < 1e-5, "incremental vs from-scratch logits differ by {d}");
}

#[test]
fn every_parameter_gets_a_gradient() {
    let dir = fixtures().join("models/untied_flat");
    let cfg = ModelConfig::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let be = CandleBackend::trainable_cpu();
    let model = Qwen25VL::load(&be, &cfg, &store).unwrap();
    let vars = be.vars();
    assert!(vars.len() > 30, "{} trainable tensors", vars.len());
    // A short multimodal sequence: text, a 4x4-patch image (4 merged tokens), text.
    let grids = [[1u32, 4, 4]];
    let pixels: Vec<f32> = (0..16 * 1176)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut ids = vec![151644u32, 872, 198, 151652];
    ids.extend([151655u32; 4]);
    ids.extend([151653u32, 3838, 374, 151645]);
    let feats = model.vision.forward(&be, &pixels, &grids).unwrap();
    let (pos, _) = rope_index(&ids, &grids, 2).unwrap();
    let mut cache = model.new_cache();
    let hidden = model
        .decode(
            &be,
            &model.embed(&be, &ids, Some(&feats)).unwrap(),
            &pos,
            &mut cache,
        )
        .unwrap();
    let logits = model.logits(&be, &hidden).unwrap();
    // A loss that touches every row: log-softmax of chosen tokens.
    let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
    let loss = logp
        .narrow(1, 0, 100)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut missing = Vec::new();
    for (i, v) in vars.iter().enumerate() {
        match grads.get(v.as_tensor()) {
            Some(g) => {
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                if !(norm > 0.0 && norm.is_finite()) {
                    missing.push(format!("#{i} {:?}: zero gradient", v.dims()));
                }
            }
            None => missing.push(format!("#{i} {:?}: no gradient", v.dims())),
        }
    }
    assert!(
        missing.is_empty(),
        "parameters without gradient: {missing:?}"
    );
}
