//! The candle executor of the graph: CPU by default, CUDA with the `cuda` feature. Every op is
//! built from differentiable candle primitives (no fused softmax/rms_norm/rope kernels, which
//! return no gradient), so the trainer can backpropagate through the same graph.

use crate::backend::{Backend, Mask};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use std::sync::Mutex;

/// Fixes the number of CPU threads candle's kernels use, once, for a whole process.
///
/// Unless `RAYON_NUM_THREADS` is set, candle works out its thread count on every matrix
/// multiplication by reading `/proc/cpuinfo` and `/sys/devices/system/cpu/*` — a few file reads
/// per matmul, which in token-by-token decoding of a small model is a measurable share of the
/// time. This sets the variable to the cores this process may use (what candle would have
/// found) when it is not set already. Call it at the start of `main`, before any thread is
/// spawned (it changes the environment); a library embedding the SDK leaves this to its binary.
///
/// ```
/// visionthink_model::candle_backend::fix_thread_count();
/// assert!(std::env::var("RAYON_NUM_THREADS").is_ok());
/// ```
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Lets this process keep freed memory for its next buffers instead of handing it back to the
/// kernel (glibc's malloc; nothing elsewhere), once, for a whole process.
///
/// Inference allocates and frees buffers of megabytes in every operation (activations, tiles,
/// attention blocks). glibc serves blocks above its mmap threshold with fresh mappings and gives
/// them back when freed, and trims the heap's free top, so the next operation's buffer is faulted
/// in and zeroed by the kernel page by page again: 9–15 % of a 512-token prefill of the 0.5B GGUF
/// benchmark was `clear_page` (Intel Xeon, 2 threads). This raises the mmap threshold to glibc's
/// largest (32 MiB) and the trim threshold to 64 MiB, the free memory a heap may keep. Measured
/// on that machine: the 0.5B GGUF prefill 2–8 % faster (with the tiled products; 10–15 % before
/// them), the f32 vision tower at 448² 11 % faster, peak RSS unchanged (a 512 MiB trim threshold
/// had cost 13 % more peak RSS on the f32 benchmark). Call it at the start of `main`, as
/// [`fix_thread_count`]; a library embedding the SDK leaves this to its binary. Setting
/// `VISIONTHINK_DEFAULT_MALLOC` (any value) leaves glibc's defaults.
///
/// ```
/// visionthink_model::candle_backend::tune_allocator();
/// ```
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("VISIONTHINK_DEFAULT_MALLOC").is_none() {
        // SAFETY: `mallopt` only sets malloc's parameters (under its own lock); no memory is
        // touched and an out-of-range value is refused, leaving the default.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}

/// Where and how candle computes.
#[derive(Debug)]
pub struct CandleBackend {
    /// The device.
    pub device: Device,
    /// Compute dtype of weights and activations (f32 by default; softmax and norms run in f32).
    pub dtype: DType,
    /// When set, weights are created as trainable [`Var`]s and collected here.
    trainable: Option<Mutex<Vec<Var>>>,
    /// When set, rows gathered from a trainable table become leaf variables recorded here, so
    /// the table's gradient is accumulated sparsely by the trainer instead of as one dense
    /// `[vocab, hidden]` tensor per lookup (see [`CandleBackend::take_sparse_rows`]).
    sparse: Option<Mutex<Vec<SparseRows>>>,
    /// Matrices kept in GGUF blocks, by the id of the tensor that stands for them in the graph
    /// (a zero-stride view of the right shape, holding no memory).
    quantized: std::sync::RwLock<std::collections::HashMap<candle_core::TensorId, QuantWeight>>,
    /// Whether GGUF matrices stay in their blocks ([`Self::keep_gguf_blocks`]).
    keep_blocks: bool,
    /// Whether inference takes our own kernels, [`crate::gemv`] for one-row products,
    /// [`crate::qgemv`] for few-row products with GGUF blocks (chosen when the weights load)
    /// and [`crate::attention`] ([`Self::batch_invariant`] turns them off).
    own_kernels: bool,
    /// Inference on the CPU runs a many-row MLP in passes whose intermediate activations
    /// (`rows × intermediate` f32) stay under this many bytes ([`Self::mlp_pass_bytes`]).
    mlp_pass_bytes: usize,
}

/// The default bound of [`CandleBackend::mlp_pass_bytes`]: 16 MiB, half of glibc's largest
/// mmap threshold (`tune_allocator`), so the MLP's activations come from the heap and are
/// reused pass after pass instead of being mapped, faulted in and unmapped for every layer (a
/// 5,678-token prefill of the 0.5B shape has 110 MB gate and up activations).
pub const MLP_PASS_BYTES: usize = 16 << 20;

/// A GGUF matrix kept in its blocks.
#[derive(Debug, Clone)]
enum QuantWeight {
    /// Candle's quantized matmul over its blocks, and the blocks for row lookups.
    Candle {
        matmul: candle_core::quantized::QMatMul,
        blocks: std::sync::Arc<candle_core::quantized::QTensor>,
    },
    /// Our kernels ([`crate::qgemv`]): Q8_0, Q4_0, Q5_0, Q4_K and Q6_K on x86-64 CPUs with AVX2.
    Own(std::sync::Arc<crate::qgemv::QMatrix>),
    /// An F16 or BF16 matrix kept in 16 bits for an f32 backend ([`crate::gemv::HalfMatrix`]):
    /// half the memory of its f32 values, and the same results (one-row products widen in
    /// registers, larger ones multiply the widened matrix).
    Half(std::sync::Arc<crate::gemv::HalfMatrix>),
}

impl QuantWeight {
    /// All values as f32, `[rows, cols]`.
    fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Self::Candle { blocks, .. } => blocks.dequantize(device)?,
            Self::Own(m) => Tensor::from_vec(m.dequantize(), m.shape().to_vec(), device)?,
            Self::Half(m) => Tensor::from_vec(m.dequantize(), m.shape().to_vec(), device)?,
        })
    }
}

/// Rows gathered from a trainable table by a sparse-gradient backend: the gradient of `rows`
/// belongs to rows `ids` of the variable whose tensor id is `table`.
#[derive(Debug, Clone)]
pub struct SparseRows {
    /// Tensor id of the table variable.
    pub table: candle_core::TensorId,
    /// Row of the table for each gathered row.
    pub ids: Vec<u32>,
    /// The gathered rows, a leaf variable of the graph.
    pub rows: Var,
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Backend(e.to_string())
    }
}

impl CandleBackend {
    /// CPU, f32.
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            trainable: None,
            sparse: None,
            quantized: Default::default(),
            keep_blocks: true,
            own_kernels: true,
            mlp_pass_bytes: MLP_PASS_BYTES,
        }
    }

    /// A backend on a device with a compute dtype.
    pub fn new(device: Device, dtype: DType) -> Self {
        Self {
            device,
            dtype,
            trainable: None,
            sparse: None,
            quantized: Default::default(),
            keep_blocks: true,
            own_kernels: true,
            mlp_pass_bytes: MLP_PASS_BYTES,
        }
    }

    /// The first CUDA device; a typed error when the build has no CUDA or no GPU is present.
    pub fn cuda(dtype: DType) -> Result<Self> {
        if !candle_core::utils::cuda_is_available() {
            return Err(Error::Backend(
                "this build has no CUDA support (rebuild with `--features cuda`)".into(),
            ));
        }
        Ok(Self::new(Device::new_cuda(0)?, dtype))
    }

    /// A CPU f32 backend whose weights are trainable variables.
    pub fn trainable_cpu() -> Self {
        Self {
            trainable: Some(Mutex::new(Vec::new())),
            ..Self::cpu()
        }
    }

    /// [`Self::trainable_cpu`] with sparse gradients for gathered rows: lookups into a trainable
    /// table (the token embedding) record [`SparseRows`] instead of backpropagating into the
    /// table, and the caller adds each record's row gradients into the table's gradient.
    pub fn trainable_cpu_sparse() -> Self {
        Self::trainable_sparse(Device::Cpu)
    }

    /// [`Self::trainable_cpu_sparse`] on any device (f32 master weights; CUDA with the `cuda`
    /// feature).
    pub fn trainable_sparse(device: Device) -> Self {
        Self {
            device,
            dtype: DType::F32,
            trainable: Some(Mutex::new(Vec::new())),
            sparse: Some(Mutex::new(Vec::new())),
            quantized: Default::default(),
            keep_blocks: true,
            own_kernels: true,
            mlp_pass_bytes: MLP_PASS_BYTES,
        }
    }

    /// A backend for a differentiable *view* of trainable weights, such as their bf16 cast for
    /// mixed-precision training: it computes in `dtype` and keeps every op on the autograd
    /// graph (KV appends concatenate instead of writing in place), but creates no variables of
    /// its own and records no sparse rows (gathers from the view backpropagate through the
    /// cast into the f32 table).
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// let be = visionthink_model::CandleBackend::differentiable(Device::Cpu, DType::BF16);
    /// assert_eq!(be.dtype, DType::BF16);
    /// assert!(be.vars().is_empty());
    /// ```
    pub fn differentiable(device: Device, dtype: DType) -> Self {
        Self {
            device,
            dtype,
            trainable: Some(Mutex::new(Vec::new())),
            sparse: None,
            quantized: Default::default(),
            keep_blocks: true,
            own_kernels: true,
            mlp_pass_bytes: MLP_PASS_BYTES,
        }
    }

    /// Inference through candle's composed ops only, whose result for a row does not depend on
    /// how many rows share a product: no one-row kernel ([`crate::gemv`]) and no fused attention
    /// ([`crate::attention`], whose tile products round differently for different tile
    /// heights). The trainer's rollouts need this: one process and N data-parallel ranks
    /// group rows differently and must sample the same tokens.
    ///
    /// ```
    /// let be = visionthink_model::CandleBackend::cpu().batch_invariant();
    /// # let _ = be;
    /// ```
    pub fn batch_invariant(mut self) -> Self {
        self.own_kernels = false;
        self
    }

    /// The most bytes one intermediate activation of a many-row MLP may take in CPU inference
    /// (default [`MLP_PASS_BYTES`]); more rows run in passes of fewer rows, with the one-pass
    /// values to float reordering (the product kernels block their sums by the matrix sizes).
    /// Training and GPUs run in one pass.
    ///
    /// ```
    /// let be = visionthink_model::CandleBackend::cpu().mlp_pass_bytes(4 << 20);
    /// # let _ = be;
    /// ```
    pub fn mlp_pass_bytes(mut self, bytes: usize) -> Self {
        self.mlp_pass_bytes = bytes;
        self
    }

    /// Whether GGUF matrices stay in their quantized blocks (the default: candle's quantized
    /// kernels, a quarter to an eighth of the f32 memory) or are dequantized to the compute
    /// dtype when loaded (products exact to the dequantized values, at the f32 cost: a
    /// reference for other executors, or a CPU where candle has no fast quantized kernels).
    ///
    /// ```
    /// use visionthink_core::gguf::GgmlType;
    /// use visionthink_model::{Backend, CandleBackend};
    /// assert!(CandleBackend::cpu().takes_quantized(GgmlType::Q4_K));
    /// assert!(!CandleBackend::cpu().keep_gguf_blocks(false).takes_quantized(GgmlType::Q4_K));
    /// ```
    pub fn keep_gguf_blocks(mut self, keep: bool) -> Self {
        self.keep_blocks = keep;
        self
    }

    /// Takes the gathered-row records made since the last call.
    pub fn take_sparse_rows(&self) -> Vec<SparseRows> {
        self.sparse
            .as_ref()
            .and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v)))
            .unwrap_or_default()
    }

    /// The trainable variables created so far, in load order.
    pub fn vars(&self) -> Vec<Var> {
        self.trainable
            .as_ref()
            .and_then(|m| m.lock().ok().map(|v| v.clone()))
            .unwrap_or_default()
    }

    /// Attention over `[heads, n, d]` queries in blocks of rows, so the score matrix never
    /// exceeds [`SCORE_BUDGET`] bytes (a full-attention vision block over a large image would
    /// otherwise materialise heads × n × n floats at once). `causal_past`: causal mask with that
    /// many cached keys before the first query.
    fn attend_chunked(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal_past: Option<usize>,
    ) -> Result<Tensor> {
        let (heads, n, _) = q.dims3()?;
        let m = k.dim(1)?;
        let rows = (SCORE_BUDGET / (4 * heads * m).max(1)).clamp(1, n.max(1));
        let mut parts = Vec::with_capacity(n.div_ceil(rows));
        let mut r0 = 0;
        let differentiable = self.trainable.is_some();
        while r0 < n {
            let len = rows.min(n - r0);
            let qc = q.narrow(1, r0, len)?;
            // Causal: keys after the block's last row are masked for every row, so they are not
            // computed at all; only the triangle inside the visible range needs a mask.
            let visible = match causal_past {
                Some(past) => (past + r0 + len).min(m),
                None => m,
            };
            let (kc, vc) = if visible < m {
                (k.narrow(1, 0, visible)?, v.narrow(1, 0, visible)?)
            } else {
                (k.clone(), v.clone())
            };
            let bias = match causal_past {
                Some(past) if len > 1 => {
                    let mut b = vec![0f32; len * visible];
                    for i in 0..len {
                        for j in (past + r0 + i + 1).min(visible)..visible {
                            b[i * visible + j] = f32::NEG_INFINITY;
                        }
                    }
                    Some(
                        Tensor::from_vec(b, (1, len, visible), &self.device)?
                            .to_dtype(q.dtype())?,
                    )
                }
                _ => None,
            };
            parts.push(sdpa(&qc, &kc, &vc, bias.as_ref(), differentiable)?);
            r0 += len;
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(&parts, 1)?
        })
    }

    fn f32(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(DType::F32)?)
    }

    /// `data` narrowed by `f` into a weight buffer ([`crate::weights::huge_page_vec`]) on the
    /// CPU.
    fn narrowed<T: candle_core::WithDType>(
        &self,
        data: &[f32],
        shape: &[usize],
        f: impl Fn(f32) -> T,
    ) -> Result<Tensor> {
        let mut v = crate::weights::huge_page_vec(data.len());
        v.extend(data.iter().map(|&x| f(x)));
        Ok(Tensor::from_vec(v, shape, &self.device)?)
    }

    /// A zero-stride tensor of `shape` that stands for `weight` in the graph (holding no
    /// memory), recorded so the products find the weight by its id.
    fn stand_in(&self, shape: [usize; 2], weight: QuantWeight) -> Result<Tensor> {
        let t = Tensor::zeros((), DType::F32, &self.device)?.broadcast_as((shape[0], shape[1]))?;
        self.quantized
            .write()
            .map_err(|_| Error::Backend("quantized weight table poisoned".into()))?
            .insert(t.id(), weight);
        Ok(t)
    }

    /// Rows `ids` of a `[rows, cols]` table read by `row`, `[ids, cols]`; an id past the table
    /// is an error.
    fn gathered(
        &self,
        [rows, cols]: [usize; 2],
        ids: &[u32],
        row: impl Fn(usize) -> Vec<f32>,
    ) -> Result<Tensor> {
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids {
            if id as usize >= rows {
                return Err(Error::Input(format!(
                    "token id {id} is outside the {rows}-row embedding"
                )));
            }
            out.extend(row(id as usize));
        }
        Ok(Tensor::from_vec(out, (ids.len(), cols), &self.device)?)
    }

    /// `f(x, n)` for a contiguous f32 `x` `[…, cols]` of `n` rows against a `[out, cols]`
    /// matrix, as `[…, out]` (any leading dimensions, as candle's matmul takes them).
    fn rows_by(
        &self,
        x: &Tensor,
        [out, cols]: [usize; 2],
        f: impl FnOnce(&[f32], usize) -> Vec<f32>,
    ) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&cols) {
            return Err(Error::Backend(format!(
                "a {dims:?} input against a [{out}, {cols}] weight"
            )));
        }
        let n = x.elem_count() / cols.max(1);
        let (storage, layout) = x.storage_and_layout();
        let y = match cpu_values::<f32>(&storage, layout)? {
            Some(xs) => f(xs, n),
            None => {
                drop(storage);
                f(&x.flatten_all()?.to_vec1::<f32>()?, n)
            }
        };
        if let Some(d) = dims.last_mut() {
            *d = out;
        }
        Ok(Tensor::from_vec(y, dims, &self.device)?)
    }

    /// The GGUF blocks `w` stands for, if it is a quantized weight.
    fn quant(&self, w: &Tensor) -> Option<QuantWeight> {
        self.quantized.read().ok()?.get(&w.id()).cloned()
    }
}

/// Rows from which a product with a quantized matrix dequantizes it and uses the f32 GEMM.
const PREFILL_ROWS: usize = 16;

/// Largest attention score block computed at once, in bytes.
const SCORE_BUDGET: usize = 64 << 20;

/// Scaled dot-product attention on `[heads, n, d]` × `[heads, m, d]` with an additive mask.
fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    differentiable: bool,
) -> Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let scores = scores.to_dtype(DType::F32)?;
    // candle's fused softmax is one pass but has no backward; training uses the composed one.
    let p = if differentiable {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?
    };
    Ok(p.to_dtype(v.dtype())?.matmul(v)?)
}

impl CandleBackend {
    /// `x · wᵀ` through [`crate::gemv::gemv`] when that is the fast path: one row, f32 or bf16
    /// weights held contiguously on the CPU, inference (no autograd). `None` otherwise.
    fn one_row(&self, x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
        let one_row = x.dims().len() == 2 && x.dims()[0] == 1;
        let stored = matches!(w.dtype(), DType::BF16 | DType::F32);
        // Elsewhere than on the CPU the weight is not in host memory: copying the row out would
        // only add a device round trip per product.
        let cpu = self.device.is_cpu();
        if self.trainable.is_some() || !self.own_kernels || !one_row || !stored || !cpu {
            return Ok(None);
        }
        let (m, k) = w.dims2()?;
        if x.dims()[1] != k {
            return Ok(None);
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (storage, layout) = w.storage_and_layout();
        let y = match w.dtype() {
            DType::BF16 => {
                cpu_values::<half::bf16>(&storage, layout)?.map(|w| crate::gemv::gemv(&xs, w))
            }
            _ => cpu_values::<f32>(&storage, layout)?.map(|w| crate::gemv::gemv(&xs, w)),
        };
        drop(storage);
        // A weight elsewhere than in contiguous CPU memory takes the matmul.
        let Some(y) = y else {
            return Ok(None);
        };
        Ok(Some(
            Tensor::from_vec(y, (1, m), &self.device)?.to_dtype(x.dtype())?,
        ))
    }

    /// Attention through the fused CPU kernel ([`crate::attention`]) when that is the path:
    /// inference (no autograd) on the CPU. `None` otherwise (the composed, differentiable ops).
    fn fused_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        kv_heads: usize,
        mask: &Mask,
    ) -> Result<Option<Tensor>> {
        if self.trainable.is_some() || !self.own_kernels || !q.device().is_cpu() || heads == 0 {
            return Ok(None);
        }
        let (n, width) = q.dims2()?;
        let shape = crate::attention::Shape {
            n,
            m: k.dim(0)?,
            heads,
            kv_heads,
            d: width / heads,
        };
        let (q32, k32, v32) = (f32_rows(q)?, f32_rows(k)?, f32_rows(v)?);
        let out = {
            let (qs, ql) = q32.storage_and_layout();
            let (ks, kl) = k32.storage_and_layout();
            let (vs, vl) = v32.storage_and_layout();
            // The operands were just made contiguous f32 on the CPU.
            let values = |s, l| {
                cpu_values::<f32>(s, l)?.ok_or_else(|| {
                    Error::Backend("fused attention: an operand is not contiguous CPU f32".into())
                })
            };
            crate::attention::attention(
                values(&qs, ql)?,
                values(&ks, kl)?,
                values(&vs, vl)?,
                shape,
                mask,
            )?
        };
        Ok(Some(
            Tensor::from_vec(out, (n, width), &self.device)?.to_dtype(q.dtype())?,
        ))
    }
}

/// The values of a tensor's storage, when it is on the CPU and its layout contiguous.
fn cpu_values<'a, T: candle_core::WithDType>(
    s: &'a candle_core::Storage,
    l: &candle_core::Layout,
) -> Result<Option<&'a [T]>> {
    let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (s, l.contiguous_offsets()) else {
        return Ok(None);
    };
    Ok(Some(&cpu.as_slice::<T>()?[a..b]))
}

/// `t` as contiguous f32 (a cheap handle when it already is).
fn f32_rows(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.contiguous()?)
}

impl Backend for CandleBackend {
    type Tensor = Tensor;

    fn synchronize(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }

    fn mlp_rows_per_pass(&self, intermediate: usize) -> Option<usize> {
        let inference = self.trainable.is_none() && self.own_kernels && self.device.is_cpu();
        inference.then(|| (self.mlp_pass_bytes / (4 * intermediate.max(1))).max(1))
    }

    fn tensor(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::from_slice(data, shape, &self.device)?;
        Ok(if self.dtype == DType::F32 {
            t
        } else {
            t.to_dtype(self.dtype)?
        })
    }

    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        match &self.trainable {
            Some(vars) => {
                let var = Var::from_vec(data, shape, &self.device)?;
                let t = var.as_tensor().clone();
                vars.lock()
                    .map_err(|_| Error::Backend("variable list poisoned".into()))?
                    .push(var);
                Ok(t)
            }
            None => {
                // Owned buffer, no copy on the CPU in f32 (the largest tensors are the embeddings).
                // 16-bit weights on the CPU are narrowed into a buffer given huge pages first
                // (decoding reads them all once per token), rounded as candle's cast rounds.
                if self.device.is_cpu() && self.dtype == DType::BF16 {
                    return self.narrowed(&data, shape, half::bf16::from_f32);
                }
                if self.device.is_cpu() && self.dtype == DType::F16 {
                    return self.narrowed(&data, shape, half::f16::from_f32);
                }
                let t = Tensor::from_vec(data, shape, &self.device)?;
                Ok(if self.dtype == DType::F32 {
                    t
                } else {
                    t.to_dtype(self.dtype)?
                })
            }
        }
    }

    fn takes_quantized(&self, ty: visionthink_core::gguf::GgmlType) -> bool {
        use visionthink_core::gguf::GgmlType;
        // Inference only (no gradient flows into blocks), on candle's quantized kernels.
        let inference = self.keep_blocks && self.trainable.is_none();
        // F16/BF16 matrices stay in 16 bits for our f32 kernels on a native CPU (an F16 mmproj
        // would otherwise double in memory); other backends read them as plain floats.
        let half = matches!(ty, GgmlType::F16 | GgmlType::BF16)
            && self.own_kernels
            && self.device.is_cpu()
            && self.dtype == DType::F32
            && cfg!(not(target_arch = "wasm32"));
        inference && !self.device.is_metal() && (ty.is_quantized() || half)
    }

    fn quantized_weight(&self, q: &crate::gguf::QuantView<'_>) -> Result<Tensor> {
        use visionthink_core::gguf::GgmlType;
        if matches!(q.ty, GgmlType::F16 | GgmlType::BF16) {
            let mut bits = crate::weights::huge_page_vec(q.bytes.len() / 2);
            q.read_releasing(|c| {
                bits.extend(c.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])))
            });
            let m = crate::gemv::HalfMatrix::from_bits(
                q.ty == GgmlType::BF16,
                q.shape[0],
                q.shape[1],
                bits,
            )
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: {} bytes for a {:?} {} matrix",
                    q.name,
                    q.bytes.len(),
                    q.shape,
                    q.ty.name()
                ))
            })?;
            return self.stand_in(q.shape, QuantWeight::Half(std::sync::Arc::new(m)));
        }
        let own_kernels =
            self.own_kernels && self.device.is_cpu() && crate::qgemv::QMatrix::available();
        // Without our kernels Q5_0 is rewritten exactly as Q8_0, whose kernels candle
        // vectorises where its Q5_0 ones are not.
        let q8;
        let (ty, bytes) = match q.ty {
            GgmlType::Q5_0 if !own_kernels => {
                q8 = crate::gguf::q5_0_as_q8_0(q.bytes)?;
                (GgmlType::Q8_0, q8.as_slice())
            }
            ty => (ty, q.bytes),
        };
        // Our kernels where they run; candle's for the other types, other devices, and a
        // batch-invariant backend (whose rollouts must not change with this choice).
        let own = crate::qgemv::Kind::from_ggml(ty).filter(|_| own_kernels);
        let weight = match own {
            Some(kind) => QuantWeight::Own(std::sync::Arc::new(
                crate::qgemv::QMatrix::from_vec(kind, q.shape[0], q.shape[1], q.copy_releasing())
                    .map_err(|e| Error::Input(format!("{}: {e}", q.name)))?,
            )),
            None => {
                let blocks =
                    std::sync::Arc::new(crate::gguf::qtensor(ty, bytes, &q.shape, &self.device)?);
                let matmul = candle_core::quantized::QMatMul::from_arc(blocks.clone())?;
                QuantWeight::Candle { matmul, blocks }
            }
        };
        self.stand_in(q.shape, weight)
    }

    fn to_vec(&self, t: &Tensor) -> Result<Vec<f32>> {
        if let Some(q) = self.quant(t) {
            return Ok(q
                .dequantize(&self.device)?
                .flatten_all()?
                .to_vec1::<f32>()?);
        }
        Ok(self.f32(t)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn shape(&self, t: &Tensor) -> Vec<usize> {
        t.dims().to_vec()
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = if let Some(q) = self.quant(w) {
            use candle_core::Module;
            let x32 = x.to_dtype(DType::F32)?.contiguous()?;
            let rows = x32.dims().first().copied().unwrap_or(0);
            let y = match &q {
                QuantWeight::Candle { matmul, .. } => {
                    if rows >= PREFILL_ROWS {
                        // Many rows (a prefill, a vision tower): the matrix dequantized and
                        // candle's f32 GEMM, which outruns its quantized kernels once the cost
                        // of the dequantization is shared by enough rows.
                        x32.matmul(&q.dequantize(&self.device)?.t()?)?
                    } else {
                        matmul.forward(&x32)?
                    }
                }
                // Our kernels: one row (a decode step) widened in registers or against 8-bit
                // activation blocks, and for more rows (GGUF blocks: from 16) the f32 GEMM on
                // tiles of the matrix widened as they are needed.
                QuantWeight::Half(m) => self.rows_by(&x32, m.shape(), |xs, n| {
                    if n == 1 {
                        m.matvec(xs)
                    } else {
                        m.matmul(xs, n)
                    }
                })?,
                QuantWeight::Own(m) => self.rows_by(&x32, m.shape(), |xs, n| {
                    if n >= PREFILL_ROWS {
                        m.matmul_dequantized(xs, n)
                    } else {
                        m.matmul(xs, n)
                    }
                })?,
            };
            y.to_dtype(x.dtype())?
        } else {
            match self.one_row(x, w)? {
                Some(y) => y,
                None => x.matmul(&w.t()?)?,
            }
        };
        Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = self.f32(x)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
        Ok(normed.broadcast_mul(w)?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        // Inference on the CPU: one pass and one output buffer (candle's `silu` then `*` write
        // an intermediate as large as the MLP's activations: 10 MB in a 512-token prefill of
        // the 0.5B shape), with candle's formula for `silu` and a vectorised `exp`
        // ([`crate::attention::silu_mul_in_place`]: within a few ulp of candle's values).
        let fused = self.trainable.is_none()
            && self.own_kernels
            && gate.dtype() == DType::F32
            && up.dtype() == DType::F32
            && gate.dims() == up.dims();
        if fused {
            let (gs, gl) = gate.storage_and_layout();
            let (us, ul) = up.storage_and_layout();
            if let (Some(g), Some(u)) = (cpu_values::<f32>(&gs, gl)?, cpu_values::<f32>(&us, ul)?) {
                let mut out = vec![0f32; g.len()];
                let part = |first: usize, o: &mut [f32]| {
                    o.copy_from_slice(&g[first..first + o.len()]);
                    crate::attention::silu_mul_in_place(o, &u[first..first + o.len()]);
                };
                if out.len() < 1 << 15 {
                    part(0, &mut out);
                } else {
                    crate::gemv::par_rows(&mut out, 1, 1 << 14, part);
                }
                drop((gs, us));
                return Ok(Tensor::from_vec(out, gate.dims(), &self.device)?);
            }
        }
        Ok((gate.silu()? * up)?)
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.gelu_erf()?)
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
        let (n, width) = x.dims2()?;
        let d = width / heads;
        let x3 = x.reshape((n, heads, d))?;
        let x1 = x3.narrow(2, 0, d / 2)?;
        let x2 = x3.narrow(2, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 2)?;
        let cos = cos.unsqueeze(1)?;
        let sin = sin.unsqueeze(1)?;
        let y = (x3.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        Ok(y.reshape((n, width))?)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        kv_heads: usize,
        mask: &Mask,
    ) -> Result<Tensor> {
        let (n, width) = q.dims2()?;
        let m = k.dim(0)?;
        let d = width / heads;
        if let Some(out) = self.fused_attention(q, k, v, heads, kv_heads, mask)? {
            return Ok(out);
        }
        let to_heads = |t: &Tensor, rows: usize, h: usize| -> Result<Tensor> {
            let t = t.reshape((rows, h, d))?.transpose(0, 1)?.contiguous()?;
            if h == heads {
                return Ok(t);
            }
            // Grouped-query attention: each KV head serves heads / kv_heads query heads.
            let rep = heads / h;
            Ok(t.unsqueeze(1)?
                .expand((h, rep, rows, d))?
                .reshape((heads, rows, d))?)
        };
        let qh = to_heads(q, n, heads)?;
        let kh = to_heads(k, m, kv_heads)?;
        let vh = to_heads(v, m, kv_heads)?;
        let out = match mask {
            Mask::Causal { past } => self.attend_chunked(&qh, &kh, &vh, Some(*past))?,
            Mask::Segments(cu) => {
                let mut parts = Vec::with_capacity(cu.len());
                for w in cu.windows(2) {
                    let (s, len) = (w[0], w[1] - w[0]);
                    parts.push(self.attend_chunked(
                        &qh.narrow(1, s, len)?,
                        &kh.narrow(1, s, len)?,
                        &vh.narrow(1, s, len)?,
                        None,
                    )?);
                }
                Tensor::cat(&parts, 1)?
            }
        };
        Ok(out.transpose(0, 1)?.contiguous()?.reshape((n, width))?)
    }

    fn gather_rows(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let idx = Tensor::from_slice(ids, ids.len(), &self.device)?;
        if let Some(q) = self.quant(table) {
            return Ok(match q {
                QuantWeight::Candle { blocks, .. } => blocks.embedding(&idx)?,
                QuantWeight::Own(m) => self.gathered(m.shape(), ids, |r| m.dequantize_row(r))?,
                QuantWeight::Half(m) => self.gathered(m.shape(), ids, |r| m.row(r))?,
            }
            .to_dtype(self.dtype)?);
        }
        if let Some(sparse) = self.sparse.as_ref().filter(|_| table.is_variable()) {
            let rows = Var::from_tensor(&table.detach().index_select(&idx, 0)?)?;
            let t = rows.as_tensor().clone();
            sparse
                .lock()
                .map_err(|_| Error::Backend("sparse row list poisoned".into()))?
                .push(SparseRows {
                    table: table.id(),
                    ids: ids.to_vec(),
                    rows,
                });
            return Ok(t);
        }
        Ok(table.index_select(&idx, 0)?)
    }

    fn cat_rows(&self, parts: &[Tensor]) -> Result<Tensor> {
        Ok(Tensor::cat(parts, 0)?)
    }

    fn narrow_rows(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        Ok(x.narrow(0, start, len)?)
    }

    fn reshape(&self, x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
        Ok(x.reshape((rows, cols))?)
    }

    fn mlp_add(
        &self,
        h: &Tensor,
        gate: &Tensor,
        up: &Tensor,
        down: &Tensor,
        b: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Option<Tensor>> {
        // Many-row inference on GGUF blocks with our kernels: the intermediate dimension a
        // chunk at a time (the MLP's activations bounded, each weight widened once).
        let rows = h.dims().first().copied().unwrap_or(0);
        if self.trainable.is_some() || !self.own_kernels || rows < PREFILL_ROWS {
            return Ok(None);
        }
        let (Some(QuantWeight::Own(g)), Some(QuantWeight::Own(u)), Some(QuantWeight::Own(d))) =
            (self.quant(gate), self.quant(up), self.quant(down))
        else {
            return Ok(None);
        };
        let dims = residual.dims().to_vec();
        let h32 = h.to_dtype(DType::F32)?.contiguous()?;
        let mut y = residual.to_dtype(DType::F32)?;
        if let Some(b) = b {
            y = y.broadcast_add(&b.to_dtype(DType::F32)?)?;
        }
        let mut y = y.flatten_all()?.to_vec1::<f32>()?;
        let (hs, hl) = h32.storage_and_layout();
        let Some(hv) = cpu_values::<f32>(&hs, hl)? else {
            return Ok(None);
        };
        crate::qgemv::swiglu_mlp_add(hv, rows, &g, &u, &d, &mut y)
            .map_err(|e| Error::Backend(e.to_string()))?;
        drop(hs);
        let y = Tensor::from_vec(y, dims, &self.device)?;
        Ok(Some(y.to_dtype(residual.dtype())?))
    }

    fn append_rows(
        &self,
        buffer: Option<Tensor>,
        used: usize,
        new: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (n, cols) = new.dims2()?;
        let total = used + n;
        // In-place writes are invisible to autograd: a trainable backend concatenates.
        if self.trainable.is_some() {
            let all = match buffer {
                Some(b) if used > 0 => Tensor::cat(&[&b.narrow(0, 0, used)?, new], 0)?,
                _ => new.clone(),
            };
            return Ok((all.clone(), all));
        }
        let new = new.contiguous()?;
        let buffer = match buffer {
            Some(b) if b.dim(0)? >= total => b,
            old => {
                // Grow geometrically so appending a token copies nothing most of the time, by a
                // quarter (at least 256 rows): a prefill's cache is not doubled in memory (a
                // 512-token prefill of the 0.5B shape: 15.7 instead of 25.2 MB of capacity).
                let capacity = total + (total / 4).max(256);
                let grown = Tensor::zeros((capacity, cols), new.dtype(), &self.device)?;
                if let Some(b) = old.filter(|_| used > 0) {
                    grown.slice_set(&b.narrow(0, 0, used)?.contiguous()?, 0, 0)?;
                }
                grown
            }
        };
        buffer.slice_set(&new, 0, used)?;
        let view = buffer.narrow(0, 0, total)?;
        Ok((buffer, view))
    }
}
