//! Fidelity against HF transformers 5.24 (f32, CPU) on tiny random Qwen2.5-VL checkpoints
//! (tests/scripts/gen_model_fixtures.py): vision features and last-position logits within 1e-4
//! of the logit (feature) scale, argmax/top-5 and 8 greedy tokens identical, for low-res,
//! full-res and two-turn VisionThink prompts, tied/untied, nested/flat, single/sharded.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use visionthink_core::config::{ModelConfig, PreprocessorConfig};
use visionthink_core::image::{decode, inference_low_res, preprocess, DecodeLimits};
use visionthink_core::rope::{rope_index, MropeBuilder};
use visionthink_core::tokenizer::QwenTokenizer;
use visionthink_model::{Backend, CandleBackend, Qwen25VL, WeightStore};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load(variant: &str) -> (CandleBackend, Qwen25VL<CandleBackend>) {
    let dir = fixtures().join("models").join(variant);
    let cfg = ModelConfig::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let be = CandleBackend::cpu();
    let model = Qwen25VL::load(&be, &cfg, &store).unwrap();
    (be, model)
}

struct Case {
    ids: Vec<u32>,
    pixels: Vec<f32>,
    grids: Vec<[u32; 3]>,
    counts: Vec<usize>,
}

fn prepare(case: &Value, tok: &QwenTokenizer) -> Case {
    let text = std::fs::read_to_string(
        fixtures()
            .join("golden")
            .join(case["prompt_file"].as_str().unwrap()),
    )
    .unwrap();
    let (mut pixels, mut grids, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (name, low) in case["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(case["low_res"].as_array().unwrap())
    {
        let bytes = std::fs::read(fixtures().join("images").join(name.as_str().unwrap())).unwrap();
        let img = decode(&bytes, DecodeLimits::default()).unwrap();
        let img = if low.as_bool().unwrap() {
            inference_low_res(&img).unwrap()
        } else {
            img
        };
        let pv = preprocess(&img, &PreprocessorConfig::default()).unwrap();
        counts.push(pv.num_image_tokens(2));
        grids.push(pv.grid_thw);
        pixels.extend(pv.data);
    }
    let ids = tok.encode_rendered(&text, &counts).unwrap();
    Case {
        ids,
        pixels,
        grids,
        counts,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn logits_vision_and_greedy_tokens_match_transformers() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("models/golden.json")).unwrap(),
    )
    .unwrap();
    let probe: Vec<usize> = golden["probe_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let tok = QwenTokenizer::from_bytes(
        &std::fs::read(fixtures().join("tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let mut worst_logit = 0f32;
    let mut worst_vision = 0f32;
    for (variant, cases) in golden["variants"].as_object().unwrap() {
        let (be, model) = load(variant);
        for case in cases.as_array().unwrap() {
            let label = format!("{variant}/{}", case["prompt_file"].as_str().unwrap());
            let c = prepare(case, &tok);
            assert_eq!(
                c.ids.len() as u64,
                case["num_tokens"].as_u64().unwrap(),
                "{label}"
            );
            // Vision tower.
            let feats = model.vision.forward(&be, &c.pixels, &c.grids).unwrap();
            let all = be.to_vec(&feats).unwrap();
            let width = model.cfg.vision.out_hidden_size;
            let mut offset = 0;
            for (i, want) in case["vision_features"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                let want: Vec<f32> = want.as_array().unwrap().iter().flat_map(floats).collect();
                let got = &all[offset..offset + c.counts[i] * width];
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = max_abs_diff(got, &want) / scale;
                worst_vision = worst_vision.max(d);
                assert!(
                    d <= 1e-4,
                    "{label}: vision features of image {i} differ by {d} (relative)"
                );
                offset += c.counts[i] * width;
            }
            // Prefill and last-position logits.
            let (pos, _) = rope_index(&c.ids, &c.grids, 2).unwrap();
            let embeds = model.embed(&be, &c.ids, Some(&feats)).unwrap();
            let mut cache = model.new_cache();
            let hidden = model.decode(&be, &embeds, &pos, &mut cache).unwrap();
            let logits = model.last_logits(&be, &hidden).unwrap();
            let scale = case["logit_scale"].as_f64().unwrap() as f32;
            let want_probe = floats(&case["logits_probe"]);
            let got_probe: Vec<f32> = probe.iter().map(|&i| logits[i]).collect();
            let d = max_abs_diff(&got_probe, &want_probe).max(max_abs_diff(
                &logits[..16],
                &floats(&case["logits_first16"]),
            )) / scale;
            worst_logit = worst_logit.max(d);
            assert!(
                d <= 1e-4,
                "{label}: logits differ by {d} of the logit scale"
            );
            assert_eq!(
                visionthink_model::generate::argmax(&logits) as u64,
                case["argmax"].as_u64().unwrap(),
                "{label}"
            );
            // 8 greedy tokens, decoded with the KV cache (the reference re-runs the whole sequence).
            let mut builder = MropeBuilder::new();
            visionthink_core::rope::extend_rope_index(&mut builder, &c.ids, &c.grids, 2).unwrap();
            let mut next = visionthink_model::generate::argmax(&logits);
            let mut tokens = vec![next];
            for _ in 1..8 {
                builder.push_text(1);
                let e = model.embed(&be, &[next], None).unwrap();
                let h = model
                    .decode(&be, &e, builder.positions(), &mut cache)
                    .unwrap();
                next = visionthink_model::generate::argmax(&model.last_logits(&be, &h).unwrap());
                tokens.push(next);
            }
            let want: Vec<u32> = case["greedy_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tokens, want, "{label}: greedy tokens");
        }
    }
    eprintln!(
        "worst relative difference: logits {worst_logit:.2e}, vision features {worst_vision:.2e}"
    );
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
    let (be, model) = load("tied_nested");
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
