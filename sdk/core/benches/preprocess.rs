//! Preprocessing throughput: decode → (low-res) → smart_resize → pixel_values, on the image given
//! as the first argument. Prints one JSON object with median milliseconds per path. Driven by
//! `tests/bench/bench_preprocess.py`, which runs the Python reference in the same session and
//! prints the ratios.
//!
//! Each path is timed twice: as the SDK's engine runs it, image after image, the pixel values
//! written into the buffers of the previous image (a [`PixelPool`], one per path, as the engine
//! keeps one per episode's two images): `full_res_ms`, `low_res_ms`; and with every buffer
//! allocated afresh, as a one-off call of `preprocess` does: `full_res_fresh_ms`,
//! `low_res_fresh_ms`.

use std::time::Instant;
use visionthink_core::config::PreprocessorConfig;
use visionthink_core::image::{decode, inference_low_res, preprocess, DecodeLimits, PixelPool};

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn main() {
    let Some(path) = std::env::args().skip(1).find(|a| !a.starts_with("--")) else {
        eprintln!("usage: cargo bench -p visionthink-core --bench preprocess -- IMAGE.png [REPS]");
        std::process::exit(2);
    };
    let reps: usize = std::env::args()
        .skip(2)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let cfg = PreprocessorConfig::default();
    // The path's input: the decoded image, halved on the low-res path.
    let input = |low: bool| {
        let img = decode(&bytes, DecodeLimits::default()).expect("decode");
        if low {
            inference_low_res(&img).expect("low res")
        } else {
            img
        }
    };
    let fresh = |low: bool| {
        let pv = preprocess(&input(low), &cfg).expect("preprocess");
        std::hint::black_box(pv.data.len());
    };
    let pooled = |low: bool, pool: &mut PixelPool| {
        let pv = pool.preprocess(&input(low), &cfg).expect("preprocess");
        std::hint::black_box(pv.data.len());
        pool.give_back(pv);
    };
    let decode_ms = median_ms(
        || {
            drop(std::hint::black_box(decode(
                &bytes,
                DecodeLimits::default(),
            )))
        },
        reps,
    );
    let (mut full_pool, mut low_pool) = (PixelPool::new(1), PixelPool::new(1));
    let full_ms = median_ms(|| pooled(false, &mut full_pool), reps);
    let low_ms = median_ms(|| pooled(true, &mut low_pool), reps);
    let full_fresh_ms = median_ms(|| fresh(false), reps);
    let low_fresh_ms = median_ms(|| fresh(true), reps);
    println!(
        "{{\"decode_ms\": {decode_ms:.3}, \"full_res_ms\": {full_ms:.3}, \"low_res_ms\": {low_ms:.3}, \"full_res_fresh_ms\": {full_fresh_ms:.3}, \"low_res_fresh_ms\": {low_fresh_ms:.3}, \"reps\": {reps}}}"
    );
}
