//! The small set of coarse operations the Qwen2.5-VL graph is written in. Each is one kernel (or
//! a short fused sequence) on a GPU, and a few tensor ops on candle. The graph in
//! [`crate::graph`] calls only these, so every executor runs the same graph in the same order.

use crate::error::Result;

/// Which keys each query may attend to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// Causal over a sequence whose first `past` keys come from the cache: query `i` sees keys
    /// `0 ..= past + i`.
    Causal {
        /// Keys already in the cache before this call's queries.
        past: usize,
    },
    /// Bidirectional within consecutive segments `[cu[i], cu[i+1])` of the rows (vision windows
    /// or whole images).
    Segments(Vec<usize>),
}

/// An executor of the graph's operations. Tensors are row-major 2-D `[rows, cols]` unless a
/// method says otherwise.
pub trait Backend {
    /// The tensor type.
    type Tensor: Clone + std::fmt::Debug;

    /// A tensor from f32 data (weights are upcast to f32 before they get here, or converted to
    /// the backend's compute dtype by the backend).
    fn tensor(&self, data: &[f32], shape: &[usize]) -> Result<Self::Tensor>;
    /// Waits until the work queued so far has finished (a GPU runs kernels asynchronously), so a
    /// clock read afterwards times that work; a no-op where every operation completes in place.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// How many rows of a many-row MLP with `intermediate` hidden units to run at a time, or
    /// `None` (the default) for all at once. Passes bound the intermediate activations (a long
    /// prefill's are hundreds of MB); each row's result may change by float reordering only.
    fn mlp_rows_per_pass(&self, intermediate: usize) -> Option<usize> {
        let _ = intermediate;
        None
    }
    /// A weight tensor (trainable where the backend supports training). Takes ownership so a
    /// backend can keep the buffer without copying it.
    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> Result<Self::Tensor> {
        self.tensor(&data, shape)
    }
    /// Whether [`Self::quantized_weight`] takes matrices stored as `ty` (quantized blocks, or
    /// F16/BF16 values) as they are (the loader dequantizes to f32 for backends that do not).
    fn takes_quantized(&self, ty: visionthink_core::gguf::GgmlType) -> bool {
        let _ = ty;
        false
    }
    /// A weight matrix kept in its quantized blocks (GGUF), used by [`Self::linear`] and
    /// [`Self::gather_rows`]; called only for types [`Self::takes_quantized`] accepts.
    fn quantized_weight(&self, q: &crate::gguf::QuantView<'_>) -> Result<Self::Tensor> {
        Err(crate::error::Error::Config(format!(
            "{}: this executor does not compute on {} blocks",
            q.name,
            q.ty.name()
        )))
    }
    /// A matrix of `ty` blocks (`[rows, cols]`) written piece by piece as its bytes arrive (a
    /// streaming load), so the loader need not hold it whole; `None` when this backend takes
    /// such blocks only whole ([`Self::quantized_weight`]).
    fn quantized_writer(
        &self,
        name: &str,
        ty: visionthink_core::gguf::GgmlType,
        shape: [usize; 2],
    ) -> Result<Option<Box<dyn QuantWriter<Self::Tensor>>>> {
        let _ = (name, ty, shape);
        Ok(None)
    }
    /// Copies a tensor back as f32 values.
    fn to_vec(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// The shape.
    fn shape(&self, t: &Self::Tensor) -> Vec<usize>;
    /// `x · wᵀ + b` for `x [n, in]`, `w [out, in]`, `b [out]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// RMSNorm over the last dimension, computed in f32, times `w`.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f64) -> Result<Self::Tensor>;
    /// Element-wise sum.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Exact (erf) GELU.
    fn gelu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Rotary embedding with the rotate-half convention on `x [n, heads * d]`, `cos`, `sin`
    /// `[n, d]`.
    fn rope(
        &self,
        x: &Self::Tensor,
        cos: &Self::Tensor,
        sin: &Self::Tensor,
        heads: usize,
    ) -> Result<Self::Tensor>;
    /// Scaled dot-product attention: `q [n, heads * d]`, `k`, `v [m, kv_heads * d]` (grouped
    /// query attention when `kv_heads < heads`), scale `1/sqrt(d)`; returns `[n, heads * d]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        kv_heads: usize,
        mask: &Mask,
    ) -> Result<Self::Tensor>;
    /// Rows of `table` at `ids`.
    fn gather_rows(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor>;
    /// Rows concatenated.
    fn cat_rows(&self, parts: &[Self::Tensor]) -> Result<Self::Tensor>;
    /// Rows `start .. start + len`.
    fn narrow_rows(&self, x: &Self::Tensor, start: usize, len: usize) -> Result<Self::Tensor>;
    /// Same data, new 2-D shape `[rows, cols]`.
    fn reshape(&self, x: &Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor>;

    /// `residual + (x · wᵀ + b)`. A backend may add the residual in the product's kernel
    /// (the default is [`Backend::linear`] then [`Backend::add`], in that order).
    fn linear_add(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
        residual: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let y = self.linear(x, w, b)?;
        self.add(residual, &y)
    }

    /// `residual + (swiglu(gate, up) · wᵀ + b)`: a SwiGLU MLP's down projection. A backend may
    /// combine `gate` and `up` as the product reads them (the default is [`Backend::swiglu`]
    /// then [`Backend::linear_add`]).
    fn swiglu_linear_add(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
        residual: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let m = self.swiglu(gate, up)?;
        self.linear_add(&m, w, b, residual)
    }

    /// `residual + down(silu(h · gateᵀ) ⊙ (h · upᵀ)) + b` in one call, for a backend with a
    /// kernel that bounds the MLP's activations (see [`crate::qgemv::swiglu_mlp_add`]), or
    /// `None` (the default) when it has none for these weights and rows: the graph then
    /// composes the products and [`Backend::swiglu_linear_add`].
    fn mlp_add(
        &self,
        h: &Self::Tensor,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        down: &Self::Tensor,
        b: Option<&Self::Tensor>,
        residual: &Self::Tensor,
    ) -> Result<Option<Self::Tensor>> {
        let _ = (h, gate, up, down, b, residual);
        Ok(None)
    }

    /// Stores `parts` — matrices with equal columns, or vectors — one after another in one
    /// tensor, and returns it with each part as a view into it, so that one product computes
    /// them all (a decoder layer's q/k/v or gate/up projections). `None` (the default) when the
    /// backend gains nothing from it or cannot view these parts; the parts are then unchanged.
    fn fuse_rows(&self, parts: &[&Self::Tensor]) -> Result<FusedRows<Self::Tensor>> {
        let _ = parts;
        Ok(None)
    }

    /// A decode step's attention inputs from one fused q/k/v product `qkv [n, (heads + 2 ·
    /// kv_heads) · d]` (`d` = the width of `cos`, `sin` `[n, d]`): the query heads rotated, the
    /// key heads rotated and appended with the value heads to the caches after `used` rows (as
    /// [`Backend::append_rows`] would, the caches updated in place). Returns the queries `[n,
    /// heads · d]` and views of the `used + n` valid cache rows, or `None` (the default) when
    /// the backend has no kernel for it: the graph then composes [`Backend::rope`] and
    /// [`Backend::append_rows`], and the caches are untouched.
    #[allow(clippy::too_many_arguments)]
    fn rope_append(
        &self,
        qkv: &Self::Tensor,
        cos: &Self::Tensor,
        sin: &Self::Tensor,
        (heads, kv_heads): (usize, usize),
        k_cache: &mut Option<Self::Tensor>,
        v_cache: &mut Option<Self::Tensor>,
        used: usize,
    ) -> Result<Option<RopeAppended<Self::Tensor>>> {
        let _ = (qkv, cos, sin, heads, kv_heads, k_cache, v_cache, used);
        Ok(None)
    }

    /// Appends `new` after the first `used` rows of a growable buffer (the KV cache) and returns
    /// the buffer and a view of its `used + rows(new)` valid rows. The default concatenates; a
    /// backend may keep spare capacity and write in place to avoid copying the cache every step.
    fn append_rows(
        &self,
        buffer: Option<Self::Tensor>,
        used: usize,
        new: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let all = match buffer {
            Some(b) if used > 0 => {
                let valid = self.narrow_rows(&b, 0, used)?;
                self.cat_rows(&[valid, new.clone()])?
            }
            _ => new.clone(),
        };
        Ok((all.clone(), all))
    }
}

/// What [`Backend::rope_append`] returns: the rotated queries, then the valid rows of the key
/// and value caches.
pub type RopeAppended<T> = (T, T, T);

/// What [`Backend::fuse_rows`] returns: the one tensor and each part as a view into it, or
/// `None` when the backend does not fuse.
pub type FusedRows<T> = Option<(T, Vec<T>)>;

/// A quantized matrix being written in pieces ([`Backend::quantized_writer`]).
pub trait QuantWriter<T> {
    /// The next bytes of the blocks, in order (any length).
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// The tensor, once every byte was written.
    fn finish(self: Box<Self>) -> Result<T>;
}
