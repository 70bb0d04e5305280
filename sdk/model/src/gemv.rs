//! One-row products against bf16 weights on the CPU (decoding with `--dtype bf16`): the weights
//! are read once, widened to f32 in registers (a bf16 is the top half of an f32) and
//! accumulated in f32, over the output rows in parallel, compiled for the CPU's best vector
//! instructions (AVX-512 or AVX2 + FMA, detected at run time). candle's bf16 matmul converts
//! through a slower path and reaches a fraction of the memory bandwidth on one row.

use half::bf16;

/// Accumulator lanes: a fixed-size array the compiler keeps in vector registers.
const LANES: usize = 16;

/// Below this many weights the product runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 18;

/// `x · wᵀ` for one row `x` `[k]` and row-major weights `w` `[m, k]`: `[m]`, f32 accumulation.
///
/// ```
/// use half::bf16;
/// let w: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().map(|&v| bf16::from_f32(v)).collect();
/// assert_eq!(visionthink_model::gemv::gemv_bf16(&[1.0, 0.5, 2.0], &w), vec![8.0, 18.5]);
/// ```
pub fn gemv_bf16(x: &[f32], w: &[bf16]) -> Vec<f32> {
    let k = x.len().max(1);
    let m = w.len() / k;
    let mut y = vec![0f32; m];
    let threads = match w.len() >= PARALLEL_MIN {
        true => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8),
        false => 1,
    };
    let per = m.div_ceil(threads).max(1);
    if threads == 1 {
        rows(x, w, &mut y);
        return y;
    }
    std::thread::scope(|s| {
        for (ys, ws) in y.chunks_mut(per).zip(w.chunks(per * k)) {
            s.spawn(move || rows(x, ws, ys));
        }
    });
    y
}

/// `y[i] = x · w[i, :]` for the rows of `w`, vectorised.
fn rows(x: &[f32], w: &[bf16], y: &mut [f32]) {
    // Natively compiled for the CPU's best vector instructions; wasm32 uses its baseline.
    #[cfg(not(target_arch = "wasm32"))]
    pulp::Arch::new().dispatch(|| rows_body(x, w, y));
    #[cfg(target_arch = "wasm32")]
    rows_body(x, w, y);
}

#[inline(always)]
fn rows_body(x: &[f32], w: &[bf16], y: &mut [f32]) {
    let k = x.len().max(1);
    for (yo, row) in y.iter_mut().zip(w.chunks_exact(k)) {
        *yo = dot(x, row);
    }
}

#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

#[inline(always)]
fn dot(x: &[f32], w: &[bf16]) -> f32 {
    let mut acc = [0f32; LANES];
    let body = x.len() / LANES * LANES;
    for (xa, wa) in x[..body]
        .chunks_exact(LANES)
        .zip(w[..body].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += xa[i] * widen(wa[i]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (xv, wv) in x[body..].iter().zip(&w[body..]) {
        s += xv * widen(*wv);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_f64_product_on_uneven_shapes() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (m, k) in [(1, 1), (3, 17), (130, 300), (700, 515)] {
            let x: Vec<f32> = (0..k).map(|_| next()).collect();
            let w: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(next())).collect();
            let y = gemv_bf16(&x, &w);
            for (i, got) in y.iter().enumerate() {
                let want: f64 = (0..k)
                    .map(|j| f64::from(x[j]) * f64::from(w[i * k + j].to_f32()))
                    .sum();
                assert!((f64::from(*got) - want).abs() < 1e-4, "{m}x{k} row {i}");
            }
        }
    }
}
