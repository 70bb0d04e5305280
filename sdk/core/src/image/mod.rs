//! Image decoding and the Qwen2.5-VL / VisionThink image pipeline (SPEC §4).
//!
//! Everything here takes bytes or pixel buffers and returns data: no file or network access.
//! Resampling is a port of Pillow's fixed-point resampler ([`resample`]), so resized bytes are
//! identical to the reference's; normalisation follows HF `transformers`' numpy path
//! (`x as f64 * (1/255)` cast to f32, then `(x - mean) / std` in f32).

pub mod resample;
mod rgb;

use crate::config::PreprocessorConfig;
use crate::error::{Error, Result};
pub use resample::{Filter, PassOrder};
pub use rgb::RgbImage;

/// Limits applied before any pixel is decoded (decompression-bomb guard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width or height accepted.
    pub max_side: u32,
    /// Largest `width * height` accepted.
    pub max_pixels: u64,
    /// Largest single allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 32 768 px per side, Pillow's `MAX_IMAGE_PIXELS` (89 478 485), 1 GiB of decoder memory.
    fn default() -> Self {
        Self {
            max_side: 32_768,
            max_pixels: 89_478_485,
            max_alloc: 1 << 30,
        }
    }
}

/// Decodes PNG, JPEG, WebP or GIF (first frame) bytes to RGB8, as Pillow's `convert("RGB")`
/// would: alpha is dropped (not composited), grey is replicated, palettes are expanded.
///
/// The header is read first and checked against `limits`, so a 100 000 × 100 000 PNG is refused
/// without allocating its pixels.
///
/// ```
/// use visionthink_core::image::{decode, DecodeLimits};
/// // A truncated PNG signature is an error, never a panic.
/// let err = decode(&[0x89, b'P', b'N', b'G'], DecodeLimits::default()).unwrap_err();
/// assert!(err.to_string().contains("cannot decode image"));
/// ```
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage> {
    let format = image::guess_format(bytes).map_err(|e| Error::ImageDecode {
        format: "unknown".into(),
        reason: format!("unrecognised image format ({e}); supported: PNG, JPEG, WebP, GIF"),
    })?;
    let fmt_name = format!("{format:?}");
    // The announced size, read straight from the header where that is trivial, so a bomb is named
    // even when the decoder refuses to build (32-bit targets overflow on huge sizes).
    let peeked = peek_dimensions(bytes);
    if let Some((w, h)) = peeked {
        check_dimensions(w, h, &limits)?;
    }
    let decode_err = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => Error::ImageTooLarge {
            width: peeked.map_or(0, |d| u64::from(d.0)),
            height: peeked.map_or(0, |d| u64::from(d.1)),
            limit: format!("decoder limit: {l}"),
        },
        other => Error::ImageDecode {
            format: fmt_name.clone(),
            reason: other.to_string(),
        },
    };
    let supported = matches!(
        format,
        image::ImageFormat::Png
            | image::ImageFormat::Jpeg
            | image::ImageFormat::WebP
            | image::ImageFormat::Gif
    );
    if !supported {
        return Err(Error::ImageDecode {
            format: fmt_name,
            reason: "format not supported; supported: PNG, JPEG, WebP, GIF".into(),
        });
    }
    // Read the header alone first, so the announced size is checked before any pixel buffer.
    // No limits here: nothing is allocated for a header, and our own check below names the size.
    let mut header = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    header.no_limits();
    let (w, h) = header.into_dimensions().map_err(decode_err)?;
    check_dimensions(w, h, &limits)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    lim.max_alloc = Some(limits.max_alloc);
    reader.limits(lim);
    let decoder = reader.into_decoder().map_err(decode_err)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    to_rgb8_like_pillow(img)
}

/// Pillow's `convert("RGB")` on what its decoders produce: 8-bit images drop alpha and replicate
/// grey; 16-bit colour (and grey+alpha) PNGs keep the high byte (Pillow unpacks `RGB;16B` that
/// way); 16-bit grey opens as mode `I;16`, whose conversion clips at 255.
fn to_rgb8_like_pillow(img: image::DynamicImage) -> Result<RgbImage> {
    use image::DynamicImage as D;
    let (width, height) = (img.width(), img.height());
    let data = match img {
        D::ImageRgb16(b) => b.into_raw().iter().map(|v| (v >> 8) as u8).collect(),
        D::ImageRgba16(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .map(|v| (v >> 8) as u8)
            .collect(),
        D::ImageLuma16(b) => b
            .into_raw()
            .iter()
            .flat_map(|&v| [v.min(255) as u8; 3])
            .collect(),
        D::ImageLumaA16(b) => b
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [(p[0] >> 8) as u8; 3])
            .collect(),
        other => other.into_rgb8().into_raw(),
    };
    RgbImage::new(width, height, data)
}

/// Width and height from a PNG IHDR, a GIF logical screen or a WebP VP8X header.
fn peek_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    let be32 = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let le16 = |i: usize| {
        b.get(i..i + 2)
            .map(|s| u32::from(u16::from_le_bytes([s[0], s[1]])))
    };
    let le24 = |i: usize| {
        b.get(i..i + 3)
            .map(|s| u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
    };
    if b.starts_with(b"\x89PNG\r\n\x1a\n") && b.get(12..16) == Some(b"IHDR") {
        return Some((be32(16)?, be32(20)?));
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return Some((le16(6)?, le16(8)?));
    }
    if b.starts_with(b"RIFF") && b.get(8..16) == Some(b"WEBPVP8X") {
        return Some((le24(24)? + 1, le24(27)? + 1));
    }
    None
}

fn check_dimensions(w: u32, h: u32, limits: &DecodeLimits) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::ImageTooSmall {
            width: w,
            height: h,
            reason: "an image needs at least one pixel on each side".into(),
        });
    }
    if w > limits.max_side || h > limits.max_side {
        return Err(Error::ImageTooLarge {
            width: u64::from(w),
            height: u64::from(h),
            limit: format!("max {} px per side", limits.max_side),
        });
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(Error::ImageTooLarge {
            width: u64::from(w),
            height: u64::from(h),
            limit: format!("max {} pixels", limits.max_pixels),
        });
    }
    Ok(())
}

/// Resizes with Pillow semantics after checking the target size.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    let mut out = RgbImage::empty();
    resize_into(img, width, height, filter, &mut out)?;
    Ok(out)
}

/// [`resize`] into `out`, reusing its pixel buffer (see [`resample::resample_into`]).
pub fn resize_into(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    out: &mut RgbImage,
) -> Result<()> {
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 {
        return Err(Error::ImageTooSmall {
            width: img.width,
            height: img.height,
            reason: format!("cannot resize to {width}x{height}"),
        });
    }
    resample::resample_into(img, width, height, filter, PILLOW_PASS_ORDER, out);
    Ok(())
}

/// The pixels `x .. x + width`, `y .. y + height` of `img` (Pillow's `Image.crop((x, y, x + width,
/// y + height))` for a box inside the image). A box that is empty or leaves the image is an error.
///
/// ```
/// use visionthink_core::image::{crop, RgbImage};
/// let img = RgbImage::new(4, 3, (0..36).collect()).unwrap();
/// let c = crop(&img, 1, 1, 2, 2).unwrap();
/// assert_eq!((c.width, c.height), (2, 2));
/// assert_eq!(c.pixel(0, 0), img.pixel(1, 1));
/// assert!(crop(&img, 3, 0, 2, 1).is_err());
/// ```
pub fn crop(img: &RgbImage, x: u32, y: u32, width: u32, height: u32) -> Result<RgbImage> {
    let inside = x.checked_add(width).is_some_and(|r| r <= img.width)
        && y.checked_add(height).is_some_and(|b| b <= img.height);
    if width == 0 || height == 0 || !inside {
        return Err(Error::ImageTooSmall {
            width: img.width,
            height: img.height,
            reason: format!("cannot crop {width}x{height} at ({x}, {y}) from it"),
        });
    }
    let (stride, row) = (img.width as usize * 3, width as usize * 3);
    let mut data = Vec::with_capacity(row * height as usize);
    for line in img
        .data
        .chunks_exact(stride)
        .skip(y as usize)
        .take(height as usize)
    {
        let start = x as usize * 3;
        data.extend_from_slice(&line[start..start + row]);
    }
    RgbImage::new(width, height, data)
}

/// The pass order of the Pillow version the fixtures pin (13.0.0; see `tests/fixtures/README.md`).
pub const PILLOW_PASS_ORDER: PassOrder = PassOrder::Pillow13;

/// Python's `round()` on a float: round half to even.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// `(width, height)` of an image of `width`×`height` after the processor's `smart_resize` under
/// `cfg`: the pixels the model sees (and grounds boxes in), from the size alone.
///
/// ```
/// let cfg = visionthink_core::config::PreprocessorConfig::default();
/// assert_eq!(visionthink_core::image::seen_size(900, 670, &cfg).unwrap(), (896, 672));
/// ```
pub fn seen_size(width: u32, height: u32, cfg: &PreprocessorConfig) -> Result<(u32, u32)> {
    let factor = resize_factor(cfg)?;
    let (h, w) = smart_resize(height, width, factor, cfg.min_pixels, cfg.max_pixels)?;
    Ok((w, h))
}

/// Visual tokens (merged patches) an image of `width`×`height` costs under `cfg`, from its size
/// alone (no pixels are touched).
///
/// ```
/// let cfg = visionthink_core::config::PreprocessorConfig::default();
/// assert_eq!(visionthink_core::image::visual_tokens(896, 672, &cfg).unwrap(), 768);
/// ```
pub fn visual_tokens(width: u32, height: u32, cfg: &PreprocessorConfig) -> Result<usize> {
    let factor = resize_factor(cfg)?;
    let (h, w) = smart_resize(height, width, factor, cfg.min_pixels, cfg.max_pixels)?;
    Ok(((h / factor) * (w / factor)) as usize)
}

pub use crate::config::{MAX_RESIZED_PIXELS, MAX_TEMPORAL_PATCH};

/// `patch_size * merge_size`, checked.
fn resize_factor(cfg: &PreprocessorConfig) -> Result<u32> {
    cfg.patch_size
        .checked_mul(cfg.merge_size)
        .filter(|f| *f > 0 && u64::from(*f) * u64::from(*f) <= MAX_RESIZED_PIXELS)
        .ok_or_else(|| Error::Config {
            file: "preprocessor_config.json",
            reason: format!(
                "patch_size {} × merge_size {} is not a usable patch size",
                cfg.patch_size, cfg.merge_size
            ),
        })
}

/// Qwen2-VL `smart_resize` (HF `transformers`): both sides multiples of `factor`, the area within
/// `[min_pixels, max_pixels]`, aspect ratio kept as closely as possible. Returns `(height, width)`.
/// A result above [`MAX_RESIZED_PIXELS`] is an error.
///
/// ```
/// use visionthink_core::image::smart_resize;
/// // 42 / 28 = 1.5 rounds half-to-even to 2, 70 / 28 = 2.5 rounds to 2.
/// assert_eq!(smart_resize(42, 70, 28, 3136, 12845056).unwrap(), (56, 56));
/// assert!(smart_resize(10, 2100, 28, 3136, 12845056).is_err()); // aspect ratio > 200
/// ```
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32)> {
    if height == 0 || width == 0 {
        return Err(Error::ImageTooSmall {
            width,
            height,
            reason: "zero-sized image".into(),
        });
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(Error::AspectRatio {
            width,
            height,
            ratio,
        });
    }
    let mut h_bar = round_half_even(h / f) * f;
    let mut w_bar = round_half_even(w / f) * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    let area = h_bar * w_bar;
    if factor == 0 || area.is_nan() || area > MAX_RESIZED_PIXELS as f64 {
        return Err(Error::ImageTooLarge {
            width: w_bar.min(u64::MAX as f64) as u64,
            height: h_bar.min(u64::MAX as f64) as u64,
            limit: format!(
                "the resize target is over {MAX_RESIZED_PIXELS} pixels (factor {factor}, min_pixels {min_pixels}, max_pixels {max_pixels})"
            ),
        });
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// The processor output for one image: what the vision tower consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// `(t, h, w)` in 14-px patches; `t` is 1 for images.
    pub grid_thw: [u32; 3],
    /// The image after `smart_resize` (BICUBIC), before normalisation.
    pub resized: RgbImage,
    /// Row-major `[num_patches, 1176]`: each row is one 14×14 patch as (C=3, T=2, 14, 14), rows in
    /// 2×2 merge-group order.
    pub data: Vec<f32>,
}

impl Default for PixelValues {
    /// No patches and no pixels: a buffer for [`preprocess_into`] to fill.
    fn default() -> Self {
        Self {
            grid_thw: [0; 3],
            resized: RgbImage::empty(),
            data: Vec::new(),
        }
    }
}

impl PixelValues {
    /// Bytes its buffers hold (allocated, whether in use or not).
    pub fn capacity_bytes(&self) -> usize {
        self.data.capacity() * std::mem::size_of::<f32>() + self.resized.data.capacity()
    }

    /// Number of 14×14 patches (rows of `data`).
    pub fn num_patches(&self) -> usize {
        (self.grid_thw[0] * self.grid_thw[1] * self.grid_thw[2]) as usize
    }

    /// Values per row: `3 * temporal_patch * patch * patch` (1176 for Qwen2.5-VL).
    pub fn row_len(&self) -> usize {
        self.data.len() / self.num_patches().max(1)
    }

    /// Number of `<|image_pad|>` tokens (merged 28×28 units) for `merge_size` 2.
    pub fn num_image_tokens(&self, merge_size: u32) -> usize {
        self.num_patches() / (merge_size * merge_size) as usize
    }
}

/// Runs the Qwen2-VL image processor (Pillow path) on an RGB image.
///
/// ```
/// use visionthink_core::{config::PreprocessorConfig, image::{preprocess, RgbImage}};
/// let img = RgbImage::new(60, 30, vec![128; 60 * 30 * 3]).unwrap();
/// let pv = preprocess(&img, &PreprocessorConfig::default()).unwrap();
/// assert_eq!(pv.grid_thw, [1, 4, 6]); // smart_resize(30, 60) = (56, 84): raised to min_pixels
/// assert_eq!(pv.data.len(), 24 * 1176);
/// assert_eq!(pv.num_image_tokens(2), 6);
/// ```
pub fn preprocess(img: &RgbImage, cfg: &PreprocessorConfig) -> Result<PixelValues> {
    let mut out = PixelValues::default();
    preprocess_into(img, cfg, &mut out)?;
    Ok(out)
}

/// [`preprocess`] into `out`, reusing its buffers where they are large enough: a caller that
/// processes image after image (a server, an evaluation loop; see [`PixelPool`]) writes into
/// memory it already holds instead of faulting in fresh pages, which for a 2048×1536 image (75 MB
/// of `f32`) costs more than the normalisation itself. The values are the same as
/// [`preprocess`]'s, to the bit. On error `out` holds no patches.
///
/// ```
/// use visionthink_core::{config::PreprocessorConfig, image::{preprocess, preprocess_into, PixelValues, RgbImage}};
/// let cfg = PreprocessorConfig::default();
/// let mut pv = PixelValues::default();
/// for shade in [10u8, 200] {
///     let img = RgbImage::new(60, 30, vec![shade; 60 * 30 * 3]).unwrap();
///     preprocess_into(&img, &cfg, &mut pv).unwrap();
///     assert_eq!(pv, preprocess(&img, &cfg).unwrap());
/// }
/// ```
pub fn preprocess_into(
    img: &RgbImage,
    cfg: &PreprocessorConfig,
    out: &mut PixelValues,
) -> Result<()> {
    out.grid_thw = [0; 3];
    out.data.clear();
    let patch = cfg.patch_size;
    let merge = cfg.merge_size;
    let temporal = cfg.temporal_patch_size;
    let factor = resize_factor(cfg)?;
    if !(1..=MAX_TEMPORAL_PATCH).contains(&temporal) {
        return Err(Error::Config {
            file: "preprocessor_config.json",
            reason: format!("temporal_patch_size {temporal} is not in 1..={MAX_TEMPORAL_PATCH}"),
        });
    }
    if cfg.do_resize {
        let (rh, rw) = smart_resize(
            img.height,
            img.width,
            factor,
            cfg.min_pixels,
            cfg.max_pixels,
        )?;
        resize_into(img, rw, rh, Filter::Bicubic, &mut out.resized)?;
    } else {
        out.resized.width = img.width;
        out.resized.height = img.height;
        out.resized.data.clear();
        out.resized.data.extend_from_slice(&img.data);
    }
    let resized = &out.resized;
    let (h, w) = (resized.height as usize, resized.width as usize);
    let (p, m, t) = (patch as usize, merge as usize, temporal as usize);
    if h % (p * m) != 0 || w % (p * m) != 0 {
        return Err(Error::ImageTooSmall {
            width: resized.width,
            height: resized.height,
            reason: format!(
                "sides must be multiples of {} when do_resize is false",
                p * m
            ),
        });
    }
    // Every pixel value maps to one normalised f32 per channel; computing the 3×256 values once
    // (exactly as numpy does per pixel: u8 → f64 × rescale → f32, then (x − mean) / std in f32)
    // gives bit-identical results at a fraction of the cost.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let mut x = if cfg.do_rescale {
                (v as f64 * cfg.rescale_factor) as f32
            } else {
                v as f32
            };
            if cfg.do_normalize {
                x = (x - cfg.image_mean[c]) / cfg.image_std[c];
            }
            *out = x;
        }
    }
    let (gh, gw) = (h / p, w / p);
    let plane = p * p;
    let row_len = 3 * t * plane;
    let mut data = resample::reuse(std::mem::take(&mut out.data), gh * gw * row_len);
    // Row r is patch (bh, bw, mh, mw) in 2×2 merge-group order.
    let per_block_row = (gw / m) * m * m;
    let pixels = &resized.data;
    crate::parallel::for_each_chunk(&mut data, row_len, |r, row| {
        let (bh, rem) = (r / per_block_row, r % per_block_row);
        let (bw, inner) = (rem / (m * m), rem % (m * m));
        let (mh, mw) = (inner / m, inner % m);
        let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
        for (c, chan) in row.chunks_exact_mut(t * plane).enumerate() {
            let lut = &lut[c];
            for py in 0..p {
                let start = ((y0 + py) * w + x0) * 3;
                let src = &pixels[start..start + p * 3];
                let (first, rest) = chan.split_at_mut(plane);
                let line = &mut first[py * p..(py + 1) * p];
                for (o, px) in line.iter_mut().zip(src.chunks_exact(3)) {
                    *o = lut[px[c] as usize];
                }
                // The image is its own second frame (temporal patch 2): the line is copied while
                // it is in cache, not in a pass over the frame afterwards.
                for frame in rest.chunks_exact_mut(plane) {
                    frame[py * p..(py + 1) * p].copy_from_slice(line);
                }
            }
        }
    });
    out.data = data;
    out.grid_thw = [1, gh as u32, gw as u32];
    Ok(())
}

/// Spare [`PixelValues`] buffers, handed out again by size: what a caller keeps between images so
/// that [`preprocess_into`] writes into memory it already holds. It keeps at most `max_buffers`
/// (the largest when it has to choose); with 0 it keeps none.
///
/// ```
/// use visionthink_core::{config::PreprocessorConfig, image::{PixelPool, RgbImage}};
/// let cfg = PreprocessorConfig::default();
/// let mut pool = PixelPool::new(2);
/// let img = RgbImage::new(56, 56, vec![3; 56 * 56 * 3]).unwrap();
/// let pv = pool.preprocess(&img, &cfg).unwrap();
/// pool.give_back(pv);
/// assert_eq!(pool.len(), 1);
/// let again = pool.preprocess(&img, &cfg).unwrap(); // the same allocation, refilled
/// assert_eq!(pool.len(), 0);
/// assert_eq!(again.num_patches(), 16);
/// ```
#[derive(Debug, Default)]
pub struct PixelPool {
    spare: Vec<PixelValues>,
    max_buffers: usize,
}

impl PixelPool {
    /// A pool that keeps up to `max_buffers` buffers.
    pub fn new(max_buffers: usize) -> Self {
        Self {
            spare: Vec::new(),
            max_buffers,
        }
    }

    /// Buffers held now.
    pub fn len(&self) -> usize {
        self.spare.len()
    }

    /// Whether it holds no buffer.
    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }

    /// [`preprocess`] into the smallest spare buffer large enough for `img` (else the largest, which
    /// grows), or a new one.
    pub fn preprocess(&mut self, img: &RgbImage, cfg: &PreprocessorConfig) -> Result<PixelValues> {
        let mut pv = self.take(patch_values_needed(img, cfg));
        match preprocess_into(img, cfg, &mut pv) {
            Ok(()) => Ok(pv),
            Err(e) => {
                self.give_back(pv);
                Err(e)
            }
        }
    }

    /// Bytes the kept buffers hold.
    pub fn capacity_bytes(&self) -> usize {
        self.spare.iter().map(PixelValues::capacity_bytes).sum()
    }

    /// Returns a buffer (typically after the model has read it) for later images.
    pub fn give_back(&mut self, pv: PixelValues) {
        if self.max_buffers == 0 {
            return;
        }
        self.spare.push(pv);
        if self.spare.len() > self.max_buffers {
            self.spare
                .sort_by_key(|p| std::cmp::Reverse(p.data.capacity()));
            self.spare.truncate(self.max_buffers);
        }
    }

    fn take(&mut self, need: usize) -> PixelValues {
        let fits = |p: &PixelValues| p.data.capacity() >= need;
        let pick = (0..self.spare.len())
            .filter(|&i| fits(&self.spare[i]))
            .min_by_key(|&i| self.spare[i].data.capacity())
            .or_else(|| (0..self.spare.len()).max_by_key(|&i| self.spare[i].data.capacity()));
        pick.map(|i| self.spare.swap_remove(i)).unwrap_or_default()
    }
}

/// The `f32` values [`preprocess`] writes for `img` (0 where the settings are unusable: the call
/// itself reports that).
fn patch_values_needed(img: &RgbImage, cfg: &PreprocessorConfig) -> usize {
    let (w, h) = if cfg.do_resize {
        seen_size(img.width, img.height, cfg).unwrap_or((0, 0))
    } else {
        (img.width, img.height)
    };
    h as usize * w as usize * 3 * cfg.temporal_patch_size as usize
}

/// The VisionThink evaluation path (SPEC §4): the low-resolution image is the original resized
/// with LANCZOS to `(w // 2, h // 2)`; a side below 28 is then scaled up by `max(28/w, 28/h)`
/// (Python `int()` truncation). The high-resolution image is the original itself, except that it
/// too is raised to 28 px per side when smaller (as the official `encode_image` does).
///
/// ```
/// use visionthink_core::image::{inference_low_res, RgbImage};
/// let img = RgbImage::new(100, 60, vec![7; 100 * 60 * 3]).unwrap();
/// let low = inference_low_res(&img).unwrap();
/// assert_eq!((low.width, low.height), (50, 30));
/// ```
pub fn inference_low_res(original: &RgbImage) -> Result<RgbImage> {
    ensure_min_side(halve(original)?)
}

/// LANCZOS to `(w // 2, h // 2)`: the VisionThink low-resolution image of both paths.
fn halve(img: &RgbImage) -> Result<RgbImage> {
    let (w, h) = (img.width / 2, img.height / 2);
    if w == 0 || h == 0 {
        return Err(Error::ImageTooSmall {
            width: img.width,
            height: img.height,
            reason: "halving leaves a zero-sized side; the low-resolution path needs at least 2x2 pixels".into(),
        });
    }
    resize(img, w, h, Filter::Lanczos)
}

/// The image the resize tool returns on the evaluation path: the original, raised to 28 px per
/// side when smaller (official `encode_image` without downsampling).
pub fn inference_high_res(original: &RgbImage) -> Result<RgbImage> {
    ensure_min_side(original.clone())
}

fn ensure_min_side(img: RgbImage) -> Result<RgbImage> {
    if img.width >= 28 && img.height >= 28 {
        return Ok(img);
    }
    let scale = (28.0 / f64::from(img.width)).max(28.0 / f64::from(img.height));
    let nw = (f64::from(img.width) * scale) as u32;
    let nh = (f64::from(img.height) * scale) as u32;
    resize(&img, nw, nh, Filter::Lanczos)
}

/// The pair of images of the VisionThink training path (SPEC §4): the area is first clamped
/// into `[512², 2048²]` (LANCZOS, int truncation), then halved for the low-resolution image;
/// the high-resolution image is the original resized to exactly twice the low-resolution size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingImages {
    /// Turn-1 image.
    pub low_res: RgbImage,
    /// What the resize tool returns.
    pub high_res: RgbImage,
}

/// Builds the training-path image pair (see [`TrainingImages`]).
///
/// ```
/// use visionthink_core::image::{training_images, RgbImage};
/// let img = RgbImage::new(256, 128, vec![9; 256 * 128 * 3]).unwrap();
/// let pair = training_images(&img).unwrap();
/// // 256x128 = 32768 px < 512² → scaled by sqrt(262144 / 32768) = 2.828 → 724x362, halved 362x181.
/// assert_eq!((pair.low_res.width, pair.low_res.height), (362, 181));
/// assert_eq!((pair.high_res.width, pair.high_res.height), (724, 362));
/// ```
pub fn training_images(original: &RgbImage) -> Result<TrainingImages> {
    const MIN_AREA: f64 = 512.0 * 512.0;
    const MAX_AREA: f64 = 2048.0 * 2048.0;
    // veRL's `process_image`: shrink above the maximum, then (separately) grow below the minimum.
    let mut clamped = original.clone();
    for (limit, too_far) in [(MAX_AREA, true), (MIN_AREA, false)] {
        let (w, h) = (f64::from(clamped.width), f64::from(clamped.height));
        let area = w * h;
        if (too_far && area > limit) || (!too_far && area < limit) {
            let factor = (limit / area).sqrt();
            let (nw, nh) = ((w * factor) as u32, (h * factor) as u32);
            clamped = resize(&clamped, nw.max(1), nh.max(1), Filter::Lanczos)?;
        }
    }
    let low_res = halve(&clamped)?;
    let high_res = resize(
        original,
        low_res.width * 2,
        low_res.height * 2,
        Filter::Lanczos,
    )?;
    Ok(TrainingImages { low_res, high_res })
}
