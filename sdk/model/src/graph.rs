//! Qwen2.5-VL, written once against [`Backend`]: the vision tower (patch embed as a matmul, 2-D
//! rotary, window attention with full-attention blocks, the window permutation and its inverse,
//! patch merger) and the Qwen2 decoder with M-RoPE, GQA and a KV cache. Weight names follow HF
//! (`model.visual.*` / `model.language_model.*`, and the older `visual.*` / `model.*`).

use crate::backend::{Backend, Mask};
use crate::weights::WeightStore;
use crate::{Error, Result};
use visionthink_core::config::ModelConfig;
use visionthink_core::rope::Positions;

/// A linear layer's tensors.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[out, in]`.
    pub w: B::Tensor,
    /// `[out]`.
    pub b: Option<B::Tensor>,
}

impl<B: Backend> Linear<B> {
    fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        be.linear(x, &self.w, self.b.as_ref())
    }
}

/// Loads weights by HF name, trying each prefix in turn.
struct Loader<'a, B: Backend> {
    store: &'a WeightStore,
    be: &'a B,
}

impl<B: Backend> Loader<'_, B> {
    fn raw(&self, prefixes: &[&str], suffix: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let names: Vec<String> = prefixes.iter().map(|p| format!("{p}{suffix}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.store.get(&refs, shape)
    }

    fn tensor(&self, prefixes: &[&str], suffix: &str, shape: &[usize]) -> Result<B::Tensor> {
        let data = self.raw(prefixes, suffix, shape)?;
        self.be.weight(data, shape)
    }

    fn linear(
        &self,
        prefixes: &[&str],
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear<B>> {
        Ok(Linear {
            w: self.tensor(prefixes, &format!("{name}.weight"), &[out, inp])?,
            b: if bias {
                Some(self.tensor(prefixes, &format!("{name}.bias"), &[out])?)
            } else {
                None
            },
        })
    }
}

const VISION_PREFIXES: [&str; 2] = ["model.visual.", "visual."];
const TEXT_PREFIXES: [&str; 2] = ["model.language_model.", "model."];

/// One vision block.
#[derive(Debug, Clone)]
pub struct VisionBlock<B: Backend> {
    norm1: B::Tensor,
    norm2: B::Tensor,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    proj: Linear<B>,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
    full_attention: bool,
}

/// The vision tower.
#[derive(Debug, Clone)]
pub struct VisionTower<B: Backend> {
    patch_embed: B::Tensor,
    blocks: Vec<VisionBlock<B>>,
    merger_norm: B::Tensor,
    merger_fc1: Linear<B>,
    merger_fc2: Linear<B>,
    dim: usize,
    heads: usize,
    merge: usize,
    window_size: usize,
    patch_size: usize,
    rope_theta: f32,
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    input_norm: B::Tensor,
    post_norm: B::Tensor,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
}

/// The whole model.
#[derive(Debug, Clone)]
pub struct Qwen25VL<B: Backend> {
    /// The configuration it was built from.
    pub cfg: ModelConfig,
    /// Vision tower.
    pub vision: VisionTower<B>,
    embed: B::Tensor,
    layers: Vec<DecoderLayer<B>>,
    norm: B::Tensor,
    lm_head: B::Tensor,
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

/// `1 / theta^(2i / dim)` in f32, as torch computes it.
fn inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
        .collect()
}

impl<B: Backend> VisionTower<B> {
    fn load(l: &Loader<'_, B>, cfg: &ModelConfig) -> Result<Self> {
        let v = &cfg.vision;
        let dim = v.hidden_size;
        if v.num_heads == 0 || dim % v.num_heads != 0 {
            return Err(Error::Config(format!(
                "vision hidden_size {dim} is not divisible by num_heads {}",
                v.num_heads
            )));
        }
        let p = &VISION_PREFIXES;
        let patch = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
        let pe = l.raw(
            p,
            "patch_embed.proj.weight",
            &[
                dim,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ],
        )?;
        let patch_embed = l.be.weight(pe, &[dim, patch])?;
        let mut blocks = Vec::with_capacity(v.depth);
        for i in 0..v.depth {
            let pre = format!("blocks.{i}.");
            let qkv_w = l.raw(p, &format!("{pre}attn.qkv.weight"), &[3 * dim, dim])?;
            let qkv_b = l.raw(p, &format!("{pre}attn.qkv.bias"), &[3 * dim])?;
            // HF reshapes qkv output as (3, heads, head_dim): q, k, v are consecutive row blocks.
            let part = |j: usize| -> Result<Linear<B>> {
                Ok(Linear {
                    w: l.be.weight(
                        qkv_w[j * dim * dim..(j + 1) * dim * dim].to_vec(),
                        &[dim, dim],
                    )?,
                    b: Some(l.be.weight(qkv_b[j * dim..(j + 1) * dim].to_vec(), &[dim])?),
                })
            };
            blocks.push(VisionBlock {
                norm1: l.tensor(p, &format!("{pre}norm1.weight"), &[dim])?,
                norm2: l.tensor(p, &format!("{pre}norm2.weight"), &[dim])?,
                q: part(0)?,
                k: part(1)?,
                v: part(2)?,
                proj: l.linear(p, &format!("{pre}attn.proj"), dim, dim, true)?,
                gate: l.linear(
                    p,
                    &format!("{pre}mlp.gate_proj"),
                    v.intermediate_size,
                    dim,
                    true,
                )?,
                up: l.linear(
                    p,
                    &format!("{pre}mlp.up_proj"),
                    v.intermediate_size,
                    dim,
                    true,
                )?,
                down: l.linear(
                    p,
                    &format!("{pre}mlp.down_proj"),
                    dim,
                    v.intermediate_size,
                    true,
                )?,
                full_attention: v.fullatt_block_indexes.contains(&i),
            });
        }
        let unit = v.spatial_merge_size * v.spatial_merge_size;
        Ok(Self {
            patch_embed,
            blocks,
            merger_norm: l.tensor(p, "merger.ln_q.weight", &[dim])?,
            merger_fc1: l.linear(p, "merger.mlp.0", dim * unit, dim * unit, true)?,
            merger_fc2: l.linear(p, "merger.mlp.2", v.out_hidden_size, dim * unit, true)?,
            dim,
            heads: v.num_heads,
            merge: v.spatial_merge_size,
            window_size: v.window_size,
            patch_size: v.patch_size,
            rope_theta: 10_000.0,
        })
    }

    /// Runs the tower on `pixel_values` (`[patches, 1176]` rows of all images, in order) and
    /// returns the merged features `[patches / 4, out_hidden]` in the images' token order.
    pub fn forward(&self, be: &B, pixel_values: &[f32], grids: &[[u32; 3]]) -> Result<B::Tensor> {
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
        let permute = |t: &B::Tensor, idx: &[u32], cols: usize| -> Result<B::Tensor> {
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
            x = be.add(&x, &blk.proj.forward(be, &a)?)?;
            let h = be.rms_norm(&x, &blk.norm2, 1e-6)?;
            let m = be.swiglu(&blk.gate.forward(be, &h)?, &blk.up.forward(be, &h)?)?;
            x = be.add(&x, &blk.down.forward(be, &m)?)?;
        }
        let h = be.rms_norm(&x, &self.merger_norm, 1e-6)?;
        let h = be.reshape(&h, n / unit, self.dim * unit)?;
        let h = be.gelu(&self.merger_fc1.forward(be, &h)?)?;
        let h = self.merger_fc2.forward(be, &h)?;
        be.gather_rows(&h, &plan.reverse_index)
    }

    /// cos/sin `[patches, head_dim]` of the 2-D rotary, rows in window order.
    fn rotary(
        &self,
        be: &B,
        grids: &[[u32; 3]],
        window_index: &[u32],
    ) -> Result<(B::Tensor, B::Tensor)> {
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

impl<B: Backend> Qwen25VL<B> {
    /// Builds the model from a checkpoint.
    pub fn load(be: &B, cfg: &ModelConfig, store: &WeightStore) -> Result<Self> {
        let l = Loader { store, be };
        let t = &cfg.text;
        let head_dim = t.hidden_size / t.num_attention_heads;
        let p = &TEXT_PREFIXES;
        let embed_data = l.raw(p, "embed_tokens.weight", &[t.vocab_size, t.hidden_size])?;
        let embed = be.weight(embed_data, &[t.vocab_size, t.hidden_size])?;
        let mut layers = Vec::with_capacity(t.num_hidden_layers);
        for i in 0..t.num_hidden_layers {
            let pre = format!("layers.{i}.");
            let (h, kv) = (t.hidden_size, t.num_key_value_heads * head_dim);
            layers.push(DecoderLayer {
                input_norm: l.tensor(p, &format!("{pre}input_layernorm.weight"), &[h])?,
                post_norm: l.tensor(p, &format!("{pre}post_attention_layernorm.weight"), &[h])?,
                q: l.linear(
                    p,
                    &format!("{pre}self_attn.q_proj"),
                    t.num_attention_heads * head_dim,
                    h,
                    true,
                )?,
                k: l.linear(p, &format!("{pre}self_attn.k_proj"), kv, h, true)?,
                v: l.linear(p, &format!("{pre}self_attn.v_proj"), kv, h, true)?,
                o: l.linear(
                    p,
                    &format!("{pre}self_attn.o_proj"),
                    h,
                    t.num_attention_heads * head_dim,
                    false,
                )?,
                gate: l.linear(
                    p,
                    &format!("{pre}mlp.gate_proj"),
                    t.intermediate_size,
                    h,
                    false,
                )?,
                up: l.linear(
                    p,
                    &format!("{pre}mlp.up_proj"),
                    t.intermediate_size,
                    h,
                    false,
                )?,
                down: l.linear(
                    p,
                    &format!("{pre}mlp.down_proj"),
                    h,
                    t.intermediate_size,
                    false,
                )?,
            });
        }
        let has_head = store.contains("lm_head.weight");
        let tied = !has_head;
        if tied && !t.tie_word_embeddings {
            return Err(Error::MissingTensor(
                "lm_head.weight (config says tie_word_embeddings = false)".into(),
            ));
        }
        let lm_head = if tied {
            embed.clone()
        } else {
            l.tensor(&[""], "lm_head.weight", &[t.vocab_size, t.hidden_size])?
        };
        Ok(Self {
            cfg: cfg.clone(),
            vision: VisionTower::load(&l, cfg)?,
            embed,
            layers,
            norm: l.tensor(p, "norm.weight", &[t.hidden_size])?,
            lm_head,
            tied,
        })
    }

    /// A fresh KV cache.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
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
                _ => parts.push(be.gather_rows(&self.embed, &ids[i..i + run])?),
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
        let (heads, kv_heads) = (t.num_attention_heads, t.num_key_value_heads);
        let mut x = embeds.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = be.rms_norm(&x, &layer.input_norm, t.rms_norm_eps)?;
            let q = be.rope(&layer.q.forward(be, &h)?, &cos, &sin, heads)?;
            let k = be.rope(&layer.k.forward(be, &h)?, &cos, &sin, kv_heads)?;
            let v = layer.v.forward(be, &h)?;
            let (kb, k_all) = be.append_rows(cache.k[li].take(), past, &k)?;
            let (vb, v_all) = be.append_rows(cache.v[li].take(), past, &v)?;
            cache.k[li] = Some(kb);
            cache.v[li] = Some(vb);
            let a = be.attention(&q, &k_all, &v_all, heads, kv_heads, &Mask::Causal { past })?;
            x = be.add(&x, &layer.o.forward(be, &a)?)?;
            let h = be.rms_norm(&x, &layer.post_norm, t.rms_norm_eps)?;
            let m = be.swiglu(&layer.gate.forward(be, &h)?, &layer.up.forward(be, &h)?)?;
            x = be.add(&x, &layer.down.forward(be, &m)?)?;
        }
        cache.len = past + n;
        be.rms_norm(&x, &self.norm, t.rms_norm_eps)
    }

    /// The vocabulary projection `[vocab, hidden]` (the embedding matrix when tied), for
    /// callers that fuse it with what follows (a trainer's log-softmax).
    pub fn lm_head(&self) -> &B::Tensor {
        &self.lm_head
    }

    /// Logits `[rows, vocab]` of hidden states.
    pub fn logits(&self, be: &B, hidden: &B::Tensor) -> Result<B::Tensor> {
        be.linear(hidden, &self.lm_head, None)
    }

    /// Logits of the last row only.
    pub fn last_logits(&self, be: &B, hidden: &B::Tensor) -> Result<Vec<f32>> {
        let n = be.shape(hidden)[0];
        let last = be.narrow_rows(hidden, n - 1, 1)?;
        be.to_vec(&self.logits(be, &last)?)
    }
}

/// How a freshly initialised tensor is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// A weight matrix (or the embedding): random, scaled by the config's `initializer_range`.
    Matrix,
    /// A norm scale: ones.
    Ones,
    /// A bias: zeros.
    Zeros,
}

/// One tensor of a checkpoint in HF layout.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// HF name (`model.visual.*`, `model.language_model.*`, `lm_head.weight`).
    pub name: String,
    /// HF shape.
    pub shape: Vec<usize>,
    /// How a new model initialises it.
    pub init: InitKind,
}

/// Every tensor of a Qwen2.5-VL checkpoint for `cfg`, in the order [`Qwen25VL::export`] returns
/// them (transformers 5 names). Used to initialise a model from scratch and to save one.
///
/// ```
/// let cfg = visionthink_core::config::ModelConfig::from_json(br#"{"vision_config": {"depth": 1, "hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "out_hidden_size": 8}, "text_config": {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 151936, "rope_scaling": {"mrope_section": [1, 1, 0]}}}"#).unwrap();
/// let specs = visionthink_model::graph::checkpoint_layout(&cfg);
/// assert_eq!(specs[0].name, "model.visual.patch_embed.proj.weight");
/// ```
pub fn checkpoint_layout(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: InitKind| {
        out.push(TensorSpec { name, shape, init })
    };
    let v = &cfg.vision;
    let dim = v.hidden_size;
    let unit = v.spatial_merge_size * v.spatial_merge_size;
    let vp = "model.visual.";
    push(
        format!("{vp}patch_embed.proj.weight"),
        vec![
            dim,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ],
        InitKind::Matrix,
    );
    for i in 0..v.depth {
        let p = format!("{vp}blocks.{i}.");
        push(format!("{p}norm1.weight"), vec![dim], InitKind::Ones);
        push(format!("{p}norm2.weight"), vec![dim], InitKind::Ones);
        push(
            format!("{p}attn.qkv.weight"),
            vec![3 * dim, dim],
            InitKind::Matrix,
        );
        push(format!("{p}attn.qkv.bias"), vec![3 * dim], InitKind::Zeros);
        push(
            format!("{p}attn.proj.weight"),
            vec![dim, dim],
            InitKind::Matrix,
        );
        push(format!("{p}attn.proj.bias"), vec![dim], InitKind::Zeros);
        let inter = v.intermediate_size;
        for (n, o, i_) in [
            ("gate_proj", inter, dim),
            ("up_proj", inter, dim),
            ("down_proj", dim, inter),
        ] {
            push(format!("{p}mlp.{n}.weight"), vec![o, i_], InitKind::Matrix);
            push(format!("{p}mlp.{n}.bias"), vec![o], InitKind::Zeros);
        }
    }
    push(format!("{vp}merger.ln_q.weight"), vec![dim], InitKind::Ones);
    push(
        format!("{vp}merger.mlp.0.weight"),
        vec![dim * unit, dim * unit],
        InitKind::Matrix,
    );
    push(
        format!("{vp}merger.mlp.0.bias"),
        vec![dim * unit],
        InitKind::Zeros,
    );
    push(
        format!("{vp}merger.mlp.2.weight"),
        vec![v.out_hidden_size, dim * unit],
        InitKind::Matrix,
    );
    push(
        format!("{vp}merger.mlp.2.bias"),
        vec![v.out_hidden_size],
        InitKind::Zeros,
    );
    let t = &cfg.text;
    let h = t.hidden_size;
    let head_dim = h / t.num_attention_heads.max(1);
    let (q, kv) = (
        t.num_attention_heads * head_dim,
        t.num_key_value_heads * head_dim,
    );
    let tp = "model.language_model.";
    push(
        format!("{tp}embed_tokens.weight"),
        vec![t.vocab_size, h],
        InitKind::Matrix,
    );
    for i in 0..t.num_hidden_layers {
        let p = format!("{tp}layers.{i}.");
        push(
            format!("{p}input_layernorm.weight"),
            vec![h],
            InitKind::Ones,
        );
        push(
            format!("{p}post_attention_layernorm.weight"),
            vec![h],
            InitKind::Ones,
        );
        for (n, o) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            push(
                format!("{p}self_attn.{n}.weight"),
                vec![o, h],
                InitKind::Matrix,
            );
            push(format!("{p}self_attn.{n}.bias"), vec![o], InitKind::Zeros);
        }
        push(
            format!("{p}self_attn.o_proj.weight"),
            vec![h, q],
            InitKind::Matrix,
        );
        let inter = t.intermediate_size;
        push(
            format!("{p}mlp.gate_proj.weight"),
            vec![inter, h],
            InitKind::Matrix,
        );
        push(
            format!("{p}mlp.up_proj.weight"),
            vec![inter, h],
            InitKind::Matrix,
        );
        push(
            format!("{p}mlp.down_proj.weight"),
            vec![h, inter],
            InitKind::Matrix,
        );
    }
    push(format!("{tp}norm.weight"), vec![h], InitKind::Ones);
    if !t.tie_word_embeddings {
        push(
            "lm_head.weight".into(),
            vec![t.vocab_size, h],
            InitKind::Matrix,
        );
    }
    out
}

impl<B: Backend> Linear<B> {
    fn parts(&self) -> [Vec<B::Tensor>; 2] {
        [vec![self.w.clone()], self.b.iter().cloned().collect()]
    }
}

impl<B: Backend> Qwen25VL<B> {
    /// The model's tensors in the order and under the names of [`checkpoint_layout`], each as
    /// the row blocks it is made of (the vision `qkv` is held as three separate projections).
    pub fn export_parts(&self) -> Vec<(TensorSpec, Vec<B::Tensor>)> {
        let mut parts: Vec<Vec<B::Tensor>> = Vec::new();
        let vt = &self.vision;
        parts.push(vec![vt.patch_embed.clone()]);
        for b in &vt.blocks {
            parts.push(vec![b.norm1.clone()]);
            parts.push(vec![b.norm2.clone()]);
            parts.push(vec![b.q.w.clone(), b.k.w.clone(), b.v.w.clone()]);
            parts.push(
                [&b.q.b, &b.k.b, &b.v.b]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect(),
            );
            for l in [&b.proj, &b.gate, &b.up, &b.down] {
                parts.extend(l.parts());
            }
        }
        parts.push(vec![vt.merger_norm.clone()]);
        parts.extend(vt.merger_fc1.parts());
        parts.extend(vt.merger_fc2.parts());
        parts.push(vec![self.embed.clone()]);
        for l in &self.layers {
            parts.push(vec![l.input_norm.clone()]);
            parts.push(vec![l.post_norm.clone()]);
            for lin in [&l.q, &l.k, &l.v] {
                parts.extend(lin.parts());
            }
            parts.push(vec![l.o.w.clone()]);
            for lin in [&l.gate, &l.up, &l.down] {
                parts.push(vec![lin.w.clone()]);
            }
        }
        parts.push(vec![self.norm.clone()]);
        if !self.tied {
            parts.push(vec![self.lm_head.clone()]);
        }
        let mut cfg = self.cfg.clone();
        cfg.text.tie_word_embeddings = self.tied;
        checkpoint_layout(&cfg).into_iter().zip(parts).collect()
    }

    /// The model's weights as f32 values in HF names and shapes, ready for safetensors.
    pub fn export(&self, be: &B) -> Result<Vec<(TensorSpec, Vec<f32>)>> {
        self.export_parts()
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
}

impl<B: Backend> Linear<B> {
    fn map(&self, f: &mut dyn FnMut(&B::Tensor) -> B::Tensor) -> Self {
        Linear {
            w: f(&self.w),
            b: self.b.as_ref().map(&mut *f),
        }
    }
}

impl<B: Backend> Qwen25VL<B> {
    /// The same model with every weight passed through `f` (e.g. candle's `detach`, which
    /// shares the storage: a frozen view of trainable weights that follows their updates, for
    /// fast rollouts without autograd bookkeeping).
    pub fn map_weights(&self, f: &mut dyn FnMut(&B::Tensor) -> B::Tensor) -> Self {
        let vt = &self.vision;
        let vision = VisionTower {
            patch_embed: f(&vt.patch_embed),
            blocks: vt
                .blocks
                .iter()
                .map(|b| VisionBlock {
                    norm1: f(&b.norm1),
                    norm2: f(&b.norm2),
                    q: b.q.map(f),
                    k: b.k.map(f),
                    v: b.v.map(f),
                    proj: b.proj.map(f),
                    gate: b.gate.map(f),
                    up: b.up.map(f),
                    down: b.down.map(f),
                    full_attention: b.full_attention,
                })
                .collect(),
            merger_norm: f(&vt.merger_norm),
            merger_fc1: vt.merger_fc1.map(f),
            merger_fc2: vt.merger_fc2.map(f),
            dim: vt.dim,
            heads: vt.heads,
            merge: vt.merge,
            window_size: vt.window_size,
            patch_size: vt.patch_size,
            rope_theta: vt.rope_theta,
        };
        let embed = f(&self.embed);
        let lm_head = if self.tied {
            embed.clone()
        } else {
            f(&self.lm_head)
        };
        Qwen25VL {
            cfg: self.cfg.clone(),
            vision,
            embed,
            layers: self
                .layers
                .iter()
                .map(|l| DecoderLayer {
                    input_norm: f(&l.input_norm),
                    post_norm: f(&l.post_norm),
                    q: l.q.map(f),
                    k: l.k.map(f),
                    v: l.v.map(f),
                    o: l.o.map(f),
                    gate: l.gate.map(f),
                    up: l.up.map(f),
                    down: l.down.map(f),
                })
                .collect(),
            norm: f(&self.norm),
            lm_head,
            tied: self.tied,
        }
    }
}
