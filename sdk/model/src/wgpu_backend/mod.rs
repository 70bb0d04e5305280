//! The WebGPU executor: [`Backend`] on `wgpu` with the WGSL kernels of [`shaders`]. The same code
//! runs natively (Vulkan, Metal, DX12; Mesa's lavapipe in tests) and in browsers (wasm32).
//!
//! - Tensors are views `(buffer, element offset, shape)`: narrowing rows, reshaping and the
//!   KV-cache prefix cost nothing.
//! - Work is recorded into one command encoder and submitted when a result is read back (or
//!   every [`FLUSH_DISPATCHES`] dispatches, so intermediates of a long prefill are freed).
//! - Weights larger than the adapter's `maxStorageBufferBindingSize` are split into row chunks;
//!   `linear` and `gather_rows` run per chunk.
//! - The KV cache lives on the GPU with spare capacity; appending copies only the new rows.
//! - Weights stored as f32, f16 or int8 (one f32 scale per output row): [`WeightStorage`]; GGUF
//!   matrices (Q8_0, Q4_0, Q4_K, Q6_K; Q5_0 rewritten exactly as Q8_0) stay in their blocks and
//!   are dequantised in the kernels' registers ([`WeightLayout`]).
//! - A one-token step is 8 dispatches per decoder layer: q/k/v and gate/up stored as one matrix
//!   each (`Backend::fuse_rows`), rotary embedding over q and k at once, the residual added and
//!   SwiGLU read inside the products' kernels; consecutive dispatches share one compute pass.
//! - Kernels are typed ([`kernels::Kernel`]) with one parameter struct each, written into one
//!   pooled uniform buffer and bound with a dynamic offset; the WGSL is in `wgsl/*.wgsl`.
//!
//! The parts: `device` (adapter, device, fault capture), `kernels` (WGSL, parameter structs,
//! bindings), `record` (pipeline cache, parameter pool, encoder, uploads, readback), `ops` (the
//! [`crate::Backend`] operations).
//!
//! Natively, [`Backend::to_vec`] blocks on the device; in browsers use
//! [`WgpuBackend::read_async`] (a blocking read is impossible there).

mod device;
pub mod kernels;
mod ops;
mod record;

pub use device::AdapterInfo;
pub use kernels::{WeightLayout, WeightStorage};

use crate::backend::Mask;
use crate::error::{Error, Result};
use device::Fault;
use kernels::{Kernel, Params};
use record::Recorder;
pub use record::{Counters, FLUSH_DISPATCHES};
#[cfg(not(target_arch = "wasm32"))]
use std::sync::Arc;
use std::sync::Mutex;

/// Shared ownership of weight chunks: `Arc` natively (so models can move between threads),
/// `Rc` in browsers, where wgpu objects are neither `Send` nor `Sync`.
#[cfg(not(target_arch = "wasm32"))]
type ChunkRef<T> = Arc<T>;
#[cfg(target_arch = "wasm32")]
type ChunkRef<T> = std::rc::Rc<T>;

/// Executor options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WgpuOptions {
    /// How 2-D weights (linear layers, embeddings, head) are stored: f32; f16 (half the GPU
    /// memory, f32 arithmetic, works without `shader-f16`); int8 with a per-row absmax scale
    /// (4× less GPU memory and upload). Activations, norms and biases stay f32.
    pub weights: WeightStorage,
    /// Prefer a software adapter (for tests).
    pub force_fallback_adapter: bool,
    /// Split weights into chunks of at most this many bytes (default: the adapter's
    /// `maxStorageBufferBindingSize`); lets tests exercise chunking on small tensors.
    pub chunk_bytes: Option<u64>,
    /// Force (`Some(true)`) or forbid the barrier-light kernels chosen for software adapters;
    /// `None` decides from the adapter.
    pub software_kernels: Option<bool>,
    /// f16 arithmetic in the tiled matmul (prefill, the vision tower) where the adapter has
    /// `shader-f16`: inputs and weights rounded to f16, products summed in f16 over each
    /// 32-value step of the reduction, the steps summed in f32. `None` (default): for GGUF
    /// blocks and f16 weights on hardware adapters, whose values are already reduced
    /// precision; `Some(true)`: for every weight, wherever the adapter has `shader-f16`
    /// (elsewhere f32); `Some(false)`: never. Software adapters' barrier-free kernels and
    /// one-row products always compute in f32.
    pub f16_math: Option<bool>,
    /// Products over f32 weights read from a texture copy of each weight (made on the GPU on
    /// first use) with the input rows in a uniform buffer: on Mesa's llvmpipe about 9× the
    /// weight bandwidth of storage-buffer reads for one row, and about 10× the arithmetic for
    /// several, for twice the memory of those weights. `None` (default): wherever the
    /// software adapters' kernels run (`software_kernels`); `Some(false)`: never.
    pub texel_weights: Option<bool>,
    /// A decode step's rotary embedding and KV cache append as one dispatch
    /// ([`kernels::Kernel::RopeAppend`], `Some(true)`) or as a rope dispatch then two buffer
    /// copies per layer, each copy ending the compute pass (`Some(false)`). `None` (default):
    /// fused natively (on lavapipe fewer copies and passes, host time 1.06 against 1.16 ms for
    /// the 0.5B shape), composed on wasm32, where Chromium measured the fused step slower
    /// (host 5.3–7.0 against 2.6–2.8 ms per token for the 0.5B Q4_K_M set on SwiftShader).
    pub rope_append: Option<bool>,
}

#[derive(Debug)]
struct Chunk {
    buf: record::Pooled,
    /// First row of the full tensor this chunk holds.
    row0: usize,
    rows: usize,
    /// Layout of the values.
    kind: WeightLayout,
    /// int8 chunks: per-row scales.
    scales: Option<wgpu::Buffer>,
    /// f32 chunks read by [`kernels::Kernel::GemvTexel`]: the values as rgba32float texels,
    /// copied on first use (`None` inside: they do not fit a texture).
    texels: std::sync::OnceLock<Option<wgpu::TextureView>>,
}

/// A tensor: a view into one buffer, or a chunked / quantised weight.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    chunks: ChunkRef<Vec<Chunk>>,
    /// Element offset of the view (single-chunk tensors only).
    off: usize,
    rows: usize,
    cols: usize,
    /// The original 1-D shape, when created 1-D.
    one_d: bool,
}

impl GpuTensor {
    fn single(&self) -> Result<&wgpu::Buffer> {
        match self.chunks.as_slice() {
            [c] if c.kind == WeightLayout::F32 => Ok(&c.buf),
            _ => Err(Error::Backend(
                "this operation needs a plain f32 tensor, not a chunked, f16, int8 or GGUF-block \
                 weight"
                    .into(),
            )),
        }
    }
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// The WebGPU executor.
pub struct WgpuBackend {
    /// Pipelines, parameter pool, encoder, counters.
    rec: Recorder,
    /// [`Kernel::GemvTexel`]'s input row.
    x_uniform: wgpu::Buffer,
    info: AdapterInfo,
    opts: WgpuOptions,
    /// The last attention ranges uploaded (masks repeat across layers).
    ranges: Mutex<Option<(Mask, usize, usize, record::Pooled)>>,
    /// First uncaptured device error (validation, out-of-memory, internal) or loss.
    fault: Fault,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBackend({:?})", self.info)
    }
}

/// Splits `n` workgroups into a 2-D grid with `x ≤ 65535`.
fn grid(n: usize) -> (u32, u32) {
    let n = n.max(1);
    let x = n.min(65_535);
    (x as u32, n.div_ceil(x) as u32)
}

impl WgpuBackend {
    /// Requests an adapter and device (native: Vulkan/Metal/DX12 per `WGPU_BACKEND`; browsers:
    /// `navigator.gpu`). Errors name what is missing.
    pub async fn new(opts: WgpuOptions) -> Result<Self> {
        let (device, queue, info, fault) = device::open(opts.force_fallback_adapter).await?;
        let x_uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("one-row product input"),
            size: u64::from(kernels::X_UNIFORM_VEC4) * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            x_uniform,
            rec: Recorder::new(device, queue, info.uniform_align),
            info,
            opts,
            ranges: Mutex::new(None),
            fault,
        })
    }

    /// [`Self::new`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: WgpuOptions) -> Result<Self> {
        pollster::block_on(Self::new(opts))
    }

    /// The adapter.
    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    /// The options.
    pub fn options(&self) -> WgpuOptions {
        self.opts
    }

    /// Destroys the device now (frees its memory); every later operation fails with
    /// [`Error::DeviceLost`]. Also how tests simulate a lost device.
    pub fn destroy(&self) {
        self.rec.device.destroy();
        self.fault
            .set(Error::DeviceLost("the device was destroyed".into()));
    }

    /// Work done so far.
    pub fn counters(&self) -> Counters {
        self.rec.counters()
    }

    /// Waits until the GPU has finished everything submitted (native only; for timing).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sync(&self) -> Result<()> {
        self.submit();
        self.rec
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("poll: {e}")))?;
        self.fault.check()
    }

    /// Submits recorded work (without waiting).
    pub fn submit(&self) {
        self.rec.submit();
    }

    fn dispatch(
        &self,
        kernel: Kernel,
        params: &impl Params,
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) {
        let resources: Vec<record::Res<'_>> =
            buffers.iter().map(|&b| record::Res::Buf(b)).collect();
        self.rec.dispatch(kernel, params, &resources, groups);
    }

    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        self.rec.with_encoder(f)
    }

    fn upload(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.rec.upload(bytes)
    }

    /// Largest weight chunk in bytes.
    pub(super) fn chunk_limit(&self) -> usize {
        let lim = self.info.max_binding.min(self.info.max_buffer);
        self.opts.chunk_bytes.map_or(lim, |c| c.min(lim)) as usize
    }

    pub(super) fn check_size(&self, bytes: u64, what: &str) -> Result<()> {
        let lim = self.info.max_binding.min(self.info.max_buffer);
        if bytes > lim {
            return Err(Error::AdapterLimit(format!(
                "{what} needs a {bytes}-byte storage buffer; this adapter's \
                 maxStorageBufferBindingSize/maxBufferSize allow {lim}"
            )));
        }
        Ok(())
    }

    /// An uninitialised f32 storage buffer of `elems` values, for a kernel output or a copy
    /// destination (pooled: see `record::Pool`).
    fn buffer(&self, elems: usize, what: &str) -> Result<record::Pooled> {
        self.fault.check()?;
        let bytes = (elems.max(1) * 4) as u64;
        self.check_size(bytes, what)?;
        Ok(self.rec.output(bytes))
    }

    /// Records the copy of a tensor into a mappable buffer, submits, and returns it.
    fn stage(&self, t: &GpuTensor) -> Result<(wgpu::Buffer, usize)> {
        self.fault.check()?;
        let src = t.single()?;
        let n = t.len();
        let staging = self.rec.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (n.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if n > 0 {
            self.with_encoder(|enc| {
                enc.copy_buffer_to_buffer(src, (t.off * 4) as u64, &staging, 0, (n * 4) as u64)
            });
        }
        self.submit();
        Ok((staging, n))
    }

    fn finish_read(&self, staging: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Backend(format!("readback: {e}")))?;
            bytemuck::cast_slice::<u8, f32>(&view)[..n].to_vec()
        };
        staging.unmap();
        self.fault.check()?;
        Ok(out)
    }

    /// Reads a tensor back without blocking the thread (the only way in browsers). Chunked,
    /// f16, int8 and GGUF-block weights are read as their f32 values.
    pub async fn read_async(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        let expanded;
        let t = if t.single().is_ok() {
            t
        } else {
            let ids: Vec<u32> = (0..t.rows as u32).collect();
            expanded = crate::Backend::gather_rows(self, t, &ids)?;
            &expanded
        };
        let (staging, n) = self.stage(t)?;
        let (tx, rx) = record::oneshot();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.rec
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("poll: {e}")))?;
        match rx.await {
            Some(Ok(())) => self.finish_read(&staging, n),
            _ => {
                self.fault.check()?;
                Err(Error::DeviceLost("readback mapping failed".into()))
            }
        }
    }

    fn plain(&self, buf: record::Pooled, rows: usize, cols: usize) -> GpuTensor {
        GpuTensor {
            chunks: ChunkRef::new(vec![Chunk {
                buf,
                row0: 0,
                rows,
                kind: WeightLayout::F32,
                scales: None,
                texels: Default::default(),
            }]),
            off: 0,
            rows,
            cols,
            one_d: false,
        }
    }
}
