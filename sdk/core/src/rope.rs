//! M-RoPE position ids of Qwen2.5-VL (`get_rope_index` for images) and the decode offset.
//!
//! Text tokens advance all three axes together; an image of merged grid `(t, h, w)` starting at
//! position `s` gives its tokens `(s + ti, s + hi, s + wi)`; text after it resumes at
//! `max + 1`. `rope_delta = max_position + 1 - sequence_length`, and a decode step at cache
//! length `L` uses position `L + rope_delta` on every axis.

use crate::error::{Error, Result};
use crate::tokens;

/// Position ids on the three M-RoPE axes (temporal, height, width), one entry per token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Positions {
    /// `[t, h, w]` axes, each as long as the sequence.
    pub axes: [Vec<i64>; 3],
}

impl Positions {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.axes[0].len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.axes[0].is_empty()
    }

    /// The largest position on any axis, or -1 when empty.
    pub fn max(&self) -> i64 {
        self.axes
            .iter()
            .flat_map(|a| a.iter().copied())
            .max()
            .unwrap_or(-1)
    }
}

/// Builds M-RoPE positions incrementally, so a multi-turn episode can extend the positions of
/// what is already in the KV cache instead of recomputing them.
#[derive(Debug, Clone, Default)]
pub struct MropeBuilder {
    positions: Positions,
    next: i64,
}

impl MropeBuilder {
    /// An empty builder (the first position is 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `n` text tokens.
    pub fn push_text(&mut self, n: usize) {
        for _ in 0..n {
            for a in &mut self.positions.axes {
                a.push(self.next);
            }
            self.next += 1;
        }
    }

    /// Appends the visual tokens of one image with patch grid `(t, h, w)` and `merge` (2).
    pub fn push_image(&mut self, grid_thw: [u32; 3], merge: u32) -> Result<()> {
        let [t, h, w] = grid_thw;
        if merge == 0 || h == 0 || w == 0 || h % merge != 0 || w % merge != 0 {
            return Err(Error::Positions(format!(
                "grid {grid_thw:?} is not divisible by merge size {merge}"
            )));
        }
        let (gh, gw) = (i64::from(h / merge), i64::from(w / merge));
        if t != 1 {
            return Err(Error::Positions(format!(
                "grid {grid_thw:?}: only images (t = 1) are supported, not video"
            )));
        }
        let start = self.next;
        for hi in 0..gh {
            for wi in 0..gw {
                self.positions.axes[0].push(start);
                self.positions.axes[1].push(start + hi);
                self.positions.axes[2].push(start + wi);
            }
        }
        let max = start + (gh - 1).max(gw - 1).max(0);
        self.next = max + 1;
        Ok(())
    }

    /// The next text position.
    pub fn next_position(&self) -> i64 {
        self.next
    }

    /// Positions so far.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// `next_position - len`: added to the cache length to get a decode step's position.
    pub fn rope_delta(&self) -> i64 {
        self.next - self.positions.len() as i64
    }

    /// Consumes the builder.
    pub fn finish(self) -> Positions {
        self.positions
    }
}

/// `get_rope_index` for a token sequence: every run of `<|image_pad|>` that follows a
/// `<|vision_start|>` is one image, taking the grids in order. Returns the positions and
/// `rope_delta`.
///
/// ```
/// use visionthink_core::rope::rope_index;
/// use visionthink_core::tokens::{IMAGE_PAD, VISION_END, VISION_START};
/// // 2 text tokens, an image of 2x2 merged tokens (grid 1x4x4), 1 text token.
/// let ids = [1, VISION_START, IMAGE_PAD, IMAGE_PAD, IMAGE_PAD, IMAGE_PAD, VISION_END, 2];
/// let (pos, delta) = rope_index(&ids, &[[1, 4, 4]], 2).unwrap();
/// assert_eq!(pos.axes[1], vec![0, 1, 2, 2, 3, 3, 4, 5]);
/// assert_eq!(pos.axes[2], vec![0, 1, 2, 3, 2, 3, 4, 5]);
/// assert_eq!(delta, 6 - 8);
/// ```
pub fn rope_index(ids: &[u32], grids: &[[u32; 3]], merge: u32) -> Result<(Positions, i64)> {
    let mut b = MropeBuilder::new();
    extend_rope_index(&mut b, ids, grids, merge)?;
    let delta = b.rope_delta();
    Ok((b.finish(), delta))
}

/// Appends a token sequence (with its images' grids, in order) to a builder.
pub fn extend_rope_index(
    b: &mut MropeBuilder,
    ids: &[u32],
    grids: &[[u32; 3]],
    merge: u32,
) -> Result<()> {
    let mut grids_iter = grids.iter();
    let mut i = 0;
    let mut text_run = 0usize;
    while i < ids.len() {
        let is_image_start =
            ids[i] == tokens::IMAGE_PAD && i > 0 && ids[i - 1] == tokens::VISION_START;
        if !is_image_start {
            text_run += 1;
            i += 1;
            continue;
        }
        let grid = grids_iter.next().ok_or_else(|| {
            Error::Positions(format!(
                "more images in the token sequence than the {} grid(s) given",
                grids.len()
            ))
        })?;
        let n = (grid[0] * grid[1] * grid[2] / (merge * merge).max(1)) as usize;
        let run = ids[i..]
            .iter()
            .take_while(|&&t| t == tokens::IMAGE_PAD)
            .count();
        if run < n {
            return Err(Error::Positions(format!(
                "image with grid {grid:?} needs {n} <|image_pad|> tokens, found {run}"
            )));
        }
        b.push_text(text_run);
        text_run = 0;
        b.push_image(*grid, merge)?;
        i += n;
    }
    b.push_text(text_run);
    if grids_iter.next().is_some() {
        return Err(Error::Positions(format!(
            "{} grid(s) given but fewer images in the sequence",
            grids.len()
        )));
    }
    Ok(())
}
