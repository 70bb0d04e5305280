//! One-row products with GGUF blocks (a decode step's matrices on the Qwen2.5-0.5B shapes):
//! ours ([`visionthink_model::qgemv`]) against candle's quantized kernels (`QMatMul`) on the
//! same blocks, in one process, and both against this machine's read bandwidth.
//!
//! `cargo bench -p visionthink-model --bench qgemv` prints a table (2 threads unless
//! `RAYON_NUM_THREADS` says otherwise) and, as its last line, one JSON object.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::time::Instant;
use visionthink_model::gemv::HalfMatrix;
use visionthink_model::qgemv::{Kind, QMatrix};

/// Read bandwidth in GB/s with rayon's threads: each sums its share of a 1 GiB buffer (touched
/// first), best of 3.
fn read_bandwidth_gb_s() -> f64 {
    use rayon::prelude::*;
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let per = n.div_ceil(rayon::current_num_threads().max(1));
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(per)
            .map(|c| {
                let mut acc = [0f32; 16];
                for v in c.chunks_exact(16) {
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += *x;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(s);
    }
    (n * 4) as f64 / best / 1e9
}

/// Blocks of `kind` for a `[rows, cols]` matrix: candle's quantization of random values.
fn blocks(dt: GgmlDType, rows: usize, cols: usize) -> Result<QTensor, candle_core::Error> {
    let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu)?;
    QTensor::quantize(&w, dt)
}

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    visionthink_model::candle_backend::fix_thread_count();
    visionthink_model::candle_backend::tune_allocator();
    let threads = rayon::current_num_threads();
    let bw = read_bandwidth_gb_s();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("CPU: {cpu}, {threads} threads, read bandwidth {bw:.1} GB/s");
    println!("| type | shape | ours (ms) | ours (GB/s) | candle (ms) | ours ÷ candle |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut json = serde_json::Map::new();
    json.insert("read_bandwidth_gb_s".into(), bw.into());
    json.insert("threads".into(), threads.into());
    for (kind, dt) in [
        (Kind::Q8_0, GgmlDType::Q8_0),
        (Kind::Q4_0, GgmlDType::Q4_0),
        (Kind::Q5_0, GgmlDType::Q5_0),
        (Kind::Q4K, GgmlDType::Q4K),
        (Kind::Q6K, GgmlDType::Q6K),
    ] {
        // The 0.5B decoder's head, gate/up and down projections.
        for (rows, cols) in [(151_936, 896), (9728, 896), (896, 4864)] {
            if cols % kind.block_values() != 0 {
                continue;
            }
            let q = blocks(dt, rows, cols)?;
            let bytes = q.data()?.to_vec();
            let ours = QMatrix::new(kind, rows, cols, &bytes)?;
            let theirs = QMatMul::from_qtensor(q)?;
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (1, cols), &Device::Cpu)?;
            let reps = if rows > 100_000 { 10 } else { 200 };
            let t_ours = best_of(reps, || {
                std::hint::black_box(ours.matmul(&x, 1));
            });
            let mut failed = None;
            let t_theirs = best_of(reps, || {
                if let Err(e) = theirs.forward(&xt) {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
            let gbs = bytes.len() as f64 / t_ours / 1e9;
            println!(
                "| {kind:?} | {rows}×{cols} | {:.3} | {gbs:.1} | {:.3} | {:.2}× |",
                t_ours * 1e3,
                t_theirs * 1e3,
                t_theirs / t_ours
            );
            json.insert(
                format!("{kind:?}_{rows}x{cols}_ratio").to_lowercase(),
                (t_theirs / t_ours).into(),
            );
            json.insert(
                format!("{kind:?}_{rows}x{cols}_gb_s").to_lowercase(),
                gbs.into(),
            );
        }
    }
    // F16 matrices (an F16 file, the vision tower of an F16 mmproj), kept in 16 bits: ours
    // against candle's matmul on the same f16 values (its f16 GEMM, the input cast to f16) and
    // against our own product over the same values held in f32 (twice the bytes).
    for (rows, cols) in [(151_936, 896), (9728, 896), (896, 4864)] {
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu)?.to_dtype(DType::F16)?;
        let bytes: Vec<u8> = w
            .flatten_all()?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect();
        let ours = HalfMatrix::from_le_bytes(false, rows, cols, &bytes).ok_or("shape")?;
        let w32 = ours.dequantize();
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let xt = Tensor::from_vec(x.clone(), (1, cols), &Device::Cpu)?.to_dtype(DType::F16)?;
        let reps = if rows > 100_000 { 10 } else { 200 };
        let t_ours = best_of(reps, || {
            std::hint::black_box(ours.matvec(&x));
        });
        let t_f32 = best_of(reps, || {
            std::hint::black_box(visionthink_model::gemv::gemv(&x, &w32));
        });
        let wt = w.t()?;
        let mut failed = None;
        let t_theirs = best_of(reps, || {
            if let Err(e) = xt.matmul(&wt) {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        let gbs = bytes.len() as f64 / t_ours / 1e9;
        println!(
            "| F16 | {rows}×{cols} | {:.3} | {gbs:.1} | {:.3} | {:.2}× (f32 values: {:.3} ms) |",
            t_ours * 1e3,
            t_theirs * 1e3,
            t_theirs / t_ours,
            t_f32 * 1e3
        );
        json.insert(
            format!("f16_{rows}x{cols}_ratio"),
            (t_theirs / t_ours).into(),
        );
        json.insert(format!("f16_{rows}x{cols}_gb_s"), gbs.into());
        json.insert(
            format!("f16_{rows}x{cols}_vs_f32_values"),
            (t_f32 / t_ours).into(),
        );
    }
    println!("{}", serde_json::Value::Object(json));
    Ok(())
}
