//! One-row products on the CPU (decoding): the weights are read once, in their stored type
//! (f32, or bf16 or f16 widened to f32 in registers — a bf16 is the top half of an f32), accumulated in
//! f32, over the output rows in parallel on candle's CPU thread pool (whose workers spin between
//! products), compiled for the CPU's best vector instructions (AVX-512 or AVX2 + FMA, detected at run
//! time). For one row candle's matmul reaches a fraction of the memory bandwidth (bf16 through
//! a slower conversion path; f32 through a GEMM kernel shaped for many rows), and decoding is
//! bound by reading the weights.

use half::{bf16, f16};

/// Accumulator lanes: a fixed-size array the compiler keeps in vector registers.
const LANES: usize = 16;

/// Values widened at a time by [`Weight::widen_slice`] (a whole number of lane groups).
const STRETCH: usize = 256;

/// Below this many weights the product runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 18;

/// Output rows per parallel task, at least: each task reads this many weight rows in sequence.
const ROWS_PER_TASK: usize = 64;

/// A stored weight value, widened to f32 in registers.
pub trait Weight: Copy + Send + Sync {
    /// The value as f32.
    fn widen(self) -> f32;
    /// Whether products widen a stretch of a row at a time with [`Self::widen_slice`] (a
    /// conversion instruction the compiler does not emit for [`Self::widen`], such as x86's
    /// F16C) instead of value by value in the product's loop; the sums are the same.
    const BY_SLICE: bool = false;
    /// `src` as f32 into `dst` (as long).
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = v.widen();
        }
    }
}

impl Weight for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

impl Weight for f16 {
    /// Exact for every f16, and written so the compiler vectorises it (no table, no branch):
    /// the exponent and mantissa bits moved to an f32's places, scaled by 2¹¹² (the exponent
    /// biases' difference; subnormals come out right too), infinities and NaNs given the f32
    /// all-ones exponent, and the sign put back.
    #[inline(always)]
    fn widen(self) -> f32 {
        let h = u32::from(self.to_bits());
        let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
        let special = if h & 0x7c00 == 0x7c00 { 0x7f80_0000 } else { 0 };
        f32::from_bits(magnitude.to_bits() | special | ((h & 0x8000) << 16))
    }

    /// F16C where the CPU has it (`half` detects it at run time): per value, the bit
    /// arithmetic of [`Self::widen`] ran at half the speed of f32 weights in cache, a quarter
    /// of the memory bandwidth.
    const BY_SLICE: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

/// A row-major `[rows, cols]` matrix of 16-bit floats (f16 or bf16) held as a GGUF file stores
/// it: half the memory of f32 values. One-row products ([`Self::matvec`]) read it in place
/// through [`gemv`]; a product of more rows takes [`Self::dequantize`]d values, so its results
/// are those of the same values held in f32.
#[derive(Debug, Clone)]
pub struct HalfMatrix {
    rows: usize,
    cols: usize,
    values: Halves,
}

#[derive(Debug, Clone)]
enum Halves {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl HalfMatrix {
    /// The matrix from little-endian 16-bit values (`bf16` picks the format); `None` when
    /// `bytes` is not `rows × cols` of them.
    ///
    /// ```
    /// use half::f16;
    /// use visionthink_model::gemv::HalfMatrix;
    /// let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
    ///     .iter()
    ///     .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
    ///     .collect();
    /// let w = HalfMatrix::from_le_bytes(false, 2, 3, &bytes).unwrap();
    /// assert_eq!(w.matvec(&[1.0, 0.5, 2.0]), vec![8.0, 18.5]);
    /// assert_eq!(w.dequantize(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// assert!(HalfMatrix::from_le_bytes(false, 2, 4, &bytes).is_none());
    /// ```
    pub fn from_le_bytes(bf16: bool, rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        let bits = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Self::from_bits(bf16, rows, cols, bits)
    }

    /// The matrix from the values' bit patterns; `None` unless there are `rows × cols`.
    pub fn from_bits(bf16: bool, rows: usize, cols: usize, bits: Vec<u16>) -> Option<Self> {
        if rows.checked_mul(cols)? != bits.len() {
            return None;
        }
        let values = if bf16 {
            Halves::Bf16(bits.into_iter().map(bf16::from_bits).collect())
        } else {
            Halves::F16(bits.into_iter().map(f16::from_bits).collect())
        };
        Some(Self { rows, cols, values })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// `x · wᵀ` for one row `x` `[cols]`: `[rows]` (see [`gemv`]).
    pub fn matvec(&self, x: &[f32]) -> Vec<f32> {
        match &self.values {
            #[cfg(target_arch = "x86_64")]
            Halves::F16(w) if f16c::available() => gemv_by(x, w, f16c::rows),
            Halves::F16(w) => gemv(x, w),
            Halves::Bf16(w) => gemv(x, w),
        }
    }

    /// Rows `first..first + out.len() / cols` as f32 into `out`.
    fn widen_rows(&self, first: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let at = first * self.cols;
        match &self.values {
            Halves::F16(w) => w[at..at + out.len()].convert_to_f32_slice(out),
            Halves::Bf16(w) => w[at..at + out.len()].convert_to_f32_slice(out),
        }
    }

    /// Row `r` as f32 values.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        self.widen_rows(r, &mut out);
        out
    }

    /// `x · wᵀ` for `m` rows `x` `[m, cols]`: `[m, rows]`, on the widened values a tile at a
    /// time ([`widened_matmul`]).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        widened_matmul(x, m, self.rows, self.cols, |first, out| {
            self.widen_rows(first, out)
        })
    }

    /// The whole matrix as f32 values, `[rows, cols]` row-major (rows in parallel).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if out.len() < PARALLEL_MIN {
            self.widen_rows(0, &mut out);
        } else {
            par_rows(&mut out, self.cols, ROWS_PER_TASK, |first, o| {
                self.widen_rows(first, o)
            });
        }
        out
    }
}

/// `x · wᵀ` for one row `x` `[k]` and row-major bf16 weights `w` `[m, k]`: `[m]`, f32
/// accumulation.
///
/// ```
/// use half::bf16;
/// let w: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().map(|&v| bf16::from_f32(v)).collect();
/// assert_eq!(visionthink_model::gemv::gemv_bf16(&[1.0, 0.5, 2.0], &w), vec![8.0, 18.5]);
/// ```
pub fn gemv_bf16(x: &[f32], w: &[bf16]) -> Vec<f32> {
    gemv(x, w)
}

/// `x · wᵀ` for one row `x` `[k]` and row-major weights `w` `[m, k]` of any stored type: `[m]`,
/// f32 accumulation.
///
/// ```
/// let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// assert_eq!(visionthink_model::gemv::gemv(&[1.0, 0.5, 2.0], &w), vec![8.0, 18.5]);
/// ```
pub fn gemv<W: Weight>(x: &[f32], w: &[W]) -> Vec<f32> {
    gemv_by(x, w, rows::<W>)
}

/// [`gemv`] with `body(x, w_rows, y)` computing a stretch of rows.
fn gemv_by<W: Weight>(
    x: &[f32],
    w: &[W],
    body: impl Fn(&[f32], &[W], &mut [f32]) + Sync,
) -> Vec<f32> {
    let k = x.len().max(1);
    let m = w.len() / k;
    let mut y = vec![0f32; m];
    if w.len() < PARALLEL_MIN {
        body(x, w, &mut y);
        return y;
    }
    par_rows(&mut y, 1, ROWS_PER_TASK, |first, ys| {
        body(x, &w[first * k..(first + ys.len()) * k], ys)
    });
    y
}

/// F16 weights on x86-64 CPUs with AVX2 and F16C: 8 values widened by one instruction.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics over raw pointers into checked slices
mod f16c {
    use half::f16;
    use std::arch::x86_64::*;

    /// Whether this CPU runs [`rows`].
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
    }

    /// `y[i] = x · w[i, :]`; the caller checked [`available`].
    pub(super) fn rows(x: &[f32], w: &[f16], y: &mut [f32]) {
        let k = x.len().max(1);
        for (yo, row) in y.iter_mut().zip(w.chunks_exact(k)) {
            // SAFETY: `available` found AVX2 and F16C (the callers' condition); `dot` reads
            // `x.len()` values of `x` and of `row` (a whole row of `k = x.len()`).
            *yo = unsafe { dot(x, row) };
        }
    }

    /// The sum of [`super::dot`] bit for bit: the same 16 lanes (two registers of 8), each
    /// a multiply then an add (not fused), summed in lane order, the same tail.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn dot(x: &[f32], w: &[f16]) -> f32 {
        let body = x.len() / 16 * 16;
        let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const u16);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < body {
            if i % 32 == 0 {
                crate::gemv::prefetch(wp.add(i));
            }
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i + 8) as *const __m128i));
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(xp.add(i)), w0));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(xp.add(i + 8)), w1));
            i += 16;
        }
        let mut acc = [0f32; 16];
        _mm256_storeu_ps(acc.as_mut_ptr(), a0);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), a1);
        let mut s: f32 = acc.iter().sum();
        for (xv, wv) in x[body..].iter().zip(&w[body..]) {
            s += xv * wv.to_f32();
        }
        s
    }
}

/// Parallel tasks per thread in [`par_rows`]: enough that a slow thread does not hold the
/// product up.
const TASKS_PER_THREAD: usize = 8;

/// Runs `f(first_row, out_rows)` over `out`, a `[rows, width]` output, cut into tasks of at
/// least `min_rows` rows, on candle's CPU thread pool. Its workers spin between the graph's
/// products, where rayon's sleep and must be woken for each of a decode step's ~170
/// products: with the 0.5B shape on the Intel Xeon (2 threads) that was 8.9 against 9.95
/// tokens/s with f32 weights and 26.3 against 32.4 with the Q8_0 file.
pub(crate) fn par_rows(
    out: &mut [f32],
    width: usize,
    min_rows: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let width = width.max(1);
    let rows = out.len() / width;
    let pool = candle_core::utils::barrier_pool();
    let tasks = TASKS_PER_THREAD * (pool.n_workers() + 1);
    let per = rows.div_ceil(tasks).max(min_rows).max(1);
    let parts: Vec<std::sync::Mutex<(usize, &mut [f32])>> = out
        .chunks_mut(per * width)
        .enumerate()
        .map(|(t, o)| std::sync::Mutex::new((t * per, o)))
        .collect();
    pool.execute_chunked(parts.len(), |range| {
        for t in range {
            if let Ok(mut part) = parts[t].lock() {
                let (first, o) = &mut *part;
                f(*first, o);
            }
        }
    });
}

thread_local! {
    /// Each thread's buffer for [`widened_matmul`]'s tiles.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A raw output pointer shared by tasks that write disjoint parts of it.
struct Shared(*mut f32);
// SAFETY: only used by `widened_matmul`, whose tasks write disjoint columns of one buffer that
// outlives them (the pool returns after every task has finished).
#[allow(unsafe_code)]
unsafe impl Sync for Shared {}

/// `x · wᵀ` for `m` rows `x` `[m, k]` against an `[n, k]` matrix held in another form (GGUF
/// blocks, 16-bit floats) whose rows `first..` `widen(first, out)` writes as f32 into `out`:
/// `[m, n]`. The matrix is widened a tile of rows at a time into a buffer of each worker, and
/// each tile multiplied by the `gemm` crate into its columns of the output while it is still in
/// cache; workers take tiles in turn on candle's CPU pool. The whole f32 copy of the matrix
/// never exists (a 7B layer's 18,944 × 3,584 would be 271 MB, faulted in afresh for every
/// product), and each output value is one `gemm` dot product over the same f32 values as the
/// whole-matrix product, up to the kernel's order of additions.
pub(crate) fn widened_matmul(
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    widen: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    widened_matmul_into(x, m, n, k, &mut y, false, widen);
    y
}

/// [`widened_matmul`] into `y` (`[m, n]`), adding to its values when `accumulate` (a product
/// summed over chunks of `k`), overwriting them otherwise.
pub(crate) fn widened_matmul_into(
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    accumulate: bool,
    widen: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert_eq!(x.len(), m * k, "x is not [m, k]");
    assert_eq!(y.len(), m * n, "y is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            y.fill(0.0);
        }
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let tile = n.div_ceil(4 * threads).clamp(16, 256);
    let tiles = n.div_ceil(tile);
    let out = Shared(y.as_mut_ptr());
    // Tiles in turn on the pool (inline when called from one of its tasks); each thread widens
    // into a buffer of its own that lives as long as the thread.
    pool.execute_chunked(tiles, |range| {
        TILE.with(|cell| {
            let mut buf = cell.borrow_mut();
            for t in range {
                let (first, rows) = (t * tile, tile.min(n - t * tile));
                buf.resize(rows * k, 0f32);
                widen(first, &mut buf);
                let dst = &out;
                // SAFETY: writes (or, accumulating, reads and writes) `m × rows` values at
                // `y[i * n + first + j]` (row stride `n`),
                // columns `first..first + rows` of the `[m, n]` output, which no other tile
                // writes; reads `m × k` of `x` (row stride `k`) and `rows × k` of `buf`
                // (`buf[j * k + kk]` as element (kk, j) of the right-hand side), inside both.
                #[allow(unsafe_code)]
                unsafe {
                    gemm::gemm(
                        m,
                        rows,
                        k,
                        dst.0.add(first),
                        1,
                        n as isize,
                        accumulate,
                        x.as_ptr(),
                        1,
                        k as isize,
                        buf.as_ptr(),
                        k as isize,
                        1,
                        if accumulate { 1.0 } else { 0.0 },
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        })
    });
}

/// `y[i] = x · w[i, :]` for the rows of `w`, vectorised.
fn rows<W: Weight>(x: &[f32], w: &[W], y: &mut [f32]) {
    // Natively compiled for the CPU's best vector instructions; wasm32 uses its baseline.
    #[cfg(not(target_arch = "wasm32"))]
    pulp::Arch::new().dispatch(Rows { x, w, y });
    #[cfg(target_arch = "wasm32")]
    rows_body(x, w, y);
}

/// [`rows`]' arguments as a `pulp` operation, whose `with_simd` is inlined into pulp's per-ISA
/// entry points (a closure passed to `dispatch` stayed a call compiled for the baseline x86-64
/// target: SSE inside the AVX2 and AVX-512 entry points; see `attention::SoftmaxStep`).
#[cfg(not(target_arch = "wasm32"))]
struct Rows<'a, W> {
    x: &'a [f32],
    w: &'a [W],
    y: &'a mut [f32],
}

#[cfg(not(target_arch = "wasm32"))]
impl<W: Weight> pulp::WithSimd for Rows<'_, W> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        rows_body(self.x, self.w, self.y)
    }
}

#[inline(always)]
fn rows_body<W: Weight>(x: &[f32], w: &[W], y: &mut [f32]) {
    let k = x.len().max(1);
    for (yo, row) in y.iter_mut().zip(w.chunks_exact(k)) {
        *yo = dot(x, row);
    }
}

/// How far ahead of the reads the weights are prefetched, in bytes (2 KiB: 9.5 → 10.8
/// tokens/s with the 0.5B shape's f32 weights on the Intel Xeon, 2 threads; with the Q8_0
/// file 18 → 26, where 512 B gave 22, 1 KiB 24 and 4 KiB 25).
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;

/// A hint to fetch the cache line `PREFETCH` bytes after `p` into the cache.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and never faults, for
    // any address (the pointer is only offset, with wrapping arithmetic, never dereferenced).
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const i8).wrapping_add(PREFETCH),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline(always)]
fn dot<W: Weight>(x: &[f32], w: &[W]) -> f32 {
    let mut acc = [0f32; LANES];
    let body = x.len() / LANES * LANES;
    if W::BY_SLICE {
        // Stretches of whole lane groups: the additions are those of the loop below.
        let mut buf = [0f32; STRETCH];
        for (xs, ws) in x[..body].chunks(STRETCH).zip(w[..body].chunks(STRETCH)) {
            let line = 64 / std::mem::size_of::<W>().max(1);
            for o in (0..ws.len()).step_by(line) {
                prefetch(ws[o..].as_ptr());
            }
            let wf = &mut buf[..ws.len()];
            W::widen_slice(ws, wf);
            for (xa, wa) in xs.chunks_exact(LANES).zip(wf.chunks_exact(LANES)) {
                for i in 0..LANES {
                    acc[i] += xa[i] * wa[i];
                }
            }
        }
    } else {
        for (xa, wa) in x[..body]
            .chunks_exact(LANES)
            .zip(w[..body].chunks_exact(LANES))
        {
            prefetch(wa.as_ptr());
            for i in 0..LANES {
                acc[i] += xa[i] * wa[i].widen();
            }
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (xv, wv) in x[body..].iter().zip(&w[body..]) {
        s += xv * wv.widen();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[m, k]` matrix of varied values in [-2, 2) and a `k`-long input row.
    fn sample(m: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let vals = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let x = (0..k).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
        (vals, x)
    }

    /// The row products give the same bits through the vector dispatch as compiled for the
    /// baseline target (here), for f32 and bf16 weights.
    #[test]
    fn vector_dispatch_keeps_the_baseline_bits() {
        let (m, k) = (37, 515);
        let (vals, x) = sample(m, k);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (mut a, mut b) = (vec![0f32; m], vec![0f32; m]);
        rows(&x, &vals, &mut a);
        rows_body(&x, &vals, &mut b);
        assert_eq!(bits(&a), bits(&b));
        let halves: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
        rows(&x, &halves, &mut a);
        rows_body(&x, &halves, &mut b);
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn f16_widening_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (got, want) = (h.widen(), h.to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn half_matrices_multiply_as_their_f32_values() {
        let (m, k) = (700, 515);
        let (vals, x) = sample(m, k);
        for bf in [false, true] {
            let bytes: Vec<u8> = vals
                .iter()
                .flat_map(|&v| {
                    let b = if bf {
                        bf16::from_f32(v).to_bits()
                    } else {
                        f16::from_f32(v).to_bits()
                    };
                    b.to_le_bytes()
                })
                .collect();
            let w = HalfMatrix::from_le_bytes(bf, m, k, &bytes).expect("shape");
            let w32 = w.dequantize();
            assert_eq!(w.row(3), w32[3 * k..4 * k].to_vec());
            // The F16C kernel (where this CPU has it) and the portable loop: the same sums.
            assert_eq!(w.matvec(&x), gemv(&x, &w32), "bf16: {bf}");
        }
    }

    #[test]
    fn matches_a_plain_f64_product_on_uneven_shapes() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (m, k) in [(1, 1), (3, 17), (130, 300), (700, 515), (3000, 100)] {
            let x: Vec<f32> = (0..k).map(|_| next()).collect();
            let w: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(next())).collect();
            let y = gemv_bf16(&x, &w);
            for (i, got) in y.iter().enumerate() {
                let want: f64 = (0..k)
                    .map(|j| f64::from(x[j]) * f64::from(w[i * k + j].to_f32()))
                    .sum();
                assert!((f64::from(*got) - want).abs() < 1e-4, "{m}x{k} row {i}");
            }
            let w32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            assert_eq!(
                gemv(&x, &w32),
                y,
                "{m}x{k}: f32 and bf16 weights of equal values"
            );
        }
    }
}
