//! Recording work: the pipeline cache (keyed by [`Kernel`], explicit bind-group layouts), the
//! pooled uniform buffer (one slot per dispatch, bound with a dynamic offset, written once per
//! submit), the command encoder, uploads, and readback.

use super::kernels::{Access, Kernel, Params};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Dispatches recorded before an intermediate submit (and parameter slots in the pool).
pub const FLUSH_DISPATCHES: usize = 384;

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

/// Bytes of one kernel's parameters (16 words; every `P` is smaller).
const PARAM_BYTES: u64 = 64;

/// The recording state of one device: compiled pipelines, the parameter pool, the open
/// encoder, counters.
pub(super) struct Recorder {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pipelines: Mutex<HashMap<Kernel, Pipeline>>,
    pending: Mutex<Pending>,
    /// The parameter pool: one slot per recorded dispatch.
    uniforms: wgpu::Buffer,
    /// Bytes per parameter slot (the adapter's uniform offset alignment, at least 64).
    param_slot: u64,
    /// Shared with the block writers of a streaming load, which outlive a borrow of this.
    pub(super) counters: Arc<Mutex<Counters>>,
}

/// A compiled kernel and the layout of its bind group.
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Work recorded but not submitted.
#[derive(Default)]
struct Pending {
    /// The open compute pass: consecutive dispatches share one (wgpu orders them and inserts
    /// the barriers between them); a copy or a submit ends it.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    /// The parameter slots of the recorded dispatches, uploaded into the pool at submit.
    params: Vec<u8>,
}

/// The storage usage of every buffer the kernels read or write.
pub(super) fn usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

impl Recorder {
    /// Recording on `device`, with parameter slots of `uniform_align` bytes (at least
    /// [`PARAM_BYTES`]); the pool holds [`FLUSH_DISPATCHES`] of them.
    pub(super) fn new(device: wgpu::Device, queue: wgpu::Queue, uniform_align: u32) -> Self {
        let param_slot = u64::from(uniform_align).max(PARAM_BYTES);
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel parameters"),
            size: param_slot * FLUSH_DISPATCHES as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self {
            device,
            queue,
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            uniforms,
            param_slot,
            counters: Arc::new(Mutex::new(Counters::default())),
        }
    }

    /// Work done so far.
    pub(super) fn counters(&self) -> Counters {
        *locked(&self.counters)
    }

    pub(super) fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut locked(&self.counters));
    }

    /// The pipeline of `kernel`, compiled on first use.
    fn pipeline(&self, kernel: Kernel) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
        if let Some(p) = locked(&self.pipelines).get(&kernel) {
            return (p.pipeline.clone(), p.layout.clone());
        }
        let label = Some(kernel.label());
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label,
                source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
            });
        let buffer = |ty, has_dynamic_offset| wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset,
            min_binding_size: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: buffer(wgpu::BufferBindingType::Uniform, true),
            count: None,
        }];
        for (binding, access) in kernel.bindings() {
            let read_only = access == Access::Read;
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: buffer(wgpu::BufferBindingType::Storage { read_only }, false),
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label,
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label,
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label,
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        let p = Pipeline { pipeline, layout };
        let out = (p.pipeline.clone(), p.layout.clone());
        locked(&self.pipelines).insert(kernel, p);
        out
    }

    /// Records one dispatch of `kernel` with `params` in the next pool slot and the storage
    /// `buffers` at the kernel's bindings (in order), submitting when the pool is full.
    pub(super) fn dispatch(
        &self,
        kernel: Kernel,
        params: &impl Params,
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) {
        let (pipeline, layout) = self.pipeline(kernel);
        let offset = {
            let mut p = locked(&self.pending);
            let offset = p.params.len();
            let mut words = params.words();
            words.resize((self.param_slot / 4) as usize, 0);
            p.params.extend(words.iter().flat_map(|w| w.to_le_bytes()));
            offset
        };
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.uniforms,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        for ((binding, _), b) in kernel.bindings().into_iter().zip(buffers) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            });
        }
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        self.count(|c| c.dispatches += 1);
        let full = {
            let mut p = locked(&self.pending);
            let pass = match p.pass.take() {
                Some(pass) => pass,
                None => self
                    .encoder(&mut p)
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: None,
                    })
                    .forget_lifetime(),
            };
            let pass = p.pass.insert(pass);
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[offset as u32]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
            p.dispatches += 1;
            p.dispatches >= FLUSH_DISPATCHES
        };
        if full {
            self.submit();
        }
    }

    pub(super) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut p = locked(&self.pending);
        // Copies are recorded outside compute passes.
        p.pass = None;
        f(self.encoder(&mut p))
    }

    /// The open command encoder, created when there is none.
    fn encoder<'p>(&self, p: &'p mut Pending) -> &'p mut wgpu::CommandEncoder {
        p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        })
    }

    /// Submits recorded work (without waiting): the parameter slots are written into the pool
    /// first, in one write, which the queue orders before the commands that read them.
    pub fn submit(&self) {
        let mut p = locked(&self.pending);
        p.pass = None;
        if !p.params.is_empty() {
            self.queue.write_buffer(&self.uniforms, 0, &p.params);
            p.params.clear();
        }
        if let Some(enc) = p.encoder.take() {
            self.queue.submit([enc.finish()]);
            self.count(|c| c.submits += 1);
        }
        p.dispatches = 0;
    }

    /// A storage buffer holding `bytes` (zero-padded to 4-byte multiples). Created empty and
    /// written through the queue: unlike `create_buffer_init`, this cannot panic when the
    /// device is lost (the fault is reported by the next readback instead).
    pub(super) fn upload(&self, bytes: &[u8]) -> wgpu::Buffer {
        let buf = self.empty(bytes.len());
        self.write(&buf, 0, bytes);
        buf
    }

    /// An uninitialised storage buffer of at least `bytes` bytes (a multiple of 4).
    pub(super) fn empty(&self, bytes: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (bytes.div_ceil(4).max(1) * 4) as u64,
            usage: usage(),
            mapped_at_creation: false,
        })
    }

    /// Writes `bytes` at byte `offset` (a multiple of 4) of `buf`, a ragged tail zero-padded to
    /// 4 bytes. In pieces of at most [`WRITE_PIECE`] bytes: in a browser every write is copied
    /// into a JS array first, so a whole embedding written at once would spike the JS heap.
    pub(super) fn write(&self, buf: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        write_to(&self.queue, &self.counters, buf, offset, bytes);
    }
}

/// Largest single queue write, in bytes (a multiple of 4).
pub const WRITE_PIECE: usize = 16 << 20;

/// [`Recorder::write`] on a queue and counters (for writers that outlive a borrow of the
/// backend).
pub(super) fn write_to(
    queue: &wgpu::Queue,
    counters: &Mutex<Counters>,
    buf: &wgpu::Buffer,
    offset: u64,
    bytes: &[u8],
) {
    locked(counters).uploaded_bytes += bytes.len() as u64;
    let whole = bytes.len() / 4 * 4;
    for (i, piece) in bytes[..whole].chunks(WRITE_PIECE).enumerate() {
        queue.write_buffer(buf, offset + (i * WRITE_PIECE) as u64, piece);
    }
    if whole < bytes.len() {
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        queue.write_buffer(buf, offset + whole as u64, &tail);
    }
}

/// A one-shot channel whose receiver is a future (no executor dependency: works under
/// `pollster` natively and `wasm-bindgen-futures` in browsers).
struct Shared<T> {
    value: Option<T>,
    waker: Option<Waker>,
    closed: bool,
}

pub(super) struct Sender<T>(Arc<Mutex<Shared<T>>>);
pub(super) struct Receiver<T>(Arc<Mutex<Shared<T>>>);

pub(super) fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let s = Arc::new(Mutex::new(Shared {
        value: None,
        waker: None,
        closed: false,
    }));
    (Sender(s.clone()), Receiver(s))
}

impl<T> Sender<T> {
    pub(super) fn send(self, v: T) {
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

/// Locks one of the executor's own mutexes (they make it `Sync`, so one model can serve several
/// threads). A panic while one was held left nothing half-written that matters (a cache entry,
/// counters), so a poisoned lock is used as it is.
pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
