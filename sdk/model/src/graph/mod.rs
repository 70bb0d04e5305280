//! Qwen2.5-VL, written once against [`Backend`]: the vision tower (patch embed as a matmul, 2-D
//! rotary, window attention with full-attention blocks, the window permutation and its inverse,
//! patch merger) and the Qwen2 decoder with M-RoPE, GQA and a KV cache. Weight names follow HF
//! (`model.visual.*` / `model.language_model.*`, and the older `visual.*` / `model.*`).

use crate::backend::{Backend, Mask};
use crate::error::{Error, Result};
use crate::weights::WeightStore;
use visionthink_core::config::ModelConfig;
use visionthink_core::rope::Positions;

mod params;

pub use params::{
    checkpoint_layout, read_tensor, DecoderLayer, InitKind, Linear, TensorSpec, TextWeights,
    VisionBlock, VisionTower,
};

/// The whole model.
#[derive(Debug, Clone)]
pub struct Qwen25VL<B: Backend> {
    /// The configuration it was built from.
    pub cfg: ModelConfig,
    /// Vision tower.
    pub vision: VisionTower<B::Tensor>,
    text: TextWeights<B::Tensor>,
    /// Whether `lm_head` is the embedding matrix.
    pub tied: bool,
}

/// Keys and values of every decoder layer for the tokens processed so far. Cloning shares the
/// tensors (cheap); appending to a clone never changes the original's valid rows, but two
/// clones that both append write into the same spare rows: caches that grow side by side
/// (several continuations decoded in lock-step) each need a [`KvCache::fork`].
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    /// Per layer: the key buffer (possibly with spare rows) …
    k: Vec<Option<B::Tensor>>,
    /// … and the value buffer; the first `len` rows of each are valid.
    v: Vec<Option<B::Tensor>>,
    len: usize,
}

impl<B: Backend> Clone for KvCache<B> {
    fn clone(&self) -> Self {
        Self {
            k: self.k.clone(),
            v: self.v.clone(),
            len: self.len,
        }
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            k: vec![None; layers],
            v: vec![None; layers],
            len: 0,
        }
    }

    /// A copy with buffers of its own: appending to it never interferes with `self` or with
    /// other forks (a clone shares the spare rows, see [`KvCache`]).
    pub fn fork(&self, be: &B) -> Result<Self> {
        let copy = |t: &Option<B::Tensor>| -> Result<Option<B::Tensor>> {
            match t {
                Some(b) if self.len > 0 => {
                    let valid = be.narrow_rows(b, 0, self.len)?;
                    Ok(Some(be.append_rows(None, 0, &valid)?.0))
                }
                _ => Ok(None),
            }
        };
        Ok(Self {
            k: self.k.iter().map(copy).collect::<Result<_>>()?,
            v: self.v.iter().map(copy).collect::<Result<_>>()?,
            len: self.len,
        })
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The window permutation of the vision tower for a list of images (HF `get_window_index`):
/// merged-unit order, and cumulative sequence lengths (in patches) of the windows and of the
/// images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    /// Merged-unit index in window order.
    pub window_index: Vec<u32>,
    /// Inverse permutation.
    pub reverse_index: Vec<u32>,
    /// Window boundaries in patches (empty windows removed).
    pub cu_window: Vec<usize>,
    /// Image boundaries in patches.
    pub cu_full: Vec<usize>,
}

/// Computes the [`WindowPlan`] for image grids `(t, h, w)`.
pub fn window_plan(
    grids: &[[u32; 3]],
    merge: usize,
    window_size: usize,
    patch_size: usize,
) -> WindowPlan {
    let unit = merge * merge;
    let ws = (window_size / merge / patch_size).max(1);
    let mut window_index = Vec::new();
    let mut cu_window = vec![0usize];
    let mut cu_full = vec![0usize];
    let mut offset = 0usize;
    for g in grids {
        let (t, gh, gw) = (g[0] as usize, g[1] as usize / merge, g[2] as usize / merge);
        let (nwh, nww) = ((gh + ws - (gh % ws)) / ws, (gw + ws - (gw % ws)) / ws);
        for ti in 0..t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut count = 0;
                    for y in wy * ws..((wy + 1) * ws).min(gh) {
                        for x in wx * ws..((wx + 1) * ws).min(gw) {
                            window_index.push((offset + ti * gh * gw + y * gw + x) as u32);
                            count += 1;
                        }
                    }
                    let last = *cu_window.last().unwrap_or(&0);
                    if count > 0 {
                        cu_window.push(last + count * unit);
                    }
                }
            }
            let last = *cu_full.last().unwrap_or(&0);
            cu_full.push(last + gh * gw * unit);
        }
        offset += t * gh * gw;
    }
    let mut reverse_index = vec![0u32; window_index.len()];
    for (i, &w) in window_index.iter().enumerate() {
        reverse_index[w as usize] = i as u32;
    }
    WindowPlan {
        window_index,
        reverse_index,
        cu_window,
        cu_full,
    }
}

/// `mlp(h, x)` (an MLP of the rows `h` added to the residual rows `x`) over all rows, in passes
/// of as many rows as the backend asks for MLPs of `intermediate` units
/// ([`Backend::mlp_rows_per_pass`]), the passes' rows joined in order.
fn in_passes<B: Backend>(
    be: &B,
    h: &B::Tensor,
    x: &B::Tensor,
    intermediate: usize,
    mlp: impl Fn(&B::Tensor, &B::Tensor) -> Result<B::Tensor>,
) -> Result<B::Tensor> {
    let rows = be.shape(h).first().copied().unwrap_or(0);
    match be.mlp_rows_per_pass(intermediate) {
        Some(per) if rows > per => {
            let mut parts = Vec::with_capacity(rows.div_ceil(per));
            for start in (0..rows).step_by(per) {
                let len = per.min(rows - start);
                let (h, x) = (
                    be.narrow_rows(h, start, len)?,
                    be.narrow_rows(x, start, len)?,
                );
                parts.push(mlp(&h, &x)?);
            }
            be.cat_rows(&parts)
        }
        _ => mlp(h, x),
    }
}

/// Columns `start .. start + len` of a one-row tensor, as a view where the backend has them
/// (a row's columns are contiguous).
fn columns<B: Backend>(be: &B, row: &B::Tensor, start: usize, len: usize) -> Result<B::Tensor> {
    let width = be.shape(row).iter().product();
    let column = be.reshape(row, width, 1)?;
    be.reshape(&be.narrow_rows(&column, start, len)?, 1, len)
}

/// `1 / theta^(2i / dim)` in f32, as torch computes it.
fn inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
        .collect()
}

impl<T: Clone> VisionTower<T> {
    /// Runs the tower on `pixel_values` (`[patches, 1176]` rows of all images, in order) and
    /// returns the merged features `[patches / 4, out_hidden]` in the images' token order.
    pub fn forward<B: Backend<Tensor = T>>(
        &self,
        be: &B,
        pixel_values: &[f32],
        grids: &[[u32; 3]],
    ) -> Result<T> {
        let unit = self.merge * self.merge;
        let n: usize = grids.iter().map(|g| (g[0] * g[1] * g[2]) as usize).sum();
        if n == 0 || pixel_values.len() % n != 0 {
            return Err(Error::Input(format!(
                "{} pixel values do not split into {n} patches",
                pixel_values.len()
            )));
        }
        let row = pixel_values.len() / n;
        let x = be.tensor(pixel_values, &[n, row])?;
        let x = be.linear(&x, &self.patch_embed, None)?;
        let plan = window_plan(grids, self.merge, self.window_size, self.patch_size);
        let permute = |t: &T, idx: &[u32], cols: usize| -> Result<T> {
            let grouped = be.reshape(t, n / unit, cols * unit)?;
            let moved = be.gather_rows(&grouped, idx)?;
            be.reshape(&moved, n, cols)
        };
        let mut x = permute(&x, &plan.window_index, self.dim)?;
        let (cos, sin) = self.rotary(be, grids, &plan.window_index)?;
        for blk in &self.blocks {
            let mask = Mask::Segments(if blk.full_attention {
                plan.cu_full.clone()
            } else {
                plan.cu_window.clone()
            });
            let h = be.rms_norm(&x, &blk.norm1, 1e-6)?;
            let q = be.rope(&blk.q.forward(be, &h)?, &cos, &sin, self.heads)?;
            let k = be.rope(&blk.k.forward(be, &h)?, &cos, &sin, self.heads)?;
            let v = blk.v.forward(be, &h)?;
            let a = be.attention(&q, &k, &v, self.heads, self.heads, &mask)?;
            x = blk.proj.forward_add(be, &a, &x)?;
            let h = be.rms_norm(&x, &blk.norm2, 1e-6)?;
            let inter = be.shape(&blk.gate.w).first().copied().unwrap_or(0);
            x = in_passes(be, &h, &x, inter, |h, x| {
                let (gate, up) = (blk.gate.forward(be, h)?, blk.up.forward(be, h)?);
                be.swiglu_linear_add(&gate, &up, &blk.down.w, blk.down.b.as_ref(), x)
            })?;
        }
        let h = be.rms_norm(&x, &self.merger_norm, 1e-6)?;
        let h = be.reshape(&h, n / unit, self.dim * unit)?;
        let h = be.gelu(&self.merger_fc1.forward(be, &h)?)?;
        let h = self.merger_fc2.forward(be, &h)?;
        be.gather_rows(&h, &plan.reverse_index)
    }

    /// cos/sin `[patches, head_dim]` of the 2-D rotary, rows in window order.
    fn rotary<B: Backend<Tensor = T>>(
        &self,
        be: &B,
        grids: &[[u32; 3]],
        window_index: &[u32],
    ) -> Result<(T, T)> {
        let head_dim = self.dim / self.heads;
        let freqs = inv_freq(self.rope_theta, head_dim / 2);
        let m = self.merge;
        // (h, w) of every patch in merge-group order (the order of pixel_values rows).
        let mut hw = Vec::new();
        for g in grids {
            let (t, h, w) = (g[0] as usize, g[1] as usize, g[2] as usize);
            for _ in 0..t {
                for bh in 0..h / m {
                    for bw in 0..w / m {
                        for ih in 0..m {
                            for iw in 0..m {
                                hw.push(((bh * m + ih) as f32, (bw * m + iw) as f32));
                            }
                        }
                    }
                }
            }
        }
        let unit = m * m;
        let q = freqs.len();
        let mut cos = Vec::with_capacity(hw.len() * head_dim);
        let mut sin = Vec::with_capacity(hw.len() * head_dim);
        for &wi in window_index {
            for j in 0..unit {
                let (h, w) = hw[wi as usize * unit + j];
                let angles: Vec<f32> = freqs
                    .iter()
                    .map(|f| h * f)
                    .chain(freqs.iter().map(|f| w * f))
                    .collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        debug_assert_eq!(cos.len(), hw.len() * 4 * q);
        Ok((
            be.tensor(&cos, &[hw.len(), head_dim])?,
            be.tensor(&sin, &[hw.len(), head_dim])?,
        ))
    }
}

/// Hands over the row blocks of an HF tensor, by name and block count (see
/// [`Qwen25VL::assemble`]).
pub type TakeBlocks<'a, T> = dyn FnMut(&str, usize) -> Option<Vec<T>> + 'a;

impl<B: Backend> Qwen25VL<B> {
    /// Checks what the config and the checkpoint's head agree on; returns whether the head is
    /// tied to the embedding.
    fn check_layout(cfg: &ModelConfig, has_head: bool) -> Result<bool> {
        let v = &cfg.vision;
        if v.num_heads == 0 || v.hidden_size % v.num_heads != 0 {
            return Err(Error::Config(format!(
                "vision hidden_size {} is not divisible by num_heads {}",
                v.hidden_size, v.num_heads
            )));
        }
        if !has_head && !cfg.text.tie_word_embeddings {
            return Err(Error::MissingTensor(
                "lm_head.weight (config says tie_word_embeddings = false)".into(),
            ));
        }
        Ok(!has_head)
    }

    /// Builds the model from weights already on the backend, made in whatever order their
    /// bytes arrived (the streaming GGUF loader, [`crate::gguf_stream::GgufStream`]): `take`
    /// hands over the row blocks of the named HF tensor (`parts` of them: 3 for the vision
    /// `qkv`, else 1), or `None` when it was never made. Each block's shape is checked against
    /// the config's (`[rows / parts, rest]` for matrices, `[n / parts]` for vectors).
    pub fn assemble(
        be: &B,
        cfg: &ModelConfig,
        has_head: bool,
        take: &mut TakeBlocks<'_, B::Tensor>,
    ) -> Result<Self> {
        let tied = Self::check_layout(cfg, has_head)?;
        let (vision, text) = params::walk::<(), B::Tensor>(cfg, tied, None, &mut |v| {
            let spec = &v.spec;
            let blocks =
                take(&spec.name, v.parts).ok_or_else(|| Error::MissingTensor(spec.name.clone()))?;
            let want = params::block_shape(spec, v.parts);
            for b in &blocks {
                if be.shape(b) != want {
                    return Err(Error::Shape {
                        name: spec.name.clone(),
                        expected: want,
                        found: be.shape(b),
                    });
                }
            }
            Ok(blocks)
        })?;
        Self {
            cfg: cfg.clone(),
            vision,
            text,
            tied,
        }
        .fused(be)
    }

    /// Builds the model from a checkpoint: every tensor of [`checkpoint_layout`], under its
    /// transformers 5 name or the older one (`visual.*`, `model.*`); `lm_head.weight` absent
    /// means tied.
    pub fn load(be: &B, cfg: &ModelConfig, store: &WeightStore) -> Result<Self> {
        let tied = Self::check_layout(cfg, store.contains("lm_head.weight"))?;
        // The walk names every tensor; the blocks are then read and created one tensor at a
        // time in the loader's creation order, and a second walk puts them in place.
        let mut specs = Vec::new();
        let slots = params::walk::<(), params::Slot>(cfg, tied, None, &mut |v| {
            let e = specs.len();
            let parts = v.parts;
            specs.push((v.spec, parts));
            Ok((0..parts).map(|p| (e, p)).collect())
        })?;
        let mut made: Vec<Vec<Option<B::Tensor>>> = specs
            .iter()
            .map(|(_, n)| (0..*n).map(|_| None).collect())
            .collect();
        let mut read: Vec<Vec<Option<params::Block>>> = vec![Vec::new(); specs.len()];
        for (e, p) in params::creation_order(&specs) {
            if made[e][p].is_some() {
                continue;
            }
            let (spec, parts) = &specs[e];
            // A GGUF matrix stays in its quantized blocks when the backend computes on them.
            if let Some(views) = store.quantized_parts(&spec.name, *parts) {
                if views.iter().all(|q| be.takes_quantized(q.ty)) {
                    let want = params::block_shape(spec, *parts);
                    if let Some(q) = views.iter().find(|q| q.shape[..] != want[..]) {
                        return Err(Error::Shape {
                            name: spec.name.clone(),
                            expected: want,
                            found: q.shape.to_vec(),
                        });
                    }
                    for (slot, q) in made[e].iter_mut().zip(&views) {
                        *slot = Some(be.quantized_weight(q)?);
                        store.release_quantized(q);
                    }
                    continue;
                }
            }
            if read[e].is_empty() {
                read[e] = params::read_parts(store, spec, *parts)?
                    .into_iter()
                    .map(Some)
                    .collect();
            }
            let missing = || Error::MissingTensor(specs[e].0.name.clone());
            let (data, shape) = read[e]
                .get_mut(p)
                .and_then(Option::take)
                .ok_or_else(missing)?;
            made[e][p] = Some(be.weight(data, &shape)?);
        }
        let (vision, text) = params::walk::<params::Slot, B::Tensor>(
            cfg,
            tied,
            Some((&slots.0, &slots.1)),
            &mut |v| {
                v.old
                    .unwrap_or_default()
                    .into_iter()
                    .map(|&(e, p)| {
                        made[e][p]
                            .take()
                            .ok_or_else(|| Error::MissingTensor(format!("row block {e}.{p}")))
                    })
                    .collect()
            },
        )?;
        Self {
            cfg: cfg.clone(),
            vision,
            text,
            tied,
        }
        .fused(be)
    }

    /// The model with each decoder layer's q/k/v and gate/up projections fused where the
    /// backend does that ([`Backend::fuse_rows`]): one-token steps then run each group as one
    /// product.
    fn fused(mut self, be: &B) -> Result<Self> {
        for layer in &mut self.text.layers {
            layer.fuse(be)?;
        }
        Ok(self)
    }

    /// A fresh KV cache.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.text.layers.len())
    }

    /// Input embeddings of `ids`, with the rows at image-pad tokens replaced, in order, by the
    /// rows of `image_features`.
    pub fn embed(
        &self,
        be: &B,
        ids: &[u32],
        image_features: Option<&B::Tensor>,
    ) -> Result<B::Tensor> {
        let pad = self.cfg.image_token_id;
        let n_pads = ids.iter().filter(|&&t| t == pad).count();
        let have = match image_features {
            Some(f) => be.shape(f)[0],
            None => 0,
        };
        if n_pads != have {
            return Err(Error::Input(format!(
                "{n_pads} image tokens in the sequence but {have} image feature rows"
            )));
        }
        let vocab = self.cfg.text.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let mut parts = Vec::new();
        let (mut i, mut feat) = (0usize, 0usize);
        while i < ids.len() {
            let is_pad = ids[i] == pad;
            let run = ids[i..]
                .iter()
                .take_while(|&&t| (t == pad) == is_pad)
                .count();
            match (is_pad, image_features) {
                (true, Some(f)) => {
                    parts.push(be.narrow_rows(f, feat, run)?);
                    feat += run;
                }
                _ => parts.push(be.gather_rows(&self.text.embed, &ids[i..i + run])?),
            }
            i += run;
        }
        be.cat_rows(&parts)
    }

    /// cos/sin `[n, head_dim]` of M-RoPE for the given positions (rows `start .. start + n`).
    fn mrope(
        &self,
        be: &B,
        pos: &Positions,
        start: usize,
        n: usize,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let t = &self.cfg.text;
        let head_dim = t.hidden_size / t.num_attention_heads;
        let freqs = inv_freq(t.rope_theta as f32, head_dim);
        let mut axis_of = Vec::with_capacity(freqs.len());
        for (axis, &len) in t.mrope_section.iter().enumerate() {
            axis_of.extend(std::iter::repeat_n(axis % 3, len));
        }
        let mut cos = Vec::with_capacity(n * head_dim);
        let mut sin = Vec::with_capacity(n * head_dim);
        for r in start..start + n {
            let angles: Vec<f32> = freqs
                .iter()
                .zip(&axis_of)
                .map(|(f, &a)| pos.axes[a][r] as f32 * f)
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        Ok((
            be.tensor(&cos, &[n, head_dim])?,
            be.tensor(&sin, &[n, head_dim])?,
        ))
    }

    /// Runs the decoder on `embeds` (`[n, hidden]`), the next `n` tokens after what `cache`
    /// holds; `positions` covers the whole sequence (cache included). Returns the final hidden
    /// states `[n, hidden]` and extends the cache.
    pub fn decode(
        &self,
        be: &B,
        embeds: &B::Tensor,
        positions: &Positions,
        cache: &mut KvCache<B>,
    ) -> Result<B::Tensor> {
        let t = &self.cfg.text;
        let n = be.shape(embeds)[0];
        let past = cache.len;
        if positions.len() < past + n {
            return Err(Error::Input(format!(
                "positions cover {} tokens, need {}",
                positions.len(),
                past + n
            )));
        }
        if past + n > t.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds the context of {}",
                past + n,
                t.max_position_embeddings
            )));
        }
        let (cos, sin) = self.mrope(be, positions, past, n)?;
        let mut x = embeds.clone();
        for (li, layer) in self.text.layers.iter().enumerate() {
            let a = match self.attend_fused(be, layer, &x, &cos, &sin, cache, li)? {
                Some(a) => a,
                None => {
                    let (q, k, v) = self.layer_head(be, layer, &x, &cos, &sin)?;
                    self.attend(be, cache, li, &q, &k, &v)?
                }
            };
            x = self.layer_tail(be, layer, &x, &a)?;
        }
        cache.len = past + n;
        be.rms_norm(&x, &self.text.norm, t.rms_norm_eps)
    }

    /// The input norm, then the fused q/k/v product, for one row; `None` with nothing computed
    /// when the layer has no fused product or `x` has several rows.
    fn fused_row_qkv(
        &self,
        be: &B,
        layer: &params::DecoderLayer<B::Tensor>,
        x: &B::Tensor,
    ) -> Result<Option<B::Tensor>> {
        let Some(qkv) = layer.fused.as_ref().and_then(|f| f.qkv.as_ref()) else {
            return Ok(None);
        };
        if be.shape(x)[0] != 1 {
            return Ok(None);
        }
        let h = be.rms_norm(x, &layer.input_norm, self.cfg.text.rms_norm_eps)?;
        qkv.forward(be, &h).map(Some)
    }

    /// A decoder layer's attention for one row through the fused q/k/v product, its rotary
    /// embedding and cache append in one [`Backend::rope_append`] where the backend has it
    /// (composed from [`Backend::rope`] and [`Self::attend`] where not), or `None` with nothing
    /// computed when [`Self::fused_row_qkv`] has none (then [`Self::layer_head`] and
    /// [`Self::attend`] run).
    #[allow(clippy::too_many_arguments)]
    fn attend_fused(
        &self,
        be: &B,
        layer: &params::DecoderLayer<B::Tensor>,
        x: &B::Tensor,
        cos: &B::Tensor,
        sin: &B::Tensor,
        cache: &mut KvCache<B>,
        li: usize,
    ) -> Result<Option<B::Tensor>> {
        let Some(y) = self.fused_row_qkv(be, layer, x)? else {
            return Ok(None);
        };
        let t = &self.cfg.text;
        let (heads, kv_heads) = (t.num_attention_heads, t.num_key_value_heads);
        let past = cache.len;
        let (k_slot, v_slot) = (&mut cache.k[li], &mut cache.v[li]);
        if let Some((q, k_all, v_all)) =
            be.rope_append(&y, cos, sin, (heads, kv_heads), k_slot, v_slot, past)?
        {
            let mask = Mask::Causal { past };
            return be
                .attention(&q, &k_all, &v_all, heads, kv_heads, &mask)
                .map(Some);
        }
        let (q, k, v) = self.split_fused_qkv(be, &y, cos, sin)?;
        self.attend(be, cache, li, &q, &k, &v).map(Some)
    }

    /// The rotated queries and keys and the values of one fused q/k/v product row.
    fn split_fused_qkv(
        &self,
        be: &B,
        y: &B::Tensor,
        cos: &B::Tensor,
        sin: &B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor, B::Tensor)> {
        let t = &self.cfg.text;
        let (heads, kv_heads) = (t.num_attention_heads, t.num_key_value_heads);
        let d = t.hidden_size / heads;
        let (qw, kw) = (heads * d, kv_heads * d);
        let qk = be.rope(&columns(be, y, 0, qw + kw)?, cos, sin, heads + kv_heads)?;
        let q = columns(be, &qk, 0, qw)?;
        let k = columns(be, &qk, qw, kw)?;
        let v = columns(be, y, qw + kw, kw)?;
        Ok((q, k, v))
    }

    /// A decoder layer before attention: the input norm, then the query, key and value
    /// projections, rotary embedding applied to the queries and keys.
    fn layer_head(
        &self,
        be: &B,
        layer: &params::DecoderLayer<B::Tensor>,
        x: &B::Tensor,
        cos: &B::Tensor,
        sin: &B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor, B::Tensor)> {
        if let Some(y) = self.fused_row_qkv(be, layer, x)? {
            // One row: the fused product, rotary embedding on the q and k heads at once.
            return self.split_fused_qkv(be, &y, cos, sin);
        }
        let t = &self.cfg.text;
        let h = be.rms_norm(x, &layer.input_norm, t.rms_norm_eps)?;
        let (heads, kv_heads) = (t.num_attention_heads, t.num_key_value_heads);
        let q = be.rope(&layer.q.forward(be, &h)?, cos, sin, heads)?;
        let k = be.rope(&layer.k.forward(be, &h)?, cos, sin, kv_heads)?;
        let v = layer.v.forward(be, &h)?;
        Ok((q, k, v))
    }

    /// Appends `k`, `v` (the rows after the ones `cache` holds; its length moves once every
    /// layer has them) to layer `li` of `cache` and attends `q` to everything cached, causally.
    fn attend(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        li: usize,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<B::Tensor> {
        let t = &self.cfg.text;
        let past = cache.len;
        let (kb, k_all) = be.append_rows(cache.k[li].take(), past, k)?;
        let (vb, v_all) = be.append_rows(cache.v[li].take(), past, v)?;
        cache.k[li] = Some(kb);
        cache.v[li] = Some(vb);
        let (heads, kv_heads) = (t.num_attention_heads, t.num_key_value_heads);
        be.attention(q, &k_all, &v_all, heads, kv_heads, &Mask::Causal { past })
    }

    /// A decoder layer after attention: the output projection added to the residual, then the
    /// post-attention norm and the SwiGLU MLP added to it.
    fn layer_tail(
        &self,
        be: &B,
        layer: &params::DecoderLayer<B::Tensor>,
        x: &B::Tensor,
        attended: &B::Tensor,
    ) -> Result<B::Tensor> {
        let eps = self.cfg.text.rms_norm_eps;
        let x = layer.o.forward_add(be, attended, x)?;
        let h = be.rms_norm(&x, &layer.post_norm, eps)?;
        let (down, down_b) = (&layer.down.w, layer.down.b.as_ref());
        if let Some(y) = be.mlp_add(&h, &layer.gate.w, &layer.up.w, down, down_b, &x)? {
            return Ok(y);
        }
        let gate_up = layer.fused.as_ref().and_then(|f| f.gate_up.as_ref());
        let inter = self.cfg.text.intermediate_size;
        in_passes(be, &h, &x, inter, |h, x| {
            let (gate, up) = match (gate_up, &be.shape(h)[..]) {
                (Some(gate_up), [1, _]) => {
                    let gu = gate_up.forward(be, h)?;
                    (columns(be, &gu, 0, inter)?, columns(be, &gu, inter, inter)?)
                }
                _ => (layer.gate.forward(be, h)?, layer.up.forward(be, h)?),
            };
            be.swiglu_linear_add(&gate, &up, down, down_b, x)
        })
    }

    /// One decode step for several sequences: `embeds` (`[n, hidden]`) holds the next token of
    /// each of `rows` (its positions, covering that token, and its cache). The projections, norms
    /// and MLP run once on all rows; rotary embedding, the cache append and attention run per
    /// row against its own cache. Returns the final hidden states `[n, hidden]`; every cache
    /// grows by one. Context limits are the caller's to check first (see
    /// [`crate::Session::step_batch`]): an error here may leave some caches extended.
    pub fn decode_rows(
        &self,
        be: &B,
        embeds: &B::Tensor,
        rows: &mut [(&Positions, &mut KvCache<B>)],
    ) -> Result<B::Tensor> {
        let t = &self.cfg.text;
        let n = rows.len();
        if be.shape(embeds)[0] != n || n == 0 {
            return Err(Error::Input(format!(
                "{} rows of embeddings for {n} sequences",
                be.shape(embeds)[0]
            )));
        }
        let mut cos = Vec::with_capacity(n);
        let mut sin = Vec::with_capacity(n);
        for (positions, cache) in rows.iter() {
            let past = cache.len;
            if positions.len() < past + 1 || past + 1 > t.max_position_embeddings {
                return Err(Error::Input(format!(
                    "a sequence of {} tokens cannot take one more (positions {}, context {})",
                    past,
                    positions.len(),
                    t.max_position_embeddings
                )));
            }
            let (c, s) = self.mrope(be, positions, past, 1)?;
            cos.push(c);
            sin.push(s);
        }
        let (cos, sin) = (be.cat_rows(&cos)?, be.cat_rows(&sin)?);
        let mut x = embeds.clone();
        for (li, layer) in self.text.layers.iter().enumerate() {
            let (q, k, v) = self.layer_head(be, layer, &x, &cos, &sin)?;
            let mut attended = Vec::with_capacity(n);
            for (i, (_, cache)) in rows.iter_mut().enumerate() {
                let row = |t: &B::Tensor| be.narrow_rows(t, i, 1);
                attended.push(self.attend(be, cache, li, &row(&q)?, &row(&k)?, &row(&v)?)?);
            }
            let a = be.cat_rows(&attended)?;
            x = self.layer_tail(be, layer, &x, &a)?;
        }
        for (_, cache) in rows.iter_mut() {
            cache.len += 1;
        }
        be.rms_norm(&x, &self.text.norm, t.rms_norm_eps)
    }

    /// The vocabulary projection `[vocab, hidden]` (the embedding matrix when tied), for
    /// callers that fuse it with what follows (a trainer's log-softmax).
    pub fn lm_head(&self) -> &B::Tensor {
        &self.text.lm_head
    }

    /// Logits `[rows, vocab]` of hidden states.
    pub fn logits(&self, be: &B, hidden: &B::Tensor) -> Result<B::Tensor> {
        be.linear(hidden, &self.text.lm_head, None)
    }

    /// Logits of the last row only.
    pub fn last_logits(&self, be: &B, hidden: &B::Tensor) -> Result<Vec<f32>> {
        let n = be.shape(hidden)[0];
        let last = be.narrow_rows(hidden, n - 1, 1)?;
        be.to_vec(&self.logits(be, &last)?)
    }
}

impl<B: Backend> Qwen25VL<B> {
    fn walk_self<'s, T: Clone>(
        &'s self,
        f: &mut params::Visitor<'_, 's, B::Tensor, T>,
    ) -> Result<(VisionTower<T>, TextWeights<T>)> {
        params::walk(&self.cfg, self.tied, Some((&self.vision, &self.text)), f)
    }

    /// The model's tensors in the order and under the names of [`checkpoint_layout`], each as
    /// the row blocks it is made of (the vision `qkv` is held as three separate projections).
    pub fn export_parts(&self) -> Result<Vec<(TensorSpec, Vec<B::Tensor>)>> {
        let mut out = Vec::new();
        self.walk_self::<()>(&mut |v| {
            let parts: Vec<B::Tensor> = v.old.unwrap_or_default().into_iter().cloned().collect();
            let n = v.parts;
            out.push((v.spec, parts));
            Ok(vec![(); n])
        })?;
        Ok(out)
    }

    /// The model's weights as f32 values in HF names and shapes, ready for safetensors.
    pub fn export(&self, be: &B) -> Result<Vec<(TensorSpec, Vec<f32>)>> {
        self.export_parts()?
            .into_iter()
            .map(|(spec, parts)| {
                let mut data = Vec::with_capacity(spec.shape.iter().product());
                for p in &parts {
                    data.extend(be.to_vec(p)?);
                }
                if data.len() != spec.shape.iter().product::<usize>() {
                    return Err(Error::Shape {
                        name: spec.name.clone(),
                        expected: spec.shape.clone(),
                        found: vec![data.len()],
                    });
                }
                Ok((spec, data))
            })
            .collect()
    }

    /// The same model with every weight passed through `f` (e.g. candle's `detach`, which
    /// shares the storage: a frozen view of trainable weights that follows their updates, for
    /// fast rollouts without autograd bookkeeping). A tied head stays the embedding.
    pub fn map_weights(&self, f: &mut dyn FnMut(&B::Tensor) -> B::Tensor) -> Result<Self> {
        let (vision, text) = self.walk_self::<B::Tensor>(&mut |v| {
            Ok(v.old.unwrap_or_default().into_iter().map(&mut *f).collect())
        })?;
        Ok(Qwen25VL {
            cfg: self.cfg.clone(),
            vision,
            text,
            tied: self.tied,
        })
    }
}
