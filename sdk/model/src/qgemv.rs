//! Products of a few rows (decoding: one) with GGUF quantized matrices, read in their blocks:
//! Q8_0, Q4_0, Q5_0, Q4_K and Q6_K (what Q8_0, Q4_0 and Q4_K_M files hold: a Q4_K_M file of a
//! model whose rows are not whole 256-value blocks holds Q5_0 matrices in their place).
//!
//! The way llama.cpp computes them: the activation row is quantized once per product to 8-bit
//! blocks (32 values and an f32 scale for Q8_0/Q4_0/Q5_0, 256 values for the k-quants, with the sums
//! of its 16- and 32-value groups), and each weight block is dotted with it in integers
//! (`maddubs`/`madd` on AVX2), scaled once per block. The weights are read once per product,
//! prefetched ahead of the reads, in parallel over the output rows on candle's CPU thread pool;
//! a product of `m` rows reads each weight block once for all of them.
//!
//! x86-64 with AVX2, FMA and F16C (detected at run time) takes the vector kernels; elsewhere
//! [`QMatrix::available`] says no and the caller keeps candle's kernels. The scalar code below
//! is the reference the vector kernels are tested against (same integer sums, same rounding of
//! the activation).

use half::f16;
use rayon::prelude::*;
use visionthink_core::gguf::GgmlType;

/// The block types this module computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 32 values: f16 scale, 32 × i8.
    Q8_0,
    /// 32 values: f16 scale, 32 × 4 bits (value − 8).
    Q4_0,
    /// 32 values: f16 scale, 32 high bits, 32 × 4 low bits (value − 16).
    Q5_0,
    /// 256 values: f16 scale and min, 8 sub-blocks with 6-bit scales and mins, 4-bit values.
    Q4K,
    /// 256 values: 6-bit values (low 4 bits, high 2 bits), 16 i8 scales, f16 scale.
    Q6K,
}

impl Kind {
    /// The kind for a GGUF type, if this module computes with it.
    pub fn from_ggml(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q4_K => Self::Q4K,
            GgmlType::Q6_K => Self::Q6K,
            _ => return None,
        })
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q4_0 | Self::Q5_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q5_0 => 22,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }
}

/// Below this many weight bytes the product runs on the calling thread.
const PARALLEL_MIN_BYTES: usize = 1 << 18;

/// Output rows per parallel task, at least.
const ROWS_PER_TASK: usize = 32;

/// A `[rows, cols]` matrix of GGUF blocks, row-major, as the file stores it.
#[derive(Debug, Clone)]
pub struct QMatrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// A matrix whose shape does not fit its blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} matrix [{rows}, {cols}]: {reason}")]
pub struct ShapeError {
    kind: Kind,
    rows: usize,
    cols: usize,
    reason: String,
}

impl QMatrix {
    /// Whether this CPU runs the vector kernels (x86-64 with AVX2, FMA and F16C).
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The matrix of `rows` rows of `cols` values held in `bytes` (copied).
    ///
    /// ```
    /// use visionthink_model::qgemv::{Kind, QMatrix};
    /// // One Q8_0 block (scale 0.5 as f16, values 0, 1, 2, …) per row, two rows.
    /// let mut bytes = Vec::new();
    /// for _ in 0..2 {
    ///     bytes.extend_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
    ///     bytes.extend((0..32).map(|v| v as u8));
    /// }
    /// let w = QMatrix::new(Kind::Q8_0, 2, 32, &bytes).unwrap();
    /// let x = vec![1.0f32; 32];
    /// let y = w.matmul(&x, 1);
    /// // 0.5 · (0 + 1 + … + 31) = 248, up to the activation's rounding to 8 bits (its
    /// // scale 1/127 stored as an f16, as llama.cpp stores it).
    /// assert!((y[0] - 248.0).abs() < 0.05 && (y[1] - 248.0).abs() < 0.05);
    /// assert_eq!(w.dequantize_row(0)[3], 1.5);
    /// ```
    pub fn new(kind: Kind, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, ShapeError> {
        Self::check(kind, rows, cols, bytes.len())?;
        Ok(Self {
            kind,
            rows,
            cols,
            data: bytes.to_vec(),
        })
    }

    /// [`Self::new`] taking the blocks it holds (no copy).
    pub fn from_vec(
        kind: Kind,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, ShapeError> {
        Self::check(kind, rows, cols, data.len())?;
        Ok(Self {
            kind,
            rows,
            cols,
            data,
        })
    }

    fn check(kind: Kind, rows: usize, cols: usize, len: usize) -> Result<(), ShapeError> {
        let err = |reason: String| ShapeError {
            kind,
            rows,
            cols,
            reason,
        };
        if cols % kind.block_values() != 0 {
            return Err(err(format!(
                "rows are not whole blocks of {} values",
                kind.block_values()
            )));
        }
        let want = rows
            .checked_mul(cols / kind.block_values())
            .and_then(|b| b.checked_mul(kind.block_bytes()));
        if want != Some(len) {
            return Err(err(format!("{len} bytes of blocks")));
        }
        Ok(())
    }

    /// Block type.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes of blocks held.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.kind.block_values() * self.kind.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Rows `first..first + out.len() / cols` as f32 into `out`.
    fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        if rb == 0 {
            return;
        }
        let rows = self.data[first * rb..].chunks_exact(rb);
        for (o, d) in out.chunks_exact_mut(self.cols).zip(rows) {
            dequantize_into(self.kind, d, o);
        }
    }

    /// Row `r` as f32 values.
    pub fn dequantize_row(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        self.dequantize_rows(r, &mut out);
        out
    }

    /// The whole matrix as f32 values, `[rows, cols]` row-major (rows in parallel).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols == 0 {
            return out;
        }
        out.par_chunks_mut(self.cols * 64)
            .enumerate()
            .for_each(|(i, o)| self.dequantize_rows(64 * i, o));
        out
    }

    /// `x · wᵀ` for `m` rows `x` `[m, cols]`: `[m, rows]`, in f32 on the dequantized values
    /// (a prefill: enough rows that the f32 GEMM outruns integer products), a tile of rows
    /// dequantized at a time ([`crate::gemv::widened_matmul`]).
    pub fn matmul_dequantized(&self, x: &[f32], m: usize) -> Vec<f32> {
        crate::gemv::widened_matmul(x, m, self.rows, self.cols, |first, out| {
            self.dequantize_rows(first, out)
        })
    }

    /// Columns `cols` (whole blocks) of rows `first..first + out.len() / cols.len()` as f32
    /// into `out`.
    fn dequantize_columns(&self, first: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
        let (bv, bb) = (self.kind.block_values(), self.kind.block_bytes());
        let width = cols.len();
        if width == 0 {
            return;
        }
        let bytes = cols.start / bv * bb..cols.end / bv * bb;
        for (i, o) in out.chunks_exact_mut(width).enumerate() {
            dequantize_into(self.kind, &self.row(first + i)[bytes.clone()], o);
        }
    }

    /// `x · wᵀ` for `m` rows `x` `[m, cols]`: `[m, rows]`, with `x` quantized to 8 bits per
    /// block as llama.cpp does. Vector kernels when [`Self::available`], the scalar reference
    /// otherwise.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, Self::available())
    }

    fn matmul_with(&self, x: &[f32], m: usize, vector: bool) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "x is not [m, cols]");
        let acts: Vec<Act> = x
            .chunks_exact(self.cols.max(1))
            .take(m)
            .map(|r| Act::quantize(r, self.kind.block_values()))
            .collect();
        // Output transposed, [rows, m]: each task writes whole rows of it.
        let mut yt = vec![0f32; self.rows * m];
        let work = |first: usize, out: &mut [f32]| {
            for (i, o) in out.chunks_exact_mut(m.max(1)).enumerate() {
                let w = self.row(first + i);
                for (a, slot) in acts.iter().zip(o.iter_mut()) {
                    *slot = dot(self.kind, w, a, vector);
                }
            }
        };
        if m == 0 || self.rows == 0 {
            return yt;
        }
        if self.data.len() < PARALLEL_MIN_BYTES {
            work(0, &mut yt);
        } else {
            crate::gemv::par_rows(&mut yt, m, ROWS_PER_TASK, work);
        }
        if m == 1 {
            return yt;
        }
        let mut y = vec![0f32; m * self.rows];
        for r in 0..self.rows {
            for j in 0..m {
                y[j * self.rows + r] = yt[r * m + j];
            }
        }
        y
    }
}

/// One activation row quantized to 8 bits: per block of `bv` values (32 or 256) an f32 scale,
/// and the sums of each 16 values.
struct Act {
    q: Vec<i8>,
    d: Vec<f32>,
    sum16: Vec<i32>,
}

impl Act {
    /// ggml's rounding, so that our products are llama.cpp's to within the order of the float
    /// additions (a random-weight model's greedy text, which near-ties steer, then stays the
    /// same): 32-value blocks as `quantize_row_q8_0` (scale `amax / 127` stored as f16, values
    /// rounded to nearest-even from the unrounded scale), 256-value blocks as
    /// `quantize_row_q8_K` (scale `−max / 127` from the value of largest magnitude, kept in f32).
    fn quantize(x: &[f32], bv: usize) -> Self {
        let mut q = vec![0i8; x.len()];
        let mut d = Vec::with_capacity(x.len() / bv);
        for (xb, qb) in x.chunks_exact(bv).zip(q.chunks_exact_mut(bv)) {
            let (max, amax) = xb.iter().fold((0f32, 0f32), |(m, a), &v| {
                if v.abs() > a {
                    (v, v.abs())
                } else {
                    (m, a)
                }
            });
            if bv == 32 {
                let scale = amax / 127.0;
                let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                for (qv, xv) in qb.iter_mut().zip(xb) {
                    *qv = (xv * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                }
                d.push(f16::from_f32(scale).to_f32());
            } else if amax == 0.0 {
                d.push(0.0);
            } else {
                let inv = -127.0 / max;
                for (qv, xv) in qb.iter_mut().zip(xb) {
                    *qv = (inv * xv).round_ties_even().clamp(-128.0, 127.0) as i8;
                }
                d.push(1.0 / inv);
            }
        }
        // The 16-value sums serve the k-quants' mins and offsets only.
        let sum16 = if bv == 256 {
            q.chunks_exact(16)
                .map(|g| g.iter().map(|&v| i32::from(v)).sum())
                .collect()
        } else {
            Vec::new()
        };
        Self { q, d, sum16 }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Sub-block `j`'s 6-bit scale and min of a Q4_K block's 12 packed bytes (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The integer values of one block, in value order (Q4_K: 0..=15 before scale and min; Q6_K:
/// −32..=31; Q8_0, Q4_0 and Q5_0: as multiplied by the scale).
fn block_ints(kind: Kind, b: &[u8], out: &mut [i32]) {
    match kind {
        Kind::Q8_0 => {
            for (o, &v) in out.iter_mut().zip(&b[2..34]) {
                *o = i32::from(v as i8);
            }
        }
        Kind::Q4_0 => {
            for (j, &v) in b[2..18].iter().enumerate() {
                out[j] = i32::from(v & 0xF) - 8;
                out[j + 16] = i32::from(v >> 4) - 8;
            }
        }
        Kind::Q5_0 => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (j, &v) in b[6..22].iter().enumerate() {
                let hi = |bit: usize| (((qh >> bit) & 1) << 4) as u8;
                out[j] = i32::from((v & 0xF) | hi(j)) - 16;
                out[j + 16] = i32::from((v >> 4) | hi(j + 16)) - 16;
            }
        }
        Kind::Q4K => {
            let qs = &b[16..144];
            for c in 0..4 {
                for l in 0..32 {
                    let v = qs[32 * c + l];
                    out[64 * c + l] = i32::from(v & 0xF);
                    out[64 * c + 32 + l] = i32::from(v >> 4);
                }
            }
        }
        Kind::Q6K => {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            for h in 0..2 {
                let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
                for l in 0..32 {
                    let o = &mut out[128 * h..];
                    o[l] = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                    o[32 + l] = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    o[64 + l] = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    o[96 + l] = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                }
            }
        }
    }
}

/// Intermediate values of [`swiglu_mlp_add`] computed at a time (rounded to whole blocks of
/// the down projection).
const MLP_CHUNK: usize = 512;

/// `y += down · (silu(h · gateᵀ) ⊙ (h · upᵀ))` for `m` rows `h` `[m, hidden]` (a SwiGLU MLP
/// added to the residual `y`, `[m, hidden]`), the intermediate dimension taken
/// [`MLP_CHUNK`] values at a time: each chunk's gate and up products, their SwiGLU, and that
/// chunk's share of the down projection summed into `y`. Every weight is widened once, as by
/// [`QMatrix::matmul_dequantized`], and the activations never exceed `m × MLP_CHUNK` per
/// product (a whole `m × intermediate` gate, up and product are 30 MB in a 512-token prefill
/// of the 0.5B shape). The values are those of the three separate products up to the order of
/// the down projection's additions.
///
/// # Errors
/// Shapes that do not chain (`gate` and `up` `[inter, hidden]`, `down` `[hidden, inter]`),
/// or inputs of the wrong length.
///
/// ```
/// use visionthink_model::qgemv::{swiglu_mlp_add, Kind, QMatrix};
/// // Q8_0 blocks of 32 values: a scale (f16 1.0 = 0x3c00) and 32 signed bytes.
/// let block = |v: i8| [[0x00u8, 0x3c].as_slice(), &[v as u8; 32]].concat();
/// let gate = QMatrix::from_vec(Kind::Q8_0, 32, 32, block(1).repeat(32)).unwrap();
/// let up = QMatrix::from_vec(Kind::Q8_0, 32, 32, block(1).repeat(32)).unwrap();
/// let down = QMatrix::from_vec(Kind::Q8_0, 32, 32, block(0).repeat(32)).unwrap();
/// let mut y = vec![1f32; 32];
/// swiglu_mlp_add(&[0.5f32; 32], 1, &gate, &up, &down, &mut y).unwrap();
/// assert!(y.iter().all(|&v| v == 1.0)); // a zero down projection adds nothing
/// ```
pub fn swiglu_mlp_add(
    h: &[f32],
    m: usize,
    gate: &QMatrix,
    up: &QMatrix,
    down: &QMatrix,
    y: &mut [f32],
) -> Result<(), ShapeError> {
    let (inter, hidden) = (gate.rows, gate.cols);
    let fail = |w: &QMatrix, reason: &str| ShapeError {
        kind: w.kind,
        rows: w.rows,
        cols: w.cols,
        reason: reason.to_string(),
    };
    if (up.rows, up.cols) != (inter, hidden) {
        return Err(fail(up, "up projection does not match the gate's shape"));
    }
    if (down.rows, down.cols) != (hidden, inter) {
        return Err(fail(
            down,
            "down projection does not match the gate's transpose",
        ));
    }
    if h.len() != m * hidden || y.len() != m * hidden {
        return Err(fail(gate, "input or residual is not [m, hidden]"));
    }
    let bv = down.kind.block_values();
    let chunk = (MLP_CHUNK / bv).max(1) * bv;
    let mut start = 0;
    while start < inter {
        let len = chunk.min(inter - start);
        let mut g = crate::gemv::widened_matmul(h, m, len, hidden, |first, out| {
            gate.dequantize_rows(start + first, out)
        });
        let u = crate::gemv::widened_matmul(h, m, len, hidden, |first, out| {
            up.dequantize_rows(start + first, out)
        });
        // SwiGLU in place (as the backend's fused `swiglu`).
        let act = |first: usize, o: &mut [f32]| {
            crate::attention::silu_mul_in_place(o, &u[first..first + o.len()]);
        };
        if g.len() < 1 << 15 {
            act(0, &mut g);
        } else {
            crate::gemv::par_rows(&mut g, 1, 1 << 14, act);
        }
        crate::gemv::widened_matmul_into(&g, m, hidden, len, y, true, |first, out| {
            down.dequantize_columns(first, start..start + len, out)
        });
        start += len;
    }
    Ok(())
}

/// A row's blocks as f32 values (ggml's dequantization).
fn dequantize_into(kind: Kind, row: &[u8], out: &mut [f32]) {
    let (bv, bb) = (kind.block_values(), kind.block_bytes());
    let mut ints = [0i32; 256];
    for (b, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(bv)) {
        block_ints(kind, b, &mut ints[..bv]);
        match kind {
            Kind::Q8_0 | Kind::Q4_0 | Kind::Q5_0 => {
                let d = f16_at(b, 0);
                for (ov, &q) in o.iter_mut().zip(&ints[..bv]) {
                    *ov = d * q as f32;
                }
            }
            Kind::Q4K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                for s in 0..8 {
                    let (sc, mn) = scale_min_k4(s, &b[4..16]);
                    let (d1, m1) = (d * f32::from(sc), dmin * f32::from(mn));
                    for l in 0..32 {
                        o[32 * s + l] = d1 * ints[32 * s + l] as f32 - m1;
                    }
                }
            }
            Kind::Q6K => {
                let d = f16_at(b, 208);
                for (v, ov) in o.iter_mut().enumerate() {
                    let sc = f32::from(b[192 + v / 16] as i8);
                    *ov = d * sc * ints[v] as f32;
                }
            }
        }
    }
}

/// One weight row dotted with one quantized activation row.
fn dot(kind: Kind, w: &[u8], a: &Act, vector: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)] // the AVX2 kernels: intrinsics and raw pointers into checked blocks
    if vector {
        // SAFETY: `vector` is only true where `QMatrix::available` found AVX2, FMA and F16C;
        // the row holds whole blocks and `a` as many values (checked by `QMatrix::new` and
        // `matmul`).
        return unsafe {
            match kind {
                Kind::Q8_0 => avx2::dot_q8_0(w, a),
                Kind::Q4_0 => avx2::dot_q4_0(w, a),
                Kind::Q5_0 => avx2::dot_q5_0(w, a),
                Kind::Q4K => avx2::dot_q4k(w, a),
                Kind::Q6K => avx2::dot_q6k(w, a),
            }
        };
    }
    let _ = vector;
    dot_scalar(kind, w, a)
}

/// The reference: integer sums per block, scaled as the vector kernels scale them.
fn dot_scalar(kind: Kind, w: &[u8], a: &Act) -> f32 {
    let (bv, bb) = (kind.block_values(), kind.block_bytes());
    let mut ints = [0i32; 256];
    let mut acc = 0f32;
    for (i, b) in w.chunks_exact(bb).enumerate() {
        block_ints(kind, b, &mut ints[..bv]);
        let q = &a.q[i * bv..(i + 1) * bv];
        let dx = a.d[i];
        match kind {
            Kind::Q8_0 | Kind::Q4_0 | Kind::Q5_0 => {
                let s: i32 = ints[..bv]
                    .iter()
                    .zip(q)
                    .map(|(&w, &x)| w * i32::from(x))
                    .sum();
                acc += f16_at(b, 0) * dx * s as f32;
            }
            Kind::Q4K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (mut si, mut sm) = (0i32, 0i32);
                for s in 0..8 {
                    let (sc, mn) = scale_min_k4(s, &b[4..16]);
                    let part: i32 = (0..32)
                        .map(|l| ints[32 * s + l] * i32::from(q[32 * s + l]))
                        .sum();
                    si += i32::from(sc) * part;
                    sm += i32::from(mn) * (a.sum16[i * 16 + 2 * s] + a.sum16[i * 16 + 2 * s + 1]);
                }
                acc += dx * (d * si as f32 - dmin * sm as f32);
            }
            Kind::Q6K => {
                let d = f16_at(b, 208);
                let mut si = 0i32;
                for g in 0..16 {
                    let part: i32 = (0..16)
                        .map(|l| ints[16 * g + l] * i32::from(q[16 * g + l]))
                        .sum();
                    si += i32::from(b[192 + g] as i8) * part;
                }
                acc += d * dx * si as f32;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics over raw pointers into whole blocks (lengths checked by callers)
mod avx2 {
    //! The AVX2 kernels. Each sums a block's integer products exactly (in i16 pairs that
    //! cannot overflow: |w| ≤ 128 against |x| ≤ 127 for the 8-bit types, 0..=63 against
    //! |x| ≤ 127 for the k-quants) and scales the block's i32 sum once.

    use super::Act;
    use std::arch::x86_64::*;

    /// Prefetches the `len` bytes from `p` ahead of the reads ([`crate::gemv::prefetch`]), one
    /// cache line at a time.
    #[inline(always)]
    fn prefetch(p: *const u8, len: usize) {
        for o in (0..len).step_by(64) {
            crate::gemv::prefetch(p.wrapping_add(o));
        }
    }

    #[inline(always)]
    unsafe fn f16(b: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*b, *b.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    #[inline(always)]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Σ x·y over 32 signed bytes each, as 8 i32 lanes (the sign trick: |x| as unsigned
    /// against y carrying x's sign).
    #[inline(always)]
    unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    }

    /// A block of 32 values with an f16 scale in front: its size and its values as signed
    /// bytes, in value order.
    trait Block32 {
        const BYTES: usize;
        unsafe fn values(b: *const u8) -> __m256i;
    }

    struct Q8_0;
    impl Block32 for Q8_0 {
        const BYTES: usize = 34;
        #[inline(always)]
        unsafe fn values(b: *const u8) -> __m256i {
            _mm256_loadu_si256(b.add(2) as *const __m256i)
        }
    }

    /// The 16 bytes at `b` as 32 values 0..16 in value order (the low nibbles are values
    /// 0..16, the high ones 16..32).
    #[inline(always)]
    unsafe fn nibbles(b: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(b as *const __m128i);
        let m = _mm_set1_epi8(0xF);
        let lo = _mm_and_si128(raw, m);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    struct Q4_0;
    impl Block32 for Q4_0 {
        const BYTES: usize = 18;
        /// The 32 nibbles − 8.
        #[inline(always)]
        unsafe fn values(b: *const u8) -> __m256i {
            _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8))
        }
    }

    struct Q5_0;
    impl Block32 for Q5_0 {
        const BYTES: usize = 22;
        /// The 32 nibbles with their high bits (bit `v` of the 32-bit field after the scale
        /// is value `v`'s), − 16.
        #[inline(always)]
        unsafe fn values(b: *const u8) -> __m256i {
            let bits = (b.add(2) as *const u32).read_unaligned();
            // Byte v takes byte v / 8 of the field; it is all ones where every bit but bit v % 8
            // is forced on and the field's bit v was on.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(bits as i32),
                _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                ),
            );
            let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
            let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
            let high = _mm256_and_si256(set, _mm256_set1_epi8(0x10));
            _mm256_sub_epi8(
                _mm256_or_si256(nibbles(b.add(6)), high),
                _mm256_set1_epi8(16),
            )
        }
    }

    /// A row of 32-value blocks against the activation: two blocks per step on two
    /// accumulators, the weights prefetched ahead. Inlined into each `target_feature` caller.
    #[inline(always)]
    unsafe fn dot_32<B: Block32>(w: &[u8], a: &Act) -> f32 {
        let n = w.len() / B::BYTES;
        let mut acc = [_mm256_setzero_ps(); 2];
        let (wp, qp) = (w.as_ptr(), a.q.as_ptr());
        for i in 0..n {
            let b = wp.add(B::BYTES * i);
            if i % 2 == 0 {
                prefetch(b, 2 * B::BYTES);
            }
            let p = dot_i8(
                B::values(b),
                _mm256_loadu_si256(qp.add(32 * i) as *const __m256i),
            );
            let s = _mm256_set1_ps(f16(b) * *a.d.get_unchecked(i));
            acc[i % 2] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(p), acc[i % 2]);
        }
        hsum_ps(_mm256_add_ps(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(w: &[u8], a: &Act) -> f32 {
        dot_32::<Q8_0>(w, a)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_0(w: &[u8], a: &Act) -> f32 {
        dot_32::<Q4_0>(w, a)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q5_0(w: &[u8], a: &Act) -> f32 {
        dot_32::<Q5_0>(w, a)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4k(w: &[u8], a: &Act) -> f32 {
        let n = w.len() / 144;
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        let m4 = _mm256_set1_epi8(0xF);
        for i in 0..n {
            let b = w.as_ptr().add(144 * i);
            prefetch(b, 144);
            let s = std::slice::from_raw_parts(b.add(4), 12);
            let dx = *a.d.get_unchecked(i);
            let d = f16(b) * dx;
            let dmin = f16(b.add(2)) * dx;
            let q = a.q.as_ptr().add(256 * i);
            let sums = a.sum16.get_unchecked(16 * i..16 * i + 16);
            let mut isum = _mm256_setzero_si256();
            let mut msum = 0i32;
            for c in 0..4 {
                let (sc0, mn0) = super::scale_min_k4(2 * c, s);
                let (sc1, mn1) = super::scale_min_k4(2 * c + 1, s);
                msum += i32::from(mn0) * (sums[4 * c] + sums[4 * c + 1])
                    + i32::from(mn1) * (sums[4 * c + 2] + sums[4 * c + 3]);
                let raw = _mm256_loadu_si256(b.add(16 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(raw, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                let y0 = _mm256_loadu_si256(q.add(64 * c) as *const __m256i);
                let y1 = _mm256_loadu_si256(q.add(64 * c + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, y0),
                    _mm256_set1_epi16(i16::from(sc0)),
                );
                let p1 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, y1),
                    _mm256_set1_epi16(i16::from(sc1)),
                );
                isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
            mins += dmin * msum as f32;
        }
        hsum_ps(acc) - mins
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q6k(w: &[u8], a: &Act) -> f32 {
        let n = w.len() / 210;
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        for i in 0..n {
            let b = w.as_ptr().add(210 * i);
            prefetch(b, 210);
            let d = f16(b.add(208)) * *a.d.get_unchecked(i);
            let sc = b.add(192) as *const i8;
            let q = a.q.as_ptr().add(256 * i);
            let sums = a.sum16.get_unchecked(16 * i..16 * i + 16);
            // The −32 of every value, through the activation's 16-value sums.
            let mut off = 0i32;
            for (g, &s) in sums.iter().enumerate() {
                off += i32::from(*sc.add(g)) * s;
            }
            let mut isum = _mm256_setzero_si256();
            for h in 0..2 {
                let ql0 = _mm256_loadu_si256(b.add(64 * h) as *const __m256i);
                let ql1 = _mm256_loadu_si256(b.add(64 * h + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i);
                let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
                let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4);
                let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4);
                let vals = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), h1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3),
                ];
                for (j, v) in vals.iter().enumerate() {
                    let g = 8 * h + 2 * j;
                    let scales = _mm256_set_m128i(
                        _mm_set1_epi16(i16::from(*sc.add(g + 1))),
                        _mm_set1_epi16(i16::from(*sc.add(g))),
                    );
                    let y = _mm256_loadu_si256(q.add(128 * h + 32 * j) as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*v, y), scales);
                    isum = _mm256_add_epi32(isum, p);
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
            offset += d * (32 * off) as f32;
        }
        hsum_ps(acc) - offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) as u32
        }
        fn f(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 - 0.5
        }
    }

    /// Random blocks: random bytes everywhere, with finite, modest f16 scales.
    fn random_matrix(kind: Kind, rows: usize, cols: usize, rng: &mut Lcg) -> QMatrix {
        let (bv, bb) = (kind.block_values(), kind.block_bytes());
        let mut data = vec![0u8; rows * cols / bv * bb];
        for b in data.chunks_exact_mut(bb) {
            for v in b.iter_mut() {
                *v = rng.next() as u8;
            }
            let scale = |rng: &mut Lcg| f16::from_f32(0.01 + 0.05 * rng.f().abs()).to_bits();
            let at: &[usize] = match kind {
                Kind::Q8_0 | Kind::Q4_0 | Kind::Q5_0 => &[0],
                Kind::Q4K => &[0, 2],
                Kind::Q6K => &[208],
            };
            for &o in at {
                b[o..o + 2].copy_from_slice(&scale(rng).to_le_bytes());
            }
        }
        QMatrix::new(kind, rows, cols, &data).expect("whole blocks")
    }

    const KINDS: [Kind; 5] = [Kind::Q8_0, Kind::Q4_0, Kind::Q5_0, Kind::Q4K, Kind::Q6K];

    #[test]
    fn vector_kernels_equal_the_scalar_reference() {
        if !QMatrix::available() {
            eprintln!("no AVX2/FMA/F16C here: only the scalar path exists");
            return;
        }
        let mut rng = Lcg(3);
        for kind in KINDS {
            for (rows, cols, m) in [(5, 256, 1), (300, 512, 1), (2000, 768, 3), (33, 256, 15)] {
                let w = random_matrix(kind, rows, cols, &mut rng);
                let x: Vec<f32> = (0..m * cols).map(|_| rng.f() * 4.0).collect();
                let v = w.matmul_with(&x, m, true);
                let s = w.matmul_with(&x, m, false);
                let wf = w.dequantize();
                for (i, (a, b)) in v.iter().zip(&s).enumerate() {
                    // Equal integer sums; the f32 scaling differs in order only, so the error
                    // is relative to the terms' magnitudes (k-quants subtract the mins).
                    let (j, r) = (i / rows, i % rows);
                    let mag: f32 = x[j * cols..(j + 1) * cols]
                        .iter()
                        .zip(&wf[r * cols..(r + 1) * cols])
                        .map(|(p, q)| (p * q).abs())
                        .sum();
                    let tol = 1e-5 * mag.max(1.0);
                    assert!(
                        (a - b).abs() <= tol,
                        "{kind:?} {rows}x{cols} m={m} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn products_approximate_the_dequantized_matrix() {
        let mut rng = Lcg(11);
        for kind in KINDS {
            let (rows, cols, m) = (64, 512, 2);
            let w = random_matrix(kind, rows, cols, &mut rng);
            let x: Vec<f32> = (0..m * cols).map(|_| rng.f()).collect();
            let y = w.matmul(&x, m);
            let wf = w.dequantize();
            for j in 0..m {
                for r in 0..rows {
                    let xr = &x[j * cols..(j + 1) * cols];
                    let wr = &wf[r * cols..(r + 1) * cols];
                    let exact: f64 = xr.iter().zip(wr).map(|(a, b)| f64::from(a * b)).sum();
                    // The activation rounded to 8 bits: at most half a step of its block's
                    // scale per value (plus, for 32-value blocks, the scale's own rounding to
                    // f16: 127 · 2⁻¹¹ of a step), times the weights' magnitudes.
                    let bound: f64 = xr
                        .chunks(kind.block_values())
                        .zip(wr.chunks(kind.block_values()))
                        .map(|(xb, wb)| {
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                            let step = f64::from(amax / 127.0) * (0.5 + 127.0 / 2048.0);
                            step * wb.iter().map(|v| f64::from(v.abs())).sum::<f64>()
                        })
                        .sum();
                    let got = f64::from(y[j * rows + r]);
                    assert!(
                        (got - exact).abs() <= bound * 1.01 + 1e-4,
                        "{kind:?} row {r} of x {j}: {got} vs {exact} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn tiled_products_equal_the_dequantized_matrix() {
        // Uneven tiles (700 rows), more rows than one tile per thread, m past one gemm block.
        let mut rng = Lcg(17);
        for kind in [Kind::Q4_0, Kind::Q6K] {
            let (rows, cols, m) = (700, 512, 37);
            let w = random_matrix(kind, rows, cols, &mut rng);
            let x: Vec<f32> = (0..m * cols).map(|_| rng.f()).collect();
            let y = w.matmul_dequantized(&x, m);
            let wf = w.dequantize();
            for j in 0..m {
                for r in 0..rows {
                    let terms = x[j * cols..(j + 1) * cols]
                        .iter()
                        .zip(&wf[r * cols..(r + 1) * cols])
                        .map(|(a, b)| f64::from(*a) * f64::from(*b));
                    let exact: f64 = terms.clone().sum();
                    // f32 sums: an error relative to the terms' magnitudes.
                    let tol = 1e-5 * terms.map(f64::abs).sum::<f64>().max(1.0);
                    let got = f64::from(y[j * rows + r]);
                    assert!(
                        (got - exact).abs() <= tol,
                        "{kind:?} [{j}, {r}]: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn chunked_mlp_equals_the_composed_products() {
        // An intermediate size of 768: one chunk of 512 and a short one of 256 (whole Q4_K
        // and Q6_K blocks), gate and up in one kind and the down projection in another (as
        // Q4_K_M files mix them), m past one gemm block.
        let mut rng = Lcg(23);
        let (hidden, inter, m) = (256, 768, 37);
        for (gk, dk) in [(Kind::Q4K, Kind::Q6K), (Kind::Q8_0, Kind::Q4_0)] {
            let gate = random_matrix(gk, inter, hidden, &mut rng);
            let up = random_matrix(gk, inter, hidden, &mut rng);
            let down = random_matrix(dk, hidden, inter, &mut rng);
            let h: Vec<f32> = (0..m * hidden).map(|_| rng.f()).collect();
            let residual: Vec<f32> = (0..m * hidden).map(|_| rng.f()).collect();
            let mut y = residual.clone();
            swiglu_mlp_add(&h, m, &gate, &up, &down, &mut y).expect("shapes chain");
            let (gf, uf, df) = (gate.dequantize(), up.dequantize(), down.dequantize());
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum()
            };
            for j in 0..m {
                let hj = &h[j * hidden..(j + 1) * hidden];
                let act: Vec<f32> = (0..inter)
                    .map(|i| {
                        let g = dot(hj, &gf[i * hidden..(i + 1) * hidden]);
                        let u = dot(hj, &uf[i * hidden..(i + 1) * hidden]);
                        (g / (1.0 + (-g).exp()) * u) as f32
                    })
                    .collect();
                for r in 0..hidden {
                    let row = &df[r * inter..(r + 1) * inter];
                    let exact = f64::from(residual[j * hidden + r]) + dot(&act, row);
                    let scale: f64 = act
                        .iter()
                        .zip(row)
                        .map(|(a, w)| f64::from(*a * *w).abs())
                        .sum();
                    let got = f64::from(y[j * hidden + r]);
                    assert!(
                        (got - exact).abs() <= 1e-4 * scale.max(1.0),
                        "{gk:?}/{dk:?} [{j}, {r}]: {got} vs {exact}"
                    );
                }
            }
        }
        // Shapes that do not chain are errors, not panics.
        let g = random_matrix(Kind::Q8_0, 64, 32, &mut rng);
        let d = random_matrix(Kind::Q8_0, 64, 32, &mut rng);
        let mut y = vec![0f32; 32];
        assert!(swiglu_mlp_add(&[0f32; 32], 1, &g, &g, &d, &mut y).is_err());
    }

    #[test]
    fn dequantization_matches_candles() {
        use candle_core::quantized::{GgmlDType, QStorage, QTensor};
        let mut rng = Lcg(5);
        for (kind, dt) in [
            (Kind::Q8_0, GgmlDType::Q8_0),
            (Kind::Q4_0, GgmlDType::Q4_0),
            (Kind::Q5_0, GgmlDType::Q5_0),
            (Kind::Q4K, GgmlDType::Q4K),
            (Kind::Q6K, GgmlDType::Q6K),
        ] {
            let w = random_matrix(kind, 8, 512, &mut rng);
            let q = QTensor::new(
                QStorage::from_data(
                    std::borrow::Cow::Borrowed(&w.data),
                    &candle_core::Device::Cpu,
                    dt,
                )
                .expect("storage"),
                (8, 512),
            )
            .expect("tensor");
            let theirs = q
                .dequantize(&candle_core::Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .expect("dequantize");
            assert_eq!(w.dequantize(), theirs, "{kind:?}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_their_blocks_are_errors() {
        assert!(QMatrix::new(Kind::Q4K, 2, 128, &[0; 144]).is_err());
        assert!(QMatrix::new(Kind::Q8_0, 2, 32, &[0; 67]).is_err());
        assert!(QMatrix::new(Kind::Q6K, usize::MAX, 256, &[]).is_err());
    }
}
