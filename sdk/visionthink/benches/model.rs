//! Model throughput on a checkpoint directory, printed as one JSON object (driven by
//! `tests/bench/bench_model.py`, which runs PyTorch `transformers` on the same checkpoint in the
//! same session and prints the comparison table).
//!
//! `cargo bench -p visionthink --bench model -- MODEL_DIR IMAGE_448 IMAGE_896`

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [dir, img448, img896] = args.as_slice() else {
        anyhow::bail!(
            "usage: cargo bench -p visionthink --bench model -- MODEL_DIR IMAGE_448 IMAGE_896"
        );
    };
    let t = Instant::now();
    let vt = VisionThink::from_dir(dir)?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();
    let mut out = serde_json::Map::new();
    out.insert("load_s".into(), load_s.into());
    // Vision tower alone.
    for (name, path) in [("vision_448_ms", img448), ("vision_896_ms", img896)] {
        let pv = preprocess(&visionthink::load_image(path)?, &vt.dir.preprocessor)?;
        let mut s = vt.session();
        let ids: Vec<u32> = std::iter::once(151652)
            .chain(std::iter::repeat_n(151655, pv.num_image_tokens(2)))
            .chain(std::iter::once(151653))
            .collect();
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
    let prompt: Vec<u32> = (0..512u32).map(|i| 1000 + (i * 37) % 5000).collect();
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
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
