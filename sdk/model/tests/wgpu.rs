//! The WebGPU executor against the candle path, kernel by kernel, and the whole model against
//! the transformers goldens (f32 kernels within 1e-3). Runs on any wgpu adapter; CI uses Mesa's
//! lavapipe (`WGPU_BACKEND=vulkan`), so shapes stay small.
#![cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;
use visionthink_model::wgpu_backend::GpuTensor;
use visionthink_model::wgpu_backend::WeightStorage;
use visionthink_model::{Backend, CandleBackend, Mask, WgpuBackend, WgpuOptions};

/// One device for all tests of this binary (device creation on lavapipe takes a while).
fn gpu() -> &'static std::sync::Mutex<WgpuBackend> {
    static GPU: OnceLock<std::sync::Mutex<WgpuBackend>> = OnceLock::new();
    GPU.get_or_init(|| {
        let be = WgpuBackend::new_blocking(WgpuOptions::default()).unwrap_or_else(|e| {
            panic!("no wgpu adapter ({e}); install mesa-vulkan-drivers and set WGPU_BACKEND=vulkan")
        });
        eprintln!("adapter: {:?}", be.info());
        std::sync::Mutex::new(be)
    })
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The largest difference relative to the largest magnitude of `want`.
fn rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    common::max_abs_diff(got, want) / scale
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let d = rel(got, want);
    assert!(d <= tol, "{what}: relative difference {d}");
}

/// Builds the same tensors on both backends and compares an op's outputs.
struct Pair<'a> {
    g: &'a WgpuBackend,
    c: CandleBackend,
}

type Both = (
    <WgpuBackend as Backend>::Tensor,
    <CandleBackend as Backend>::Tensor,
);

impl Pair<'_> {
    fn t(&self, shape: &[usize], seed: u64) -> Both {
        let d = data(shape.iter().product(), seed);
        (
            self.g.tensor(&d, shape).unwrap(),
            self.c.tensor(&d, shape).unwrap(),
        )
    }
    fn w(&self, shape: &[usize], seed: u64) -> Both {
        let d = data(shape.iter().product(), seed);
        (
            self.g.weight(d.clone(), shape).unwrap(),
            self.c.weight(d, shape).unwrap(),
        )
    }
    fn check(&self, (g, c): &Both, tol: f32, what: &str) {
        assert_eq!(self.g.shape(g), self.c.shape(c), "{what}: shapes");
        close(
            &self.g.to_vec(g).unwrap(),
            &self.c.to_vec(c).unwrap(),
            tol,
            what,
        );
    }
}

#[test]
fn kernels_match_candle() {
    let lock = gpu().lock().unwrap();
    let p = Pair {
        g: &lock,
        c: CandleBackend::cpu(),
    };
    // The workgroup-tiled matmul that GPUs get (the shared software device picks the
    // barrier-free one): several tiles, ragged edges, a reduction that is not a multiple of 8.
    let tiled = WgpuBackend::new_blocking(WgpuOptions {
        software_kernels: Some(false),
        ..Default::default()
    })
    .unwrap();
    let tp = Pair {
        g: &tiled,
        c: CandleBackend::cpu(),
    };
    for (n, k, m) in [(3, 17, 5), (70, 33, 130), (9, 64, 65)] {
        let (x, w, b) = (tp.t(&[n, k], 1), tp.w(&[m, k], 2), tp.w(&[m], 3));
        let out = (
            tp.g.linear(&x.0, &w.0, Some(&b.0)).unwrap(),
            tp.c.linear(&x.1, &w.1, Some(&b.1)).unwrap(),
        );
        tp.check(&out, 1e-5, &format!("tiled linear {n}x{k}x{m}"));
    }
    // linear: the software adapter's matmul (8 × 4 outputs per invocation: ragged row and
    // column groups, a reduction tail after the steps of 8), gemv (one row), with/without bias.
    for (n, k, m) in [
        (1, 40, 70),
        (3, 17, 5),
        (70, 33, 130),
        (9, 64, 65),
        (1, 300, 9),
        (1, 200, 300),
        (1, 600, 20),
    ] {
        let x = p.t(&[n, k], 1);
        let w = p.w(&[m, k], 2);
        let b = p.w(&[m], 3);
        let out = (
            p.g.linear(&x.0, &w.0, Some(&b.0)).unwrap(),
            p.c.linear(&x.1, &w.1, Some(&b.1)).unwrap(),
        );
        p.check(&out, 1e-5, &format!("linear {n}x{k}x{m}"));
        let out = (
            p.g.linear(&x.0, &w.0, None).unwrap(),
            p.c.linear(&x.1, &w.1, None).unwrap(),
        );
        p.check(&out, 1e-5, &format!("linear {n}x{k}x{m} no bias"));
    }
    let x = p.t(&[5, 48], 4);
    let y = p.t(&[5, 48], 5);
    let nw = p.w(&[48], 6);
    p.check(
        &(
            p.g.rms_norm(&x.0, &nw.0, 1e-6).unwrap(),
            p.c.rms_norm(&x.1, &nw.1, 1e-6).unwrap(),
        ),
        1e-5,
        "rms_norm",
    );
    p.check(
        &(p.g.add(&x.0, &y.0).unwrap(), p.c.add(&x.1, &y.1).unwrap()),
        1e-6,
        "add",
    );
    p.check(
        &(
            p.g.swiglu(&x.0, &y.0).unwrap(),
            p.c.swiglu(&x.1, &y.1).unwrap(),
        ),
        1e-5,
        "swiglu",
    );
    let big = p.t(&[7, 300], 7);
    let big = (
        p.g.reshape(&big.0, 7, 300).unwrap(),
        p.c.reshape(&big.1, 7, 300).unwrap(),
    );
    let scaled: Vec<f32> = data(2100, 7).iter().map(|v| v * 6.0).collect();
    let gx = p.g.tensor(&scaled, &[7, 300]).unwrap();
    let cx = p.c.tensor(&scaled, &[7, 300]).unwrap();
    p.check(
        &(p.g.gelu(&gx).unwrap(), p.c.gelu(&cx).unwrap()),
        1e-5,
        "gelu",
    );
    drop(big);
    // rope: 3 heads of 8.
    let q = p.t(&[4, 24], 8);
    let cs = p.t(&[4, 8], 9);
    let sn = p.t(&[4, 8], 10);
    p.check(
        &(
            p.g.rope(&q.0, &cs.0, &sn.0, 3).unwrap(),
            p.c.rope(&q.1, &cs.1, &sn.1, 3).unwrap(),
        ),
        1e-5,
        "rope",
    );
    // attention: causal with a cache prefix and GQA; segments (vision windows); more keys than a
    // 64-key block; a 128-wide head. The software device runs the barrier-free kernel, the
    // tiled one the workgroup kernel of GPUs.
    for (n, m, heads, kv, d, mask) in [
        (3, 10, 4, 2, 8, Mask::Causal { past: 7 }),
        (1, 150, 2, 1, 16, Mask::Causal { past: 149 }),
        (70, 70, 2, 2, 8, Mask::Causal { past: 0 }),
        (80, 80, 2, 2, 16, Mask::Segments(vec![0, 16, 60, 80])),
        (9, 9, 4, 2, 128, Mask::Causal { past: 0 }),
    ] {
        for pair in [&p, &tp] {
            let qt = pair.t(&[n, heads * d], 11);
            let k = pair.t(&[m, kv * d], 12);
            let v = pair.t(&[m, kv * d], 13);
            pair.check(
                &(
                    pair.g
                        .attention(&qt.0, &k.0, &v.0, heads, kv, &mask)
                        .unwrap(),
                    pair.c
                        .attention(&qt.1, &k.1, &v.1, heads, kv, &mask)
                        .unwrap(),
                ),
                1e-5,
                &format!("attention {mask:?} d {d}"),
            );
        }
    }
    // gather, narrow, cat, reshape.
    let table = p.w(&[50, 12], 14);
    let ids = [3u32, 49, 0, 3, 17];
    let gathered = (
        p.g.gather_rows(&table.0, &ids).unwrap(),
        p.c.gather_rows(&table.1, &ids).unwrap(),
    );
    p.check(&gathered, 0.0, "gather_rows");
    let nar = (
        p.g.narrow_rows(&gathered.0, 1, 3).unwrap(),
        p.c.narrow_rows(&gathered.1, 1, 3).unwrap(),
    );
    p.check(&nar, 0.0, "narrow_rows");
    let cat = (
        p.g.cat_rows(&[nar.0.clone(), gathered.0.clone()]).unwrap(),
        p.c.cat_rows(&[nar.1.clone(), gathered.1.clone()]).unwrap(),
    );
    p.check(&cat, 0.0, "cat_rows");
    p.check(
        &(
            p.g.reshape(&cat.0, 4, 24).unwrap(),
            p.c.reshape(&cat.1, 4, 24).unwrap(),
        ),
        0.0,
        "reshape",
    );
}

#[test]
fn kv_cache_appends_in_place_and_grows() {
    let lock = gpu().lock().unwrap();
    let g: &WgpuBackend = &lock;
    let mut buf = None;
    let mut used = 0;
    let mut want = Vec::new();
    // 300 single rows then a block of 100: crosses the initial capacity of 256 rows.
    for step in 0..301 {
        let rows = if step == 300 { 100 } else { 1 };
        let d = data(rows * 6, step);
        want.extend_from_slice(&d);
        let t = g.tensor(&d, &[rows, 6]).unwrap();
        let (b, view) = g.append_rows(buf.take(), used, &t).unwrap();
        used += rows;
        assert_eq!(g.shape(&view), vec![used, 6]);
        buf = Some(b);
        if step % 100 == 0 || step == 300 {
            assert_eq!(g.to_vec(&view).unwrap(), want, "after step {step}");
        }
    }
}

/// The fused rotary embedding and cache append against the composed rope and append_rows:
/// single rows across the caches' first growth (256 rows), then a block of rows; the queries
/// and both caches equal bit for bit (the same arithmetic per element).
#[test]
fn rope_append_matches_rope_then_append_rows() {
    let lock = gpu().lock().unwrap();
    let g: &WgpuBackend = &lock;
    let (heads, kv_heads, d) = (4, 2, 8);
    let (qw, kw) = (heads * d, kv_heads * d);
    let (mut fk, mut fv) = (None, None);
    let (mut ck, mut cv): (Option<_>, Option<_>) = (None, None);
    let mut used = 0;
    for step in 0..262u64 {
        let n = if step == 261 { 5 } else { 1 };
        let qkv = g
            .tensor(&data(n * (qw + 2 * kw), step), &[n, qw + 2 * kw])
            .unwrap();
        let cos = g.tensor(&data(n * d, 1000 + step), &[n, d]).unwrap();
        let sin = g.tensor(&data(n * d, 2000 + step), &[n, d]).unwrap();
        let (q, k_all, v_all) = g
            .rope_append(&qkv, &cos, &sin, (heads, kv_heads), &mut fk, &mut fv, used)
            .unwrap()
            .expect("the WebGPU executor fuses");
        let cols = |t, a, w| {
            let rows: Vec<f32> = g.to_vec(t).unwrap();
            rows.chunks(qw + 2 * kw)
                .flat_map(|r| r[a..a + w].to_vec())
                .collect::<Vec<f32>>()
        };
        let qk = g.tensor(&cols(&qkv, 0, qw + kw), &[n, qw + kw]).unwrap();
        let qk = g
            .to_vec(&g.rope(&qk, &cos, &sin, heads + kv_heads).unwrap())
            .unwrap();
        let part = |a, w| -> Vec<f32> {
            qk.chunks(qw + kw)
                .flat_map(|r: &[f32]| r[a..a + w].to_vec())
                .collect()
        };
        let k = g.tensor(&part(qw, kw), &[n, kw]).unwrap();
        let v = g.tensor(&cols(&qkv, qw + kw, kw), &[n, kw]).unwrap();
        let (kb, k_want) = g.append_rows(ck.take(), used, &k).unwrap();
        let (vb, v_want) = g.append_rows(cv.take(), used, &v).unwrap();
        (ck, cv) = (Some(kb), Some(vb));
        used += n;
        assert_eq!(g.shape(&k_all), vec![used, kw]);
        assert_eq!(g.shape(&v_all), vec![used, kw]);
        if step % 50 == 0 || step >= 255 {
            assert_eq!(g.to_vec(&q).unwrap(), part(0, qw), "queries, step {step}");
            assert_eq!(
                g.to_vec(&k_all).unwrap(),
                g.to_vec(&k_want).unwrap(),
                "keys, step {step}"
            );
            assert_eq!(
                g.to_vec(&v_all).unwrap(),
                g.to_vec(&v_want).unwrap(),
                "values, step {step}"
            );
        }
    }
    let bad = g.tensor(&data(10, 1), &[1, 10]).unwrap();
    let cos = g.tensor(&data(d, 2), &[1, d]).unwrap();
    let err = g
        .rope_append(&bad, &cos, &cos, (heads, kv_heads), &mut None, &mut None, 0)
        .unwrap_err();
    assert!(err.to_string().contains("rope_append"), "{err}");
}

#[test]
fn chunked_and_int8_weights() {
    let lock = gpu().lock().unwrap();
    let c = CandleBackend::cpu();
    let (rows, cols) = (300, 160);
    let w = data(rows * cols, 20);
    let x = data(3 * cols, 21);
    let want = c
        .to_vec(
            &c.linear(
                &c.tensor(&x, &[3, cols]).unwrap(),
                &c.tensor(&w, &[rows, cols]).unwrap(),
                None,
            )
            .unwrap(),
        )
        .unwrap();
    let want_row = &want[..rows];
    let ids = [0u32, 299, 150, 77];
    for opts in [
        // 64 KB chunks: 300 rows of 640 bytes → 3 chunks; the reduction gemv (k = 160).
        WgpuOptions {
            chunk_bytes: Some(64 * 1024),
            software_kernels: Some(false),
            ..Default::default()
        },
        // The barrier-light gemv.
        WgpuOptions {
            software_kernels: Some(true),
            ..Default::default()
        },
        WgpuOptions {
            weights: WeightStorage::Int8,
            chunk_bytes: Some(16 * 1024),
            ..Default::default()
        },
        // f16 storage, chunked, through both matrix-vector kernels.
        WgpuOptions {
            weights: WeightStorage::F16,
            chunk_bytes: Some(16 * 1024),
            software_kernels: Some(false),
            ..Default::default()
        },
        WgpuOptions {
            weights: WeightStorage::F16,
            software_kernels: Some(true),
            ..Default::default()
        },
    ] {
        // A second device with these options.
        let g = WgpuBackend::new_blocking(opts).unwrap();
        let tol = if opts.weights == WeightStorage::Int8 {
            2e-2
        } else if opts.weights == WeightStorage::F16 {
            2e-3
        } else {
            1e-5
        };
        let gw = g.weight(w.clone(), &[rows, cols]).unwrap();
        let out = g
            .linear(&g.tensor(&x, &[3, cols]).unwrap(), &gw, None)
            .unwrap();
        close(
            &g.to_vec(&out).unwrap(),
            &want,
            tol,
            &format!("{opts:?} matmul"),
        );
        let out = g
            .linear(&g.tensor(&x[..cols], &[1, cols]).unwrap(), &gw, None)
            .unwrap();
        close(
            &g.to_vec(&out).unwrap(),
            want_row,
            tol,
            &format!("{opts:?} gemv"),
        );
        let got = g.to_vec(&g.gather_rows(&gw, &ids).unwrap()).unwrap();
        let want_g: Vec<f32> = ids
            .iter()
            .flat_map(|&i| w[i as usize * cols..(i as usize + 1) * cols].to_vec())
            .collect();
        close(&got, &want_g, tol / 2.0, &format!("{opts:?} gather"));
    }
    drop(lock);
}

#[test]
fn whole_model_matches_transformers_within_1e_3() {
    let lock = gpu().lock().unwrap();
    let (logits, vision) = common::check_goldens(&*lock, 1e-3);
    eprintln!("wgpu worst relative difference: logits {logits:.2e}, vision {vision:.2e}");
}

#[test]
fn limits_too_small_name_the_limit() {
    let lock = gpu().lock().unwrap();
    let max = lock.info().max_binding.min(lock.info().max_buffer) as usize;
    // An output over the binding limit is refused with a message naming the limit and the need.
    let table = lock.tensor(&[0.0; 4], &[1, 4]).unwrap();
    let ids = vec![0u32; max / 16 + 1];
    let err = lock.gather_rows(&table, &ids).unwrap_err().to_string();
    assert!(
        err.contains("maxStorageBufferBindingSize") && err.contains(&(ids.len() * 16).to_string()),
        "{err}"
    );
}

/// The accuracy cost of int8 and f16 weights, measured on every golden case: worst logit
/// difference relative to the logit scale, and whether argmax and top-5 survive.
#[test]
fn reduced_precision_weights_accuracy_cost() {
    let _lock = gpu().lock().unwrap();
    for (label, opts) in [
        (
            "int8",
            WgpuOptions {
                weights: WeightStorage::Int8,
                ..Default::default()
            },
        ),
        (
            "f16",
            WgpuOptions {
                weights: WeightStorage::F16,
                ..Default::default()
            },
        ),
    ] {
        reduced_precision(label, opts);
    }
}

fn reduced_precision(label: &str, opts: WgpuOptions) {
    use serde_json::Value;
    use visionthink_core::rope::rope_index;
    use visionthink_core::tokenizer::QwenTokenizer;
    let g = WgpuBackend::new_blocking(opts).unwrap();
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("models/golden.json")).unwrap(),
    )
    .unwrap();
    let tok = QwenTokenizer::from_bytes(
        &std::fs::read(common::fixtures().join("tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let (mut worst, mut top1, mut top5, mut cases) = (0f32, 0, 0, 0);
    for (variant, list) in golden["variants"].as_object().unwrap() {
        let model = common::load(&g, variant);
        for case in list.as_array().unwrap() {
            let c = common::prepare(case, &tok);
            let feats = model.vision.forward(&g, &c.pixels, &c.grids).unwrap();
            let (pos, _) = rope_index(&c.ids, &c.grids, 2).unwrap();
            let e = model.embed(&g, &c.ids, Some(&feats)).unwrap();
            let mut cache = model.new_cache();
            let h = model.decode(&g, &e, &pos, &mut cache).unwrap();
            let logits = model.last_logits(&g, &h).unwrap();
            let scale = case["logit_scale"].as_f64().unwrap() as f32;
            let want: Vec<f32> = case["logits_first16"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            worst = worst.max(common::max_abs_diff(&logits[..16], &want) / scale);
            let am = visionthink_model::generate::argmax(&logits) as u64;
            top1 += usize::from(am == case["argmax"].as_u64().unwrap());
            top5 += usize::from(
                case["top5"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p[0].as_u64() == Some(am)),
            );
            cases += 1;
        }
    }
    eprintln!(
        "{label} weights: worst logit difference {worst:.2e} of the logit scale; argmax equal in \
         {top1}/{cases}, within the reference top-5 in {top5}/{cases}"
    );
    assert!(worst < 0.1, "{label} logits drift by {worst} of the scale");
    assert_eq!(top5, cases);
}

/// A lost device surfaces as the typed `DeviceLost` error (never a hang or a panic), and a new
/// backend works afterwards.
#[test]
fn device_loss_is_a_typed_error_and_a_new_device_works() {
    let _lock = gpu().lock().unwrap();
    let g = WgpuBackend::new_blocking(WgpuOptions::default()).unwrap();
    let t = g.tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    assert_eq!(
        g.to_vec(&g.add(&t, &t).unwrap()).unwrap(),
        [2.0, 4.0, 6.0, 8.0]
    );
    g.destroy();
    let err = g
        .add(&t, &t)
        .and_then(|s| g.to_vec(&s))
        .expect_err("a destroyed device cannot compute");
    assert!(
        matches!(err, visionthink_model::Error::DeviceLost(_)),
        "{err:?}"
    );
    let fresh = WgpuBackend::new_blocking(WgpuOptions::default()).unwrap();
    let t = fresh.tensor(&[1.0, 2.0], &[1, 2]).unwrap();
    assert_eq!(
        fresh.to_vec(&fresh.add(&t, &t).unwrap()).unwrap(),
        [2.0, 4.0]
    );
}

/// llama.cpp's GGUF files (tests/fixtures/gguf: F16 text, Q8_0 mmproj) on the WebGPU executor,
/// which takes them dequantized to f32 until it has quantized kernels: the argmax of every
/// golden case, and the F16 + F32 pair within 1e-3 with the greedy tokens.
#[test]
fn gguf_files_run_on_the_webgpu_executor() {
    use visionthink_model::gguf::GgufWeights;
    use visionthink_model::{Qwen25VL, WeightStore};
    let lock = gpu().lock().unwrap();
    let be = &*lock;
    for (mm, tol, tokens) in [("f32", 1e-3, true), ("q8_0", 0.05, false)] {
        let (l, v) = common::check_models(be, tol, tokens, |variant| {
            (variant == "tied_nested").then(|| {
                let g = common::fixtures().join("gguf");
                let w = GgufWeights::open(
                    &g.join("tied_nested-f16.gguf"),
                    &g.join(format!("tied_nested-mmproj-{mm}.gguf")),
                )
                .unwrap();
                let cfg = visionthink_core::gguf::model_config(w.text_header(), w.mmproj_header())
                    .unwrap();
                Qwen25VL::load(be, &cfg, &WeightStore::from_gguf(w)).unwrap()
            })
        });
        eprintln!("wgpu, F16 text + {mm} mmproj: logits {l:.2e}, vision {v:.2e}");
    }
    // The same files through the f16 matmul that hardware adapters with `shader-f16` get for
    // F16 weights (forced here on lavapipe, which has the feature).
    let f16 = WgpuBackend::new_blocking(WgpuOptions {
        software_kernels: Some(false),
        f16_math: Some(true),
        ..Default::default()
    })
    .unwrap();
    if f16.info().shader_f16 {
        let (l, v) = common::check_models(&f16, 2e-2, true, |variant| {
            (variant == "tied_nested").then(|| {
                let g = common::fixtures().join("gguf");
                let w = GgufWeights::open(
                    &g.join("tied_nested-f16.gguf"),
                    &g.join("tied_nested-mmproj-f16.gguf"),
                )
                .unwrap();
                let cfg = visionthink_core::gguf::model_config(w.text_header(), w.mmproj_header())
                    .unwrap();
                Qwen25VL::load(&f16, &cfg, &WeightStore::from_gguf(w)).unwrap()
            })
        });
        eprintln!("wgpu f16 matmul, F16 text + F16 mmproj: logits {l:.2e}, vision {v:.2e}");
    }
}

/// The GGUF block types the executor reads (Q5_0 rewritten as Q8_0).
const BLOCK_TYPES: [visionthink_core::gguf::GgmlType; 5] = {
    use visionthink_core::gguf::GgmlType::*;
    [Q8_0, Q4_0, Q5_0, Q4_K, Q6_K]
};

/// The kernels that read GGUF blocks in place (Q8_0, Q4_0, Q4_K, Q6_K; Q5_0 through Q8_0)
/// against candle's f32 product over the same blocks dequantized on the CPU: the tiled matmul,
/// the three matrix-vector kernels, gather, readback, and row chunks split mid-tensor.
#[test]
fn gguf_block_kernels_match_candle() {
    use visionthink_core::gguf::GgmlType;
    use visionthink_model::gguf::{dequantize, quantize, QuantView};
    let lock = gpu().lock().unwrap();
    let c = CandleBackend::cpu();
    // The shared software-adapter device, and one with the reduction gemv and 4 KB chunks.
    let chunked = WgpuBackend::new_blocking(WgpuOptions {
        chunk_bytes: Some(4 * 1024),
        software_kernels: Some(false),
        ..Default::default()
    })
    .unwrap();
    for ty in BLOCK_TYPES {
        let mut shapes = vec![(70, 512), (9, 256)];
        if ty.block_size() == 32 {
            // Rows short enough for the barrier-free gemv.
            shapes.push((40, 64));
        }
        for (m, k) in shapes {
            let values: Vec<f32> = data(m * k, 31).iter().map(|v| v * 0.7).collect();
            let bytes = quantize(ty, &values, k).unwrap();
            let exact = dequantize(ty, &bytes, m * k).unwrap();
            let view = QuantView {
                name: "w",
                ty,
                shape: [m, k],
                bytes: &bytes,
                file_backed: false,
            };
            let cw = c.weight(exact.clone(), &[m, k]).unwrap();
            for (g, dev) in [(&*lock, "software"), (&chunked, "chunked")] {
                assert!(g.takes_quantized(ty));
                let gw = g.quantized_weight(&view).unwrap();
                let what = format!("{} [{m}, {k}] on the {dev} device", ty.name());
                close(
                    &g.to_vec(&gw).unwrap(),
                    &exact,
                    1e-6,
                    &format!("{what}: readback"),
                );
                // The same blocks written in ragged pieces (a streaming load), across the
                // chunks' boundaries: the same values. Q5_0 is rewritten whole, never streamed.
                match g.quantized_writer("w", ty, [m, k]).unwrap() {
                    None => assert_eq!(ty, GgmlType::Q5_0),
                    Some(mut w) => {
                        for piece in bytes.chunks(997) {
                            w.write(piece).unwrap();
                        }
                        let streamed = w.finish().unwrap();
                        let got = g.to_vec(&streamed).unwrap();
                        close(&got, &exact, 1e-6, &format!("{what}: written in pieces"));
                        let mut w = g.quantized_writer("w", ty, [m, k]).unwrap().unwrap();
                        w.write(&bytes[..bytes.len() - 1]).unwrap();
                        assert!(w.finish().is_err(), "{what}: a short matrix");
                    }
                }
                for n in [1, 3, 70] {
                    let x = data(n * k, 32 + n as u64);
                    let b = data(m, 33);
                    let got = g
                        .linear(
                            &g.tensor(&x, &[n, k]).unwrap(),
                            &gw,
                            Some(&g.tensor(&b, &[m]).unwrap()),
                        )
                        .unwrap();
                    let want = c
                        .linear(
                            &c.tensor(&x, &[n, k]).unwrap(),
                            &cw,
                            Some(&c.tensor(&b, &[m]).unwrap()),
                        )
                        .unwrap();
                    close(
                        &g.to_vec(&got).unwrap(),
                        &c.to_vec(&want).unwrap(),
                        1e-5,
                        &format!("{what}: linear of {n} rows"),
                    );
                    // The residual added in the product's kernel.
                    let r = data(n * m, 34);
                    let got = g
                        .linear_add(
                            &g.tensor(&x, &[n, k]).unwrap(),
                            &gw,
                            None,
                            &g.tensor(&r, &[n, m]).unwrap(),
                        )
                        .unwrap();
                    let want = c
                        .linear_add(
                            &c.tensor(&x, &[n, k]).unwrap(),
                            &cw,
                            None,
                            &c.tensor(&r, &[n, m]).unwrap(),
                        )
                        .unwrap();
                    close(
                        &g.to_vec(&got).unwrap(),
                        &c.to_vec(&want).unwrap(),
                        1e-5,
                        &format!("{what}: linear_add of {n} rows"),
                    );
                }
                swiglu_down_matches(g, &c, &gw, &cw, 1e-5, &what);
                let ids = [0u32, m as u32 - 1, 5, 5];
                let want: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| exact[i as usize * k..(i as usize + 1) * k].to_vec())
                    .collect();
                let got = g.to_vec(&g.gather_rows(&gw, &ids).unwrap()).unwrap();
                close(&got, &want, 1e-6, &format!("{what}: gather"));
            }
        }
    }
    // Blocks that are not whole rows are refused by name.
    let bytes = quantize(GgmlType::Q8_0, &data(64, 1), 32).unwrap();
    let bad = QuantView {
        name: "model.bad.weight",
        ty: GgmlType::Q8_0,
        shape: [3, 32],
        bytes: &bytes,
        file_backed: false,
    };
    let e = lock.quantized_weight(&bad).unwrap_err().to_string();
    assert!(e.contains("model.bad.weight") && e.contains("Q8_0"), "{e}");
}

/// `residual + swiglu(gate, up) · wᵀ` with gate and up the two halves of one row (a fused
/// gate/up product's output): SwiGLU read by the one-row kernel, against candle's composed ops.
fn swiglu_down_matches(
    g: &WgpuBackend,
    c: &CandleBackend,
    gw: &<WgpuBackend as Backend>::Tensor,
    cw: &<CandleBackend as Backend>::Tensor,
    tol: f32,
    what: &str,
) {
    let [m, k] = g.shape(gw)[..] else {
        panic!("{what}: a matrix")
    };
    let gu: Vec<f32> = data(2 * k, 35).iter().map(|v| v * 3.0).collect();
    let r = data(m, 36);
    let row = g.tensor(&gu, &[2 * k, 1]).unwrap();
    let half = |start| {
        g.reshape(&g.narrow_rows(&row, start, k).unwrap(), 1, k)
            .unwrap()
    };
    let got = g
        .swiglu_linear_add(
            &half(0),
            &half(k),
            gw,
            None,
            &g.tensor(&r, &[1, m]).unwrap(),
        )
        .unwrap();
    let want = c
        .swiglu_linear_add(
            &c.tensor(&gu[..k], &[1, k]).unwrap(),
            &c.tensor(&gu[k..], &[1, k]).unwrap(),
            cw,
            None,
            &c.tensor(&r, &[1, m]).unwrap(),
        )
        .unwrap();
    close(
        &g.to_vec(&got).unwrap(),
        &c.to_vec(&want).unwrap(),
        tol,
        &format!("{what}: SwiGLU read by the one-row product"),
    );
}

/// Fused projections (a decoder layer's q/k/v and gate/up stored as one matrix): the fused
/// product is the parts' products side by side, each part still works as a weight of its own,
/// and SwiGLU plus the residual run in the down projection's kernel — for f32 and f16 storage,
/// through every one-row kernel. int8 weights are not fused (their row scales).
#[test]
fn fused_projections_match_the_composed_ones() {
    let lock = gpu().lock().unwrap();
    let c = CandleBackend::cpu();
    let k = 160;
    let rows = [96usize, 32, 32];
    let ws: Vec<Vec<f32>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| data(r * k, 40 + i as u64))
        .collect();
    let bs: Vec<Vec<f32>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| data(*r, 50 + i as u64))
        .collect();
    let x = data(k, 60);
    let cx = c.tensor(&x, &[1, k]).unwrap();
    let want: Vec<f32> = ws
        .iter()
        .zip(&bs)
        .zip(&rows)
        .flat_map(|((w, b), r)| {
            let y = c
                .linear(
                    &cx,
                    &c.tensor(w, &[*r, k]).unwrap(),
                    Some(&c.tensor(b, &[*r]).unwrap()),
                )
                .unwrap();
            c.to_vec(&y).unwrap()
        })
        .collect();
    let short = WgpuBackend::new_blocking(WgpuOptions {
        software_kernels: Some(false),
        ..Default::default()
    })
    .unwrap();
    let f16 = WgpuBackend::new_blocking(WgpuOptions {
        weights: WeightStorage::F16,
        software_kernels: Some(true),
        ..Default::default()
    })
    .unwrap();
    let rows4 = WgpuBackend::new_blocking(WgpuOptions {
        software_kernels: Some(true),
        texel_weights: Some(false),
        ..Default::default()
    })
    .unwrap();
    for (g, dev, tol) in [
        (&*lock, "f32", 1e-5),
        (&short, "f32 reduction gemv", 1e-5),
        (&rows4, "f32 barrier-free gemv, weights in buffers", 1e-5),
        (&f16, "f16", 2e-3),
    ] {
        let gw: Vec<_> = ws
            .iter()
            .zip(&rows)
            .map(|(w, r)| g.weight(w.clone(), &[*r, k]).unwrap())
            .collect();
        let gb: Vec<_> = bs
            .iter()
            .zip(&rows)
            .map(|(b, r)| g.tensor(b, &[*r]).unwrap())
            .collect();
        let (fw, wv) = g
            .fuse_rows(&gw.iter().collect::<Vec<_>>())
            .unwrap()
            .unwrap();
        let (fb, bv) = g
            .fuse_rows(&gb.iter().collect::<Vec<_>>())
            .unwrap()
            .unwrap();
        assert_eq!(g.shape(&fw), vec![160, k], "{dev}");
        assert_eq!(g.shape(&fb), vec![160], "{dev}");
        let gx = g.tensor(&x, &[1, k]).unwrap();
        let fused = g.to_vec(&g.linear(&gx, &fw, Some(&fb)).unwrap()).unwrap();
        close(&fused, &want, tol, &format!("{dev}: fused product"));
        let mut at = 0;
        let x3 = data(3 * k, 61);
        for (i, ((w, b), r)) in wv.iter().zip(&bv).zip(&rows).enumerate() {
            assert_eq!(g.shape(w), vec![*r, k]);
            let part = g.to_vec(&g.linear(&gx, w, Some(b)).unwrap()).unwrap();
            close(
                &part,
                &want[at..at + r],
                tol,
                &format!("{dev}: a part as its own weight"),
            );
            // Several rows through the tiled product, on a view.
            let got = g
                .linear(&g.tensor(&x3, &[3, k]).unwrap(), w, Some(b))
                .unwrap();
            let want3 = c
                .linear(
                    &c.tensor(&x3, &[3, k]).unwrap(),
                    &c.tensor(&ws[i], &[*r, k]).unwrap(),
                    Some(&c.tensor(&bs[i], &[*r]).unwrap()),
                )
                .unwrap();
            close(
                &g.to_vec(&got).unwrap(),
                &c.to_vec(&want3).unwrap(),
                tol,
                &format!("{dev}: a part in a 3-row product"),
            );
            at += r;
        }
        let down = data(48 * 96, 62);
        let (gd, cd) = (
            g.weight(down.clone(), &[48, 96]).unwrap(),
            c.weight(down, &[48, 96]).unwrap(),
        );
        swiglu_down_matches(g, &c, &gd, &cd, tol, dev);
    }
    let int8 = WgpuBackend::new_blocking(WgpuOptions {
        weights: WeightStorage::Int8,
        ..Default::default()
    })
    .unwrap();
    let a = int8.weight(data(64 * 32, 1), &[64, 32]).unwrap();
    let b = int8.weight(data(64 * 32, 2), &[64, 32]).unwrap();
    assert!(int8.fuse_rows(&[&a, &b]).unwrap().is_none());
    drop(lock);
}

/// Products over f32 weights read as texels with the input rows in a uniform buffer
/// (`WgpuOptions::texel_weights`, the default on software adapters) against candle, for one
/// row, three rows and 130 rows (two blocks of the uniform buffer, the second partial):
/// weights spanning several texture rows with a partial last one, an odd number of 4-value
/// steps, bias and residual, chunked weights (a texture per chunk), and products the kernels
/// cannot take (a length not a multiple of 4, a row past the uniform buffer) on the fallback.
#[test]
fn texel_weights_match_candle() {
    let _lock = gpu().lock().unwrap();
    let c = CandleBackend::cpu();
    let g = WgpuBackend::new_blocking(WgpuOptions {
        software_kernels: Some(true),
        texel_weights: Some(true),
        ..Default::default()
    })
    .unwrap();
    let chunked = WgpuBackend::new_blocking(WgpuOptions {
        software_kernels: Some(true),
        texel_weights: Some(true),
        chunk_bytes: Some(64 * 1024),
        ..Default::default()
    })
    .unwrap();
    // (rows, k, textures made): 300 × 160 is 12,000 texels, a texture row and a part; k = 20
    // is five 4-value steps (two pairs and one more); k = 18 and k = 16,400 do not fit.
    for (be, rows, k, made, what) in [
        (&g, 300, 160, 1, "two texture rows"),
        (&g, 37, 20, 1, "an odd number of steps"),
        (&g, 33, 18, 0, "a length not a multiple of 4"),
        (
            &g,
            5,
            16_400,
            0,
            "an input row longer than the uniform buffer",
        ),
        (&chunked, 300, 160, 3, "three chunks"),
    ] {
        let w = data(rows * k, 70);
        let b = data(rows, 71);
        let before = be.counters().texel_weights_made;
        let gw = be.weight(w.clone(), &[rows, k]).unwrap();
        for n in [1, 3, 130] {
            let r = data(n * rows, 72);
            let x = data(n * k, 73);
            let want = c
                .to_vec(
                    &c.add(
                        &c.linear(
                            &c.tensor(&x, &[n, k]).unwrap(),
                            &c.tensor(&w, &[rows, k]).unwrap(),
                            Some(&c.tensor(&b, &[rows]).unwrap()),
                        )
                        .unwrap(),
                        &c.tensor(&r, &[n, rows]).unwrap(),
                    )
                    .unwrap(),
                )
                .unwrap();
            let got = be
                .linear_add(
                    &be.tensor(&x, &[n, k]).unwrap(),
                    &gw,
                    Some(&be.tensor(&b, &[rows]).unwrap()),
                    &be.tensor(&r, &[n, rows]).unwrap(),
                )
                .unwrap();
            close(
                &be.to_vec(&got).unwrap(),
                &want,
                1e-5,
                &format!("{what}, {n} rows"),
            );
            // The texels are made once, on first use.
            assert_eq!(be.counters().texel_weights_made - before, made, "{what}");
        }
    }
}

/// GGUF block matrices of one layout fused into one (a GGUF file's q/k/v and gate/up): the
/// fused product and each part read in place as a view, one row (both matrix-vector kernels)
/// and three rows, against candle's products over the same blocks dequantized. Parts of
/// different layouts, or whose bytes would not start on a word, are left unfused.
#[test]
fn gguf_block_projections_fuse() {
    use visionthink_core::gguf::GgmlType;
    use visionthink_model::gguf::{dequantize, quantize};
    let lock = gpu().lock().unwrap();
    let c = CandleBackend::cpu();
    let reduction = WgpuBackend::new_blocking(WgpuOptions {
        software_kernels: Some(false),
        ..Default::default()
    })
    .unwrap();
    let k = 256;
    let rows = [96usize, 32, 32];
    // Q5_0 is stored as Q8_0 on the executor, so it fuses with Q8_0.
    for ty in BLOCK_TYPES {
        let parts: Vec<(Vec<u8>, Vec<f32>)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let v: Vec<f32> = data(r * k, 70 + i as u64).iter().map(|v| v * 0.7).collect();
                let bytes = quantize(ty, &v, k).unwrap();
                let exact = dequantize(ty, &bytes, r * k).unwrap();
                (bytes, exact)
            })
            .collect();
        let x1 = data(k, 80);
        let x3 = data(3 * k, 81);
        let product = |x: &[f32], n: usize, w: &[f32], m: usize| {
            let y = c
                .linear(
                    &c.tensor(x, &[n, k]).unwrap(),
                    &c.tensor(w, &[m, k]).unwrap(),
                    None,
                )
                .unwrap();
            c.to_vec(&y).unwrap()
        };
        let all: Vec<f32> = parts.iter().flat_map(|p| p.1.clone()).collect();
        let want_fused = product(&x1, 1, &all, 160);
        for (g, dev) in [(&*lock, "software"), (&reduction, "reduction gemv")] {
            let what = format!("{} on the {dev} device", ty.name());
            let gw: Vec<_> = parts
                .iter()
                .zip(&rows)
                .map(|((bytes, _), r)| block_weight(g, ty, bytes, [*r, k]))
                .collect();
            let (fw, views) = g
                .fuse_rows(&gw.iter().collect::<Vec<_>>())
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: not fused"));
            assert_eq!(g.shape(&fw), vec![160, k], "{what}");
            let gx1 = g.tensor(&x1, &[1, k]).unwrap();
            let gx3 = g.tensor(&x3, &[3, k]).unwrap();
            let fused = g.to_vec(&g.linear(&gx1, &fw, None).unwrap()).unwrap();
            close(&fused, &want_fused, 1e-5, &format!("{what}: fused product"));
            for (i, (v, r)) in views.iter().zip(&rows).enumerate() {
                let exact = &parts[i].1;
                let read = g.to_vec(v).unwrap();
                close(&read, exact, 1e-6, &format!("{what}: part {i} read back"));
                for (n, x, gx) in [(1, &x1, &gx1), (3, &x3, &gx3)] {
                    let got = g.to_vec(&g.linear(gx, v, None).unwrap()).unwrap();
                    let want = product(x, n, exact, *r);
                    close(&got, &want, 1e-5, &format!("{what}: part {i}, {n} rows"));
                }
            }
        }
    }
    let upload = |ty: GgmlType, m: usize| {
        let bytes = quantize(ty, &data(m * k, 90), k).unwrap();
        block_weight(&lock, ty, &bytes, [m, k])
    };
    // Two layouts: no fusion.
    let (a, b) = (upload(GgmlType::Q8_0, 32), upload(GgmlType::Q4_K, 32));
    assert!(lock.fuse_rows(&[&a, &b]).unwrap().is_none());
    // 33 rows of 210-byte Q6_K rows end mid-word: the copy could not place the next part.
    let (a, b) = (upload(GgmlType::Q6_K, 33), upload(GgmlType::Q6_K, 32));
    assert!(lock.fuse_rows(&[&a, &b]).unwrap().is_none());
    drop(lock);
}

/// A `[m, k]` matrix of `ty` blocks uploaded to `g`.
fn block_weight(
    g: &WgpuBackend,
    ty: visionthink_core::gguf::GgmlType,
    bytes: &[u8],
    shape: [usize; 2],
) -> GpuTensor {
    let view = visionthink_model::gguf::QuantView {
        name: "w",
        ty,
        shape,
        bytes,
        file_backed: false,
    };
    g.quantized_weight(&view).unwrap()
}

/// The GGUF files streamed in 64 KB chunks onto the WebGPU executor (as the browser loads them,
/// with the adapter's binding size as the row limit): the goldens within 1e-3, greedy tokens
/// identical; the Q8_0 mmproj's matrices stay blocks on the GPU.
#[test]
fn streamed_gguf_files_run_on_the_webgpu_executor() {
    use visionthink_model::gguf_stream::{GgufStream, Limits};
    let lock = gpu().lock().unwrap();
    let be = &*lock;
    let g = common::fixtures().join("gguf");
    for (mm, tol, tokens) in [("f32", 1e-3, true), ("q8_0", 0.05, false)] {
        let (l, v) = common::check_models(be, tol, tokens, |variant| {
            (variant == "tied_nested").then(|| {
                let mut s = GgufStream::new(Limits {
                    max_row_bytes: Some(be.info().max_binding),
                    max_total_bytes: None,
                });
                for f in [
                    "tied_nested-f16.gguf".to_string(),
                    format!("tied_nested-mmproj-{mm}.gguf"),
                ] {
                    let b = std::fs::read(g.join(&f)).unwrap();
                    s.begin_file(&f, b.len() as u64, None).unwrap();
                    for c in b.chunks(64 << 10) {
                        s.push(be, c).unwrap();
                    }
                    s.end_file().unwrap();
                }
                if mm == "q8_0" {
                    assert!(s.stats().quantized > 0);
                }
                s.finish(be).unwrap().0
            })
        });
        eprintln!("wgpu, streamed F16 text + {mm} mmproj: logits {l:.2e}, vision {v:.2e}");
    }
}

/// More distinct parameter blocks than the uniform buffer has slots, recorded without waiting:
/// slots are given new blocks while earlier submits may still be running, and every result is
/// still right (a slot is never rewritten under a dispatch that was not yet submitted).
#[test]
fn parameter_slots_are_reused_and_recycled_safely() {
    let lock = gpu().lock().unwrap();
    let g: &WgpuBackend = &lock;
    // 1,300 lengths fill the 1,024 slots and wrap (lengths 1..=276 are evicted); then each
    // length evicted earlier (a new block) follows a repeat of the length in the slot where
    // the search for a free one starts, which must be skipped: overwritten, it would make the
    // repeat's dispatch sum fewer values.
    let lens: Vec<usize> = (1..=1300)
        .chain((0..150).flat_map(|j| [277 + 2 * j, 1 + j]))
        .collect();
    let before = g.counters();
    let mut outs = Vec::new();
    for (i, &n) in lens.iter().enumerate() {
        let (a, b) = (data(n, i as u64), data(n, 7000 + i as u64));
        let (ga, gb) = (
            g.tensor(&a, &[1, n]).unwrap(),
            g.tensor(&b, &[1, n]).unwrap(),
        );
        outs.push((g.add(&ga, &gb).unwrap(), a, b));
    }
    for (i, (out, a, b)) in outs.iter().enumerate() {
        let got = g.to_vec(out).unwrap();
        let want: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
        assert_eq!(got, want, "sum {i} (length {})", lens[i]);
    }
    // (Blocks are counted when they are written, at submit: after the readbacks.)
    let after = g.counters();
    let blocks = after.param_blocks_written - before.param_blocks_written;
    assert!(
        blocks >= 1300,
        "each new length is a new block (more than the slots): {blocks}"
    );
}

/// Decode steps reuse the intermediate buffers of the step before (the pool) and therefore
/// their bind groups (the cache), and the reuse changes no result: every step's logits match
/// candle's on the same model.
#[test]
fn decode_steps_reuse_buffers_and_bind_groups() {
    use visionthink_core::rope::rope_index;
    let lock = gpu().lock().unwrap();
    let g: &WgpuBackend = &lock;
    let c = CandleBackend::cpu();
    let (gm, cm) = (
        common::load(g, "tied_nested"),
        common::load(&c, "tied_nested"),
    );
    let ids: Vec<u32> = (0..16).map(|i| 100 + 7 * i).collect();
    let (pos, _) = rope_index(&ids, &[], 2).unwrap();
    let (mut gc, mut cc) = (gm.new_cache(), cm.new_cache());
    let prompt = 6;
    let e = gm.embed(g, &ids[..prompt], None).unwrap();
    gm.decode(g, &e, &pos, &mut gc).unwrap();
    let e = cm.embed(&c, &ids[..prompt], None).unwrap();
    cm.decode(&c, &e, &pos, &mut cc).unwrap();
    for step in prompt..ids.len() {
        let before = g.counters();
        let e = gm.embed(g, &ids[step..step + 1], None).unwrap();
        let h = gm.decode(g, &e, &pos, &mut gc).unwrap();
        let got = g.to_vec(&gm.logits(g, &h).unwrap()).unwrap();
        let e = cm.embed(&c, &ids[step..step + 1], None).unwrap();
        let h = cm.decode(&c, &e, &pos, &mut cc).unwrap();
        let want = c.to_vec(&cm.logits(&c, &h).unwrap()).unwrap();
        close(&got, &want, 1e-3, &format!("decode step {step}"));
        let after = g.counters();
        let (dispatches, groups, buffers, blocks, writes) = (
            after.dispatches - before.dispatches,
            after.bind_groups_created - before.bind_groups_created,
            after.output_buffers_created - before.output_buffers_created,
            after.param_blocks_written - before.param_blocks_written,
            after.param_writes - before.param_writes,
        );
        eprintln!("step {step}: {dispatches} dispatches, {groups} new bind groups, {buffers} new output buffers, {blocks} parameter blocks written in {writes} writes");
        // Two single-row steps after the prompt fill the pools (the second draws one more
        // output buffer, so one attention bind group of the third is new); from the
        // fourth on, nothing is created or written.
        if step >= prompt + 3 {
            assert_eq!(
                buffers, 0,
                "step {step}: every output buffer comes from the pool"
            );
            // This step's uploads (token ids, rotary tables, attention ranges) land in the
            // buffers of the step before, so every dispatch finds its bind group.
            assert_eq!(
                groups, 0,
                "step {step}: {groups} new bind groups of {dispatches}"
            );
            // Positions and lengths travel in uploaded buffers, so every dispatch's parameters
            // are those of the step before: nothing is written into the parameter slots.
            assert_eq!(
                (blocks, writes),
                (0, 0),
                "step {step}: parameter blocks written"
            );
        }
    }
}

/// The f16 matmul (`WgpuOptions::f16_math`, on adapters with `shader-f16`: lavapipe has it) on
/// every weight layout against candle's f32 product: within f16 rounding (inputs and weights
/// rounded to 11 bits, sums of 32 products in f16), measurably not the f32 kernel, and finite
/// for inputs beyond f16's range (clamped).
#[test]
fn f16_matmul_matches_candle_within_f16_rounding() {
    use visionthink_core::gguf::GgmlType;
    use visionthink_model::gguf::{dequantize, quantize, QuantView};
    let _lock = gpu().lock().unwrap();
    let c = CandleBackend::cpu();
    let dev = |f16_math: bool, weights: WeightStorage| {
        WgpuBackend::new_blocking(WgpuOptions {
            weights,
            software_kernels: Some(false),
            f16_math: Some(f16_math),
            ..Default::default()
        })
        .unwrap()
    };
    let probe = dev(true, WeightStorage::F32);
    if !probe.info().shader_f16 {
        eprintln!("no shader-f16 on {:?}: nothing to test", probe.info().name);
        return;
    }
    let product = |g: &WgpuBackend, x: &[f32], n: usize, k: usize, w: &GpuTensor| {
        g.to_vec(&g.linear(&g.tensor(x, &[n, k]).unwrap(), w, None).unwrap())
            .unwrap()
    };
    // candle's f32 product of `x` `[n, k]` with the values `w` `[m, k]`.
    let cpu_product = |x: &[f32], n: usize, k: usize, w: &[f32], m: usize| {
        let xt = c.tensor(x, &[n, k]).unwrap();
        let wt = c.tensor(w, &[m, k]).unwrap();
        c.to_vec(&c.linear(&xt, &wt, None).unwrap()).unwrap()
    };
    // Plain weights: f32 and f16 storage, a reduction that is not a multiple of 8 or 32.
    for storage in [WeightStorage::F32, WeightStorage::F16] {
        let (n, k, m) = (70, 100, 130);
        let (x, w) = (data(n * k, 40), data(m * k, 41));
        let want = cpu_product(&x, n, k, &w, m);
        let (h, f) = (dev(true, storage), dev(false, storage));
        let got = product(&h, &x, n, k, &h.weight(w.clone(), &[m, k]).unwrap());
        let exact = product(&f, &x, n, k, &f.weight(w.clone(), &[m, k]).unwrap());
        let what = format!("{storage:?} weights");
        eprintln!(
            "{what}: f16 matmul within {:.2e} of the scale",
            rel(&got, &want)
        );
        close(&got, &want, 5e-3, &format!("{what}: f16 arithmetic"));
        assert!(
            common::max_abs_diff(&got, &exact) > 1e-6,
            "{what}: the f16 kernel gave the f32 kernel's values"
        );
        // A value beyond f16's range is clamped, not turned into inf.
        let mut big = x.clone();
        big[5] = 1e6;
        let out = product(&h, &big, n, k, &h.weight(w, &[m, k]).unwrap());
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{what}: non-finite output"
        );
    }
    // GGUF blocks, dequantized in the kernel.
    let h = dev(true, WeightStorage::F32);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let (n, k, m) = (70, 512, 70);
        let bytes = quantize(ty, &data(m * k, 42), k).unwrap();
        let exact = dequantize(ty, &bytes, m * k).unwrap();
        let view = QuantView {
            name: "w",
            ty,
            shape: [m, k],
            bytes: &bytes,
            file_backed: false,
        };
        let x = data(n * k, 43);
        let want = cpu_product(&x, n, k, &exact, m);
        let got = product(&h, &x, n, k, &h.quantized_weight(&view).unwrap());
        eprintln!(
            "{}: f16 matmul within {:.2e} of the scale",
            ty.name(),
            rel(&got, &want)
        );
        close(&got, &want, 5e-3, &format!("{}: f16 arithmetic", ty.name()));
    }
}
