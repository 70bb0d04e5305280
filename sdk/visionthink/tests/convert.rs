//! `visionthink convert` (GGUF out): byte-identical to llama.cpp's own converter on the test
//! checkpoint; split sets load and name a missing part; quantized files of a model wide enough
//! for every block type stay close to the f32 model.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use visionthink::convert::{convert, ConvertOptions, Quant};
use visionthink_core::gguf::Gguf;
use visionthink_model::gguf::GgufWeights;
use visionthink_model::{Backend, CandleBackend, Qwen25VL, WeightStore};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vt-convert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn header(path: &Path) -> (Gguf, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    (Gguf::parse(&bytes, bytes.len() as u64).unwrap(), bytes)
}

/// Our F16 files against llama.cpp's converter's F16 files of the same checkpoint: the same
/// tensors (names, types, dims, bytes) and the same metadata, except the converter's
/// descriptive keys and our exact window-attention list.
#[test]
fn f16_files_equal_llama_cpp_converter_output() {
    let out = temp("f16");
    let c = convert(
        &fixtures().join("models/tied_nested"),
        &out,
        ConvertOptions {
            quant: Quant::F16,
            split_max_bytes: None,
        },
        &mut |_, _| {},
    )
    .unwrap();
    for (ours, theirs) in [
        (&c.text, "tied_nested-f16.gguf"),
        (&c.mmproj, "tied_nested-mmproj-f16.gguf"),
    ] {
        let (a, ab) = header(ours);
        let (b, bb) = header(&fixtures().join("gguf").join(theirs));
        assert_eq!(a.tensors.len(), b.tensors.len(), "{theirs}");
        for t in &b.tensors {
            let o = a
                .tensor(&t.name)
                .unwrap_or_else(|| panic!("{theirs}: {} missing", t.name));
            assert_eq!((o.ty, &o.dims), (t.ty, &t.dims), "{}", t.name);
            let data = |g: &Gguf, bytes: &[u8], name: &str| {
                let i = g.tensor(name).unwrap();
                bytes[i.offset as usize..(i.offset + i.bytes) as usize].to_vec()
            };
            assert!(
                data(&a, &ab, &t.name) == data(&b, &bb, &t.name),
                "{}: bytes differ",
                t.name
            );
        }
        let skip = [
            "general.size_label",
            "general.sampling.temp",
            "tokenizer.ggml.add_eos_token",
            "general.name",
        ];
        for (k, v) in &b.metadata {
            if !skip.contains(&k.as_str()) {
                assert_eq!(a.get(k), Some(v), "{theirs}: metadata {k}");
            }
        }
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("visionthink-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), 2);
    assert_eq!(
        manifest["files"][0]["size"].as_u64().unwrap(),
        std::fs::metadata(&c.text).unwrap().len()
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--split-max-size`: parts named as gguf-split names them, loadable from the first; a
/// missing part and a part out of order are errors naming the part.
#[test]
fn split_sets_load_and_name_a_missing_part() {
    let out = temp("split");
    let bin = env!("CARGO_BIN_EXE_visionthink");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let o = run(&[
        "convert",
        "--from",
        fixtures().join("models/tied_nested").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quant",
        "f16",
        "--split-max-size",
        "64K",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = v["model"].as_str().unwrap().to_string();
    let mmproj = v["mmproj"].as_str().unwrap().to_string();
    assert!(text.contains("-00001-of-0000"), "{text}");
    let parts = |first: &str| {
        first
            .rsplit("-of-")
            .next()
            .unwrap()
            .trim_end_matches(".gguf")
            .parse::<usize>()
            .unwrap()
    };
    let n = parts(&mmproj);
    assert!(parts(&text) >= 2 && n >= 3, "{text} {mmproj}");
    // Parts hold whole tensors; only a part holding one tensor larger than the limit (the
    // text model's metadata and embedding) may exceed it.
    for f in v["files"].as_array().unwrap() {
        let p = f["path"].as_str().unwrap();
        if p.contains("mmproj") {
            assert!(f["size"].as_u64().unwrap() <= 64 << 10, "{f}");
        }
    }
    let img = fixtures().join("images/photo_640x480.png");
    let q = [
        "--image",
        img.to_str().unwrap(),
        "--question",
        "What is the code?",
        "--max-new-tokens",
        "6",
        "--json",
    ];
    let ask = |mm: &str| {
        let mut a = vec!["ask", "--model", text.as_str(), "--mmproj", mm];
        a.extend(q);
        run(&a)
    };
    let mut a = vec![
        "ask",
        "--model-dir",
        fixtures()
            .join("models/tied_nested")
            .to_str()
            .unwrap()
            .to_string()
            .leak(),
    ];
    a.extend(q);
    let whole = run(&a);
    let split = ask(&mmproj);
    assert!(
        split.status.success(),
        "{}",
        String::from_utf8_lossy(&split.stderr)
    );
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&whole.stdout).unwrap(),
        serde_json::from_slice(&split.stdout).unwrap(),
    );
    assert_eq!(a["text"], b["text"]);
    assert_eq!(a["visual_tokens"], b["visual_tokens"]);
    let part = |i: usize| mmproj.replace("-00001-of-", &format!("-{i:05}-of-"));
    streamed_split_sets(&text, &mmproj, n);
    // Part 2 swapped with part 3: out of order; then part 2 gone: missing. Both named.
    std::fs::rename(part(2), out.join("tmp")).unwrap();
    std::fs::rename(part(3), part(2)).unwrap();
    std::fs::rename(out.join("tmp"), part(3)).unwrap();
    let e = String::from_utf8_lossy(&ask(&mmproj).stderr).to_string();
    assert!(
        e.contains(&format!("00002-of-{n:05}")) && e.contains("out of order"),
        "{e}"
    );
    std::fs::remove_file(part(2)).unwrap();
    let e = String::from_utf8_lossy(&ask(&mmproj).stderr).to_string();
    assert!(e.contains(&format!("00002-of-{n:05}")), "{e}");
    // A later part given as the model names the first.
    let e = String::from_utf8_lossy(&ask(&part(3)).stderr).to_string();
    assert!(e.contains("first part"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// A random checkpoint whose text matrices are 256 wide (every block type applies) with the
/// tiny vision tower: config, tokenizer and weights in HF layout.
fn wide_checkpoint(dir: &Path) {
    random_checkpoint(dir, |cfg| {
        let t = &mut cfg["text_config"];
        t["hidden_size"] = 256.into();
        t["intermediate_size"] = 512.into();
        t["num_attention_heads"] = 4.into();
        t["num_key_value_heads"] = 2.into();
        t["rope_parameters"]["mrope_section"] = serde_json::json!([8, 12, 12]);
        cfg["vision_config"]["out_hidden_size"] = 256.into();
    });
}

/// The test checkpoint's config edited by `edit`, with random bf16 weights of its layout (and
/// the test tokenizer, template and processor config).
fn random_checkpoint(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let src = fixtures().join("models/tied_nested");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    for f in [
        "tokenizer.json",
        "chat_template.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let cfg = visionthink_core::config::ModelConfig::from_json(
        &std::fs::read(dir.join("config.json")).unwrap(),
    )
    .unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut words = rnd;
    let mut rnd_f = move || (words() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, spec) in visionthink_model::graph::checkpoint_layout(&cfg)
        .into_iter()
        .enumerate()
    {
        let rnd = {
            let mut st =
                0x2545_f491_4f6c_dd1du64 ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            move || {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                st
            }
        };
        let n: usize = spec.shape.iter().product();
        let scale = match spec.init {
            visionthink_model::graph::InitKind::Matrix => 0.08,
            _ => 0.02,
        };
        let base = if spec.init == visionthink_model::graph::InitKind::Ones {
            1.0
        } else {
            0.0
        };
        let mut bytes = Vec::with_capacity(2 * n + 8);
        if spec.init == visionthink_model::graph::InitKind::Matrix {
            // Matrices (billions of values at real widths): four bf16 per random word, with
            // random signs and mantissas and magnitudes in [1/32, 1/16).
            let mut word = rnd;
            while bytes.len() < 2 * n {
                let r = word();
                for k in 0..4 {
                    let v = ((r >> (16 * k)) as u16 & 0x807f) | 0x3d00;
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
            bytes.truncate(2 * n);
        } else {
            for _ in 0..n {
                bytes
                    .extend_from_slice(&half::bf16::from_f32(base + scale * rnd_f()).to_le_bytes());
            }
        }
        tensors.push((spec.name, spec.shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn last_logits<B: Backend>(model: &Qwen25VL<B>, be: &B) -> Vec<f32> {
    logits_of(model, be, 40)
}

/// The last-position logits of an `n`-token prompt.
fn logits_of<B: Backend>(model: &Qwen25VL<B>, be: &B, n: u32) -> Vec<f32> {
    let ids: Vec<u32> = (0..n).map(|i| 100 + i * 37).collect();
    let mut b = visionthink_core::rope::MropeBuilder::new();
    b.push_text(ids.len());
    let e = model.embed(be, &ids, None).unwrap();
    let mut cache = model.new_cache();
    let h = model.decode(be, &e, b.positions(), &mut cache).unwrap();
    model.last_logits(be, &h).unwrap()
}

/// Q8_0, Q4_0 and Q4_K files of a model wide enough for every block type, against the same
/// checkpoint in f32: Q8_0 keeps the argmax and the logits' shape (cosine ≥ 0.999); the 4-bit
/// types stay close (cosine ≥ 0.98, the tolerance documented in the README).
#[test]
fn quantized_files_stay_close_to_f32() {
    let dir = temp("wide-src");
    wide_checkpoint(&dir);
    let be = CandleBackend::cpu();
    let cfg = visionthink_core::config::ModelConfig::from_json(
        &std::fs::read(dir.join("config.json")).unwrap(),
    )
    .unwrap();
    let f32_model = Qwen25VL::load(&be, &cfg, &WeightStore::open(&dir).unwrap()).unwrap();
    let want = last_logits(&f32_model, &be);
    let argmax = visionthink_model::generate::argmax(&want);
    for (quant, min_cos) in [
        (Quant::Q8_0, 0.999),
        (Quant::Q4_0, 0.98),
        (Quant::Q4K, 0.98),
    ] {
        let out = temp("wide-q");
        let c = convert(
            &dir,
            &out,
            ConvertOptions {
                quant,
                split_max_bytes: None,
            },
            &mut |_, _| {},
        )
        .unwrap();
        let w = GgufWeights::open(&c.text, &c.mmproj).unwrap();
        let (text, _) = (w.text_header(), ());
        let expected = match quant {
            Quant::Q8_0 => "Q8_0",
            Quant::Q4_0 => "Q4_0",
            _ => "Q4_K",
        };
        assert_eq!(
            text.tensor("blk.0.ffn_up.weight").unwrap().ty.name(),
            expected
        );
        // A row of 512 (ffn_down) is whole k-quant blocks too; the embedding is quantized.
        assert_eq!(
            text.tensor("token_embd.weight").unwrap().ty.name(),
            expected
        );
        let gcfg = visionthink_core::gguf::model_config(text, w.mmproj_header()).unwrap();
        assert_eq!(gcfg.text, cfg.text);
        let q = Qwen25VL::load(&be, &gcfg, &WeightStore::from_gguf(w)).unwrap();
        let got = last_logits(&q, &be);
        let dot: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (norm(&got) * norm(&want));
        eprintln!(
            "{expected}: cosine {cos:.5}, argmax {} vs f32 {argmax}",
            visionthink_model::generate::argmax(&got)
        );
        assert!(cos >= min_cos, "{expected}: cosine {cos}");
        if quant == Quant::Q8_0 {
            assert_eq!(visionthink_model::generate::argmax(&got), argmax);
        }
        // Few-row products (a decode step, a short prompt) on our block kernels (`qgemv`, where
        // this CPU runs them) against candle's quantized kernels, which the batch-invariant
        // backend keeps. Both round the activation to 8 bits per block (candle with an f16
        // scale, we with an f32 one), so each strays from the f32 model on its own; ours must
        // stay as close to the f32 model as candle's.
        let candle_be = CandleBackend::cpu().batch_invariant();
        let w = GgufWeights::open(&c.text, &c.mmproj).unwrap();
        let qc = Qwen25VL::load(&candle_be, &gcfg, &WeightStore::from_gguf(w)).unwrap();
        for n in [1, 5] {
            let exact = logits_of(&f32_model, &be, n);
            let ours = logits_of(&q, &be, n);
            let theirs = logits_of(&qc, &candle_be, n);
            let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            let off = |v: &[f32]| {
                v.iter()
                    .zip(&exact)
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
                    / scale
            };
            let (o, t) = (off(&ours), off(&theirs));
            eprintln!(
                "{expected}, {n} rows: from f32, ours {o:.2e}, candle's {t:.2e} of the scale"
            );
            assert!(
                o <= 1.25 * t + 1e-4,
                "{expected}, {n} rows: ours {o} vs candle's {t}"
            );
        }
        // The quantized matrices are kept in blocks: the embedding stand-in holds no f32 copy.
        assert_eq!(be.to_vec(q.lm_head()).unwrap().len(), 151936 * 256);
        #[cfg(feature = "wgpu")]
        same_blocks_on_webgpu(&c, &gcfg);
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The WebGPU executor's kernels read the file's blocks in place (the embedding and the tied
/// head split into 4 MB chunks); candle, told to dequantize the same blocks at load, computes on
/// the same weight values, so the logits differ only by summation order.
#[cfg(feature = "wgpu")]
fn same_blocks_on_webgpu(
    c: &visionthink::convert::Converted,
    cfg: &visionthink_core::config::ModelConfig,
) {
    use visionthink_model::{WgpuBackend, WgpuOptions};
    let open = || WeightStore::from_gguf(GgufWeights::open(&c.text, &c.mmproj).unwrap());
    let exact_be = CandleBackend::cpu().keep_gguf_blocks(false);
    let want = last_logits(&Qwen25VL::load(&exact_be, cfg, &open()).unwrap(), &exact_be);
    let g = WgpuBackend::new_blocking(WgpuOptions {
        chunk_bytes: Some(4 << 20),
        ..Default::default()
    })
    .unwrap_or_else(|e| {
        panic!("no wgpu adapter ({e}); install mesa-vulkan-drivers and set WGPU_BACKEND=vulkan")
    });
    let got = last_logits(&Qwen25VL::load(&g, cfg, &open()).unwrap(), &g);
    same_logits(
        &got,
        &want,
        "WebGPU on the blocks vs candle on their f32 values",
    );
}

/// The largest difference within 1e-4 of the logits' scale, and the same argmax.
fn same_logits(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    eprintln!("{what}: {diff:.2e} of the scale");
    assert!(diff <= 1e-4, "{what}: relative difference {diff}");
    assert_eq!(
        visionthink_model::generate::argmax(got),
        visionthink_model::generate::argmax(want),
        "{what}"
    );
}

/// The split sets streamed part by part (as the browser loads them) build the model the files
/// on disk build; a later part before the first, or a part left out, is a named error.
fn streamed_split_sets(text: &str, mmproj: &str, mm_parts: usize) {
    use visionthink_model::gguf_stream::{GgufStream, Limits};
    let be = CandleBackend::cpu();
    let set = |first: &str| visionthink_model::gguf::split_set(Path::new(first)).unwrap();
    let feed = |s: &mut GgufStream<CandleBackend>, path: &Path| {
        let b = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        s.begin_file(name, b.len() as u64, None)?;
        for c in b.chunks(10_000) {
            s.push(&be, c)?;
        }
        s.end_file()
    };
    let mut s = GgufStream::new(Limits::default());
    for p in set(text).iter().chain(&set(mmproj)) {
        feed(&mut s, p).unwrap();
    }
    let (model, files) = s.finish(&be).unwrap();
    let w = GgufWeights::open(Path::new(text), Path::new(mmproj)).unwrap();
    let cfg = visionthink_core::gguf::model_config(w.text_header(), w.mmproj_header()).unwrap();
    assert_eq!(files.config.as_ref(), Some(&cfg));
    let disk = Qwen25VL::load(&be, &cfg, &WeightStore::from_gguf(w)).unwrap();
    assert_eq!(last_logits(&model, &be), last_logits(&disk, &be));

    let mm = set(mmproj);
    assert_eq!(mm.len(), mm_parts);
    let mut s = GgufStream::new(Limits::default());
    for p in set(text) {
        feed(&mut s, &p).unwrap();
    }
    let e = feed(&mut s, &mm[1]).unwrap_err().to_string();
    assert!(e.contains("before the set's first part"), "{e}");
    for p in mm.iter().filter(|p| **p != mm[1]) {
        feed(&mut s, p).unwrap();
    }
    let e = s.finish(&be).err().unwrap().to_string();
    assert!(
        e.contains(&format!("split part 2 of {mm_parts} was not loaded")),
        "{e}"
    );
}

/// The 7B text widths (hidden 3584, FFN 18944, 28 heads / 4 KV heads, the untied 152064-row
/// head and embedding) with 2 layers and the tiny vision tower, converted to llama.cpp's Q4_K_M
/// mix (Q4_K, Q6_K for the head and some `attn_v` / `ffn_down`): every limit-splitting path at a
/// real width. On lavapipe (128 MiB bindings) the Q4_K embedding (306 MB) and the Q6_K head
/// (447 MB) are split into row chunks; the logits of a one-token step (the block gemv kernels)
/// equal candle's over the same blocks dequantized, to float reordering.
#[cfg(feature = "wgpu")]
#[test]
fn real_width_q4_k_m_model_splits_on_webgpu() {
    use visionthink_model::{WgpuBackend, WgpuOptions};
    let t0 = std::time::Instant::now();
    let src = temp("real-width-src");
    random_checkpoint(&src, |cfg| {
        let t = &mut cfg["text_config"];
        t["hidden_size"] = 3584.into();
        t["intermediate_size"] = 18944.into();
        t["num_hidden_layers"] = 2.into();
        t["num_attention_heads"] = 28.into();
        t["num_key_value_heads"] = 4.into();
        t["vocab_size"] = 152064.into();
        t["tie_word_embeddings"] = false.into();
        t["rope_parameters"]["mrope_section"] = serde_json::json!([16, 24, 24]);
        cfg["tie_word_embeddings"] = false.into();
        cfg["vision_config"]["out_hidden_size"] = 3584.into();
    });
    eprintln!("checkpoint written: {:.1} s", t0.elapsed().as_secs_f64());
    let out = temp("real-width-gguf");
    let c = convert(
        &src,
        &out,
        ConvertOptions {
            quant: Quant::Q4KM,
            split_max_bytes: None,
        },
        &mut |_, _| {},
    )
    .unwrap();
    std::fs::remove_dir_all(&src).unwrap();
    eprintln!("converted: {:.1} s", t0.elapsed().as_secs_f64());
    let open = || GgufWeights::open(&c.text, &c.mmproj).unwrap();
    let w = open();
    let ty = |n: &str| w.text_header().tensor(n).unwrap().ty.name();
    assert_eq!(ty("token_embd.weight"), "Q4_K");
    assert_eq!(ty("output.weight"), "Q6_K");
    assert_eq!(ty("blk.0.attn_v.weight"), "Q4_K");
    assert_eq!(ty("blk.1.attn_v.weight"), "Q6_K");
    assert_eq!(ty("blk.0.ffn_up.weight"), "Q4_K");
    let cfg = visionthink_core::gguf::model_config(w.text_header(), w.mmproj_header()).unwrap();
    assert_eq!((cfg.text.hidden_size, cfg.text.vocab_size), (3584, 152064));
    let g = WgpuBackend::new_blocking(WgpuOptions::default()).unwrap_or_else(|e| {
        panic!("no wgpu adapter ({e}); install mesa-vulkan-drivers and set WGPU_BACKEND=vulkan")
    });
    let max = g.info().max_binding;
    assert!(
        152064 * 14 * 144 > max,
        "the Q4_K embedding (and the larger Q6_K head) must exceed one binding ({max} bytes)"
    );
    let model = Qwen25VL::load(&g, &cfg, &WeightStore::from_gguf(w)).unwrap();
    g.sync().unwrap();
    eprintln!("loaded on WebGPU: {:.1} s", t0.elapsed().as_secs_f64());
    let got = logits_of(&model, &g, 1);
    eprintln!("WebGPU done: {:.1} s", t0.elapsed().as_secs_f64());
    let exact_be = CandleBackend::cpu().keep_gguf_blocks(false);
    let want = logits_of(
        &Qwen25VL::load(&exact_be, &cfg, &WeightStore::from_gguf(open())).unwrap(),
        &exact_be,
        1,
    );
    same_logits(
        &got,
        &want,
        "7B-width Q4_K_M on WebGPU vs candle on the same values",
    );
    std::fs::remove_dir_all(&out).unwrap();
}
