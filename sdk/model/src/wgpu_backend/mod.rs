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
//! - Optional int8 weights (one f32 scale per output row) for linear layers.
//!
//! Natively, [`Backend::to_vec`] blocks on the device; in browsers use
//! [`WgpuBackend::read_async`] (a blocking read is impossible there).

pub mod shaders;

use shaders::WeightKind;

use crate::backend::{Backend, Mask};
use crate::{Error, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Shared ownership of weight chunks: `Arc` natively (so models can move between threads),
/// `Rc` in browsers, where wgpu objects are neither `Send` nor `Sync`.
#[cfg(not(target_arch = "wasm32"))]
type ChunkRef<T> = Arc<T>;
#[cfg(target_arch = "wasm32")]
type ChunkRef<T> = std::rc::Rc<T>;

/// Dispatches recorded before an intermediate submit.
pub const FLUSH_DISPATCHES: usize = 384;

/// Executor options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WgpuOptions {
    /// Store 2-D weights (linear layers, embeddings, head) as int8 with a per-row absmax scale:
    /// 4× less GPU memory and upload; activations, norms and biases stay f32.
    pub int8_weights: bool,
    /// Store 2-D weights as f16 (round to nearest even), unpacked to f32 in the kernels: half
    /// the GPU memory, f32 arithmetic, works without `shader-f16`. Ignored with `int8_weights`.
    pub f16_weights: bool,
    /// Prefer a software adapter (for tests).
    pub force_fallback_adapter: bool,
    /// Split weights into chunks of at most this many bytes (default: the adapter's
    /// `maxStorageBufferBindingSize`); lets tests exercise chunking on small tensors.
    pub chunk_bytes: Option<u64>,
    /// Force (`Some(true)`) or forbid the barrier-light kernels chosen for software adapters;
    /// `None` decides from the adapter.
    pub software_kernels: Option<bool>,
}

/// Adapter facts worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// Adapter name.
    pub name: String,
    /// Backend (Vulkan, Metal, BrowserWebGpu…).
    pub backend: String,
    /// `maxStorageBufferBindingSize` in bytes.
    pub max_binding: u64,
    /// `maxBufferSize` in bytes.
    pub max_buffer: u64,
    /// Whether `shader-f16` is available.
    pub shader_f16: bool,
    /// A CPU implementation (lavapipe, SwiftShader, WARP): barriers are expensive there, so
    /// matrix-vector products use the barrier-light kernel.
    pub software: bool,
}

#[derive(Debug)]
struct Chunk {
    buf: wgpu::Buffer,
    /// First row of the full tensor this chunk holds.
    row0: usize,
    rows: usize,
    /// Storage of the values.
    kind: WeightKind,
    /// int8 chunks: per-row scales.
    scales: Option<wgpu::Buffer>,
}

impl Chunk {
    /// Bindings 2 (values) and, for int8, 5 (scales) of a weight-reading kernel.
    fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        let mut v = vec![(2, &self.buf)];
        if let Some(s) = &self.scales {
            v.push((5, s));
        }
        v
    }
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
            [c] if c.kind == WeightKind::F32 => Ok(&c.buf),
            _ => Err(Error::Backend(
                "this operation needs a plain f32 tensor, not a chunked, f16 or int8 weight".into(),
            )),
        }
    }
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

#[derive(Default)]
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
}

/// Work counters since creation (for benchmarks: dispatches and submits per decode step).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Queue submissions.
    pub submits: u64,
    /// Bytes uploaded (weights, inputs, parameters).
    pub uploaded_bytes: u64,
}

/// The WebGPU executor.
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: AdapterInfo,
    opts: WgpuOptions,
    pipelines: RefCell<HashMap<String, wgpu::ComputePipeline>>,
    pending: RefCell<Pending>,
    /// The last attention ranges uploaded (masks repeat across layers).
    ranges: RefCell<Option<(Mask, usize, usize, wgpu::Buffer)>>,
    /// First uncaptured device error (validation, out-of-memory, internal) or loss.
    fault: Arc<Mutex<Option<Error>>>,
    counters: std::cell::Cell<Counters>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBackend({:?})", self.info)
    }
}

fn usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
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
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: opts.force_fallback_adapter,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        let limits = adapter.limits();
        let ai = adapter.get_info();
        let info = AdapterInfo {
            name: ai.name.clone(),
            backend: format!("{:?}", ai.backend),
            max_binding: limits.max_storage_buffer_binding_size as u64,
            max_buffer: limits.max_buffer_size,
            shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16),
            software: ai.device_type == wgpu::DeviceType::Cpu || {
                let n = ai.name.to_lowercase();
                ["llvmpipe", "lavapipe", "swiftshader", "warp"]
                    .iter()
                    .any(|s| n.contains(s))
            },
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("visionthink"),
                required_features: wgpu::Features::empty(),
                required_limits: limits,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("device request failed: {e}")))?;
        let fault: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let f = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match &e {
                wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
                _ => Error::Backend(e.to_string()),
            };
            if let Ok(mut slot) = f.lock() {
                slot.get_or_insert(err);
            }
        }));
        let f = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut slot) = f.lock() {
                slot.get_or_insert(Error::DeviceLost(format!("{reason:?}: {msg}")));
            }
        });
        Ok(Self {
            device,
            queue,
            info,
            opts,
            pipelines: RefCell::new(HashMap::new()),
            pending: RefCell::new(Pending::default()),
            ranges: RefCell::new(None),
            fault,
            counters: Default::default(),
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
        self.device.destroy();
        if let Ok(mut slot) = self.fault.lock() {
            slot.get_or_insert(Error::DeviceLost("the device was destroyed".into()));
        }
    }

    /// Work done so far.
    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// Waits until the GPU has finished everything submitted (native only; for timing).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sync(&self) -> Result<()> {
        self.submit();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("poll: {e}")))?;
        self.check_fault()
    }

    /// The first device fault since creation (sticky: a faulted backend must be rebuilt).
    fn check_fault(&self) -> Result<()> {
        let slot = self
            .fault
            .lock()
            .map_err(|_| Error::Backend("fault slot poisoned".into()))?;
        match slot.as_ref() {
            None => Ok(()),
            Some(Error::DeviceLost(m)) => Err(Error::DeviceLost(m.clone())),
            Some(Error::OutOfMemory(m)) => Err(Error::OutOfMemory(m.clone())),
            Some(e) => Err(Error::Backend(e.to_string())),
        }
    }

    /// The pipeline `name`, compiled from `source()` on first use.
    fn pipeline(&self, name: &str, source: &dyn Fn() -> String) -> wgpu::ComputePipeline {
        if let Some(p) = self.pipelines.borrow().get(name) {
            return p.clone();
        }
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source().into()),
            });
        let p = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        self.pipelines
            .borrow_mut()
            .insert(name.to_string(), p.clone());
        p
    }

    /// Largest weight chunk in bytes.
    fn chunk_limit(&self) -> usize {
        let lim = self.info.max_binding.min(self.info.max_buffer);
        self.opts.chunk_bytes.map_or(lim, |c| c.min(lim)) as usize
    }

    fn check_size(&self, bytes: u64, what: &str) -> Result<()> {
        let lim = self.info.max_binding.min(self.info.max_buffer);
        if bytes > lim {
            return Err(Error::AdapterLimit(format!(
                "{what} needs a {bytes}-byte storage buffer; this adapter's \
                 maxStorageBufferBindingSize/maxBufferSize allow {lim}"
            )));
        }
        Ok(())
    }

    fn buffer(&self, elems: usize, what: &str) -> Result<wgpu::Buffer> {
        self.check_fault()?;
        let bytes = (elems.max(1) * 4) as u64;
        self.check_size(bytes, what)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: usage(),
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `bytes` (zero-padded to 4-byte multiples). Created empty and
    /// written through the queue: unlike `create_buffer_init`, this cannot panic when the
    /// device is lost (the fault is reported by the next readback instead).
    fn upload(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.count(|c| c.uploaded_bytes += bytes.len() as u64);
        self.upload_with(bytes, usage())
    }

    fn upload_with(&self, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = bytes.len().div_ceil(4).max(1) * 4;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: size as u64,
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !bytes.is_empty() {
            let whole = bytes.len() / 4 * 4;
            if whole > 0 {
                self.queue.write_buffer(&buf, 0, &bytes[..whole]);
            }
            if whole < bytes.len() {
                let mut tail = [0u8; 4];
                tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                self.queue.write_buffer(&buf, whole as u64, &tail);
            }
        }
        buf
    }

    fn plain(&self, buf: wgpu::Buffer, rows: usize, cols: usize) -> GpuTensor {
        GpuTensor {
            chunks: ChunkRef::new(vec![Chunk {
                buf,
                row0: 0,
                rows,
                kind: WeightKind::F32,
                scales: None,
            }]),
            off: 0,
            rows,
            cols,
            one_d: false,
        }
    }

    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut p = self.pending.borrow_mut();
        let enc = p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(enc)
    }

    /// Records one dispatch of a kernel without weights (`body` gets the prelude), binding
    /// `buffers` to 1, 2, …
    fn dispatch(
        &self,
        name: &str,
        body: &'static str,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) {
        let entries: Vec<(u32, &wgpu::Buffer)> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32 + 1, *b))
            .collect();
        self.record(name, &|| shaders::source(body), params, &entries, groups);
    }

    /// Records one dispatch with uniform `params` and storage `entries` (binding, buffer),
    /// submitting the encoder when enough work has queued up.
    fn record(
        &self,
        name: &str,
        source: &dyn Fn() -> String,
        params: &[u32],
        entries: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32, u32),
    ) {
        let pipeline = self.pipeline(name, source);
        let mut words = [0u32; 16];
        words[..params.len()].copy_from_slice(params);
        let uniform = self.upload_with(bytemuck::cast_slice(&words), wgpu::BufferUsages::UNIFORM);
        let mut bind_entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (binding, b) in entries {
            bind_entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: b.as_entire_binding(),
            });
        }
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &bind_entries,
        });
        self.with_encoder(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(name),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        });
        self.count(|c| c.dispatches += 1);
        let full = {
            let mut p = self.pending.borrow_mut();
            p.dispatches += 1;
            p.dispatches >= FLUSH_DISPATCHES
        };
        if full {
            self.submit();
        }
    }

    /// Submits recorded work (without waiting).
    pub fn submit(&self) {
        let mut p = self.pending.borrow_mut();
        if let Some(enc) = p.encoder.take() {
            self.queue.submit([enc.finish()]);
            self.count(|c| c.submits += 1);
        }
        p.dispatches = 0;
    }

    /// Records the copy of a tensor into a mappable buffer, submits, and returns it.
    fn stage(&self, t: &GpuTensor) -> Result<(wgpu::Buffer, usize)> {
        self.check_fault()?;
        let src = t.single()?;
        let n = t.len();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
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
        self.check_fault()?;
        Ok(out)
    }

    /// Reads a tensor back without blocking the thread (the only way in browsers).
    pub async fn read_async(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        let (staging, n) = self.stage(t)?;
        let (tx, rx) = oneshot();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("poll: {e}")))?;
        match rx.await {
            Some(Ok(())) => self.finish_read(&staging, n),
            _ => {
                self.check_fault()?;
                Err(Error::DeviceLost("readback mapping failed".into()))
            }
        }
    }

    fn ranges_buffer(&self, mask: &Mask, n: usize, m: usize) -> Result<wgpu::Buffer> {
        if let Some((mk, nn, mm, buf)) = self.ranges.borrow().as_ref() {
            if mk == mask && *nn == n && *mm == m {
                return Ok(buf.clone());
            }
        }
        let mut r = Vec::with_capacity(2 * n);
        match mask {
            Mask::Causal { past } => {
                if past + n != m {
                    return Err(Error::Backend(format!(
                        "causal attention over {m} keys with {past} cached + {n} new"
                    )));
                }
                for i in 0..n {
                    r.extend([0u32, (past + i + 1) as u32]);
                }
            }
            Mask::Segments(cu) => {
                if cu.last() != Some(&n) || n != m {
                    return Err(Error::Backend(format!(
                        "segments {cu:?} do not cover {n} queries and {m} keys"
                    )));
                }
                for w in cu.windows(2) {
                    for _ in w[0]..w[1] {
                        r.extend([w[0] as u32, w[1] as u32]);
                    }
                }
            }
        }
        let buf = self.upload(bytemuck::cast_slice(&r));
        *self.ranges.borrow_mut() = Some((mask.clone(), n, m, buf.clone()));
        Ok(buf)
    }

    fn elementwise(&self, n: usize) -> (u32, u32, u32) {
        let (x, y) = grid(n.div_ceil(256));
        (x, y, 1)
    }

    fn same_shape(&self, a: &GpuTensor, b: &GpuTensor, op: &str) -> Result<()> {
        if a.len() != b.len() {
            return Err(Error::Backend(format!(
                "{op}: shapes [{}, {}] and [{}, {}] differ",
                a.rows, a.cols, b.rows, b.cols
            )));
        }
        Ok(())
    }

    fn binary(&self, a: &GpuTensor, b: &GpuTensor, mode: u32, op: &str) -> Result<GpuTensor> {
        self.same_shape(a, b, op)?;
        let out = self.buffer(a.len(), op)?;
        self.dispatch(
            "binary",
            shaders::BINARY,
            &[a.len() as u32, a.off as u32, b.off as u32, 0, mode],
            &[a.single()?, b.single()?, &out],
            self.elementwise(a.len()),
        );
        Ok(self.plain(out, a.rows, a.cols))
    }

    /// Uploads a `[rows, cols]` weight in `kind` storage, split into row chunks that fit the
    /// binding limit. int8 uses a per-row absmax scale; f16 rounds to nearest even.
    fn store_weight(&self, data: &[f32], rows: usize, cols: usize, kind: WeightKind) -> GpuTensor {
        let elem_bytes = match kind {
            WeightKind::F32 => 4,
            WeightKind::F16 => 2,
            WeightKind::Q8 => 1,
        };
        let max_rows = (self.chunk_limit() / (cols * elem_bytes).max(1))
            .max(1)
            .min(rows.max(1));
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = max_rows.min(rows - row0);
            let part = &data[row0 * cols..(row0 + n) * cols];
            let (buf, scales) = match kind {
                WeightKind::F32 => (self.upload(bytemuck::cast_slice(part)), None),
                WeightKind::F16 => {
                    let h: Vec<u16> = part
                        .iter()
                        .map(|v| half::f16::from_f32(*v).to_bits())
                        .collect();
                    (self.upload(bytemuck::cast_slice(&h)), None)
                }
                WeightKind::Q8 => {
                    let mut q = Vec::with_capacity(part.len());
                    let mut scales = Vec::with_capacity(n);
                    for row in part.chunks_exact(cols.max(1)) {
                        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
                        scales.push(s);
                        q.extend(
                            row.iter()
                                .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8 as u8),
                        );
                    }
                    (
                        self.upload(&q),
                        Some(self.upload(bytemuck::cast_slice(&scales))),
                    )
                }
            };
            chunks.push(Chunk {
                buf,
                row0,
                rows: n,
                kind,
                scales,
            });
            row0 += n;
        }
        GpuTensor {
            chunks: ChunkRef::new(chunks),
            off: 0,
            rows,
            cols,
            one_d: false,
        }
    }
}

impl Backend for WgpuBackend {
    type Tensor = GpuTensor;

    fn tensor(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        let (rows, cols, one_d) = match shape {
            [c] => (1, *c, true),
            [r, c] => (*r, *c, false),
            _ => {
                return Err(Error::Backend(format!(
                    "tensors are 1-D or 2-D, not {shape:?}"
                )))
            }
        };
        if data.len() != rows * cols {
            return Err(Error::Backend(format!(
                "{} values for shape {shape:?}",
                data.len()
            )));
        }
        self.check_fault()?;
        self.check_size((data.len() * 4) as u64, "a tensor")?;
        let mut t = self.plain(self.upload(bytemuck::cast_slice(data)), rows, cols);
        t.one_d = one_d;
        Ok(t)
    }

    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> Result<GpuTensor> {
        match shape {
            [rows, cols] if data.len() == rows * cols && *rows > 1 => {
                let kind = if self.opts.int8_weights && *cols >= 16 {
                    WeightKind::Q8
                } else if self.opts.f16_weights {
                    WeightKind::F16
                } else {
                    WeightKind::F32
                };
                if kind == WeightKind::F32 && data.len() * 4 <= self.chunk_limit() {
                    return self.tensor(&data, shape);
                }
                Ok(self.store_weight(&data, *rows, *cols, kind))
            }
            _ => self.tensor(&data, shape),
        }
    }

    fn to_vec(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = t;
            Err(Error::Backend(
                "synchronous readback is impossible in a browser: use read_async".into(),
            ))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            pollster::block_on(self.read_async(t))
        }
    }

    fn shape(&self, t: &GpuTensor) -> Vec<usize> {
        if t.one_d {
            vec![t.cols]
        } else {
            vec![t.rows, t.cols]
        }
    }

    fn linear(&self, x: &GpuTensor, w: &GpuTensor, b: Option<&GpuTensor>) -> Result<GpuTensor> {
        let (n, k, m) = (x.rows, x.cols, w.rows);
        if w.cols != k {
            return Err(Error::Backend(format!(
                "linear: input has {k} columns, weight is [{}, {}]",
                w.rows, w.cols
            )));
        }
        let out = self.buffer(n * m, "a linear output")?;
        let xb = x.single()?;
        let (bb, b_off) = match b {
            Some(b) => (b.single()?, b.off),
            None => (xb, 0),
        };
        for c in w.chunks.iter() {
            let w_off = if w.chunks.len() == 1 { w.off } else { 0 };
            let params = [
                n as u32,
                k as u32,
                c.rows as u32,
                x.off as u32,
                w_off as u32,
                0,
                m as u32,
                c.row0 as u32,
                (b_off + c.row0) as u32,
                b.is_some() as u32,
            ];
            let software = self.opts.software_kernels.unwrap_or(self.info.software);
            let (kernel, body, groups) = if n == 1 && k <= shaders::GEMV_ROWS_MAX_K {
                ("gemv_short", shaders::GEMV_SHORT, self.elementwise(c.rows))
            } else if n == 1 && software {
                ("gemv_rows", shaders::GEMV_ROWS, self.elementwise(c.rows))
            } else if n == 1 {
                let (gx, gy) = grid(c.rows.div_ceil(4));
                ("gemv", shaders::GEMV, (gx, gy, 1))
            } else {
                let groups = (c.rows.div_ceil(64) as u32, n.div_ceil(64) as u32, 1);
                if groups.0 > 65_535 || groups.1 > 65_535 {
                    return Err(Error::Backend(format!("linear of {n} rows is too large")));
                }
                ("matmul", shaders::MATMUL, groups)
            };
            let mut entries = vec![(1, xb), (3, bb), (4, &out)];
            entries.extend(c.bindings());
            self.record(
                &format!("{kernel}{}", c.kind.suffix()),
                &|| shaders::weighted(body, c.kind),
                &params,
                &entries,
                groups,
            );
        }
        Ok(self.plain(out, n, m))
    }

    fn rms_norm(&self, x: &GpuTensor, w: &GpuTensor, eps: f64) -> Result<GpuTensor> {
        if w.len() != x.cols {
            return Err(Error::Backend(format!(
                "rms_norm: {} columns, weight of {}",
                x.cols,
                w.len()
            )));
        }
        let out = self.buffer(x.len(), "an rms_norm output")?;
        let (gx, gy) = grid(x.rows);
        self.dispatch(
            "rms_norm",
            shaders::RMS_NORM,
            &[
                x.rows as u32,
                x.cols as u32,
                x.off as u32,
                w.off as u32,
                0,
                (eps as f32).to_bits(),
            ],
            &[x.single()?, w.single()?, &out],
            (gx, gy, 1),
        );
        Ok(self.plain(out, x.rows, x.cols))
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.binary(a, b, 0, "add")
    }

    fn swiglu(&self, gate: &GpuTensor, up: &GpuTensor) -> Result<GpuTensor> {
        self.binary(gate, up, 1, "swiglu")
    }

    fn gelu(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let out = self.buffer(x.len(), "a gelu output")?;
        self.dispatch(
            "gelu",
            shaders::GELU,
            &[x.len() as u32, x.off as u32, 0],
            &[x.single()?, &out],
            self.elementwise(x.len()),
        );
        Ok(self.plain(out, x.rows, x.cols))
    }

    fn rope(
        &self,
        x: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        heads: usize,
    ) -> Result<GpuTensor> {
        let d = cos.cols;
        if heads * d != x.cols || cos.rows != x.rows || sin.len() != cos.len() || d % 2 != 0 {
            return Err(Error::Backend(format!(
                "rope: x [{}, {}], cos [{}, {d}], {heads} heads",
                x.rows, x.cols, cos.rows
            )));
        }
        let out = self.buffer(x.len(), "a rope output")?;
        self.dispatch(
            "rope",
            shaders::ROPE,
            &[
                x.rows as u32,
                heads as u32,
                d as u32,
                x.off as u32,
                cos.off as u32,
                sin.off as u32,
                0,
            ],
            &[x.single()?, cos.single()?, sin.single()?, &out],
            self.elementwise(x.len()),
        );
        Ok(self.plain(out, x.rows, x.cols))
    }

    fn attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        heads: usize,
        kv_heads: usize,
        mask: &Mask,
    ) -> Result<GpuTensor> {
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || q.cols % heads != 0 {
            return Err(Error::Backend(format!(
                "attention: {heads} heads, {kv_heads} kv heads, q width {}",
                q.cols
            )));
        }
        let d = q.cols / heads;
        if d > 256 || k.cols != kv_heads * d || v.cols != k.cols || v.rows != k.rows {
            return Err(Error::Backend(format!(
                "attention: head dim {d} (max 256), k [{}, {}], v [{}, {}]",
                k.rows, k.cols, v.rows, v.cols
            )));
        }
        let (n, m) = (q.rows, k.rows);
        let ranges = self.ranges_buffer(mask, n, m)?;
        let out = self.buffer(q.len(), "an attention output")?;
        let scale = 1.0 / (d as f32).sqrt();
        self.dispatch(
            "attention",
            shaders::ATTENTION,
            &[
                n as u32,
                heads as u32,
                kv_heads as u32,
                d as u32,
                q.off as u32,
                k.off as u32,
                v.off as u32,
                0,
                scale.to_bits(),
            ],
            &[q.single()?, k.single()?, v.single()?, &ranges, &out],
            (
                heads as u32,
                n.min(65_535) as u32,
                n.div_ceil(65_535) as u32,
            ),
        );
        Ok(self.plain(out, n, q.cols))
    }

    fn gather_rows(&self, table: &GpuTensor, ids: &[u32]) -> Result<GpuTensor> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(Error::Backend(format!(
                "gather: row {bad} of a {}-row table",
                table.rows
            )));
        }
        let out = self.buffer(ids.len() * table.cols, "a gather output")?;
        let idb = self.upload(bytemuck::cast_slice(ids));
        let n = ids.len() * table.cols;
        for c in table.chunks.iter() {
            let off = if table.chunks.len() == 1 {
                table.off
            } else {
                0
            };
            let params = [
                ids.len() as u32,
                table.cols as u32,
                off as u32,
                0,
                c.row0 as u32,
                c.rows as u32,
            ];
            let mut entries = vec![(1, &idb), (3, &out)];
            entries.extend(c.bindings());
            self.record(
                &format!("gather{}", c.kind.suffix()),
                &|| shaders::weighted(shaders::GATHER, c.kind),
                &params,
                &entries,
                self.elementwise(n),
            );
        }
        Ok(self.plain(out, ids.len(), table.cols))
    }

    fn cat_rows(&self, parts: &[GpuTensor]) -> Result<GpuTensor> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if parts.iter().any(|p| p.cols != cols) {
            return Err(Error::Backend("cat_rows: column counts differ".into()));
        }
        if let [only] = parts {
            return Ok(only.clone());
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let out = self.buffer(rows * cols, "a concatenation")?;
        let mut at = 0u64;
        for p in parts {
            let src = p.single()?;
            let bytes = (p.len() * 4) as u64;
            if bytes > 0 {
                self.with_encoder(|enc| {
                    enc.copy_buffer_to_buffer(src, (p.off * 4) as u64, &out, at, bytes)
                });
            }
            at += bytes;
        }
        Ok(self.plain(out, rows, cols))
    }

    fn narrow_rows(&self, x: &GpuTensor, start: usize, len: usize) -> Result<GpuTensor> {
        if start + len > x.rows {
            return Err(Error::Backend(format!(
                "narrow_rows {start}+{len} of {} rows",
                x.rows
            )));
        }
        x.single()?;
        Ok(GpuTensor {
            off: x.off + start * x.cols,
            rows: len,
            one_d: false,
            ..x.clone()
        })
    }

    fn reshape(&self, x: &GpuTensor, rows: usize, cols: usize) -> Result<GpuTensor> {
        if rows * cols != x.len() {
            return Err(Error::Backend(format!(
                "reshape [{}, {}] to [{rows}, {cols}]",
                x.rows, x.cols
            )));
        }
        x.single()?;
        Ok(GpuTensor {
            rows,
            cols,
            one_d: false,
            ..x.clone()
        })
    }

    fn append_rows(
        &self,
        buffer: Option<GpuTensor>,
        used: usize,
        new: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let cols = new.cols;
        let need = used + new.rows;
        let buf = match buffer {
            Some(b) if b.rows >= need && b.cols == cols => b,
            old => {
                let cap = (need * 2).max(256).div_ceil(64) * 64;
                let fresh = self.plain(self.buffer(cap * cols, "the KV cache")?, cap, cols);
                if let Some(o) = old.filter(|_| used > 0) {
                    let (src, dst) = (o.single()?, fresh.single()?);
                    let bytes = (used * cols * 4) as u64;
                    self.with_encoder(|enc| {
                        enc.copy_buffer_to_buffer(src, (o.off * 4) as u64, dst, 0, bytes)
                    });
                }
                fresh
            }
        };
        if new.len() > 0 {
            let (src, dst) = (new.single()?, buf.single()?);
            self.with_encoder(|enc| {
                enc.copy_buffer_to_buffer(
                    src,
                    (new.off * 4) as u64,
                    dst,
                    ((buf.off + used * cols) * 4) as u64,
                    (new.len() * 4) as u64,
                )
            });
        }
        let view = GpuTensor {
            rows: need,
            ..buf.clone()
        };
        Ok((buf, view))
    }
}

/// A one-shot channel whose receiver is a future (no executor dependency: works under
/// `pollster` natively and `wasm-bindgen-futures` in browsers).
struct Shared<T> {
    value: Option<T>,
    waker: Option<Waker>,
    closed: bool,
}

struct Sender<T>(Arc<Mutex<Shared<T>>>);
struct Receiver<T>(Arc<Mutex<Shared<T>>>);

fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let s = Arc::new(Mutex::new(Shared {
        value: None,
        waker: None,
        closed: false,
    }));
    (Sender(s.clone()), Receiver(s))
}

impl<T> Sender<T> {
    fn send(self, v: T) {
        if let Ok(mut s) = self.0.lock() {
            s.value = Some(v);
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.closed = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Ok(mut s) = self.0.lock() else {
            return Poll::Ready(None);
        };
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
