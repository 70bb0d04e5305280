//! GGUF on candle's CPU kernels, measured as llama.cpp's `llama-bench` measures: prompt
//! processing of 512 tokens (`pp512`) and generation of 64 tokens one by one (`tg64`) from an
//! empty context, tokens per second, plus load time and peak RSS.
//!
//! `cargo bench -p visionthink-model --bench gguf -- TEXT.gguf MMPROJ.gguf [REPS]` prints one
//! JSON line; tests/bench/bench_gguf.py runs it beside llama-bench on the same files.

use std::time::Instant;
use visionthink_core::rope::MropeBuilder;
use visionthink_model::gguf::GgufWeights;
use visionthink_model::{CandleBackend, Qwen25VL, WeightStore};

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    visionthink_model::candle_backend::fix_thread_count();
    visionthink_model::candle_backend::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(text), Some(mmproj)) = (args.first(), args.get(1)) else {
        eprintln!("usage: gguf TEXT.gguf MMPROJ.gguf [REPS]");
        return Ok(());
    };
    let reps: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(2);
    let t0 = Instant::now();
    let w = GgufWeights::open(text.as_ref(), mmproj.as_ref())?;
    let file_bytes = w.file_bytes();
    let cfg = visionthink_core::gguf::model_config(w.text_header(), w.mmproj_header())?;
    let be = CandleBackend::cpu();
    let model = Qwen25VL::load(&be, &cfg, &WeightStore::from_gguf(w))?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = peak_rss_bytes();
    let ids: Vec<u32> = (0..512u32).map(|i| 1000 + (i * 7919) % 100_000).collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let mut b = MropeBuilder::new();
        b.push_text(ids.len());
        let mut cache = model.new_cache();
        let t = Instant::now();
        let e = model.embed(&be, &ids, None)?;
        let h = model.decode(&be, &e, b.positions(), &mut cache)?;
        let _ = model.last_logits(&be, &h)?;
        pp.push(512.0 / t.elapsed().as_secs_f64());
        let mut b = MropeBuilder::new();
        let mut cache = model.new_cache();
        let mut next = 1000u32;
        let t = Instant::now();
        for _ in 0..64 {
            b.push_text(1);
            let e = model.embed(&be, &[next], None)?;
            let h = model.decode(&be, &e, b.positions(), &mut cache)?;
            next = visionthink_model::generate::argmax(&model.last_logits(&be, &h)?);
        }
        tg.push(64.0 / t.elapsed().as_secs_f64());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "file_bytes": file_bytes,
            "load_s": load_s,
            "pp512_tps": mean(&pp),
            "tg64_tps": mean(&tg),
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_after_load_bytes": rss_loaded,
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        })
    );
    Ok(())
}
