//! Shared by the fidelity tests of every executor: the golden fixtures of
//! tests/scripts/gen_model_fixtures.py and the check that a backend reproduces them.
#![allow(clippy::unwrap_used, dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use visionthink_core::config::{ModelConfig, PreprocessorConfig};
use visionthink_core::image::{decode, inference_low_res, preprocess, DecodeLimits};
use visionthink_core::rope::{rope_index, MropeBuilder};
use visionthink_core::tokenizer::QwenTokenizer;
use visionthink_model::{Backend, CandleBackend, Qwen25VL, WeightStore};

/// The fixtures folder: `$VT_FIXTURES` where set (a test binary run away from its checkout:
/// tests/gpu.sh on a GPU machine), else the repository's.
pub fn fixtures() -> PathBuf {
    std::env::var_os("VT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"))
}

pub fn load<B: Backend>(be: &B, variant: &str) -> Qwen25VL<B> {
    let dir = fixtures().join("models").join(variant);
    let cfg = ModelConfig::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    Qwen25VL::load(be, &cfg, &store).unwrap()
}

pub struct Case {
    pub ids: Vec<u32>,
    pub pixels: Vec<f32>,
    pub grids: Vec<[u32; 3]>,
    pub counts: Vec<usize>,
}

pub fn prepare(case: &Value, tok: &QwenTokenizer) -> Case {
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

/// The two-turn golden case fed in two pieces (turn 1 through the model turn, then the tool
/// turn with the second image) against the same prompt from scratch: the largest difference
/// of the last-position logits. The KV-cache continuation must not change them.
pub fn incremental_vs_scratch<B: Backend>(be: &B) -> f32 {
    let model = load(be, "tied_nested");
    let c = golden_case("tied_nested", 2);
    let (feats, scratch) = prefill(be, &model, &c);
    let (pos, _) = rope_index(&c.ids, &c.grids, 2).unwrap();
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
        .embed(be, &c.ids[..split], Some(&first_feats))
        .unwrap();
    model.decode(be, &e1, &pos, &mut cache).unwrap();
    assert_eq!(cache.len(), split);
    let e2 = model
        .embed(be, &c.ids[split..], Some(&second_feats))
        .unwrap();
    let inc = model
        .last_logits(be, &model.decode(be, &e2, &pos, &mut cache).unwrap())
        .unwrap();
    max_abs_diff(&scratch, &inc)
}

/// Case `index` of the golden fixture model `variant` (golden.json), prepared.
pub fn golden_case(variant: &str, index: usize) -> Case {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("models/golden.json")).unwrap(),
    )
    .unwrap();
    let tok = QwenTokenizer::from_bytes(
        &std::fs::read(fixtures().join("tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    prepare(&golden["variants"][variant][index], &tok)
}

/// The whole prompt of `c` in one prefill: its vision features and the last position's logits.
pub fn prefill<B: Backend>(be: &B, model: &Qwen25VL<B>, c: &Case) -> (B::Tensor, Vec<f32>) {
    let feats = model.vision.forward(be, &c.pixels, &c.grids).unwrap();
    let (pos, _) = rope_index(&c.ids, &c.grids, 2).unwrap();
    let mut cache = model.new_cache();
    let x = model.embed(be, &c.ids, Some(&feats)).unwrap();
    let logits = model
        .last_logits(be, &model.decode(be, &x, &pos, &mut cache).unwrap())
        .unwrap();
    (feats, logits)
}

/// The gradient of a loss touching every row (minus the summed log-softmax of a multimodal
/// sequence: text, a 4×4-patch image, text) for each trainable parameter of the fixture model
/// `variant` loaded on `be` (a trainable backend), in the order the backend created them: the
/// shape, and the values or `None` where no gradient reached it.
pub fn gradients(be: &CandleBackend, variant: &str) -> Vec<(Vec<usize>, Option<Vec<f32>>)> {
    let dir = fixtures().join("models").join(variant);
    let cfg = ModelConfig::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let model = Qwen25VL::load(be, &cfg, &store).unwrap();
    let vars = be.vars();
    let grids = [[1u32, 4, 4]];
    let pixels: Vec<f32> = (0..16 * 1176)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut ids = vec![151644u32, 872, 198, 151652];
    ids.extend([151655u32; 4]);
    ids.extend([151653u32, 3838, 374, 151645]);
    let feats = model.vision.forward(be, &pixels, &grids).unwrap();
    let (pos, _) = rope_index(&ids, &grids, 2).unwrap();
    let mut cache = model.new_cache();
    let embedded = model.embed(be, &ids, Some(&feats)).unwrap();
    let hidden = model.decode(be, &embedded, &pos, &mut cache).unwrap();
    let logits = model.logits(be, &hidden).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
    let loss = logp
        .narrow(1, 0, 100)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap();
    let grads = loss.backward().unwrap();
    vars.iter()
        .map(|v| {
            let g = grads.get(v.as_tensor()).map(|g| {
                g.to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            });
            (v.dims().to_vec(), g)
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Runs every golden case on `be`: vision features and last-position logits within `tol` of the
/// reference scale, argmax and 8 greedy tokens (KV cache) identical. Returns the worst relative
/// differences (logits, vision features).
pub fn check_goldens<B: Backend>(be: &B, tol: f32) -> (f32, f32) {
    check_models(be, tol, true, |variant| Some(load(be, variant)))
}

/// [`check_goldens`] on the models `model(variant)` gives (variants it gives `None` for are
/// skipped); `tokens`: whether the 8 greedy tokens must match too (the argmax always must).
pub fn check_models<B: Backend>(
    be: &B,
    tol: f32,
    tokens: bool,
    mut model: impl FnMut(&str) -> Option<Qwen25VL<B>>,
) -> (f32, f32) {
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
    let mut checked = 0;
    for (variant, cases) in golden["variants"].as_object().unwrap() {
        let Some(model) = model(variant) else {
            continue;
        };
        checked += 1;
        for case in cases.as_array().unwrap() {
            let label = format!("{variant}/{}", case["prompt_file"].as_str().unwrap());
            let c = prepare(case, &tok);
            assert_eq!(
                c.ids.len() as u64,
                case["num_tokens"].as_u64().unwrap(),
                "{label}"
            );
            // Vision tower.
            let feats = model.vision.forward(be, &c.pixels, &c.grids).unwrap();
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
                    d <= tol,
                    "{label}: vision features of image {i} differ by {d} (relative)"
                );
                offset += c.counts[i] * width;
            }
            // Prefill and last-position logits.
            let (pos, _) = rope_index(&c.ids, &c.grids, 2).unwrap();
            let embeds = model.embed(be, &c.ids, Some(&feats)).unwrap();
            let mut cache = model.new_cache();
            let hidden = model.decode(be, &embeds, &pos, &mut cache).unwrap();
            let logits = model.last_logits(be, &hidden).unwrap();
            let scale = case["logit_scale"].as_f64().unwrap() as f32;
            let want_probe = floats(&case["logits_probe"]);
            let got_probe: Vec<f32> = probe.iter().map(|&i| logits[i]).collect();
            let d = max_abs_diff(&got_probe, &want_probe).max(max_abs_diff(
                &logits[..16],
                &floats(&case["logits_first16"]),
            )) / scale;
            worst_logit = worst_logit.max(d);
            assert!(d <= tol, "{label}: logits differ by {d} of the logit scale");
            assert_eq!(
                visionthink_model::generate::argmax(&logits) as u64,
                case["argmax"].as_u64().unwrap(),
                "{label}"
            );
            // 8 greedy tokens, decoded with the KV cache (the reference re-runs the whole sequence).
            let mut builder = MropeBuilder::new();
            visionthink_core::rope::extend_rope_index(&mut builder, &c.ids, &c.grids, 2).unwrap();
            let mut next = visionthink_model::generate::argmax(&logits);
            let mut greedy = vec![next];
            for _ in 1..8 {
                builder.push_text(1);
                let e = model.embed(be, &[next], None).unwrap();
                let h = model
                    .decode(be, &e, builder.positions(), &mut cache)
                    .unwrap();
                next = visionthink_model::generate::argmax(&model.last_logits(be, &h).unwrap());
                greedy.push(next);
            }
            let want: Vec<u32> = case["greedy_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            if tokens {
                assert_eq!(greedy, want, "{label}: greedy tokens");
            }
        }
    }
    assert!(checked > 0, "no model was checked");
    (worst_logit, worst_vision)
}
