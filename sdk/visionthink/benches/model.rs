//! Model throughput on a checkpoint directory, printed as one JSON object (driven by
//! `tests/bench/bench_model.py`, which runs PyTorch `transformers` on the same checkpoint in the
//! same session and prints the comparison table).
//!
//! `cargo bench -p visionthink --bench model -- MODEL_DIR IMAGE_448 IMAGE_896`
//!
//! Besides the model figures it measures this machine's read bandwidth with as many threads as
//! the model uses (a STREAM-like sum over 1 GiB, best of 3) and the weight bytes one decode step
//! must read (every text-decoder matrix, f32, and the output head once), so decode can be stated
//! as a fraction of the memory-bandwidth bound — for f32 weights and again with the weights kept
//! in bf16 (half the bytes).
//!
//! `VT_BENCH_DEVICE=cuda` (built with `--features cuda`) runs every phase on the GPU; the host's
//! bandwidth figures are then left out (they bound only a CPU's decode).
//!
//! `VT_BENCH_ONLY=prefill` (or `prefill_long`, or `vision`) runs only the 512-token prefill (or
//! the 5,678-token one, or the 896×896 vision tower) in a loop of 5 and prints each time: a
//! steady workload to profile (`perf record`).

use std::time::Instant;
use visionthink::core::image::preprocess;
use visionthink::{AskOptions, GenerateOptions, VisionThink};
use visionthink_core::sampling::Sampler;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Read bandwidth in GB/s: `threads` threads each sum their share of a 1 GiB f32 buffer
/// (touched first, so page faults are not timed), best of 3.
fn read_bandwidth_gb_s(threads: usize) -> f64 {
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let chunk = n.div_ceil(threads.max(1));
    let mut best = f64::MAX;
    let mut sink = 0.0f32;
    for _ in 0..3 {
        let t = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        // Eight independent accumulators: the loop is bound by loads, not adds.
                        let mut acc = [0.0f32; 8];
                        for v in c.chunks_exact(8) {
                            for (a, x) in acc.iter_mut().zip(v) {
                                *a += *x;
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
        });
        best = best.min(t.elapsed().as_secs_f64());
        sink += sums.iter().sum::<f32>();
    }
    std::hint::black_box(sink);
    (n * 4) as f64 / best / 1e9
}

/// Bytes one decode step reads from the weights in f32: every decoder-layer matrix and bias,
/// the norms, and the output head (the embedding row of the new token is negligible).
fn decode_weight_bytes(c: &visionthink_core::config::TextConfig) -> f64 {
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let kv = h / c.num_attention_heads * c.num_key_value_heads;
    let layer = h * h + h // q
        + 2 * (h * kv + kv) // k, v
        + h * h // o
        + 3 * h * f // gate, up, down
        + 2 * h; // norms
    (4 * (c.num_hidden_layers * layer + h + v * h)) as f64
}

fn main() -> anyhow::Result<()> {
    // As the `visionthink` binary does.
    visionthink_model::candle_backend::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [dir, img448, img896] = args.as_slice() else {
        anyhow::bail!(
            "usage: cargo bench -p visionthink --bench model -- MODEL_DIR IMAGE_448 IMAGE_896"
        );
    };
    let device = bench_device()?;
    let t = Instant::now();
    let vt = VisionThink::load(dir, device, visionthink::Precision::F32)?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();
    if let Ok(only) = std::env::var("VT_BENCH_ONLY") {
        return profile_loop(&vt, &only, img896);
    }
    let mut out = serde_json::Map::new();
    out.insert("load_s".into(), load_s.into());
    // Vision tower alone.
    for (name, path) in [("vision_448_ms", img448), ("vision_896_ms", img896)] {
        let pv = preprocess(&visionthink::load_image(path)?, &vt.dir.preprocessor)?;
        let mut s = vt.session();
        let ids = image_ids(&pv);
        s.feed(&ids, std::slice::from_ref(&pv))?; // warm-up
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut s = vt.session();
            s.feed(&ids, std::slice::from_ref(&pv))?;
            best = best.min(s.timings().vision_ms);
        }
        out.insert(name.into(), best.into());
    }
    // Prefill 512 text tokens, then decode 32 greedily.
    let prompt = text_ids(512);
    let opts = GenerateOptions {
        max_new_tokens: 32,
        ignore_eos: true,
        ..Default::default()
    };
    let mut prefill = f64::MAX;
    let mut decode = f64::MAX;
    for _ in 0..3 {
        let mut s = vt.session();
        let t = Instant::now();
        let logits = s.feed(&prompt, &[])?;
        prefill = prefill.min(t.elapsed().as_secs_f64());
        let mut sampler = Sampler::new(opts.sampling.clone());
        let t = Instant::now();
        let toks = s.generate(logits, &opts, &mut sampler, None, &mut |_, _| {})?;
        decode = decode.min(t.elapsed().as_secs_f64() / toks.len() as f64);
    }
    out.insert("prefill_tok_s".into(), (512.0 / prefill).into());
    out.insert("decode_tok_s".into(), (1.0 / decode).into());
    // A long prefill (a full-resolution document page is about this many tokens), once.
    let long_n = LONG_PREFILL;
    let long = text_ids(long_n);
    let t = Instant::now();
    vt.session().feed(&long, &[])?;
    out.insert(
        "prefill_long_tok_s".into(),
        (f64::from(long_n) / t.elapsed().as_secs_f64()).into(),
    );
    out.insert("prefill_long_tokens".into(), long_n.into());
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(threads);
    // The host's bandwidth bounds decode only where the weights live in host memory.
    let bw = matches!(device, visionthink::DeviceChoice::Cpu).then(|| read_bandwidth_gb_s(threads));
    let bytes = decode_weight_bytes(&vt.config.text);
    out.insert("decode_weight_bytes".into(), bytes.into());
    if let Some(bw) = bw {
        out.insert("read_bandwidth_gb_s".into(), bw.into());
        // The bound: a step can be no faster than reading its weights once.
        out.insert(
            "decode_bandwidth_fraction".into(),
            (bytes / (bw * 1e9) / decode).into(),
        );
    }
    // The VisionThink episode on the 896x896 image: answered at low resolution vs the same
    // answer with the full image in turn 1 (what a full-resolution model pays).
    let image = visionthink::load_image(img896)?;
    let answer = "<think>The red circle is large and clear.</think>\n<answer>red</answer>";
    let ask = AskOptions {
        forced_turns: vec![answer.into()],
        ..Default::default()
    };
    let mut low = f64::MAX;
    let mut full = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let a = vt.ask(&image, "What colour is the circle?", &ask)?;
        low = low.min(t.elapsed().as_secs_f64());
        out.insert(
            "episode_low_res_visual_tokens".into(),
            a.visual_tokens.into(),
        );
        // Full resolution in turn 1: the same prompt with the original image.
        let t = Instant::now();
        let pv = preprocess(&image, &vt.dir.preprocessor)?;
        let p = visionthink::core::prompt::visionthink_turn1("What colour is the circle?");
        let ids = vt
            .dir
            .tokenizer
            .encode_prompt(&p, &[pv.num_image_tokens(2)])?;
        let mut s = vt.session();
        let logits = s.feed(&ids, std::slice::from_ref(&pv))?;
        let forced = vt
            .dir
            .tokenizer
            .encode_template(&format!("{answer}<|im_end|>"))?;
        let mut sampler = Sampler::new(Default::default());
        s.generate(
            logits,
            &GenerateOptions::default(),
            &mut sampler,
            Some(&forced),
            &mut |_, _| {},
        )?;
        full = full.min(t.elapsed().as_secs_f64());
        out.insert(
            "episode_full_res_visual_tokens".into(),
            pv.num_image_tokens(2).into(),
        );
    }
    out.insert("episode_low_res_s".into(), low.into());
    out.insert("episode_full_res_s".into(), full.into());
    out.insert("peak_rss_after_load_mb".into(), rss_after_load.into());
    out.insert("peak_rss_mb".into(), peak_rss_mb().into());
    // The same decode with the weights kept in bf16 (half the bytes per step), after the peak
    // RSS was read: the second model does not count against the f32 comparison.
    drop(vt);
    let vt = VisionThink::load(dir, device, visionthink::Precision::Bf16)?;
    let mut decode_bf16 = f64::MAX;
    for _ in 0..2 {
        let mut s = vt.session();
        let logits = s.feed(&prompt, &[])?;
        let mut sampler = Sampler::new(opts.sampling.clone());
        let t = Instant::now();
        let toks = s.generate(logits, &opts, &mut sampler, None, &mut |_, _| {})?;
        decode_bf16 = decode_bf16.min(t.elapsed().as_secs_f64() / toks.len() as f64);
    }
    out.insert("decode_bf16_tok_s".into(), (1.0 / decode_bf16).into());
    if let Some(bw) = bw {
        out.insert(
            "decode_bf16_bandwidth_fraction".into(),
            (bytes / 2.0 / (bw * 1e9) / decode_bf16).into(),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// Where the model runs: `VT_BENCH_DEVICE=cuda` (a build with the `cuda` feature) or the CPU.
fn bench_device() -> anyhow::Result<visionthink::DeviceChoice> {
    match std::env::var("VT_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Ok(visionthink::DeviceChoice::Cuda),
        Ok("cpu") | Err(_) => Ok(visionthink::DeviceChoice::Cpu),
        Ok(other) => anyhow::bail!("VT_BENCH_DEVICE={other}: expected cpu or cuda"),
    }
}

/// `n` ordinary text token ids (a fixed pattern, the same in every run).
/// Tokens of the long prefill: about a full-resolution document page.
const LONG_PREFILL: u32 = 5678;

fn text_ids(n: u32) -> Vec<u32> {
    (0..n).map(|i| 1000 + (i * 37) % 5000).collect()
}

/// One image's tokens: vision start, one pad per visual token (after the 2×2 merge), vision end.
fn image_ids(pv: &visionthink::core::image::PixelValues) -> Vec<u32> {
    std::iter::once(151652)
        .chain(std::iter::repeat_n(151655, pv.num_image_tokens(2)))
        .chain(std::iter::once(151653))
        .collect()
}

/// One phase in a loop of 5, each timed (`VT_BENCH_ONLY`): what `perf record` should see.
fn profile_loop(vt: &VisionThink, only: &str, img896: &str) -> anyhow::Result<()> {
    let prompt = text_ids(512);
    let long = text_ids(LONG_PREFILL);
    let pv = preprocess(&visionthink::load_image(img896)?, &vt.dir.preprocessor)?;
    let ids = image_ids(&pv);
    for i in 0..5 {
        let mut s = vt.session();
        let t = Instant::now();
        match only {
            "prefill" => drop(s.feed(&prompt, &[])?),
            "vision" => drop(s.feed(&ids, std::slice::from_ref(&pv))?),
            "prefill_long" => drop(s.feed(&long, &[])?),
            other => {
                anyhow::bail!("VT_BENCH_ONLY={other}: expected prefill, prefill_long or vision")
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let vision = s.timings().vision_ms;
        println!("{only} {i}: {ms:.1} ms (vision tower {vision:.1} ms)");
    }
    Ok(())
}
