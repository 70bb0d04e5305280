//! In headless Chromium (WebGPU on SwiftShader): the WebGPU executor's kernels against candle
//! compiled to wasm32, whole-model logits against the transformers goldens (within 1e-3), and
//! the full low-res-first episode on WebGPU and on the CPU fallback giving the same record.
//! Run by tests/run.sh through wasm-bindgen-test-runner + chromedriver (flags in webdriver.json).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use visionthink_core::image::{decode, inference_low_res, preprocess, DecodeLimits};
use visionthink_core::model_files::ModelFiles;
use visionthink_core::rope::rope_index;
use visionthink_model::{Backend, CandleBackend, Mask, Qwen25VL, WeightStore, WgpuBackend};
use visionthink_wasm::runner::{AskOptions, Host, Model};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const TOKENIZER: &[u8] = include_bytes!("../../tests/fixtures/tokenizer/tokenizer.json");
const CONFIG: &[u8] = include_bytes!("../../tests/fixtures/models/tied_nested/config.json");
const TEMPLATE: &[u8] =
    include_bytes!("../../tests/fixtures/models/tied_nested/chat_template.json");
const WEIGHTS: &[u8] = include_bytes!("../../tests/fixtures/models/tied_nested/model.safetensors");
const GOLDEN: &str = include_str!("../../tests/fixtures/models/golden.json");
const PROMPT: &str = include_str!("../../tests/fixtures/golden/prompt_one_image_lowres.txt");
const PHOTO: &[u8] = include_bytes!("../../tests/fixtures/images/photo_640x480.png");
/// The scripted episodes' records, written by the Rust SDK on candle
/// (sdk/visionthink/tests/episodes.rs): every executor must reproduce them.
const RECORDS: &str = include_str!("../../tests/fixtures/episodes/records.json");

async fn gpu() -> WgpuBackend {
    WgpuBackend::new(Default::default())
        .await
        .expect("WebGPU adapter (Chromium needs --enable-unsafe-webgpu)")
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

#[wasm_bindgen_test]
async fn kernels_match_candle_in_the_browser() {
    let g = gpu().await;
    let c = CandleBackend::cpu();
    let both = |shape: &[usize], seed| {
        let d = data(shape.iter().product(), seed);
        (g.tensor(&d, shape).unwrap(), c.tensor(&d, shape).unwrap())
    };
    let x = both(&[9, 40], 1);
    let w = both(&[70, 40], 2);
    let b = both(&[70], 3);
    let got = g
        .read_async(&g.linear(&x.0, &w.0, Some(&b.0)).unwrap())
        .await
        .unwrap();
    let want = c
        .to_vec(&c.linear(&x.1, &w.1, Some(&b.1)).unwrap())
        .unwrap();
    assert!(rel_diff(&got, &want) < 1e-5, "linear");
    let x1 = both(&[1, 40], 4);
    let got = g
        .read_async(&g.linear(&x1.0, &w.0, None).unwrap())
        .await
        .unwrap();
    let want = c.to_vec(&c.linear(&x1.1, &w.1, None).unwrap()).unwrap();
    assert!(rel_diff(&got, &want) < 1e-5, "gemv");
    let nw = both(&[40], 5);
    let got = g
        .read_async(&g.rms_norm(&x.0, &nw.0, 1e-6).unwrap())
        .await
        .unwrap();
    let want = c.to_vec(&c.rms_norm(&x.1, &nw.1, 1e-6).unwrap()).unwrap();
    assert!(rel_diff(&got, &want) < 1e-5, "rms_norm");
    let got = g.read_async(&g.gelu(&x.0).unwrap()).await.unwrap();
    let want = c.to_vec(&c.gelu(&x.1).unwrap()).unwrap();
    assert!(rel_diff(&got, &want) < 1e-5, "gelu");
    let q = both(&[5, 32], 6);
    let k = both(&[12, 16], 7);
    let v = both(&[12, 16], 8);
    let mask = Mask::Causal { past: 7 };
    let got = g
        .read_async(&g.attention(&q.0, &k.0, &v.0, 4, 2, &mask).unwrap())
        .await
        .unwrap();
    let want = c
        .to_vec(&c.attention(&q.1, &k.1, &v.1, 4, 2, &mask).unwrap())
        .unwrap();
    assert!(rel_diff(&got, &want) < 1e-5, "attention");
    let cs = both(&[5, 8], 9);
    let sn = both(&[5, 8], 10);
    let got = g
        .read_async(&g.rope(&q.0, &cs.0, &sn.0, 4).unwrap())
        .await
        .unwrap();
    let want = c.to_vec(&c.rope(&q.1, &cs.1, &sn.1, 4).unwrap()).unwrap();
    assert!(rel_diff(&got, &want) < 1e-5, "rope");
}

/// GGUF blocks read in place by the WebGPU kernels (Q8_0, Q4_0, Q4_K, Q6_K; Q5_0 through
/// Q8_0), and by the CPU fallback's quantized kernels (candle on wasm32 SIMD128, activations
/// rounded to 8 bits as ggml does), against candle's f32 product over the dequantized blocks.
#[wasm_bindgen_test]
async fn gguf_block_kernels_match_candle_in_the_browser() {
    use visionthink_core::gguf::GgmlType;
    use visionthink_model::gguf::{dequantize, quantize, QuantView};
    let g = gpu().await;
    let exact = CandleBackend::cpu().keep_gguf_blocks(false);
    let cpu = CandleBackend::cpu();
    let (m, k) = (70, 512);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let values: Vec<f32> = data(m * k, 11).iter().map(|v| v * 0.5).collect();
        let bytes = quantize(ty, &values, k).unwrap();
        let deq = dequantize(ty, &bytes, m * k).unwrap();
        let view = QuantView {
            name: "w",
            ty,
            shape: [m, k],
            bytes: &bytes,
            file_backed: false,
        };
        assert!(g.takes_quantized(ty) && cpu.takes_quantized(ty));
        let gw = g.quantized_weight(&view).unwrap();
        let cw = cpu.quantized_weight(&view).unwrap();
        let ew = exact.weight(deq.clone(), &[m, k]).unwrap();
        for n in [1, 9] {
            let x = data(n * k, 12 + n as u32);
            let want = exact
                .to_vec(
                    &exact
                        .linear(&exact.tensor(&x, &[n, k]).unwrap(), &ew, None)
                        .unwrap(),
                )
                .unwrap();
            let got = g
                .read_async(
                    &g.linear(&g.tensor(&x, &[n, k]).unwrap(), &gw, None)
                        .unwrap(),
                )
                .await
                .unwrap();
            let d = rel_diff(&got, &want);
            assert!(d < 1e-5, "{} WebGPU linear of {n} rows: {d}", ty.name());
            let got = cpu
                .to_vec(
                    &cpu.linear(&cpu.tensor(&x, &[n, k]).unwrap(), &cw, None)
                        .unwrap(),
                )
                .unwrap();
            let d = rel_diff(&got, &want);
            assert!(
                d < 2e-2,
                "{} CPU quantized linear of {n} rows: {d}",
                ty.name()
            );
        }
        let ids = [3u32, 69, 0];
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| deq[i as usize * k..(i as usize + 1) * k].to_vec())
            .collect();
        let got = g
            .read_async(&g.gather_rows(&gw, &ids).unwrap())
            .await
            .unwrap();
        assert!(rel_diff(&got, &want) < 1e-6, "{} WebGPU gather", ty.name());
        let got = cpu.to_vec(&cpu.gather_rows(&cw, &ids).unwrap()).unwrap();
        assert!(rel_diff(&got, &want) < 1e-6, "{} CPU gather", ty.name());
    }
}

#[wasm_bindgen_test]
async fn whole_model_logits_match_transformers_in_the_browser() {
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let case = &golden["variants"]["tied_nested"][0];
    let files = ModelFiles::parse(|name| {
        Ok::<_, ()>(match name {
            "tokenizer.json" => Some(TOKENIZER.to_vec()),
            "config.json" => Some(CONFIG.to_vec()),
            _ => None,
        })
    })
    .unwrap();
    let cfg = files.config.clone().unwrap();
    let store =
        WeightStore::from_bytes(vec![("model.safetensors".into(), WEIGHTS.to_vec())]).unwrap();
    let g = gpu().await;
    let model = Qwen25VL::load(&g, &cfg, &store).unwrap();
    let img = inference_low_res(&decode(PHOTO, DecodeLimits::default()).unwrap()).unwrap();
    let pv = preprocess(&img, &files.preprocessor).unwrap();
    let ids = files
        .tokenizer
        .encode_rendered(PROMPT, &[pv.num_image_tokens(2)])
        .unwrap();
    assert_eq!(ids.len() as u64, case["num_tokens"].as_u64().unwrap());
    let feats = model.vision.forward(&g, &pv.data, &[pv.grid_thw]).unwrap();
    let (pos, _) = rope_index(&ids, &[pv.grid_thw], 2).unwrap();
    let embeds = model.embed(&g, &ids, Some(&feats)).unwrap();
    let mut cache = model.new_cache();
    let hidden = model.decode(&g, &embeds, &pos, &mut cache).unwrap();
    let last = g.narrow_rows(&hidden, ids.len() - 1, 1).unwrap();
    let logits = g
        .read_async(&model.logits(&g, &last).unwrap())
        .await
        .unwrap();
    let want: Vec<f32> = case["logits_first16"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let scale = case["logit_scale"].as_f64().unwrap() as f32;
    let d = logits[..16]
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale;
    assert!(d <= 1e-3, "logits differ by {d} of the logit scale");
    assert_eq!(
        visionthink_core::sampling::argmax(&logits) as u64,
        case["argmax"].as_u64().unwrap()
    );
}

struct TestHost;
impl Host for TestHost {
    fn now_ms(&self) -> f64 {
        js_sys::Date::now()
    }
    async fn yield_now(&self) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// The tiny test checkpoint on WebGPU or on the CPU fallback.
async fn tiny_model(use_gpu: bool) -> Model {
    let files = ModelFiles::parse(|name| {
        Ok::<_, ()>(match name {
            "tokenizer.json" => Some(TOKENIZER.to_vec()),
            "config.json" => Some(CONFIG.to_vec()),
            "chat_template.json" => Some(TEMPLATE.to_vec()),
            _ => None,
        })
    })
    .unwrap();
    let store =
        WeightStore::from_bytes(vec![("model.safetensors".into(), WEIGHTS.to_vec())]).unwrap();
    let be = if use_gpu { Some(gpu().await) } else { None };
    Model::new(files, &store, be).unwrap()
}

/// The scripted episodes (direct answer, resize then answer, malformed tool call, budget cut;
/// with the extended tools: crop, crop then crop, resize then crop, malformed box, image budget
/// spent) give the Rust SDK's records, field by field, on WebGPU and on the CPU fallback.
#[wasm_bindgen_test]
async fn scripted_episodes_match_the_native_record() {
    let want: Value = serde_json::from_str(RECORDS).unwrap();
    for use_gpu in [true, false] {
        let model = tiny_model(use_gpu).await;
        for (name, case) in want.as_object().unwrap() {
            let forced: Vec<String> = case["forced_turns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            let opts = AskOptions {
                max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
                forced_turns: forced,
                tools: case["tools"].as_str().unwrap().to_string(),
                ..Default::default()
            };
            let a = model
                .ask(PHOTO, "What is the code?", &opts, &TestHost, &mut |_| {})
                .await
                .unwrap();
            let got = serde_json::to_value(&a.answer).unwrap();
            for (field, value) in case["record"].as_object().unwrap() {
                assert_eq!(
                    &got[field],
                    value,
                    "{}: case {name}, field {field}",
                    model.backend()
                );
            }
        }
    }
}

#[wasm_bindgen_test]
async fn episode_on_webgpu_equals_the_cpu_fallback() {
    let call = "<think>Too small.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";
    let opts = AskOptions {
        max_new_tokens: 4,
        forced_turns: vec![call.into()],
        ..Default::default()
    };
    let mut answers = Vec::new();
    for use_gpu in [true, false] {
        let model = tiny_model(use_gpu).await;
        let mut pieces = String::new();
        let a = model
            .ask(PHOTO, "What is the code?", &opts, &TestHost, &mut |ev| {
                if let visionthink_wasm::runner::Event::Token { text, .. } = ev {
                    pieces.push_str(text)
                }
            })
            .await
            .unwrap();
        assert!(a.answer.used_high_res);
        assert_eq!(a.answer.turns.len(), 2);
        assert!(!pieces.is_empty());
        answers.push(a);
    }
    assert_eq!(answers[0].backend, "webgpu");
    assert_eq!(answers[1].backend, "cpu");
    assert_eq!(answers[0].answer.turns, answers[1].answer.turns);
    assert_eq!(
        answers[0].answer.visual_tokens,
        answers[1].answer.visual_tokens
    );
    assert!(answers[0].answer.visual_tokens > answers[0].answer.visual_tokens_full_res);
}

const GGUF_TEXT: &[u8] = include_bytes!("../../tests/fixtures/gguf/tied_nested-f16.gguf");
const GGUF_MMPROJ: &[u8] = include_bytes!("../../tests/fixtures/gguf/tied_nested-mmproj-f32.gguf");

/// JSON equality where numbers compare by value: a record that crossed into JavaScript and back
/// reads a whole-valued float (`1.0`) as an integer (`1`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// llama.cpp's GGUF files (F16 text, F32 mmproj) pushed in 64 KB chunks through `GgufLoader`,
/// as the npm package streams them (one tensor buffered at most, each handed to the executor as
/// soon as it is in): on WebGPU and on the CPU fallback the scripted episodes give the Rust
/// SDK's records (tokenizer and template from the GGUF metadata). A corrupted chunk fails the file's SHA-256 and the file pushed again loads.
#[wasm_bindgen_test]
async fn streamed_gguf_gives_the_native_records() {
    use visionthink_wasm::GgufLoader;
    let want: Value = serde_json::from_str(RECORDS).unwrap();
    for backend in ["webgpu", "cpu"] {
        let opts = serde::Serialize::serialize(
            &serde_json::json!({ "backend": backend }),
            &serde_wasm_bindgen::Serializer::json_compatible(),
        )
        .unwrap();
        let mut l = GgufLoader::create(opts).await.unwrap();
        assert_eq!(l.backend(), backend);
        let before = visionthink_wasm::wasm_heap_bytes();
        // The text file once corrupted (its SHA-256 fails, its tensors are dropped), then whole.
        let mut bad = GGUF_TEXT.to_vec();
        let at = bad.len() - 100;
        bad[at] ^= 1;
        for (name, bytes, ok) in [
            ("t.gguf", &bad[..], false),
            ("t.gguf", GGUF_TEXT, true),
            ("m.gguf", GGUF_MMPROJ, true),
        ] {
            let sha = if name == "t.gguf" {
                GGUF_TEXT
            } else {
                GGUF_MMPROJ
            };
            l.begin_file(name, bytes.len() as f64, Some(sha256_hex(sha)))
                .unwrap();
            for c in bytes.chunks(64 << 10) {
                l.push(c).unwrap();
            }
            let r = l.end_file();
            assert_eq!(r.is_ok(), ok, "{backend}: {name}");
        }
        // The loader buffers one tensor at most (the largest here: the F16 embedding, 4.9 MB);
        // the heap also holds the parsed vocabulary of the header and a float tensor's f32
        // values on their way to the GPU.
        let stats: Value = serde_wasm_bindgen::from_value(l.stats()).unwrap();
        assert_eq!(
            stats["peakBuffered"].as_f64().unwrap(),
            151936.0 * 16.0 * 2.0
        );
        wasm_bindgen_test::console_log!(
            "{backend}: heap +{:.1} MB for {:.1} MB pushed, {:.1} MB buffered at most",
            (visionthink_wasm::wasm_heap_bytes() - before) / 1e6,
            stats["bytesIn"].as_f64().unwrap() / 1e6,
            stats["peakBuffered"].as_f64().unwrap() / 1e6
        );
        let engine = l.finish().unwrap();
        assert_eq!(engine.backend(), backend);
        for (name, case) in want.as_object().unwrap() {
            let opts = serde_json::json!({
                "maxNewTokens": case["max_new_tokens"],
                "forcedTurns": case["forced_turns"],
                "tools": case["tools"],
            });
            let p = engine.ask(
                js_sys::Uint8Array::from(PHOTO),
                "What is the code?".into(),
                serde::Serialize::serialize(
                    &opts,
                    &serde_wasm_bindgen::Serializer::json_compatible(),
                )
                .unwrap(),
                None,
            );
            let got = wasm_bindgen_futures::JsFuture::from(p).await.unwrap();
            let got: Value = serde_wasm_bindgen::from_value(got).unwrap();
            for (field, value) in case["record"].as_object().unwrap() {
                assert!(
                    same_json(&got[field], value),
                    "{backend}: case {name}, field {field}: {} vs {value}",
                    got[field]
                );
            }
        }
    }
}
