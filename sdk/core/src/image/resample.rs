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

fn horizontal_row_fixed<const K: usize>(
    row: &[u8],
    orow: &mut [u8],
    starts: &[usize],
    coeffs: &[i32],
) {
    for ((o, &s), k) in orow
        .chunks_exact_mut(3)
        .zip(starts)
        .zip(coeffs.chunks_exact(K))
    {
        let px = &row[s * 3..s * 3 + 3 * K];
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

fn horizontal(src: &RgbImage, out_w: usize, c: &Coefficients) -> RgbImage {
    let w = src.width as usize;
    let h = src.height as usize;
    let mut out = vec![0u8; out_w * h * 3];
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

fn vertical(src: &RgbImage, out_h: usize, c: &Coefficients) -> RgbImage {
    let w = src.width as usize;
    let stride = w * 3;
    let mut out = vec![0u8; stride * out_h];
    crate::parallel::for_each_chunk(&mut out, stride, |yy, orow| {
        let n = c.len[yy];
        let k = &c.coeffs[yy * c.ksize..yy * c.ksize + n];
        let y0 = c.start[yy];
        // Accumulate straight into an i32 row per output row (the row is the unit of work).
        let mut acc = vec![BIAS; stride];
        for (row, &kv) in src.data[y0 * stride..(y0 + n) * stride]
            .chunks_exact(stride)
            .zip(k)
        {
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * kv;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
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
    let need_h = out_w != src.width;
    let need_v = out_h != src.height;
    let run_h = |img: &RgbImage| {
        let c = precompute(img.width as usize, out_w as usize, filter);
        horizontal(img, out_w as usize, &c)
    };
    let run_v = |img: &RgbImage| {
        let c = precompute(img.height as usize, out_h as usize, filter);
        vertical(img, out_h as usize, &c)
    };
    match (need_h, need_v) {
        (false, false) => src.clone(),
        (true, false) => run_h(src),
        (false, true) => run_v(src),
        (true, true) if order.horizontal_first(src.width, src.height, out_w, out_h) => {
            run_v(&run_h(src))
        }
        (true, true) => run_h(&run_v(src)),
    }
}
