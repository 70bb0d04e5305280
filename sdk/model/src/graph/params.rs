//! The parameter tree of Qwen2.5-VL, named once: [`walk`] visits every tensor (HF name, shape,
//! initialisation, how many row blocks the graph holds it as) in checkpoint order, and builds a
//! new tree from what the visitor returns. Loading, the checkpoint layout, export and mapping
//! (detach, cast) are four visitors of that one walk, so adding a tensor is one line in it.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::weights::WeightStore;
use visionthink_core::config::ModelConfig;

/// A linear layer's tensors.
#[derive(Debug, Clone)]
pub struct Linear<T> {
    /// `[out, in]`.
    pub w: T,
    /// `[out]`.
    pub b: Option<T>,
}

impl<T> Linear<T> {
    pub(crate) fn forward<B: Backend<Tensor = T>>(&self, be: &B, x: &T) -> Result<T> {
        be.linear(x, &self.w, self.b.as_ref())
    }

    /// `residual + forward(x)` ([`Backend::linear_add`]).
    pub(crate) fn forward_add<B: Backend<Tensor = T>>(
        &self,
        be: &B,
        x: &T,
        residual: &T,
    ) -> Result<T> {
        be.linear_add(x, &self.w, self.b.as_ref(), residual)
    }
}

/// One vision block.
#[derive(Debug, Clone)]
pub struct VisionBlock<T> {
    pub(crate) norm1: T,
    pub(crate) norm2: T,
    pub(crate) q: Linear<T>,
    pub(crate) k: Linear<T>,
    pub(crate) v: Linear<T>,
    pub(crate) proj: Linear<T>,
    pub(crate) gate: Linear<T>,
    pub(crate) up: Linear<T>,
    pub(crate) down: Linear<T>,
    pub(crate) full_attention: bool,
}

/// The vision tower.
#[derive(Debug, Clone)]
pub struct VisionTower<T> {
    pub(crate) patch_embed: T,
    pub(crate) blocks: Vec<VisionBlock<T>>,
    pub(crate) merger_norm: T,
    pub(crate) merger_fc1: Linear<T>,
    pub(crate) merger_fc2: Linear<T>,
    pub(crate) dim: usize,
    pub(crate) heads: usize,
    pub(crate) merge: usize,
    pub(crate) window_size: usize,
    pub(crate) patch_size: usize,
    pub(crate) rope_theta: f32,
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer<T> {
    pub(crate) input_norm: T,
    pub(crate) post_norm: T,
    pub(crate) q: Linear<T>,
    pub(crate) k: Linear<T>,
    pub(crate) v: Linear<T>,
    pub(crate) o: Linear<T>,
    pub(crate) gate: Linear<T>,
    pub(crate) up: Linear<T>,
    pub(crate) down: Linear<T>,
    /// The q/k/v and gate/up projections stored as one matrix each, when the backend fuses
    /// them ([`Backend::fuse_rows`]); `q`, `k`, `v`, `gate` and `up` are then views into these.
    pub(crate) fused: Option<Fused<T>>,
}

/// A decoder layer's projections that read the same input, each group as one matrix where the
/// backend could store it so (the groups are fused independently: GGUF files may give q/k/v
/// layouts that differ while gate and up share one).
#[derive(Debug, Clone)]
pub struct Fused<T> {
    /// `[q; k; v]` rows, with the biases likewise.
    pub(crate) qkv: Option<Linear<T>>,
    /// `[gate; up]` rows.
    pub(crate) gate_up: Option<Linear<T>>,
}

impl<T: Clone> DecoderLayer<T> {
    /// Asks `be` to store q/k/v and gate/up as one matrix each ([`Backend::fuse_rows`]); each
    /// group it fuses has its projections become views into the fused matrix. Unchanged
    /// otherwise.
    pub(crate) fn fuse<B: Backend<Tensor = T>>(&mut self, be: &B) -> Result<()> {
        let fewer = || Error::Backend("fuse_rows returned fewer views than parts".into());
        let mut fused = Fused {
            qkv: None,
            gate_up: None,
        };
        if let (Some(qb), Some(kb), Some(vb)) = (&self.q.b, &self.k.b, &self.v.b) {
            // The weights first: when they do not fuse, the biases are not copied for nothing.
            if let Some((qkv_w, ws)) = be.fuse_rows(&[&self.q.w, &self.k.w, &self.v.w])? {
                if let Some((qkv_b, bs)) = be.fuse_rows(&[qb, kb, vb])? {
                    let (mut ws, mut bs) = (ws.into_iter(), bs.into_iter());
                    for l in [&mut self.q, &mut self.k, &mut self.v] {
                        let (Some(w), Some(b)) = (ws.next(), bs.next()) else {
                            return Err(fewer());
                        };
                        *l = Linear { w, b: Some(b) };
                    }
                    fused.qkv = Some(Linear {
                        w: qkv_w,
                        b: Some(qkv_b),
                    });
                }
            }
        }
        if self.gate.b.is_none() && self.up.b.is_none() {
            if let Some((gate_up_w, gu)) = be.fuse_rows(&[&self.gate.w, &self.up.w])? {
                let mut gu = gu.into_iter();
                for l in [&mut self.gate, &mut self.up] {
                    *l = Linear {
                        w: gu.next().ok_or_else(fewer)?,
                        b: None,
                    };
                }
                fused.gate_up = Some(Linear {
                    w: gate_up_w,
                    b: None,
                });
            }
        }
        if fused.qkv.is_some() || fused.gate_up.is_some() {
            self.fused = Some(fused);
        }
        Ok(())
    }
}

/// The decoder's tensors.
#[derive(Debug, Clone)]
pub struct TextWeights<T> {
    pub(crate) embed: T,
    pub(crate) layers: Vec<DecoderLayer<T>>,
    pub(crate) norm: T,
    /// The embedding again when tied.
    pub(crate) lm_head: T,
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

/// What the visitor sees of one tensor.
pub(crate) struct Visit<'a, U> {
    /// Name, HF shape, initialisation.
    pub spec: TensorSpec,
    /// How many equal row blocks the graph holds it as (3 for the vision `qkv`, else 1).
    pub parts: usize,
    /// When walking an existing model: those blocks.
    pub old: Option<Vec<&'a U>>,
}

pub(crate) type Visitor<'v, 'a, U, T> = dyn FnMut(Visit<'a, U>) -> Result<Vec<T>> + 'v;

/// Calls the visitor and checks what it returns.
struct Walker<'f, 'a, U, T> {
    f: &'f mut dyn FnMut(Visit<'a, U>) -> Result<Vec<T>>,
}

impl<'a, U, T> Walker<'_, 'a, U, T> {
    fn parts(
        &mut self,
        name: String,
        shape: Vec<usize>,
        init: InitKind,
        parts: usize,
        old: Option<Vec<&'a U>>,
    ) -> Result<Vec<T>> {
        let spec = TensorSpec { name, shape, init };
        let name = spec.name.clone();
        let out = (self.f)(Visit { spec, parts, old })?;
        if out.len() != parts {
            return Err(Error::Input(format!(
                "{name}: {} row blocks where the graph holds {parts}",
                out.len()
            )));
        }
        Ok(out)
    }

    fn one(
        &mut self,
        name: String,
        shape: Vec<usize>,
        init: InitKind,
        old: Option<&'a U>,
    ) -> Result<T> {
        let mut v = self.parts(name, shape, init, 1, old.map(|o| vec![o]))?;
        v.pop()
            .ok_or_else(|| Error::Input("empty row blocks".into()))
    }

    fn norm(&mut self, name: String, dim: usize, old: Option<&'a U>) -> Result<T> {
        self.one(name, vec![dim], InitKind::Ones, old)
    }

    /// `{name}.weight` `[out, inp]` and, with `bias`, `{name}.bias` `[out]`.
    fn linear(
        &mut self,
        name: String,
        (out, inp): (usize, usize),
        bias: bool,
        old: Option<&'a Linear<U>>,
    ) -> Result<Linear<T>> {
        let w_name = format!("{name}.weight");
        let w = self.one(w_name, vec![out, inp], InitKind::Matrix, old.map(|l| &l.w))?;
        let b = match bias {
            true => {
                let old_b = old.and_then(|l| l.b.as_ref());
                Some(self.one(format!("{name}.bias"), vec![out], InitKind::Zeros, old_b)?)
            }
            false => None,
        };
        Ok(Linear { w, b })
    }

    fn vision(
        &mut self,
        cfg: &ModelConfig,
        old: Option<&'a VisionTower<U>>,
    ) -> Result<VisionTower<T>> {
        let v = &cfg.vision;
        let (dim, p) = (v.hidden_size, "model.visual.");
        let wide = dim * v.spatial_merge_size * v.spatial_merge_size;
        let (c, t, ps) = (v.in_channels, v.temporal_patch_size, v.patch_size);
        let pe_shape = vec![dim, c, t, ps, ps];
        let pe_old = old.map(|o| &o.patch_embed);
        let patch_embed = self.one(
            format!("{p}patch_embed.proj.weight"),
            pe_shape,
            InitKind::Matrix,
            pe_old,
        )?;
        let blocks = (0..v.depth)
            .map(|i| self.vision_block(cfg, i, old.and_then(|o| o.blocks.get(i))))
            .collect::<Result<_>>()?;
        let o = |f: fn(&'a VisionTower<U>) -> &'a Linear<U>| old.map(f);
        Ok(VisionTower {
            patch_embed,
            blocks,
            merger_norm: self.norm(
                format!("{p}merger.ln_q.weight"),
                dim,
                old.map(|o| &o.merger_norm),
            )?,
            merger_fc1: self.linear(
                format!("{p}merger.mlp.0"),
                (wide, wide),
                true,
                o(|o| &o.merger_fc1),
            )?,
            merger_fc2: self.linear(
                format!("{p}merger.mlp.2"),
                (v.out_hidden_size, wide),
                true,
                o(|o| &o.merger_fc2),
            )?,
            dim,
            heads: v.num_heads,
            merge: v.spatial_merge_size,
            window_size: v.window_size,
            patch_size: v.patch_size,
            rope_theta: 10_000.0,
        })
    }

    fn vision_block(
        &mut self,
        cfg: &ModelConfig,
        i: usize,
        ob: Option<&'a VisionBlock<U>>,
    ) -> Result<VisionBlock<T>> {
        let v = &cfg.vision;
        let (dim, inter) = (v.hidden_size, v.intermediate_size);
        let p = format!("model.visual.blocks.{i}.");
        let norm1 = self.norm(format!("{p}norm1.weight"), dim, ob.map(|b| &b.norm1))?;
        let norm2 = self.norm(format!("{p}norm2.weight"), dim, ob.map(|b| &b.norm2))?;
        // HF reshapes the qkv output as (3, heads, head_dim): q, k, v are row blocks.
        let old_w = ob.map(|b| vec![&b.q.w, &b.k.w, &b.v.w]);
        let old_b = ob.and_then(|b| Some(vec![b.q.b.as_ref()?, b.k.b.as_ref()?, b.v.b.as_ref()?]));
        let (wn, bn) = (format!("{p}attn.qkv.weight"), format!("{p}attn.qkv.bias"));
        let w = self.parts(wn, vec![3 * dim, dim], InitKind::Matrix, 3, old_w)?;
        let b = self.parts(bn, vec![3 * dim], InitKind::Zeros, 3, old_b)?;
        let three = |v: Vec<T>| -> Result<[T; 3]> {
            v.try_into()
                .map_err(|_| Error::Input(format!("{p}attn.qkv: not 3 row blocks")))
        };
        let ([qw, kw, vw], [qb, kb, vb]) = (three(w)?, three(b)?);
        let o = |f: fn(&'a VisionBlock<U>) -> &'a Linear<U>| ob.map(f);
        Ok(VisionBlock {
            norm1,
            norm2,
            q: Linear { w: qw, b: Some(qb) },
            k: Linear { w: kw, b: Some(kb) },
            v: Linear { w: vw, b: Some(vb) },
            proj: self.linear(format!("{p}attn.proj"), (dim, dim), true, o(|b| &b.proj))?,
            gate: self.linear(
                format!("{p}mlp.gate_proj"),
                (inter, dim),
                true,
                o(|b| &b.gate),
            )?,
            up: self.linear(format!("{p}mlp.up_proj"), (inter, dim), true, o(|b| &b.up))?,
            down: self.linear(
                format!("{p}mlp.down_proj"),
                (dim, inter),
                true,
                o(|b| &b.down),
            )?,
            full_attention: v.fullatt_block_indexes.contains(&i),
        })
    }

    fn text(
        &mut self,
        cfg: &ModelConfig,
        tied: bool,
        old: Option<&'a TextWeights<U>>,
    ) -> Result<TextWeights<T>>
    where
        T: Clone,
    {
        let t = &cfg.text;
        let (h, p) = (t.hidden_size, "model.language_model.");
        let embed_old = old.map(|o| &o.embed);
        let embed_shape = vec![t.vocab_size, h];
        let embed = self.one(
            format!("{p}embed_tokens.weight"),
            embed_shape.clone(),
            InitKind::Matrix,
            embed_old,
        )?;
        let layers = (0..t.num_hidden_layers)
            .map(|i| self.decoder_layer(cfg, i, old.and_then(|o| o.layers.get(i))))
            .collect::<Result<_>>()?;
        let norm = self.norm(format!("{p}norm.weight"), h, old.map(|o| &o.norm))?;
        let lm_head = match tied {
            true => embed.clone(),
            false => {
                let head_old = old.map(|o| &o.lm_head);
                let name = "lm_head.weight".to_string();
                self.one(name, embed_shape, InitKind::Matrix, head_old)?
            }
        };
        Ok(TextWeights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    fn decoder_layer(
        &mut self,
        cfg: &ModelConfig,
        i: usize,
        ol: Option<&'a DecoderLayer<U>>,
    ) -> Result<DecoderLayer<T>> {
        let t = &cfg.text;
        let h = t.hidden_size;
        let head_dim = h / t.num_attention_heads.max(1);
        let (q, kv) = (
            t.num_attention_heads * head_dim,
            t.num_key_value_heads * head_dim,
        );
        let inter = t.intermediate_size;
        let p = format!("model.language_model.layers.{i}.");
        let o = |f: fn(&'a DecoderLayer<U>) -> &'a Linear<U>| ol.map(f);
        let (in_old, post_old) = (ol.map(|l| &l.input_norm), ol.map(|l| &l.post_norm));
        Ok(DecoderLayer {
            input_norm: self.norm(format!("{p}input_layernorm.weight"), h, in_old)?,
            post_norm: self.norm(format!("{p}post_attention_layernorm.weight"), h, post_old)?,
            q: self.linear(format!("{p}self_attn.q_proj"), (q, h), true, o(|l| &l.q))?,
            k: self.linear(format!("{p}self_attn.k_proj"), (kv, h), true, o(|l| &l.k))?,
            v: self.linear(format!("{p}self_attn.v_proj"), (kv, h), true, o(|l| &l.v))?,
            o: self.linear(format!("{p}self_attn.o_proj"), (h, q), false, o(|l| &l.o))?,
            gate: self.linear(
                format!("{p}mlp.gate_proj"),
                (inter, h),
                false,
                o(|l| &l.gate),
            )?,
            up: self.linear(format!("{p}mlp.up_proj"), (inter, h), false, o(|l| &l.up))?,
            down: self.linear(
                format!("{p}mlp.down_proj"),
                (h, inter),
                false,
                o(|l| &l.down),
            )?,
            fused: None,
        })
    }
}

/// The one walk over the parameter tree: the vision tower, then the decoder, in checkpoint
/// order (transformers 5 names); `lm_head.weight` is visited only when untied. With `old`,
/// each visit also gets that model's blocks of the tensor.
pub(crate) fn walk<'a, U, T: Clone>(
    cfg: &ModelConfig,
    tied: bool,
    old: Option<(&'a VisionTower<U>, &'a TextWeights<U>)>,
    f: &mut Visitor<'_, 'a, U, T>,
) -> Result<(VisionTower<T>, TextWeights<T>)> {
    let mut w = Walker { f };
    let vision = w.vision(cfg, old.map(|o| o.0))?;
    let text = w.text(cfg, tied, old.map(|o| o.1))?;
    Ok((vision, text))
}

/// One row block read from a checkpoint: its values and shape.
pub(crate) type Block = (Vec<f32>, Vec<usize>);

/// A row block of the walk: (entry, block).
pub(crate) type Slot = (usize, usize);

/// Reads one tensor from a checkpoint (its transformers 5 name, else the older `visual.*` /
/// `model.*` one) as `parts` equal row blocks, each with its 2-D shape `[rows, rest]` (1-D
/// tensors stay 1-D).
pub(crate) fn read_parts(
    store: &WeightStore,
    spec: &TensorSpec,
    parts: usize,
) -> Result<Vec<Block>> {
    let old_name = [
        ("model.visual.", "visual."),
        ("model.language_model.", "model."),
    ]
    .into_iter()
    .find_map(|(new, old)| {
        spec.name
            .strip_prefix(new)
            .map(|rest| format!("{old}{rest}"))
    });
    let mut names = vec![spec.name.as_str()];
    names.extend(old_name.as_deref());
    let data = store.get(&names, &spec.shape)?;
    let parts = parts.max(1);
    let rows = spec.shape.first().copied().unwrap_or(1) / parts;
    let block = data.len() / parts;
    if block * parts != data.len() || rows * parts != spec.shape.first().copied().unwrap_or(1) {
        return Err(Error::Shape {
            name: spec.name.clone(),
            expected: vec![parts, rows],
            found: spec.shape.clone(),
        });
    }
    let shape = block_shape(spec, parts);
    if parts == 1 {
        // The whole tensor: handed over without a copy (an embedding is hundreds of MB).
        return Ok(vec![(data, shape)]);
    }
    Ok(data
        .chunks_exact(block.max(1))
        .map(|chunk| (chunk.to_vec(), shape.clone()))
        .collect())
}

/// The shape of each of a tensor's `parts` equal row blocks as the graph holds them:
/// `[rows / parts, rest]` for matrices (higher ranks flattened), `[n / parts]` for vectors.
pub(crate) fn block_shape(spec: &TensorSpec, parts: usize) -> Vec<usize> {
    let rows = spec.shape.first().copied().unwrap_or(1) / parts.max(1);
    match spec.shape.len() {
        1 => vec![rows],
        _ => vec![rows, spec.shape.iter().skip(1).product()],
    }
}

/// One whole tensor of a checkpoint as f32 values (its transformers 5 name, else the older
/// one), checked against the spec's shape.
pub fn read_tensor(store: &WeightStore, spec: &TensorSpec) -> Result<Vec<f32>> {
    let mut blocks = read_parts(store, spec, 1)?;
    blocks
        .pop()
        .map(|(data, _)| data)
        .ok_or_else(|| Error::MissingTensor(spec.name.clone()))
}

/// The order in which [`Qwen25VL::load`](super::Qwen25VL::load) creates the row blocks of
/// `specs` (the walk's entries, with their block counts): the decoder's embedding and layers,
/// the untied head, the vision tower (each block's q, k, v weight and bias in turn), then the
/// final norm. That is the order the loader has always created weights in, and a trainable
/// backend numbers its variables in creation order: the trainer's optimizer moments are saved
/// by that number, and its gradient norm sums in it.
pub(crate) fn creation_order(specs: &[(TensorSpec, usize)]) -> Vec<Slot> {
    let tp = "model.language_model.";
    let group = |name: &str| match name {
        n if n.starts_with(&format!("{tp}embed_tokens")) => 0,
        n if n.starts_with(&format!("{tp}layers.")) => 1,
        "lm_head.weight" => 2,
        n if n.starts_with("model.visual.") => 3,
        _ => 4,
    };
    let mut slots: Vec<((u8, usize, usize), Slot)> = Vec::new();
    for (e, (spec, parts)) in specs.iter().enumerate() {
        for p in 0..*parts {
            // A qkv bias's blocks interleave with its weight's (the entry just before it).
            let key = match spec.name.ends_with("attn.qkv.bias") {
                true => (group(&spec.name), e.saturating_sub(1), 2 * p + 1),
                false if spec.name.ends_with("attn.qkv.weight") => (group(&spec.name), e, 2 * p),
                false => (group(&spec.name), e, p),
            };
            slots.push((key, (e, p)));
        }
    }
    slots.sort_by_key(|s| s.0);
    slots.into_iter().map(|s| s.1).collect()
}

/// Every tensor of a Qwen2.5-VL checkpoint for `cfg`, in the order [`Qwen25VL::export`] returns
/// them (transformers 5 names). Used to initialise a model from scratch and to save one.
///
/// ```
/// let cfg = visionthink_core::config::ModelConfig::from_json(br#"{"vision_config": {"depth": 1, "hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "out_hidden_size": 8}, "text_config": {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 151936, "rope_scaling": {"mrope_section": [1, 1, 0]}}}"#).expect("config");
/// let specs = visionthink_model::graph::checkpoint_layout(&cfg);
/// assert_eq!(specs[0].name, "model.visual.patch_embed.proj.weight");
/// // patch embed, 12 per vision block, merger 5, embed, 12 per layer, norm, lm_head (untied)
/// assert_eq!(specs.len(), 1 + 12 + 5 + 1 + 12 + 1 + 1);
/// ```
pub fn checkpoint_layout(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let mut specs = Vec::new();
    let tied = cfg.text.tie_word_embeddings;
    // The unit visitor cannot fail, and the walk only fails when a visitor does.
    let _ = walk::<(), ()>(cfg, tied, None, &mut |v| {
        specs.push(v.spec);
        Ok(vec![(); v.parts])
    });
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_order_is_the_loaders_historical_order() {
        let cfg = ModelConfig::from_json(br#"{"vision_config": {"depth": 1, "hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "out_hidden_size": 8}, "text_config": {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 32, "rope_scaling": {"mrope_section": [1, 1, 0]}}}"#).expect("config");
        let mut specs = Vec::new();
        walk::<(), ()>(&cfg, false, None, &mut |v| {
            let parts = v.parts;
            specs.push((v.spec, parts));
            Ok(vec![(); parts])
        })
        .expect("walk");
        let order: Vec<String> = creation_order(&specs)
            .into_iter()
            .map(|(e, p)| {
                let name = specs[e].0.name.replace("model.language_model.", "t.");
                let name = name.replace("model.visual.", "v.");
                match specs[e].1 {
                    1 => name,
                    _ => format!("{name}[{p}]"),
                }
            })
            .collect();
        let expect = [
            "t.embed_tokens.weight",
            "t.layers.0.input_layernorm.weight",
            "t.layers.0.post_attention_layernorm.weight",
            "t.layers.0.self_attn.q_proj.weight",
            "t.layers.0.self_attn.q_proj.bias",
            "t.layers.0.self_attn.k_proj.weight",
            "t.layers.0.self_attn.k_proj.bias",
            "t.layers.0.self_attn.v_proj.weight",
            "t.layers.0.self_attn.v_proj.bias",
            "t.layers.0.self_attn.o_proj.weight",
            "t.layers.0.mlp.gate_proj.weight",
            "t.layers.0.mlp.up_proj.weight",
            "t.layers.0.mlp.down_proj.weight",
            "lm_head.weight",
            "v.patch_embed.proj.weight",
            "v.blocks.0.norm1.weight",
            "v.blocks.0.norm2.weight",
            "v.blocks.0.attn.qkv.weight[0]",
            "v.blocks.0.attn.qkv.bias[0]",
            "v.blocks.0.attn.qkv.weight[1]",
            "v.blocks.0.attn.qkv.bias[1]",
            "v.blocks.0.attn.qkv.weight[2]",
            "v.blocks.0.attn.qkv.bias[2]",
            "v.blocks.0.attn.proj.weight",
            "v.blocks.0.attn.proj.bias",
            "v.blocks.0.mlp.gate_proj.weight",
            "v.blocks.0.mlp.gate_proj.bias",
            "v.blocks.0.mlp.up_proj.weight",
            "v.blocks.0.mlp.up_proj.bias",
            "v.blocks.0.mlp.down_proj.weight",
            "v.blocks.0.mlp.down_proj.bias",
            "v.merger.ln_q.weight",
            "v.merger.mlp.0.weight",
            "v.merger.mlp.0.bias",
            "v.merger.mlp.2.weight",
            "v.merger.mlp.2.bias",
            "t.norm.weight",
        ];
        assert_eq!(order, expect);
    }
}
