//! The synthetic VisionThink task: images where **coarse** questions (the colour of a large
//! shape, whether the background is light or dark) survive halving the image, and **fine** questions (the one-pixel texture of
//! the background: horizontal lines, vertical lines or a checkerboard) do not — LANCZOS at half
//! size averages every one-pixel pattern to the same flat grey, so a low-resolution answer can
//! only guess, and the full image answers it at once.

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
        let on = match texture {
            0 => y % 2 == 0,
            1 => x % 2 == 0,
            _ => (x + y) % 2 == 0,
        };
        let g = if on { hi } else { lo };
        image::Rgb([g, g, g])
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
}
