//! A generation session over one model on one executor: the KV cache and the M-RoPE positions
//! of everything fed so far. Generic over the backend, so a cache can only ever be used with
//! the backend (and model) that filled it.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{KvCache, Qwen25VL};
use std::borrow::Cow;
use visionthink_core::image::PixelValues;
use visionthink_core::rope::{extend_rope_index, MropeBuilder};

/// The KV cache and positions of one sequence on `B`.
///
/// [`Session::feed`] and [`Session::feed_tokens`] record the forward pass and return the last
/// position's logits as a tensor of `B`; reading it back is the caller's (synchronously with
/// [`Backend::to_vec`], or asynchronously on the browser's WebGPU). [`Feed`] wraps both steps
/// for native callers.
///
/// ```
/// # fn demo<B: visionthink_model::Backend>(be: &B, model: &visionthink_model::Qwen25VL<B>) -> visionthink_model::Result<()> {
/// let mut s = visionthink_model::Session::new(be, model, 2);
/// let logits = s.feed_tokens(&[151644, 872])?; // `<|im_start|>user`
/// let row = be.to_vec(&logits)?; // [vocab] logits of the next token
/// assert_eq!(s.len(), 2);
/// # Ok(()) }
/// ```
pub struct Session<'m, B: Backend> {
    be: &'m B,
    model: &'m Qwen25VL<B>,
    cache: KvCache<B>,
    positions: MropeBuilder,
    merge: u32,
}

impl<B: Backend> std::fmt::Debug for Session<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("len", &self.cache.len())
            .finish()
    }
}

impl<'m, B: Backend> Session<'m, B> {
    /// An empty session; `merge` is the processor's spatial merge size (image pads per grid).
    pub fn new(be: &'m B, model: &'m Qwen25VL<B>, merge: u32) -> Self {
        Self {
            be,
            model,
            cache: model.new_cache(),
            positions: MropeBuilder::new(),
            merge,
        }
    }

    /// The executor.
    pub fn backend(&self) -> &'m B {
        self.be
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Whether `n` more tokens fit the model's context.
    pub fn fits(&self, n: usize) -> bool {
        self.cache.len() + n <= self.model.cfg.text.max_position_embeddings
    }

    /// Appends prompt tokens with the images whose pads they contain (in order): extends the
    /// M-RoPE positions, runs the vision tower, embeds and decodes. Returns the last position's
    /// logits `[1, vocab]` and the milliseconds the vision tower took by `clock`.
    pub fn feed(
        &mut self,
        ids: &[u32],
        images: &[PixelValues],
        clock: &dyn Fn() -> f64,
    ) -> Result<(B::Tensor, f64)> {
        let grids: Vec<[u32; 3]> = images.iter().map(|p| p.grid_thw).collect();
        extend_rope_index(&mut self.positions, ids, &grids, self.merge)
            .map_err(|e| Error::Input(e.to_string()))?;
        let t = clock();
        let feats = match images.is_empty() {
            true => None,
            false => {
                // One image (every VisionThink turn) is passed as it is: a full-resolution
                // image's values are tens of MB, and joining them cost a copy into fresh pages.
                let pixels: Cow<'_, [f32]> = match images {
                    [one] => Cow::Borrowed(&one.data),
                    many => Cow::Owned(
                        many.iter()
                            .map(|p| &p.data[..])
                            .collect::<Vec<_>>()
                            .concat(),
                    ),
                };
                let feats = self.model.vision.forward(self.be, &pixels, &grids)?;
                // On a GPU the kernels are only queued by now: wait, so the clock is honest.
                self.be.synchronize()?;
                Some(feats)
            }
        };
        let vision_ms = clock() - t;
        Ok((self.forward(ids, feats.as_ref())?, vision_ms))
    }

    /// Appends text tokens (generated ones, or a prompt without images).
    pub fn feed_tokens(&mut self, ids: &[u32]) -> Result<B::Tensor> {
        self.positions.push_text(ids.len());
        self.forward(ids, None)
    }

    /// Appends one token to each of `sessions` (all on one model) and returns the logits
    /// `[n, vocab]`, row `i` for session `i`: the projections, MLPs and the output head run once
    /// on all rows (a batch reads the weights once instead of once per sequence), rotary
    /// embedding and attention per session against its own cache and positions
    /// ([`Qwen25VL::decode_rows`]).
    ///
    /// ```
    /// # fn demo<B: visionthink_model::Backend>(be: &B, model: &visionthink_model::Qwen25VL<B>) -> visionthink_model::Result<()> {
    /// use visionthink_model::Session;
    /// let (mut a, mut b) = (Session::new(be, model, 2), Session::new(be, model, 2));
    /// a.feed_tokens(&[151644, 872])?;
    /// b.feed_tokens(&[151644, 77091, 198])?;
    /// let logits = Session::step_batch(&mut [&mut a, &mut b], &[9707, 40])?;
    /// assert_eq!(be.shape(&logits)[0], 2);
    /// assert_eq!((a.len(), b.len()), (3, 4));
    /// # Ok(()) }
    /// ```
    pub fn step_batch(sessions: &mut [&mut Session<'m, B>], ids: &[u32]) -> Result<B::Tensor> {
        let Some(first) = sessions.first() else {
            return Err(Error::Input("an empty batch".into()));
        };
        if sessions.len() != ids.len() {
            return Err(Error::Input(format!(
                "{} sessions but {} tokens",
                sessions.len(),
                ids.len()
            )));
        }
        let (be, model) = (first.be, first.model);
        if sessions.iter().any(|s| !std::ptr::eq(s.model, model)) {
            return Err(Error::Input(
                "a batch must hold sessions of one model".into(),
            ));
        }
        // Checked before any session moves, so a failed batch leaves every session as it was.
        if let Some(i) = sessions.iter().position(|s| !s.fits(1)) {
            return Err(Error::Input(format!(
                "session {i} of the batch is full: {} tokens, the context is {}",
                sessions[i].len(),
                model.cfg.text.max_position_embeddings
            )));
        }
        for s in sessions.iter_mut() {
            s.positions.push_text(1);
        }
        let embeds = model.embed(be, ids, None)?;
        let mut rows: Vec<_> = sessions
            .iter_mut()
            .map(|s| (s.positions.positions(), &mut s.cache))
            .collect();
        let hidden = model.decode_rows(be, &embeds, &mut rows)?;
        model.logits(be, &hidden)
    }

    fn forward(&mut self, ids: &[u32], feats: Option<&B::Tensor>) -> Result<B::Tensor> {
        if ids.is_empty() {
            return Err(Error::Input("nothing to feed".into()));
        }
        let (be, model) = (self.be, self.model);
        let embeds = model.embed(be, ids, feats)?;
        let hidden = model.decode(be, &embeds, self.positions.positions(), &mut self.cache)?;
        let last = be.narrow_rows(&hidden, ids.len() - 1, 1)?;
        model.logits(be, &last)
    }
}

/// A session whose logits are read back synchronously (the native executors), as an object:
/// an application holding models on several executors picks one session type once, and every
/// call after that is the same.
pub trait Feed {
    /// [`Session::feed`], read back: the last position's logits and the vision milliseconds.
    fn feed(
        &mut self,
        ids: &[u32],
        images: &[PixelValues],
        clock: &dyn Fn() -> f64,
    ) -> Result<(Vec<f32>, f64)>;

    /// [`Session::feed_tokens`], read back.
    fn feed_tokens(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
}

impl<B: Backend> Feed for Session<'_, B> {
    fn feed(
        &mut self,
        ids: &[u32],
        images: &[PixelValues],
        clock: &dyn Fn() -> f64,
    ) -> Result<(Vec<f32>, f64)> {
        let (logits, vision_ms) = Session::feed(self, ids, images, clock)?;
        Ok((self.be.to_vec(&logits)?, vision_ms))
    }

    fn feed_tokens(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let logits = Session::feed_tokens(self, ids)?;
        self.be.to_vec(&logits)
    }
}
