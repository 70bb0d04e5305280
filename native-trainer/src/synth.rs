//! The synthetic VisionThink task: images where **coarse** questions (the colour of a large
//! shape, whether the background is light or dark) survive halving the image, and **fine** questions (the one-pixel texture of
//! the background: horizontal lines, vertical lines or a checkerboard) do not — LANCZOS at half
//! size averages every one-pixel pattern to the same flat grey, so a low-resolution answer can
//! only guess, and the full image answers it at once.
//!
//! The **v2** task ([`generate_v2`], `synth --task v2`) is built for the crop tool: larger
//! images, and three kinds of question — *coarse* (the colour of the large shape, the shade of
//! the background), *global fine* (the background is two panels split by a plain band: do both
//! have the same one-pixel texture? The detail is spread over the whole image, so only the full
//! image answers it; the band, in the background's mean grey, hides the seam that halving two
//! different textures side by side would otherwise leave) and
//! *local fine* (the one-pixel texture inside a small magenta-framed square at a random place:
//! the frame is plain at half size, so the model can point at it, and a crop around it shows
//! the texture at a few visual tokens' cost).

use crate::data::{Example, Kind};
use crate::rng::Rng;
use image::RgbImage;

/// Colours of the large shape and their names (the coarse answers).
pub const COLORS: [(&str, [u8; 3]); 4] = [
    ("red", [210, 40, 40]),
    ("green", [40, 160, 60]),
    ("blue", [50, 80, 215]),
    ("yellow", [225, 195, 30]),
];
/// Shapes drawn (visual variety; the `shape` attribute). Not asked: telling a circle from a
/// square needs spatial reasoning across visual tokens that a 10 M-parameter model trained for
/// minutes on 2 CPU cores did not learn (chance accuracy after 2000 SFT steps, see the model
/// card), which had nothing to do with resolution.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Background shades (coarse answers): the mean grey of the background.
pub const SHADES: [&str; 2] = ["light", "dark"];
/// Background textures (fine answers).
pub const TEXTURES: [&str; 3] = ["horizontal", "vertical", "checkered"];

/// The question texts (the protocol's template adds the `<image>` line).
pub const Q_COLOR: &str = "What color is the large shape?";
/// Shade question.
pub const Q_SHADE: &str = "Is the background light or dark?";
/// Texture question.
pub const Q_TEXTURE: &str =
    "What is the fine texture of the background: horizontal, vertical or checkered?";

/// Which synthetic task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Task {
    /// Coarse and fine (background texture) questions: the resize tool's task.
    #[default]
    V1,
    /// Coarse, global-fine and local-fine questions: the crop tool's task.
    V2,
}

/// The local-fine question of the v2 task.
pub const Q_PATCH: &str =
    "What is the fine texture inside the magenta frame: horizontal, vertical or checkered?";
/// The global-fine question of the v2 task.
pub const Q_SAME: &str =
    "Do the two background panels have the same fine texture? Answer yes or no.";
/// The frame colour of the v2 patch.
pub const PATCH_FRAME: [u8; 3] = [230, 0, 230];

/// Settings of a synthetic set.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Examples.
    pub count: usize,
    /// Fraction of fine (texture) questions; the rest are coarse (colour or background shade).
    pub fine_fraction: f64,
    /// Image side in pixels (a multiple of 56 keeps both halves on the 28-pixel grid).
    pub size: u32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            count: 100,
            fine_fraction: 0.15,
            size: 224,
        }
    }
}

/// Draws one image: a textured background (two greys alternating per pixel in rows, columns or
/// both, around a light or a dark mean) and one large solid shape.
pub fn draw(
    rng: &mut Rng,
    size: u32,
    color: [u8; 3],
    shape: usize,
    texture: usize,
    shade: usize,
) -> RgbImage {
    let base = if shade == 0 { 165 } else { 85 } + rng.below(20) as i32;
    let contrast = 40 + rng.below(25) as i32;
    let (lo, hi) = (
        (base - contrast).clamp(0, 255) as u8,
        (base + contrast).clamp(0, 255) as u8,
    );
    let s = size as f64;
    let radius = s * (0.32 + 0.06 * rng.uniform());
    let cx = radius + rng.uniform() * (s - 2.0 * radius);
    let cy = radius + rng.uniform() * (s - 2.0 * radius);
    RgbImage::from_fn(size, size, |x, y| {
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        let (dx, dy) = (px - cx, py - cy);
        let inside = match shape {
            0 => dx * dx + dy * dy <= radius * radius,
            1 => dx.abs() <= radius * 0.85 && dy.abs() <= radius * 0.85,
            _ => {
                // Upward triangle inscribed in the circle.
                let top = cy - radius;
                let bottom = cy + radius * 0.6;
                let half = (py - top) / (bottom - top) * radius * 0.95;
                py >= top && py <= bottom && dx.abs() <= half
            }
        };
        if inside {
            return image::Rgb(color);
        }
        let g = if texture_on(texture, x, y) { hi } else { lo };
        image::Rgb([g, g, g])
    })
}

/// The one-pixel pattern `texture` at pixel `(x, y)`: whether it takes the high grey.
fn texture_on(texture: usize, x: u32, y: u32) -> bool {
    match texture {
        0 => y % 2 == 0,
        1 => x % 2 == 0,
        _ => (x + y) % 2 == 0,
    }
}

/// The two background panels of a v2 image: split down the middle by a plain band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panels {
    /// Split left | right (else top / bottom).
    pub vertical: bool,
    /// The texture of the right (bottom) panel; the left (top) one has the image's texture.
    pub second: usize,
}

impl Panels {
    /// The band's width in pixels for an image side.
    pub fn band(size: u32) -> u32 {
        (size / 28).max(4) & !1
    }
}

/// The framed square of a v2 image, in its pixels: top-left corner and side (frame included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Side.
    pub side: u32,
    /// The texture inside the frame.
    pub texture: usize,
}

impl Patch {
    /// Frame width in pixels.
    pub const FRAME: u32 = 4;

    /// The side of a generated square and the grid it sits on: 56 pixels, one visual token of
    /// the half-size image (28 × 28 pixels there), so the square fills exactly one of the
    /// turn-1 image's visual tokens and pointing at it means naming that token.
    pub const CELL: u32 = 56;

    /// The box a model should ask for, in the coordinates of the half-size image (the turn-1
    /// image the model sees when the side is a multiple of 56): the square's own box, halved.
    /// For a generated square (a [`Patch::CELL`] on the cell grid) that is one visual token's
    /// cell, which maps back to a 56-pixel crop of the original: exactly 2 × 2 visual tokens,
    /// the square and nothing else, no resampling.
    pub fn half_box(&self, size: u32) -> [u32; 4] {
        let half = size / 2;
        [
            self.x / 2,
            self.y / 2,
            ((self.x + self.side) / 2).min(half),
            ((self.y + self.side) / 2).min(half),
        ]
    }

    /// Whether a crop `(x, y, width, height)` of the image, scaled by `scale` (the crop's
    /// image over this one), holds the whole square.
    pub fn inside(&self, crop: (u32, u32, u32, u32), scale: f64) -> bool {
        let s = |v: u32| f64::from(v) * scale;
        let (cx, cy, cw, ch) = (
            f64::from(crop.0),
            f64::from(crop.1),
            f64::from(crop.2),
            f64::from(crop.3),
        );
        cx <= s(self.x) + 1e-9
            && cy <= s(self.y) + 1e-9
            && cx + cw + 1e-9 >= s(self.x + self.side)
            && cy + ch + 1e-9 >= s(self.y + self.side)
    }
}

/// Draws a v2 image: [`draw`]'s background and shape at `size`, the background split into
/// `panels` (the second one re-textured, the band in the background's mean grey), and the
/// framed square `patch` on top.
#[allow(clippy::too_many_arguments)] // one image's independent attributes
pub fn draw_v2(
    rng: &mut Rng,
    size: u32,
    color: [u8; 3],
    shape: usize,
    texture: usize,
    shade: usize,
    panels: Panels,
    patch: Patch,
) -> RgbImage {
    let mut img = draw(rng, size, color, shape, texture, shade);
    // The background is grey (the shape colours are not): its darkest and lightest grey are
    // the two of the texture.
    let greys = img
        .pixels()
        .filter(|p| p[0] == p[1] && p[1] == p[2])
        .map(|p| p[0]);
    let (lo, hi) = greys.fold((255u8, 0u8), |(l, h), g| (l.min(g), h.max(g)));
    let mid = ((u16::from(lo) + u16::from(hi)) / 2) as u8;
    let (half, band) = (size / 2, Panels::band(size) / 2);
    for (x, y, p) in img.enumerate_pixels_mut() {
        if !(p[0] == p[1] && p[1] == p[2]) {
            continue;
        }
        let c = if panels.vertical { x } else { y };
        let g = if c + band >= half && c < half + band {
            mid
        } else if c >= half {
            if texture_on(panels.second, x, y) {
                hi
            } else {
                lo
            }
        } else {
            continue;
        };
        *p = image::Rgb([g, g, g]);
    }
    let f = Patch::FRAME;
    for y in patch.y..patch.y + patch.side {
        for x in patch.x..patch.x + patch.side {
            let (dx, dy) = (x - patch.x, y - patch.y);
            let within = |w: u32| dx < w || dy < w || dx >= patch.side - w || dy >= patch.side - w;
            // Frame, then a plain margin in the texture's mean grey (less ringing at half
            // size), then the texture.
            let px = if within(f) {
                PATCH_FRAME
            } else if within(f + 2) {
                [130, 130, 130]
            } else {
                let g = if texture_on(patch.texture, x, y) {
                    170
                } else {
                    90
                };
                [g, g, g]
            };
            img.put_pixel(x, y, image::Rgb(px));
        }
    }
    img
}

/// Generates the v2 task (see the module docs): `cfg.fine_fraction` of the questions are fine,
/// half of them global and half local; every image has the framed square, whatever is asked.
/// Rows carry the attributes `color`, `shape`, `shade`, `texture` (of the background),
/// `patch_texture`, `same` (`yes`/`no`), `asked`, `detail` (`coarse`/`global`/`local`), `box`
/// (the crop a model should ask for, `[x1, y1, x2, y2]` in the half-size image, see
/// [`Patch::half_box`]) and `patch` (`x,y,side` of the square in the image's pixels, for the
/// box hit rate).
pub fn generate_v2(cfg: &SynthConfig) -> Vec<(Example, RgbImage)> {
    let mut rng = Rng::new(cfg.seed ^ 0x5EED_0002);
    let (side, cells) = (Patch::CELL, u64::from(cfg.size / Patch::CELL));
    (0..cfg.count)
        .map(|i| {
            let color = rng.below(COLORS.len() as u64) as usize;
            let shape = rng.below(SHAPES.len() as u64) as usize;
            let texture = rng.below(TEXTURES.len() as u64) as usize;
            let shade = rng.below(SHADES.len() as u64) as usize;
            let panels = Panels {
                vertical: rng.below(2) == 0,
                second: if rng.below(2) == 0 {
                    texture
                } else {
                    (texture + 1 + rng.below(2) as usize) % 3
                },
            };
            let patch = Patch {
                x: side * rng.below(cells) as u32,
                y: side * rng.below(cells) as u32,
                side,
                texture: rng.below(TEXTURES.len() as u64) as usize,
            };
            let image = draw_v2(
                &mut rng,
                cfg.size,
                COLORS[color].1,
                shape,
                texture,
                shade,
                panels,
                patch,
            );
            let same = if panels.second == texture {
                "yes"
            } else {
                "no"
            };
            let u = rng.uniform();
            let (question, answer, kind, asked, detail) = if u < cfg.fine_fraction / 2.0 {
                (Q_SAME, same, Kind::GlobalFine, "texture", "global")
            } else if u < cfg.fine_fraction {
                (
                    Q_PATCH,
                    TEXTURES[patch.texture],
                    Kind::LocalFine,
                    "framed square",
                    "local",
                )
            } else if rng.below(2) == 0 {
                (Q_COLOR, COLORS[color].0, Kind::Coarse, "color", "coarse")
            } else {
                (Q_SHADE, SHADES[shade], Kind::Coarse, "shade", "coarse")
            };
            let b = patch.half_box(cfg.size);
            let hint = CropHint::for_row(&image, cfg.size, &patch, kind, asked, color, shade, same);
            let ex = Example {
                doc_id: format!("v2-{}-{i}", cfg.seed),
                image: format!("images/{i:06}.png"),
                problem: format!("<image>\n{question}"),
                answer: answer.to_string(),
                kind,
                data_source: format!("synth2_{detail}"),
                attributes: [
                    ("color", COLORS[color].0.to_string()),
                    ("shape", SHAPES[shape].to_string()),
                    ("shade", SHADES[shade].to_string()),
                    ("texture", TEXTURES[texture].to_string()),
                    ("patch_texture", TEXTURES[patch.texture].to_string()),
                    ("same", same.to_string()),
                    ("asked", asked.to_string()),
                    ("detail", detail.to_string()),
                    ("box", format!("[{}, {}, {}, {}]", b[0], b[1], b[2], b[3])),
                    ("patch", format!("{},{},{}", patch.x, patch.y, patch.side)),
                    ("crop_box", hint.bbox),
                    ("crop_why", hint.why.to_string()),
                    ("crop_seen", hint.seen),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            };
            (ex, image)
        })
        .collect()
}

/// The crop that shows what a v2 row asks (an SFT trace's crop with `sft.box_attribute =
/// "crop_box"`), why the trace crops it and what it sees there: the framed square for local
/// questions, the whole image for the panels, the cell with most of the shape for colour, the
/// cell with most background for shade.
struct CropHint {
    bbox: String,
    why: &'static str,
    seen: String,
}

impl CropHint {
    #[allow(clippy::too_many_arguments)] // one row's independent attributes
    fn for_row(
        image: &RgbImage,
        size: u32,
        patch: &Patch,
        kind: Kind,
        asked: &str,
        color: usize,
        shade: usize,
        same: &str,
    ) -> Self {
        let (b, why, seen) = match kind {
            Kind::LocalFine => (
                patch.half_box(size),
                "The texture is too fine at this size, so I crop the framed square.",
                format!("a {} texture in the square", TEXTURES[patch.texture]),
            ),
            Kind::GlobalFine => (
                [0, 0, size / 2, size / 2],
                "The panels' textures are too fine at this size, so I crop the whole image.",
                format!("the whole image: same panels {same}"),
            ),
            _ if asked == "color" => (
                best_cell(image, size, patch, |p| p.0 == COLORS[color].1),
                "I crop a part of the shape.",
                format!("a {} area", COLORS[color].0),
            ),
            _ => (
                best_cell(image, size, patch, |p| p[0] == p[1] && p[1] == p[2]),
                "I crop a part of the background.",
                format!("a {} background", SHADES[shade]),
            ),
        };
        Self {
            bbox: format!("[{}, {}, {}, {}]", b[0], b[1], b[2], b[3]),
            why,
            seen,
        }
    }
}

/// The [`Patch::CELL`]-sized cell of the grid with the most pixels that `wanted` picks outside
/// the framed square (whose own greys are not the background's), as a box of the half-size image
/// (one of its visual tokens, as [`Patch::half_box`]).
fn best_cell(
    img: &RgbImage,
    size: u32,
    patch: &Patch,
    wanted: impl Fn(&image::Rgb<u8>) -> bool,
) -> [u32; 4] {
    let side = Patch::CELL;
    let cells = size / side;
    let mut best = (0usize, [0u32; 4]);
    for cy in 0..cells {
        for cx in 0..cells {
            let (x0, y0) = (cx * side, cy * side);
            let n = (y0..y0 + side)
                .flat_map(|y| (x0..x0 + side).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    let in_patch = (patch.x..patch.x + patch.side).contains(&x)
                        && (patch.y..patch.y + patch.side).contains(&y);
                    !in_patch && wanted(img.get_pixel(x, y))
                })
                .count();
            if n > best.0 {
                best = (n, [x0 / 2, y0 / 2, (x0 + side) / 2, (y0 + side) / 2]);
            }
        }
    }
    best.1
}

/// The square of a v2 row (its `patch` attribute), if it has one.
pub fn row_patch(ex: &Example) -> Option<Patch> {
    let mut it = ex
        .attributes
        .get("patch")?
        .split(',')
        .map(str::parse::<u32>);
    let (x, y, side) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    let texture = TEXTURES
        .iter()
        .position(|t| ex.attributes.get("patch_texture").map(String::as_str) == Some(*t))?;
    Some(Patch {
        x,
        y,
        side,
        texture,
    })
}

/// Generates the examples and their images (not written anywhere: see [`crate::jsonl_data::write_jsonl_set`]).
pub fn generate(cfg: &SynthConfig) -> Vec<(Example, RgbImage)> {
    let mut rng = Rng::new(cfg.seed ^ 0x5EED_5EED);
    (0..cfg.count)
        .map(|i| {
            let color = rng.below(COLORS.len() as u64) as usize;
            let shape = rng.below(SHAPES.len() as u64) as usize;
            let texture = rng.below(TEXTURES.len() as u64) as usize;
            let shade = rng.below(SHADES.len() as u64) as usize;
            let image = draw(&mut rng, cfg.size, COLORS[color].1, shape, texture, shade);
            let fine = rng.uniform() < cfg.fine_fraction;
            let (question, answer, source, asked) = if fine {
                (Q_TEXTURE, TEXTURES[texture], "synth_texture", "texture")
            } else if rng.below(2) == 0 {
                (Q_COLOR, COLORS[color].0, "synth_color", "color")
            } else {
                (Q_SHADE, SHADES[shade], "synth_shade", "shade")
            };
            let ex = Example {
                doc_id: format!("{}-{i}", cfg.seed),
                image: format!("images/{i:06}.png"),
                problem: format!("<image>\n{question}"),
                answer: answer.to_string(),
                kind: if fine { Kind::Fine } else { Kind::Coarse },
                data_source: source.to_string(),
                attributes: [
                    ("color", COLORS[color].0),
                    ("shape", SHAPES[shape]),
                    ("shade", SHADES[shade]),
                    ("asked", asked),
                    ("texture", TEXTURES[texture]),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            };
            (ex, image)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use visionthink_core::protocol::EpisodeImages;

    fn to_core(img: &RgbImage) -> visionthink_core::image::RgbImage {
        visionthink_core::image::RgbImage::new(img.width(), img.height(), img.as_raw().clone())
            .expect("valid image")
    }

    #[test]
    fn textures_vanish_at_half_size_and_shapes_do_not() {
        let mut lows = Vec::new();
        for texture in 0..3 {
            let mut rng = Rng::new(7);
            let img = draw(&mut rng, 224, COLORS[0].1, 0, texture, 0);
            let low = EpisodeImages::for_inference(&to_core(&img))
                .expect("halve")
                .low_res;
            assert_eq!((low.width, low.height), (112, 112));
            lows.push(low.data.clone());
        }
        // Same shape and greys, three textures: the half-size images are identical except for
        // a thin ring of filter ringing along the shape's edge, so the texture cannot be read
        // from them; at full size every background pixel row/column differs.
        let differing =
            |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x.abs_diff(**y) > 6).count();
        for other in [1, 2] {
            let d = differing(&lows[0], &lows[other]);
            assert!(d * 12 < lows[0].len(), "{d}");
        }
        let full: Vec<Vec<u8>> = (0..3)
            .map(|t| draw(&mut Rng::new(7), 224, COLORS[0].1, 0, t, 0).into_raw())
            .collect();
        assert!(differing(&full[0], &full[1]) * 5 > full[0].len());
        // The shape colour survives: red pixels are still there at half size.
        let red = lows[0]
            .chunks(3)
            .filter(|p| p[0] > 180 && p[1] < 80)
            .count();
        assert!(red > 500, "{red}");
    }

    #[test]
    fn the_shade_survives_halving() {
        // Mean of the half-size image's grey pixels (the background; the shape is blue):
        // light and dark stay far apart for every texture.
        let grey_mean = |shade: usize, texture: usize| {
            let img = draw(&mut Rng::new(11), 224, COLORS[2].1, 1, texture, shade);
            let low = EpisodeImages::for_inference(&to_core(&img))
                .expect("halve")
                .low_res;
            let greys: Vec<f64> = low
                .data
                .chunks(3)
                .filter(|p| p[0].abs_diff(p[2]) < 8)
                .map(|p| p[0] as f64)
                .collect();
            assert!(greys.len() > 4000, "{}", greys.len());
            greys.iter().sum::<f64>() / greys.len() as f64
        };
        for texture in 0..3 {
            let (light, dark) = (grey_mean(0, texture), grey_mean(1, texture));
            assert!(light - dark > 50.0, "{light} {dark}");
        }
    }

    #[test]
    fn generation_is_seeded_and_mixes_kinds() {
        let cfg = SynthConfig {
            seed: 3,
            count: 200,
            fine_fraction: 0.5,
            size: 112,
        };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a.len(), 200);
        assert!(a.iter().zip(&b).all(|(x, y)| x.0 == y.0 && x.1 == y.1));
        let fine = a.iter().filter(|(e, _)| e.kind == Kind::Fine).count();
        assert!((70..130).contains(&fine), "{fine}");
        assert!(a.iter().all(|(e, _)| e.problem.starts_with("<image>\n")));
    }

    fn v2(texture: usize, second: usize, patch_texture: usize) -> RgbImage {
        let patch = Patch {
            x: 144,
            y: 98,
            side: 56,
            texture: patch_texture,
        };
        let panels = Panels {
            vertical: true,
            second,
        };
        draw_v2(
            &mut Rng::new(5),
            448,
            COLORS[1].1,
            1,
            texture,
            0,
            panels,
            patch,
        )
    }

    fn half(img: &RgbImage) -> Vec<u8> {
        let low = EpisodeImages::for_inference(&to_core(img))
            .expect("halve")
            .low_res;
        assert_eq!((low.width, low.height), (224, 224));
        low.data
    }

    fn differing(a: &[u8], b: &[u8]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x.abs_diff(**y) > 6).count()
    }

    #[test]
    fn v2_square_is_visible_at_half_size_and_its_texture_only_in_a_crop() {
        let lows: Vec<Vec<u8>> = (0..3).map(|t| half(&v2(0, 0, t))).collect();
        // The square's texture cannot be read at half size: the three half-size images are the
        // same but for a ring of filter ringing inside the frame (under a sixth of the 24 × 24
        // pixels the square covers there; its middle is flat grey).
        for other in [1, 2] {
            let d = differing(&lows[0], &lows[other]);
            assert!(d * 6 < 24 * 24 * 3, "{other}: {d}");
        }
        // Its frame can: magenta pixels at the square's place, where the model must point.
        let magenta = |x: usize, y: usize| {
            let p = &lows[0][(y * 224 + x) * 3..][..3];
            p[0] > 150 && p[1] < 90 && p[2] > 150
        };
        let frame = (72..100).filter(|&x| magenta(x, 49)).count();
        assert!(frame > 20, "{frame}");
        // The crop a model should ask for holds the square, and shows three different textures.
        let patch = Patch {
            x: 144,
            y: 98,
            side: 56,
            texture: 0,
        };
        let b = patch.half_box(448);
        assert_eq!((b[2] - b[0], b[3] - b[1]), (28, 28));
        let crop = (2 * b[0], 2 * b[1], 2 * (b[2] - b[0]), 2 * (b[3] - b[1]));
        assert!(patch.inside(crop, 1.0));
        assert!(!patch.inside((crop.0 + 40, crop.1, crop.2, crop.3), 1.0));
        let crops: Vec<Vec<u8>> = (0..3)
            .map(|t| {
                let full = to_core(&v2(0, 0, t));
                visionthink_core::image::crop(&full, crop.0, crop.1, crop.2, crop.3)
                    .expect("crop")
                    .data
            })
            .collect();
        // (Two one-pixel patterns agree on half the pixels; the square's textured middle is
        // 44² of the crop's 56² pixels.)
        for other in [1, 2] {
            let d = differing(&crops[0], &crops[other]);
            assert!(d * 20 > crops[0].len(), "{d}");
        }
    }

    #[test]
    fn v2_panels_differ_at_full_size_only() {
        for texture in 0..3 {
            let same = v2(texture, texture, 0);
            for second in (0..3).filter(|&s| s != texture) {
                let other = v2(texture, second, 0);
                // Half size: the same but for ringing along the band and the shape.
                let d = differing(&half(&same), &half(&other));
                assert!(d * 25 < 224 * 224 * 3, "{texture} {second}: {d}");
                // Full size: the second panel's background differs pixel by pixel.
                let d = differing(same.as_raw(), other.as_raw());
                assert!(d * 8 > same.as_raw().len(), "{texture} {second}: {d}");
            }
        }
    }

    #[test]
    fn v2_crop_box_shows_what_the_question_asks() {
        let cfg = SynthConfig {
            seed: 9,
            count: 200,
            fine_fraction: 0.5,
            size: 224,
        };
        for (e, img) in generate_v2(&cfg) {
            let nums: Vec<u32> = e.attributes["crop_box"]
                .trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .map(|v| v.parse().expect("crop_box numbers"))
                .collect();
            // Half-image box → original pixels.
            let (x0, y0, x1, y1) = (nums[0] * 2, nums[1] * 2, nums[2] * 2, nums[3] * 2);
            let px: Vec<[u8; 3]> = (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .map(|(x, y)| img.get_pixel(x, y).0)
                .collect();
            let share = |f: &dyn Fn(&[u8; 3]) -> bool| {
                px.iter().filter(|p| f(p)).count() as f64 / px.len() as f64
            };
            let seen = &e.attributes["crop_seen"];
            assert!(
                e.attributes["crop_why"].starts_with("The")
                    || e.attributes["crop_why"].starts_with("I crop")
            );
            match (e.kind, e.attributes["asked"].as_str()) {
                (Kind::LocalFine, _) => {
                    assert_eq!(e.attributes["crop_box"], e.attributes["box"]);
                    assert!(seen.contains(&e.attributes["patch_texture"]), "{seen}");
                }
                (Kind::GlobalFine, _) => {
                    assert_eq!((x0, y0, x1, y1), (0, 0, 224, 224));
                    assert!(seen.ends_with(&e.attributes["same"]), "{seen}");
                }
                (_, "color") => {
                    let c = COLORS.iter().find(|c| c.0 == e.answer).expect("a colour").1;
                    assert!(share(&|p| *p == c) > 0.5, "{}: {seen}", e.doc_id);
                    assert!(seen.contains(&e.answer));
                }
                _ => {
                    // The background's mean grey tells the shade (light ≥ 125, dark < 125).
                    let greys: Vec<f64> = px
                        .iter()
                        .filter(|p| p[0] == p[1] && p[1] == p[2])
                        .map(|p| f64::from(p[0]))
                        .collect();
                    assert!(greys.len() * 2 > px.len(), "{}: {seen}", e.doc_id);
                    let mean = greys.iter().sum::<f64>() / greys.len() as f64;
                    assert_eq!(mean >= 125.0, e.answer == "light", "{}: {mean}", e.doc_id);
                    assert!(seen.contains(&e.answer));
                }
            }
        }
    }

    #[test]
    fn v2_generation_is_seeded_and_mixes_kinds() {
        let cfg = SynthConfig {
            seed: 4,
            count: 300,
            fine_fraction: 0.6,
            size: 448,
        };
        let a = generate_v2(&cfg);
        assert!(a
            .iter()
            .zip(generate_v2(&cfg))
            .all(|(x, y)| x.0 == y.0 && x.1 == y.1));
        let count = |k: Kind| a.iter().filter(|(e, _)| e.kind == k).count();
        for (k, lo, hi) in [
            (Kind::Coarse, 90, 150),
            (Kind::GlobalFine, 60, 120),
            (Kind::LocalFine, 60, 120),
        ] {
            assert!((lo..hi).contains(&count(k)), "{k:?}: {}", count(k));
        }
        let yes = a
            .iter()
            .filter(|(e, _)| e.attributes["same"] == "yes")
            .count();
        assert!((110..190).contains(&yes), "{yes}");
        for (e, img) in &a {
            let p = row_patch(e).expect("patch");
            assert!(p.x + p.side <= img.width() && p.y + p.side <= img.height());
            let b = p.half_box(448);
            assert_eq!(
                e.attributes["box"],
                format!("[{}, {}, {}, {}]", b[0], b[1], b[2], b[3])
            );
            assert!(b[2] <= 224 && b[3] <= 224 && b[2] - b[0] == 28 && b[3] - b[1] == 28);
            assert!(p.x % Patch::CELL == 0 && p.y % Patch::CELL == 0 && p.side == Patch::CELL);
            assert!(p.inside(
                (2 * b[0], 2 * b[1], 2 * (b[2] - b[0]), 2 * (b[3] - b[1])),
                1.0
            ));
            let frame = img.get_pixel(p.x, p.y);
            assert_eq!(frame.0, PATCH_FRAME);
        }
    }
}
