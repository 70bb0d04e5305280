//! Pillow's 8-bit separable resampler, reproduced from its published algorithm
//! (`libImaging/Resample.c`): coefficients in f64, normalised per output pixel, converted to
//! fixed point with 22 fractional bits (rounding away from zero), accumulated in integers with a
//! half-unit bias, shifted and clipped to `0..=255`. Each pass writes `u8`, so the order of the
//! passes matters; [`PassOrder`] says which one is used and the golden fixtures say which one the
//! pinned Pillow version uses.

use super::rgb::RgbImage;

/// The two resampling filters the VisionThink pipeline needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow `Image.BICUBIC` (Keys kernel, a = -0.5, support 2): the Qwen2-VL processor.
    Bicubic,
    /// Pillow `Image.LANCZOS` (Lanczos-3, support 3): the VisionThink half-size image.
    Lanczos,
}

/// Which one-dimensional pass runs first. Intermediate results are rounded to `u8`, so this
/// changes bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassOrder {
    /// Pillow 13: vertical first when the height shrinks by more than twice as many pixels as
    /// the width does (`h - out_h > 0 && h - out_h > (w - out_w) * 2`), else horizontal first.
    #[default]
    Pillow13,
    /// Horizontal pass, then vertical (Pillow ≤ 12).
    HorizontalFirst,
    /// Vertical pass, then horizontal.
    VerticalFirst,
}

impl PassOrder {
    fn horizontal_first(self, w: u32, h: u32, out_w: u32, out_h: u32) -> bool {
        match self {
            PassOrder::HorizontalFirst => true,
            PassOrder::VerticalFirst => false,
            PassOrder::Pillow13 => {
                let dy = i64::from(h) - i64::from(out_h);
                let dx = i64::from(w) - i64::from(out_w);
                !(dy > 0 && dy > dx * 2)
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Fixed-point coefficients of one axis: for output pixel `i`, the taps are
/// `coeffs[i * ksize .. i * ksize + len[i]]` applied to input pixels starting at `start[i]`.
struct Coefficients {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    coeffs: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut coeffs = vec![0i32; out_size * ksize];
    let mut weights = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; `as i64` does the same.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, w) in weights.iter_mut().enumerate().take(n) {
            let v = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
            *w = v;
            ww += v;
        }
        let row = &mut coeffs[xx * ksize..xx * ksize + n];
        for (c, &w) in row.iter_mut().zip(&weights[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *c = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        start.push(xmin);
        len.push(n);
    }
    Coefficients {
        ksize,
        start,
        len,
        coeffs,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    // Arithmetic shift floors like Pillow's lookup of `in >> PRECISION_BITS`; then clip.
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow accumulates in `INT32`; the bound `255 · Σ|k| · 2²²` stays below 2³¹ for both filters,
/// so i32 is exact here too (and vectorises).
const BIAS: i32 = 1 << (PRECISION_BITS - 1);

/// Re-lays the taps so every output pixel reads exactly `ksize` input pixels: windows that
/// would run past the right edge are shifted left and padded with zero coefficients (a zero tap
/// adds exactly 0 to the integer sum, so results are unchanged). Fixed-length windows let the
/// inner loop unroll. `None` when the input is narrower than one window.
fn fixed_windows(c: &Coefficients, in_size: usize) -> Option<(Vec<usize>, Vec<i32>)> {
    let k = c.ksize;
    if in_size < k {
        return None;
    }
    let mut starts = Vec::with_capacity(c.start.len());
    let mut coeffs = vec![0i32; c.start.len() * k];
    for (xx, (&start, &len)) in c.start.iter().zip(&c.len).enumerate() {
        let s = start.min(in_size - k);
        let off = start - s;
        coeffs[xx * k + off..xx * k + off + len].copy_from_slice(&c.coeffs[xx * k..xx * k + len]);
        starts.push(s);
    }
    Some((starts, coeffs))
}

/// One output pixel of a fixed-length window: `px` holds the window's `K` input pixels.
#[inline(always)]
fn pixel_fixed<const K: usize>(px: &[u8], k: &[i32], o: &mut [u8]) {
    let (mut r, mut g, mut b) = (BIAS, BIAS, BIAS);
    for i in 0..K {
        r += i32::from(px[3 * i]) * k[i];
        g += i32::from(px[3 * i + 1]) * k[i];
        b += i32::from(px[3 * i + 2]) * k[i];
    }
    o[0] = clip8(r);
    o[1] = clip8(g);
    o[2] = clip8(b);
}

/// The row loop of the 4-lane SIMD kernels: `sum` turns a window of `K` pixels plus one byte
/// (each tap loads 4 bytes: a pixel and the next one's red) and its taps into an output pixel;
/// windows at the row's end, with no byte to spare, take the scalar sums.
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
#[inline(always)]
fn each_window<const K: usize>(
    row: &[u8],
    orow: &mut [u8],
    starts: &[usize],
    coeffs: &[i32],
    sum: impl Fn(&[u8], &[i32]) -> [u8; 3],
) {
    for ((o, &s), k) in orow
        .chunks_exact_mut(3)
        .zip(starts)
        .zip(coeffs.chunks_exact(K))
    {
        match row.get(s * 3..s * 3 + 3 * K + 1) {
            Some(px) => o.copy_from_slice(&sum(px, k)),
            None => pixel_fixed::<K>(&row[s * 3..s * 3 + 3 * K], k, o),
        }
    }
}

/// Tap `i`'s four bytes of a window (see [`each_window`]), little-endian.
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
#[inline(always)]
fn tap_bytes(px: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([px[3 * i], px[3 * i + 1], px[3 * i + 2], px[3 * i + 3]])
}

fn horizontal_row_fixed<const K: usize>(
    row: &[u8],
    orow: &mut [u8],
    starts: &[usize],
    coeffs: &[i32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU has SSE4.1, the one feature the function is compiled for.
        #[allow(unsafe_code)]
        unsafe {
            x86::horizontal_row_sse41::<K>(row, orow, starts, coeffs)
        };
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        wasm::horizontal_row_simd128::<K>(row, orow, starts, coeffs);
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    for ((o, &s), k) in orow
        .chunks_exact_mut(3)
        .zip(starts)
        .zip(coeffs.chunks_exact(K))
    {
        pixel_fixed::<K>(&row[s * 3..s * 3 + 3 * K], k, o);
    }
}

/// The horizontal pass's 4-lane sums on WebAssembly SIMD (the browser builds enable it).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::{each_window, tap_bytes, BIAS, PRECISION_BITS};
    use std::arch::wasm32::*;

    pub(super) fn horizontal_row_simd128<const K: usize>(
        row: &[u8],
        orow: &mut [u8],
        starts: &[usize],
        coeffs: &[i32],
    ) {
        each_window::<K>(row, orow, starts, coeffs, |px, k| {
            let mut acc = i32x4_splat(BIAS);
            for (i, &kv) in k.iter().enumerate().take(K) {
                // Bytes b0..b3 widened to four u32 lanes (the splat's low 4 bytes).
                let v = u32x4_splat(tap_bytes(px, i));
                let v = u32x4_extend_low_u16x8(u16x8_extend_low_u8x16(v));
                acc = i32x4_add(acc, i32x4_mul(v, i32x4_splat(kv)));
            }
            let q = i32x4_shr(acc, PRECISION_BITS);
            let q = u8x16_narrow_i16x8(i16x8_narrow_i32x4(q, q), i16x8_splat(0));
            [
                u8x16_extract_lane::<0>(q),
                u8x16_extract_lane::<1>(q),
                u8x16_extract_lane::<2>(q),
            ]
        });
    }
}

/// The same integer sums with SIMD on x86-64 (integer additions in any order give the same
/// result, so the bytes are Pillow's): a pixel's three channels (and the next pixel's red,
/// ignored) as one 4-lane vector per tap in the horizontal pass; the vertical pass's row loop
/// compiled for AVX2, where it vectorises 8 lanes at a time (the baseline x86-64 target has no
/// 32-bit vector multiply).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{each_window, tap_bytes, BIAS, PRECISION_BITS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "sse4.1")]
    pub(super) fn horizontal_row_sse41<const K: usize>(
        row: &[u8],
        orow: &mut [u8],
        starts: &[usize],
        coeffs: &[i32],
    ) {
        // The closure inherits SSE4.1 from this function.
        each_window::<K>(row, orow, starts, coeffs, |px, k| {
            let mut acc = _mm_set1_epi32(BIAS);
            for (i, &kv) in k.iter().enumerate().take(K) {
                let v = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(tap_bytes(px, i) as i32));
                acc = _mm_add_epi32(acc, _mm_mullo_epi32(v, _mm_set1_epi32(kv)));
            }
            // `>> PRECISION_BITS`, then saturate to 0..=255 (= clamp) through the two packs.
            let q = _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(acc);
            let q = _mm_packus_epi16(_mm_packs_epi32(q, q), _mm_setzero_si128());
            let [r, g, b, _] = (_mm_cvtsi128_si32(q) as u32).to_le_bytes();
            [r, g, b]
        });
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn vertical_row_avx2(rows: &[u8], stride: usize, k: &[i32], orow: &mut [u8]) {
        super::vertical_row(rows, stride, k, orow)
    }
}

fn horizontal_row_any(row: &[u8], orow: &mut [u8], c: &Coefficients) {
    for (xx, o) in orow.chunks_exact_mut(3).enumerate() {
        let n = c.len[xx];
        let k = &c.coeffs[xx * c.ksize..xx * c.ksize + n];
        let x0 = c.start[xx];
        let px = &row[x0 * 3..(x0 + n) * 3];
        let (mut r, mut g, mut b) = (BIAS, BIAS, BIAS);
        for (p, &kv) in px.chunks_exact(3).zip(k) {
            r += i32::from(p[0]) * kv;
            g += i32::from(p[1]) * kv;
            b += i32::from(p[2]) * kv;
        }
        o[0] = clip8(r);
        o[1] = clip8(g);
        o[2] = clip8(b);
    }
}

/// `buf` resized to `len` bytes, its allocation reused where it is large enough (the contents
/// are about to be overwritten: only a grown tail is written first); a fresh zeroed allocation
/// otherwise, rather than a copy of the old bytes.
pub(crate) fn reuse<T: Copy + Default>(mut buf: Vec<T>, len: usize) -> Vec<T> {
    if buf.capacity() < len {
        return vec![T::default(); len];
    }
    buf.resize(len, T::default());
    buf
}

fn horizontal(src: &RgbImage, out_w: usize, c: &Coefficients, buf: Vec<u8>) -> RgbImage {
    let w = src.width as usize;
    let h = src.height as usize;
    let mut out = reuse(buf, out_w * h * 3);
    let fixed = fixed_windows(c, w);
    crate::parallel::for_each_chunk(&mut out, out_w * 3, |y, orow| {
        let row = &src.data[y * w * 3..(y + 1) * w * 3];
        match (&fixed, c.ksize) {
            (Some((s, k)), 5) => horizontal_row_fixed::<5>(row, orow, s, k),
            (Some((s, k)), 7) => horizontal_row_fixed::<7>(row, orow, s, k),
            (Some((s, k)), 9) => horizontal_row_fixed::<9>(row, orow, s, k),
            (Some((s, k)), 11) => horizontal_row_fixed::<11>(row, orow, s, k),
            (Some((s, k)), 13) => horizontal_row_fixed::<13>(row, orow, s, k),
            _ => horizontal_row_any(row, orow, c),
        }
    });
    RgbImage {
        width: out_w as u32,
        height: h as u32,
        data: out,
    }
}

/// One output row of the vertical pass: `rows` holds the window's input rows, `k` their taps.
#[inline(always)]
fn vertical_row(rows: &[u8], stride: usize, k: &[i32], orow: &mut [u8]) {
    // Accumulate straight into an i32 row per output row (the row is the unit of work).
    let mut acc = vec![BIAS; stride];
    for (row, &kv) in rows.chunks_exact(stride).zip(k) {
        for (a, &p) in acc.iter_mut().zip(row) {
            *a += i32::from(p) * kv;
        }
    }
    for (o, &a) in orow.iter_mut().zip(&acc) {
        *o = clip8(a);
    }
}

fn vertical(src: &RgbImage, out_h: usize, c: &Coefficients, buf: Vec<u8>) -> RgbImage {
    let w = src.width as usize;
    let stride = w * 3;
    let mut out = reuse(buf, stride * out_h);
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    crate::parallel::for_each_chunk(&mut out, stride, |yy, orow| {
        let n = c.len[yy];
        let k = &c.coeffs[yy * c.ksize..yy * c.ksize + n];
        let y0 = c.start[yy];
        let rows = &src.data[y0 * stride..(y0 + n) * stride];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2, the one feature the function is compiled for.
            #[allow(unsafe_code)]
            unsafe {
                x86::vertical_row_avx2(rows, stride, k, orow)
            };
            return;
        }
        vertical_row(rows, stride, k, orow);
    });
    RgbImage {
        width: w as u32,
        height: out_h as u32,
        data: out,
    }
}

/// Resizes an RGB8 image exactly as Pillow's `Image.resize((w, h), filter)` does on an `RGB`
/// image (no `box`, no `reducing_gap`).
///
/// Both target sides must be at least 1 (the caller validates sizes; see
/// [`crate::image::resize`] for the checked entry point).
pub fn resample(
    src: &RgbImage,
    out_w: u32,
    out_h: u32,
    filter: Filter,
    order: PassOrder,
) -> RgbImage {
    let mut out = RgbImage {
        width: 0,
        height: 0,
        data: Vec::new(),
    };
    resample_into(src, out_w, out_h, filter, order, &mut out);
    out
}

/// [`resample`] into `out`, reusing its pixel buffer's allocation where it is large enough (a
/// caller resizing image after image keeps one buffer instead of faulting in fresh pages).
pub fn resample_into(
    src: &RgbImage,
    out_w: u32,
    out_h: u32,
    filter: Filter,
    order: PassOrder,
    out: &mut RgbImage,
) {
    let need_h = out_w != src.width;
    let need_v = out_h != src.height;
    let buf = std::mem::take(&mut out.data);
    let run_h = |img: &RgbImage, buf| {
        let c = precompute(img.width as usize, out_w as usize, filter);
        horizontal(img, out_w as usize, &c, buf)
    };
    let run_v = |img: &RgbImage, buf| {
        let c = precompute(img.height as usize, out_h as usize, filter);
        vertical(img, out_h as usize, &c, buf)
    };
    *out = match (need_h, need_v) {
        (false, false) => {
            let mut data = reuse(buf, 0);
            data.extend_from_slice(&src.data);
            RgbImage {
                width: src.width,
                height: src.height,
                data,
            }
        }
        (true, false) => run_h(src, buf),
        (false, true) => run_v(src, buf),
        (true, true) if order.horizontal_first(src.width, src.height, out_w, out_h) => {
            run_v(&run_h(src, Vec::new()), buf)
        }
        (true, true) => run_h(&run_v(src, Vec::new()), buf),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect()
    }

    /// The plain per-pixel sums of Pillow's algorithm, with no window re-laying and no SIMD.
    fn reference(src: &RgbImage, out_w: usize, out_h: usize, filter: Filter) -> RgbImage {
        let (w, h) = (src.width as usize, src.height as usize);
        let ch = precompute(w, out_w, filter);
        let mut mid = vec![0u8; out_w * h * 3];
        for y in 0..h {
            horizontal_row_any(
                &src.data[y * w * 3..(y + 1) * w * 3],
                &mut mid[y * out_w * 3..(y + 1) * out_w * 3],
                &ch,
            );
        }
        let cv = precompute(h, out_h, filter);
        let mut out = vec![0u8; out_w * out_h * 3];
        for yy in 0..out_h {
            for x in 0..out_w * 3 {
                let mut acc = BIAS;
                for t in 0..cv.len[yy] {
                    acc += i32::from(mid[(cv.start[yy] + t) * out_w * 3 + x])
                        * cv.coeffs[yy * cv.ksize + t];
                }
                out[yy * out_w * 3 + x] = clip8(acc);
            }
        }
        RgbImage {
            width: out_w as u32,
            height: out_h as u32,
            data: out,
        }
    }

    /// Every window length the fixed kernels take (5 to 13 taps), windows at both edges, and
    /// noise that drives the sums past 0..=255 (the clamp), through whichever kernels this CPU
    /// selects (SSE4.1/AVX2 on x86-64), against the plain sums.
    #[test]
    fn fast_paths_equal_the_plain_sums() {
        let cases = [
            (67, 41, 66, 43, Filter::Bicubic),
            (67, 41, 33, 20, Filter::Bicubic),
            (64, 48, 32, 24, Filter::Bicubic),
            (90, 64, 45, 32, Filter::Lanczos),
            (91, 65, 30, 21, Filter::Bicubic),
            (120, 90, 31, 29, Filter::Lanczos),
            (40, 30, 77, 61, Filter::Lanczos),
        ];
        for (i, (w, h, ow, oh, filter)) in cases.into_iter().enumerate() {
            let src = RgbImage {
                width: w,
                height: h,
                data: noise((w * h * 3) as usize, i as u64 + 1),
            };
            let got = resample(&src, ow, oh, filter, PassOrder::HorizontalFirst);
            let want = reference(&src, ow as usize, oh as usize, filter);
            assert_eq!(got, want, "{w}x{h} -> {ow}x{oh} {filter:?}");
        }
    }
}
