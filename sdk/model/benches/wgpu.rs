//! WebGPU executor vs candle CPU, same process, same random-weight model (Qwen2.5-VL layout,
//! small: text hidden 512 × 4 layers, vocab 151936; vision 256 × 2 blocks): weight upload,
//! prefill, per-token decode, dispatches and submits per decode step, vision tower.
//!
//! `WGPU_BACKEND=vulkan cargo bench -p visionthink-model --features wgpu --bench wgpu`
//! (`VT_WGPU_BENCH_HOST=0.5b` instead measures only a decode step's dispatches and host time on
//! a model of the Qwen2.5-0.5B text shape; `VT_WGPU_BENCH_MATMUL=1` only the prefill-sized
//! product, 128 rows of the 3B shape's width against 5,504 × 2,048, per weight layout, with
//! the tiled workgroup kernel and with the barrier-free one of software adapters).
//! On lavapipe (CPU rasteriser) the numbers show executor overhead, not GPU speed.

use std::collections::HashMap;
use std::time::Instant;
use visionthink_core::config::ModelConfig;
use visionthink_core::rope::rope_index;
use visionthink_model::wgpu_backend::WeightStorage;
use visionthink_model::{
    Backend, CandleBackend, KvCache, Qwen25VL, WeightStore, WgpuBackend, WgpuOptions,
};

const CONFIG: &str = r#"{
 "model_type": "qwen2_5_vl", "image_token_id": 151655, "tie_word_embeddings": true,
 "text_config": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
   "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 151936,
   "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
   "rope_parameters": {"rope_theta": 1000000.0, "mrope_section": [16, 8, 8]}},
 "vision_config": {"depth": 2, "hidden_size": 256, "intermediate_size": 512, "num_heads": 4,
   "out_hidden_size": 512, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
   "in_channels": 3, "window_size": 112, "fullatt_block_indexes": [1]}
}"#;

fn shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let t = &cfg.text;
    let v = &cfg.vision;
    let (h, hd) = (t.hidden_size, t.hidden_size / t.num_attention_heads);
    let kv = t.num_key_value_heads * hd;
    let mut s = vec![
        ("model.embed_tokens.weight".into(), vec![t.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}.");
        for (n, sh) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.q_proj.bias", vec![h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![t.intermediate_size, h]),
            ("mlp.up_proj.weight", vec![t.intermediate_size, h]),
            ("mlp.down_proj.weight", vec![h, t.intermediate_size]),
        ] {
            s.push((format!("{p}{n}"), sh));
        }
    }
    let d = v.hidden_size;
    s.push((
        "visual.patch_embed.proj.weight".into(),
        vec![d, 3, 2, v.patch_size, v.patch_size],
    ));
    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}.");
        for (n, sh) in [
            ("norm1.weight", vec![d]),
            ("norm2.weight", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("mlp.gate_proj.weight", vec![v.intermediate_size, d]),
            ("mlp.gate_proj.bias", vec![v.intermediate_size]),
            ("mlp.up_proj.weight", vec![v.intermediate_size, d]),
            ("mlp.up_proj.bias", vec![v.intermediate_size]),
            ("mlp.down_proj.weight", vec![d, v.intermediate_size]),
            ("mlp.down_proj.bias", vec![d]),
        ] {
            s.push((format!("{p}{n}"), sh));
        }
    }
    s.push(("visual.merger.ln_q.weight".into(), vec![d]));
    s.push(("visual.merger.mlp.0.weight".into(), vec![4 * d, 4 * d]));
    s.push(("visual.merger.mlp.0.bias".into(), vec![4 * d]));
    s.push((
        "visual.merger.mlp.2.weight".into(),
        vec![v.out_hidden_size, 4 * d],
    ));
    s.push(("visual.merger.mlp.2.bias".into(), vec![v.out_hidden_size]));
    s
}

fn random_checkpoint(cfg: &ModelConfig) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in shapes(cfg) {
        let n: usize = shape.iter().product();
        let norm = name.contains("norm");
        let mut bytes = Vec::with_capacity(n * 4);
        for _ in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let u = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let v = if norm { 1.0 } else { u * 0.08 };
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        tensors.push((name, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("view"),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None::<HashMap<String, String>>).expect("serialize")
}

struct Row {
    what: &'static str,
    candle: f64,
    wgpu: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Times prefill of `n` tokens and `steps` decode steps; returns (load, prefill, per-token).
fn run<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    store: &WeightStore,
    sync: &dyn Fn(&B),
    n: usize,
    steps: usize,
) -> (f64, f64, f64, f64) {
    let t = Instant::now();
    let model = Qwen25VL::load(be, cfg, store).expect("load");
    sync(be);
    let load = ms(t);
    let ids: Vec<u32> = (0..n as u32).map(|i| 1000 + i * 7).collect();
    let (pos, _) = rope_index(&ids, &[], 2).expect("rope");
    let mut all = ids.clone();
    all.extend(std::iter::repeat_n(42u32, steps));
    let (pos_all, _) = rope_index(&all, &[], 2).expect("rope");
    let _ = pos;
    let mut cache = model.new_cache();
    let t = Instant::now();
    let e = model.embed(be, &ids, None).expect("embed");
    let h = model.decode(be, &e, &pos_all, &mut cache).expect("decode");
    let mut logits = model.last_logits(be, &h).expect("logits");
    let prefill = ms(t);
    let t = Instant::now();
    for _ in 0..steps {
        let next = visionthink_model::generate::argmax(&logits);
        let e = model.embed(be, &[next], None).expect("embed");
        let h = model.decode(be, &e, &pos_all, &mut cache).expect("decode");
        logits = model.last_logits(be, &h).expect("logits");
    }
    let decode = ms(t) / steps as f64;
    // Vision: a 224×224 image (16×16 patches → 64 tokens).
    let grid = [1u32, 16, 16];
    let pixels: Vec<f32> = (0..256 * 1176).map(|i| (i % 97) as f32 / 97.0).collect();
    let t = Instant::now();
    let f = model.vision.forward(be, &pixels, &[grid]).expect("vision");
    let _ = be.to_vec(&f).expect("read");
    let vision = ms(t);
    (load, prefill, decode, vision)
}

/// Host time of a decode step (recording and submitting, the device not waited for) and the
/// device time after it, best of 8 steps after the 9 tokens `cache` holds.
fn host_time(
    gpu: &WgpuBackend,
    model: &Qwen25VL<WgpuBackend>,
    cache: &mut KvCache<WgpuBackend>,
) -> (f64, f64) {
    let (mut host, mut device) = (f64::MAX, f64::MAX);
    let ids: Vec<u32> = (0..17).collect();
    let (pos, _) = rope_index(&ids, &[], 2).expect("rope");
    for step in 9..17 {
        gpu.sync().expect("sync");
        let t = Instant::now();
        let e = model.embed(gpu, &ids[step..step + 1], None).expect("embed");
        let h = model.decode(gpu, &e, &pos, cache).expect("decode");
        let logits = model.logits(gpu, &h).expect("logits");
        gpu.submit();
        host = host.min(ms(t));
        let t = Instant::now();
        gpu.sync().expect("sync");
        device = device.min(ms(t));
        drop(logits);
    }
    (host, device)
}

/// `VT_WGPU_BENCH_HOST=0.5b`: only a decode step's dispatches and host time, on a random model
/// of the Qwen2.5-0.5B text shape (24 layers, hidden 896, 14/2 heads) with the small vision tower.
fn host_only_05b() {
    let json = CONFIG
        .replace(
            "\"hidden_size\": 512, \"intermediate_size\": 1408, \"num_hidden_layers\": 4",
            "\"hidden_size\": 896, \"intermediate_size\": 4864, \"num_hidden_layers\": 24",
        )
        .replace("\"num_attention_heads\": 8", "\"num_attention_heads\": 14")
        .replace("\"out_hidden_size\": 512", "\"out_hidden_size\": 896");
    let cfg = ModelConfig::from_json(json.as_bytes()).expect("config");
    assert_eq!(cfg.text.num_hidden_layers, 24, "the 0.5B shape");
    let store =
        WeightStore::from_bytes(vec![("bench.safetensors".into(), random_checkpoint(&cfg))])
            .expect("store");
    // The fused rotary embedding and cache append against the composed one, alternating in
    // one process (the machine's noise hits both alike).
    let mut best: [(f64, f64); 2] = [(f64::MAX, f64::MAX); 2];
    for round in 0..4 {
        for (i, compose) in [false, true].into_iter().enumerate() {
            let gpu = WgpuBackend::new_blocking(WgpuOptions {
                rope_append: Some(!compose),
                ..Default::default()
            })
            .expect("wgpu adapter");
            let model = Qwen25VL::load(&gpu, &cfg, &store).expect("load");
            let ids: Vec<u32> = (0..9).collect();
            let (pos, _) = rope_index(&ids, &[], 2).expect("rope");
            let mut cache = model.new_cache();
            let e = model.embed(&gpu, &ids, None).expect("embed");
            model.decode(&gpu, &e, &pos, &mut cache).expect("prefill");
            gpu.sync().expect("sync");
            let c0 = gpu.counters();
            let (host, device) = host_time(&gpu, &model, &mut cache);
            let c1 = gpu.counters();
            best[i] = (best[i].0.min(host), best[i].1.min(device));
            if round == 0 {
                let per_step = (c1.dispatches - c0.dispatches) / 8;
                println!(
                    "0.5B text shape, rope and cache append {}: {per_step} dispatches, {} copies and {} compute passes per decode step",
                    if compose { "composed" } else { "fused" },
                    (c1.copies - c0.copies) / 8,
                    (c1.passes - c0.passes) / 8
                );
                println!(
                    "  over the 8 steps: {} bind groups and {} buffers created (the rest reused; the first steps after the prefill create them)",
                    c1.bind_groups_created - c0.bind_groups_created,
                    c1.output_buffers_created - c0.output_buffers_created
                );
            }
        }
    }
    for (i, what) in ["fused", "composed"].into_iter().enumerate() {
        println!(
            "{what}: host {:.2} ms (record + submit), then {:.1} ms until the device is done (best of 4 × 8 steps)",
            best[i].0, best[i].1
        );
    }
}

/// `VT_WGPU_BENCH_MATMUL=1`: GFLOP/s of `x · wᵀ` (128 × 2,048 against 5,504 × 2,048) per layout and
/// kernel, candle's f32 product beside it.
fn matmul_only() {
    use visionthink_core::gguf::GgmlType;
    use visionthink_model::gguf::{quantize, QuantView};
    let (n, k, m) = (128, 2048, 5504);
    let flops = 2.0 * (n * k * m) as f64;
    let mut rng = 1u64;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    };
    let x: Vec<f32> = (0..n * k).map(|_| next()).collect();
    let w: Vec<f32> = (0..m * k).map(|_| next()).collect();
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                ms(t)
            })
            .fold(f64::MAX, f64::min)
    };
    let cpu = CandleBackend::cpu();
    let (cx, cw) = (
        cpu.tensor(&x, &[n, k]).expect("x"),
        cpu.weight(w.clone(), &[m, k]).expect("w"),
    );
    let t = best(&mut || {
        cpu.linear(&cx, &cw, None).expect("linear");
    });
    println!(
        "{n} x {k} against {m} x {k}: candle f32 on the CPU {t:.1} ms ({:.1} GFLOP/s)",
        flops / t / 1e6
    );
    // The decode step's largest product: one row against the vocabulary (the bench model's
    // 151,936 × 512 head), f32, with each one-row kernel.
    let (vk, vm) = (512, 151_936);
    let vx: Vec<f32> = (0..vk).map(|_| next()).collect();
    let vw: Vec<f32> = (0..vk * vm).map(|_| next()).collect();
    for (software, texels) in [(false, false), (true, false), (true, true)] {
        let gpu = WgpuBackend::new_blocking(WgpuOptions {
            software_kernels: Some(software),
            texel_weights: Some(texels),
            ..Default::default()
        })
        .expect("wgpu adapter");
        let (gx, gw) = (
            gpu.tensor(&vx, &[1, vk]).expect("x"),
            gpu.weight(vw.clone(), &[vm, vk]).expect("w"),
        );
        let t = best(&mut || {
            gpu.linear(&gx, &gw, None).expect("linear");
            gpu.sync().expect("sync");
        });
        let kernel = match (software, texels) {
            (_, true) => "weights as texels, input as uniform",
            (true, false) => "4 outputs per invocation, no barrier",
            (false, false) => "workgroup reduction",
        };
        println!(
            "1 x {vk} against {vm} x {vk} (f32, {kernel}): {t:.1} ms ({:.2} GB/s of weights)",
            (vk * vm * 4) as f64 / t / 1e6
        );
    }
    for software in [false, true] {
        let kernel = if software {
            "barrier-free (software adapters)"
        } else {
            "tiled (workgroup memory)"
        };
        for storage in [WeightStorage::F32, WeightStorage::F16] {
            let gpu = WgpuBackend::new_blocking(WgpuOptions {
                weights: storage,
                software_kernels: Some(software),
                ..Default::default()
            })
            .expect("wgpu adapter");
            let (gx, gw) = (
                gpu.tensor(&x, &[n, k]).expect("x"),
                gpu.weight(w.clone(), &[m, k]).expect("w"),
            );
            let t = best(&mut || {
                gpu.linear(&gx, &gw, None).expect("linear");
                gpu.sync().expect("sync");
            });
            println!(
                "  {storage:?} {kernel}: {t:.1} ms ({:.2} GFLOP/s)",
                flops / t / 1e6
            );
        }
        let gpu = WgpuBackend::new_blocking(WgpuOptions {
            software_kernels: Some(software),
            ..Default::default()
        })
        .expect("wgpu adapter");
        let gx = gpu.tensor(&x, &[n, k]).expect("x");
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let bytes = quantize(ty, &w, k).expect("quantize");
            let view = QuantView {
                name: "w",
                ty,
                shape: [m, k],
                bytes: &bytes,
                file_backed: false,
            };
            let gw = gpu.quantized_weight(&view).expect("blocks");
            let t = best(&mut || {
                gpu.linear(&gx, &gw, None).expect("linear");
                gpu.sync().expect("sync");
            });
            println!(
                "  {} {kernel}: {t:.1} ms ({:.2} GFLOP/s)",
                ty.name(),
                flops / t / 1e6
            );
        }
    }
}

fn main() {
    if std::env::var("VT_WGPU_BENCH_MATMUL").is_ok() {
        matmul_only();
        return;
    }
    if std::env::var("VT_WGPU_BENCH_HOST").as_deref() == Ok("0.5b") {
        host_only_05b();
        return;
    }
    let cfg = ModelConfig::from_json(CONFIG.as_bytes()).expect("config");
    let bytes = random_checkpoint(&cfg);
    let store = WeightStore::from_bytes(vec![("bench.safetensors".into(), bytes)]).expect("store");
    let (n, steps) = (128, 16);
    let cpu = CandleBackend::cpu();
    let c = run(&cpu, &cfg, &store, &|_| {}, n, steps);
    let mut rows = Vec::new();
    for int8 in [false, true] {
        let gpu = WgpuBackend::new_blocking(WgpuOptions {
            weights: if int8 {
                WeightStorage::Int8
            } else {
                WeightStorage::F32
            },
            ..Default::default()
        })
        .expect("wgpu adapter (WGPU_BACKEND=vulkan with mesa-vulkan-drivers)");
        if !int8 {
            println!("adapter: {:?}", gpu.info());
        }
        let before = gpu.counters();
        let g = run(
            &gpu,
            &cfg,
            &store,
            &|b: &WgpuBackend| b.sync().expect("sync"),
            n,
            steps,
        );
        let after = gpu.counters();
        let tag = if int8 { " (int8)" } else { "" };
        if !int8 {
            println!(
                "uploaded {:.1} MB; whole run: {} dispatches, {} submits",
                (after.uploaded_bytes - before.uploaded_bytes) as f64 / 1e6,
                after.dispatches - before.dispatches,
                after.submits - before.submits
            );
            // Dispatches and submits of one decode step, measured in isolation.
            let model = Qwen25VL::load(&gpu, &cfg, &store).expect("load");
            let ids: Vec<u32> = (0..9).collect();
            let (pos, _) = rope_index(&ids, &[], 2).expect("rope");
            let mut cache = model.new_cache();
            let e = model.embed(&gpu, &ids[..8], None).expect("embed");
            model.decode(&gpu, &e, &pos, &mut cache).expect("decode");
            gpu.sync().expect("sync");
            let c0 = gpu.counters();
            let e = model.embed(&gpu, &ids[8..], None).expect("embed");
            let cd = gpu.counters();
            let h = model.decode(&gpu, &e, &pos, &mut cache).expect("decode");
            let layers = (gpu.counters().dispatches - cd.dispatches - 1) as f64
                / cfg.text.num_hidden_layers as f64;
            model.last_logits(&gpu, &h).expect("logits");
            let c1 = gpu.counters();
            println!(
                "one decode step: {} dispatches ({layers:.1} per decoder layer), {} submit(s)",
                c1.dispatches - c0.dispatches,
                c1.submits - c0.submits
            );
            let (host, device) = host_time(&gpu, &model, &mut cache);
            println!(
                "one decode step: host {host:.2} ms (record + submit), then {device:.2} ms until the device is done"
            );
        }
        rows.push((tag, g));
    }
    let (_, g) = rows[0];
    let (_, q) = rows[1];
    let table = [
        Row {
            what: "load + upload (ms)",
            candle: c.0,
            wgpu: g.0,
        },
        Row {
            what: "prefill 128 tokens (ms)",
            candle: c.1,
            wgpu: g.1,
        },
        Row {
            what: "decode (ms/token)",
            candle: c.2,
            wgpu: g.2,
        },
        Row {
            what: "vision 224x224 (ms)",
            candle: c.3,
            wgpu: g.3,
        },
    ];
    println!(
        "\n| {:<26} | {:>12} | {:>12} | {:>14} | {:>12} |",
        "", "candle CPU", "wgpu f32", "wgpu int8", "candle/wgpu"
    );
    println!(
        "|{:-<28}|{:->14}|{:->14}|{:->16}|{:->14}|",
        "", "", "", "", ""
    );
    let q = [q.0, q.1, q.2, q.3];
    for (r, qv) in table.iter().zip(q) {
        println!(
            "| {:<26} | {:>12.1} | {:>12.1} | {:>14.1} | {:>11.2}x |",
            r.what,
            r.candle,
            r.wgpu,
            qv,
            r.candle / r.wgpu
        );
    }
}
