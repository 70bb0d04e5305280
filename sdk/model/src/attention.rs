//! Fused scaled dot-product attention for the CPU (inference): tiled, with an online softmax,
//! so no more than one tile of scores (`QUERY_TILE × KEY_TILE`) exists per worker at a time.
//!
//! The composed attention (`q·kᵀ`, mask, softmax, `p·v` as separate candle ops) writes the whole
//! score matrix to memory three times and computes the masked half of a causal product. Here
//! each work item — one query head and a tile of up to [`QUERY_TILE`] query rows — walks the keys
//! it may see in tiles of [`KEY_TILE`], computes the tile's scores with the `gemm` crate's
//! kernels (AVX-512/AVX2+FMA chosen at run time), takes the exponentials with a vectorised
//! polynomial, and accumulates `p·v` into a `[rows, d]` accumulator rescaled as the running
//! maximum grows (the flash-attention recurrence). Keys a causal row cannot see are never
//! computed; a window (segment) mask only visits its own keys. Grouped-query heads read their
//! shared K/V head in place (no repeated copies), and every operand is read in the graph's own
//! `[rows, heads · d]` layout through strides (no transposes). Work items run in parallel on
//! rayon's pool, the one candle's matmuls use.
//!
//! The trainer keeps the composed, differentiable attention (it needs the probabilities for the
//! backward pass); the two agree up to float reordering (tests: within 2e-6 relative).

use crate::backend::Mask;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Query rows per work item.
pub const QUERY_TILE: usize = 64;
/// Keys per score tile.
pub const KEY_TILE: usize = 256;

/// Shapes of an attention call: `q [n, heads · d]`, `k`, `v [m, kv_heads · d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Query rows.
    pub n: usize,
    /// Key rows.
    pub m: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Head width.
    pub d: usize,
}

/// One work item: a head and a tile of query rows, with the keys the tile may see.
#[derive(Debug, Clone, Copy)]
struct Item {
    head: usize,
    q0: usize,
    q1: usize,
    k0: usize,
    k1: usize,
    /// Causal: query row `i` sees keys `..= past + i`.
    past: Option<usize>,
}

/// Softmax attention with scale `1/sqrt(d)`; returns `[n, heads · d]`, row-major.
///
/// ```
/// use visionthink_model::attention::{attention, Shape};
/// use visionthink_model::backend::Mask;
/// // One head of width 2; the second query sees both keys, the first only the first.
/// let (q, k, v) = ([1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0]);
/// let shape = Shape { n: 2, m: 2, heads: 1, kv_heads: 1, d: 2 };
/// let out = attention(&q, &k, &v, shape, &Mask::Causal { past: 0 }).unwrap();
/// assert_eq!(&out[..2], &[1.0, 2.0]);
/// let p = 1.0 / (1.0 + (-(0.5f32).sqrt()).exp()); // weight of key 1 for query 1
/// assert!((out[2] - (1.0 + 2.0 * p)).abs() < 1e-6);
/// ```
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: Shape, mask: &Mask) -> Result<Vec<f32>> {
    let Shape {
        n,
        m,
        heads,
        kv_heads,
        d,
    } = s;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || d == 0 {
        return Err(Error::Backend(format!(
            "attention: {heads} query heads cannot share {kv_heads} key/value heads of width {d}"
        )));
    }
    if q.len() != n * heads * d || k.len() != m * kv_heads * d || v.len() != k.len() {
        return Err(Error::Backend(format!(
            "attention: operand sizes {}, {}, {} do not match q [{n}, {heads}x{d}], k/v [{m}, {kv_heads}x{d}]",
            q.len(),
            k.len(),
            v.len()
        )));
    }
    let items = plan(s, mask)?;
    let tiles: Vec<Vec<f32>> = items.par_iter().map(|it| tile(q, k, v, s, it)).collect();
    let mut out = vec![0f32; n * heads * d];
    for (it, o) in items.iter().zip(&tiles) {
        for (i, row) in o.chunks_exact(d).enumerate() {
            let at = (it.q0 + i) * heads * d + it.head * d;
            out[at..at + d].copy_from_slice(row);
        }
    }
    Ok(out)
}

/// The work items of a call, or a typed error for a mask that does not fit the shapes.
fn plan(s: Shape, mask: &Mask) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    match mask {
        Mask::Causal { past } => {
            if s.m == 0 && s.n > 0 {
                return Err(Error::Backend(format!(
                    "attention: {} causal query rows have no keys",
                    s.n
                )));
            }
            for head in 0..s.heads {
                for q0 in (0..s.n).step_by(QUERY_TILE) {
                    let q1 = (q0 + QUERY_TILE).min(s.n);
                    items.push(Item {
                        head,
                        q0,
                        q1,
                        k0: 0,
                        k1: (past + q1).min(s.m),
                        past: Some(*past),
                    });
                }
            }
        }
        Mask::Segments(cu) => {
            let ok = s.n == s.m
                && cu.first() == Some(&0)
                && cu.last() == Some(&s.n)
                && cu.windows(2).all(|w| w[0] <= w[1]);
            if !ok {
                return Err(Error::Backend(format!(
                    "attention: segments {cu:?} do not partition {} rows (with {} keys)",
                    s.n, s.m
                )));
            }
            for head in 0..s.heads {
                for w in cu.windows(2) {
                    for q0 in (w[0]..w[1]).step_by(QUERY_TILE) {
                        items.push(Item {
                            head,
                            q0,
                            q1: (q0 + QUERY_TILE).min(w[1]),
                            k0: w[0],
                            k1: w[1],
                            past: None,
                        });
                    }
                }
            }
        }
    }
    Ok(items)
}

/// One work item's output rows, `[q1 - q0, d]`.
#[allow(unsafe_code)] // the gemm crate's kernels take raw pointers and strides
fn tile(q: &[f32], k: &[f32], v: &[f32], s: Shape, it: &Item) -> Vec<f32> {
    let d = s.d;
    let rows = it.q1 - it.q0;
    let (q_stride, kv_stride) = (s.heads * d, s.kv_heads * d);
    let g = it.head / (s.heads / s.kv_heads);
    let scale = 1.0 / (d as f32).sqrt();
    let mut acc = vec![0f32; rows * d];
    let mut scores = vec![0f32; rows * KEY_TILE];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let q_at = it.q0 * q_stride + it.head * d;
    let mut kt = it.k0;
    while kt < it.k1 {
        let c = KEY_TILE.min(it.k1 - kt);
        let kv_at = kt * kv_stride + g * d;
        // The windows each product reads, bounds-checked here so the raw reads below stay in.
        let q_win = &q[q_at..q_at + (rows - 1) * q_stride + d];
        let k_win = &k[kv_at..kv_at + (c - 1) * kv_stride + d];
        let v_win = &v[kv_at..kv_at + (c - 1) * kv_stride + d];
        // scores[rows, c] = scale · q_tile · k_tileᵀ
        // SAFETY: the product reads `rows × d` values of `q_win` (row stride `q_stride`) and
        // `c × d` of `k_win` (row stride `kv_stride`), all inside those windows, and writes
        // `rows × c` values of `scores`, which holds `rows × KEY_TILE ≥ rows × c`.
        unsafe {
            gemm::gemm(
                rows,
                c,
                d,
                scores.as_mut_ptr(),
                1,
                c as isize,
                false,
                q_win.as_ptr(),
                1,
                q_stride as isize,
                k_win.as_ptr(),
                kv_stride as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for i in 0..rows {
            let visible = match it.past {
                Some(past) => (past + it.q0 + i + 1).saturating_sub(kt).min(c),
                None => c,
            };
            let row = &mut scores[i * c..(i + 1) * c];
            if visible == 0 {
                row.fill(0.0);
                continue;
            }
            let (new_max, corr, row_sum) = softmax_step(row, visible, max[i]);
            if corr != 1.0 {
                acc[i * d..(i + 1) * d].iter_mut().for_each(|a| *a *= corr);
            }
            sum[i] = sum[i] * corr + row_sum;
            max[i] = new_max;
        }
        // acc[rows, d] += p[rows, c] · v_tile[c, d]
        // SAFETY: reads `rows × c` of `scores` and `c × d` of `v_win` (row stride `kv_stride`),
        // inside both; reads and writes `rows × d` of `acc`, its whole length.
        unsafe {
            gemm::gemm(
                rows,
                d,
                c,
                acc.as_mut_ptr(),
                1,
                d as isize,
                true,
                scores.as_ptr(),
                1,
                c as isize,
                v_win.as_ptr(),
                1,
                kv_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        kt += c;
    }
    for (row, l) in acc.chunks_exact_mut(d).zip(&sum) {
        let inv = 1.0 / l;
        row.iter_mut().for_each(|a| *a *= inv);
    }
    acc
}

/// One row of a score tile: the first `visible` scores become `exp(score - new_max)` and the
/// rest zero. Returns the new running maximum, the factor that rescales what was accumulated
/// under the old one, and the sum of the new probabilities.
fn softmax_step(row: &mut [f32], visible: usize, old_max: f32) -> (f32, f32, f32) {
    // Natively compiled for the CPU's best vector instructions; wasm32 uses its baseline.
    #[cfg(not(target_arch = "wasm32"))]
    return pulp::Arch::new().dispatch(SoftmaxStep {
        row,
        visible,
        old_max,
    });
    #[cfg(target_arch = "wasm32")]
    softmax_step_body(row, visible, old_max)
}

/// [`softmax_step`]'s arguments as a `pulp` operation: a named type whose `with_simd` is
/// inlined into pulp's per-ISA entry points. A closure passed to `dispatch` (even marked
/// `#[inline(always)]`) stayed a call compiled for the baseline x86-64 target, so the
/// exponentials ran as 4-lane SSE without FMA: 10.8 % of a 5,678-token prefill on a Zen 4
/// (`perf`), 6.6 % this way.
#[cfg(not(target_arch = "wasm32"))]
struct SoftmaxStep<'r> {
    row: &'r mut [f32],
    visible: usize,
    old_max: f32,
}

#[cfg(not(target_arch = "wasm32"))]
impl pulp::WithSimd for SoftmaxStep<'_> {
    type Output = (f32, f32, f32);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> Self::Output {
        softmax_step_body(self.row, self.visible, self.old_max)
    }
}

/// Lanes of the vectorised loops: fixed-size arrays the compiler keeps in vector registers.
const LANES: usize = 8;

#[inline(always)]
fn softmax_step_body(row: &mut [f32], visible: usize, old_max: f32) -> (f32, f32, f32) {
    let (seen, hidden) = row.split_at_mut(visible);
    hidden.fill(0.0);
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = seen.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, x) in lanes.iter_mut().zip(c) {
            *m = m.max(*x);
        }
    }
    let mut row_max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    row_max = chunks.remainder().iter().fold(row_max, |a, &b| a.max(b));
    let new_max = old_max.max(row_max);
    let corr = if old_max == f32::NEG_INFINITY {
        0.0
    } else {
        exp(old_max - new_max)
    };
    let mut sums = [0f32; LANES];
    let mut chunks = seen.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - new_max);
            *s += *x;
        }
    }
    let mut total: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - new_max);
        total += *x;
    }
    (new_max, corr, total)
}

/// `e^x` for `x ≤ 88`, within about 2 ulp, branch-free so loops over it vectorise: Cody–Waite
/// range reduction to `r ∈ [-ln2/2, ln2/2]`, a degree-6 polynomial (Cephes' `expf`), and the
/// power of two built in the exponent bits. Inputs below -87.3 give (nearly) zero.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + SHIFTER;
    let n = t.to_bits() as i32 - SHIFTER.to_bits() as i32;
    let f = t - SHIFTER;
    let r = x - f * LN2_HI - f * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n + 127) as u32) << 23)
}

/// SwiGLU's activation in place: each `g` becomes `silu(g)·u = g / (1 + e^-g) · u`, with
/// [`exp`] in the CPU's widest vector instructions (libm's scalar `expf` took 2.5 % of a
/// 5,678-token prefill of the 0.5B shape on a Zen 4 held to AVX2). Within a few ulp of candle's
/// `silu(gate) * up`.
///
/// ```
/// let mut g = [0.0f32, 1.0, -30.0];
/// visionthink_model::attention::silu_mul_in_place(&mut g, &[2.0, 2.0, 2.0]);
/// assert_eq!(g[0], 0.0);
/// assert!((g[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
/// assert!(g[2].abs() < 1e-9);
/// ```
pub fn silu_mul_in_place(g: &mut [f32], u: &[f32]) {
    #[cfg(not(target_arch = "wasm32"))]
    pulp::Arch::new().dispatch(SiluMul { g, u });
    #[cfg(target_arch = "wasm32")]
    silu_mul_body(g, u);
}

#[inline(always)]
fn silu_mul_body(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        // Below -87 `exp(-g)` saturates (it is clamped): silu is 0 to f32 precision there.
        let s = if *g < -87.0 {
            0.0
        } else {
            *g / (1.0 + exp(-*g))
        };
        *g = s * u;
    }
}

/// [`silu_mul_in_place`] as a named `pulp` operation (see [`SoftmaxStep`] for why not a closure).
#[cfg(not(target_arch = "wasm32"))]
struct SiluMul<'a> {
    g: &'a mut [f32],
    u: &'a [f32],
}

#[cfg(not(target_arch = "wasm32"))]
impl pulp::WithSimd for SiluMul<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        silu_mul_body(self.g, self.u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook product: scores, mask, softmax in f64, weighted sum.
    fn naive(q: &[f32], k: &[f32], v: &[f32], s: Shape, mask: &Mask) -> Vec<f32> {
        let mut out = vec![0f32; s.n * s.heads * s.d];
        let rep = s.heads / s.kv_heads;
        for h in 0..s.heads {
            let g = h / rep;
            for i in 0..s.n {
                let keys: Vec<usize> = match mask {
                    Mask::Causal { past } => (0..=past + i).collect(),
                    Mask::Segments(cu) => {
                        let w = cu
                            .windows(2)
                            .find(|w| i >= w[0] && i < w[1])
                            .expect("row in a segment");
                        (w[0]..w[1]).collect()
                    }
                };
                let sc: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..s.d)
                            .map(|t| {
                                q[i * s.heads * s.d + h * s.d + t] as f64
                                    * k[j * s.kv_heads * s.d + g * s.d + t] as f64
                            })
                            .sum::<f64>()
                            / (s.d as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..s.d {
                    let y: f64 = keys
                        .iter()
                        .zip(&e)
                        .map(|(&j, p)| p * v[j * s.kv_heads * s.d + g * s.d + t] as f64)
                        .sum();
                    out[i * s.heads * s.d + h * s.d + t] = (y / z) as f32;
                }
            }
        }
        out
    }

    fn data(len: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
            })
            .collect()
    }

    fn check(s: Shape, mask: Mask) {
        let q = data(s.n * s.heads * s.d, 1, 6.0);
        let k = data(s.m * s.kv_heads * s.d, 2, 6.0);
        let v = data(s.m * s.kv_heads * s.d, 3, 2.0);
        let got = attention(&q, &k, &v, s, &mask).expect("attention");
        let want = naive(&q, &k, &v, s, &mask);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "{s:?} {mask:?}: max abs error {worst}");
    }

    #[test]
    fn matches_the_textbook_product() {
        // Prefill across several query and key tiles, with GQA and an odd head width.
        let s = |n, m, heads, kv_heads, d| Shape {
            n,
            m,
            heads,
            kv_heads,
            d,
        };
        check(s(300, 300, 4, 2, 24), Mask::Causal { past: 0 });
        // New rows after a cache; one decode row over more than one key tile.
        check(s(70, 590, 6, 2, 16), Mask::Causal { past: 520 });
        check(s(1, 600, 7, 1, 64), Mask::Causal { past: 599 });
        // Vision windows of uneven sizes (one spans two query tiles), then one full segment.
        check(
            s(210, 210, 3, 3, 80),
            Mask::Segments(vec![0, 16, 16, 100, 210]),
        );
        check(s(333, 333, 2, 2, 40), Mask::Segments(vec![0, 333]));
    }

    /// The softmax step gives the same bits through the vector dispatch as compiled for the
    /// baseline target (here): the lane sums are fixed and nothing is fused.
    #[test]
    fn vector_dispatch_keeps_the_baseline_bits() {
        let row: Vec<f32> = data(301, 9, 6.0);
        let (mut a, mut b) = (row.clone(), row.clone());
        let x = softmax_step(&mut a, 290, 1.5);
        let y = softmax_step_body(&mut b, 290, 1.5);
        assert_eq!(
            (x.0.to_bits(), x.1.to_bits(), x.2.to_bits()),
            (y.0.to_bits(), y.1.to_bits(), y.2.to_bits())
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }

    /// The dispatched SwiGLU activation has the bits of the same code compiled for the baseline
    /// target, and is within a few ulp of the f64 formula, extremes included.
    #[test]
    fn silu_mul_keeps_the_baseline_bits_and_is_close_to_the_formula() {
        let mut g: Vec<f32> = data(1003, 5, 12.0);
        g.extend([0.0, -0.0, 1e-30, -100.0, 100.0, -1e30, 1e30]);
        let u: Vec<f32> = (0..g.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let (mut a, mut b) = (g.clone(), g.clone());
        silu_mul_in_place(&mut a, &u);
        silu_mul_body(&mut b, &u);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        for ((&x, &u), &y) in g.iter().zip(&u).zip(&a) {
            let want = x as f64 / (1.0 + (-(x as f64)).exp()) * u as f64;
            let err = (y as f64 - want).abs() / want.abs().max(1e-30);
            assert!(
                err < 1e-6 || (y as f64 - want).abs() < 1e-30,
                "silu({x})·{u}: {y} vs {want}"
            );
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e30) < 1e-37);
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let s = Shape {
            n: 2,
            m: 3,
            heads: 2,
            kv_heads: 1,
            d: 2,
        };
        let (q, kv) = (vec![0.0; 8], vec![0.0; 6]);
        assert!(attention(&q, &[], &[], Shape { m: 0, ..s }, &Mask::Causal { past: 0 }).is_err());
        assert!(attention(&q, &kv, &kv, s, &Mask::Causal { past: 1 }).is_ok());
        assert!(attention(&q, &kv, &kv, s, &Mask::Segments(vec![0, 2])).is_err());
        let bad = Shape { kv_heads: 3, ..s };
        assert!(attention(&q, &kv, &kv, bad, &Mask::Causal { past: 1 }).is_err());
        assert!(attention(&q[..4], &kv, &kv, s, &Mask::Causal { past: 1 }).is_err());
    }
}
