//! Recording work: the pipeline cache (keyed by [`Kernel`], explicit bind-group layouts), the
//! uniform buffer of kernel parameters (one slot per distinct parameter block, bound with a
//! dynamic offset; a block is written once and reused by every dispatch with the same
//! parameters, so a decode step writes none), the storage-buffer pool (an output buffer freed by
//! its tensors is reused by the next output of its size), the bind-group cache (keyed by kernel and buffers, which repeat from one
//! decode step to the next once buffers are pooled), the command encoder, uploads, and readback.

use super::kernels::{Access, Kernel, Params};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Dispatches recorded before an intermediate submit.
pub const FLUSH_DISPATCHES: usize = 384;

/// Parameter slots in the uniform buffer: distinct parameter blocks kept for reuse. More than
/// one submit can use (at most [`FLUSH_DISPATCHES`]), so a free slot is always found.
const PARAM_SLOTS: usize = 1024;

/// Work counters since creation (for benchmarks: dispatches and submits per decode step).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Queue submissions.
    pub submits: u64,
    /// Compute passes begun (a copy between dispatches ends the open one).
    pub passes: u64,
    /// Buffer and texture copies recorded in command encoders.
    pub copies: u64,
    /// Bytes uploaded (weights, inputs, parameters).
    pub uploaded_bytes: u64,
    /// Storage buffers created for kernel outputs and per-step inputs (the rest came from the
    /// pool).
    pub output_buffers_created: u64,
    /// Bind groups created (the rest of the dispatches found theirs in the cache).
    pub bind_groups_created: u64,
    /// Parameter blocks written into the uniform buffer (the rest of the dispatches found
    /// theirs already there).
    pub param_blocks_written: u64,
    /// Queue writes of parameter blocks (contiguous new blocks are written together).
    pub param_writes: u64,
    /// f32 weight chunks copied into textures for [`super::kernels::Kernel::GemvTexel`].
    pub texel_weights_made: u64,
}

/// Most bytes the pool keeps in free buffers.
pub const POOL_BYTES: u64 = 128 << 20;

/// Submits a cached bind group survives unused (a decode step is one or two submits).
const KEEP_SUBMITS: u64 = 4;

/// Storage buffers that tensors no longer use, by size, for later outputs and uploads of
/// that size.
///
/// Reuse follows the queue's order. A freed buffer may become a kernel output or a copy
/// destination at once: those commands are recorded after every command that used it. An
/// upload (a queue write, which runs before the commands of the submit it joins) only takes a
/// buffer freed before the last submit, whose uses have all been submitted.
///
/// Each allocation prefers the buffer the allocation at the same place of the previous submit
/// took: a decode step repeats the previous one's allocations, so its dispatches see the same
/// buffers and find their bind groups in the cache.
#[derive(Debug, Default)]
pub(super) struct Pool {
    free: HashMap<u64, Vec<Free>>,
    bytes: u64,
    next_id: u64,
    /// Submits so far (also the age of cached bind groups).
    epoch: u64,
    /// The buffers (ids) allocations took since the last submit, in order, and before it.
    taken: Vec<u64>,
    before: Vec<u64>,
}

/// A free buffer of the pool.
#[derive(Debug)]
struct Free {
    id: u64,
    buf: wgpu::Buffer,
    /// The submit count when it was freed.
    freed: u64,
}

/// Shared handle to a device's pool (held by the buffers that return to it).
pub(super) type PoolRef = super::ChunkRef<Mutex<Pool>>;

impl Pool {
    /// A free buffer of `size` bytes (one freed before the last submit when `upload`), the
    /// previous submit's choice at this place first.
    fn take(&mut self, size: u64, upload: bool) -> Option<(u64, wgpu::Buffer)> {
        let hint = self.before.get(self.taken.len()).copied();
        let epoch = self.epoch;
        let list = self.free.get_mut(&size)?;
        let usable = |f: &Free| !upload || f.freed < epoch;
        let i = list
            .iter()
            .position(|f| Some(f.id) == hint && usable(f))
            .or_else(|| list.iter().rposition(usable))?;
        let f = list.remove(i);
        self.bytes -= size;
        Some((f.id, f.buf))
    }

    /// Notes that the next allocation took buffer `id`.
    fn note(&mut self, id: u64) {
        self.taken.push(id);
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn submitted(&mut self) {
        self.epoch += 1;
        self.before = std::mem::take(&mut self.taken);
    }

    /// Keeps buffer `id` for reuse. When that would pass [`POOL_BYTES`], the largest free
    /// buffers are released first (the intermediates of a long prefill, the parts of weights
    /// fused at load), and a buffer larger than the whole pool is released itself.
    fn give(&mut self, id: u64, buf: wgpu::Buffer) {
        let size = buf.size();
        if size > POOL_BYTES {
            return;
        }
        while self.bytes + size > POOL_BYTES {
            let Some(largest) = self.free.keys().copied().max() else {
                break;
            };
            if let Some(list) = self.free.get_mut(&largest) {
                if list.pop().is_some() {
                    self.bytes -= largest;
                }
                if list.is_empty() {
                    self.free.remove(&largest);
                }
            }
        }
        self.bytes += size;
        let freed = self.epoch;
        self.free
            .entry(size)
            .or_default()
            .push(Free { id, buf, freed });
    }
}

/// A storage buffer that goes back to its pool (if it has one) when dropped.
#[derive(Debug)]
pub(super) struct Pooled {
    buf: wgpu::Buffer,
    home: Option<(PoolRef, u64)>,
}

impl Pooled {
    /// A buffer that is released when dropped (weights).
    pub(super) fn unpooled(buf: wgpu::Buffer) -> Self {
        Self { buf, home: None }
    }
}

impl std::ops::Deref for Pooled {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some((pool, id)) = self.home.take() {
            locked(&pool).give(id, self.buf.clone());
        }
    }
}

/// A multiply-rotate hasher (the Firefox/rustc one) for the per-dispatch cache lookup: its keys
/// are a kernel tag and buffer handles, nothing an attacker chooses, and SipHash's cost per
/// dispatch showed in the decode step's host time.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type BuildFx = std::hash::BuildHasherDefault<Fx>;

/// A cached bind group, its kernel's pipeline, and the submit it was last used in.
struct Bound {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    used: u64,
}

/// Bytes of one kernel's parameters (16 words; every `P` is smaller).
const PARAM_BYTES: u64 = 64;

/// One kernel's parameters, zero-padded to [`PARAM_BYTES`].
type Block = [u32; (PARAM_BYTES / 4) as usize];

/// Which parameter block each slot of the uniform buffer holds, and when it was last used.
///
/// A slot is only given a new block when no dispatch recorded since the last submit uses it:
/// the queue runs a write before the commands of the submit it joins, but after every command
/// submitted earlier, so only unsubmitted readers could see the new bytes.
struct ParamSlots {
    by_block: HashMap<Block, u32, BuildFx>,
    owner: Vec<Option<Block>>,
    /// The submit count (pool epoch) of each slot's last use.
    used: Vec<u64>,
    /// Where the search for a free slot starts.
    cursor: usize,
    /// Slots given new blocks since the last submit (written at submit).
    dirty: Vec<u32>,
}

impl ParamSlots {
    fn new() -> Self {
        Self {
            by_block: HashMap::default(),
            owner: vec![None; PARAM_SLOTS],
            used: vec![0; PARAM_SLOTS],
            cursor: 0,
            dirty: Vec::new(),
        }
    }

    /// The slot holding `block`, given one when none does, marked used in submit `now`.
    fn slot(&mut self, block: &Block, now: u64) -> u32 {
        if let Some(&s) = self.by_block.get(block) {
            self.used[s as usize] = now;
            return s;
        }
        // At most FLUSH_DISPATCHES slots are used since the last submit, fewer than
        // PARAM_SLOTS, so one of the next PARAM_SLOTS is free.
        let n = self.owner.len();
        let free = (0..n)
            .map(|i| (self.cursor + i) % n)
            .find(|&i| self.owner[i].is_none() || self.used[i] < now)
            .unwrap_or(self.cursor);
        if let Some(old) = self.owner[free].take() {
            self.by_block.remove(&old);
        }
        self.owner[free] = Some(*block);
        self.used[free] = now;
        self.by_block.insert(*block, free as u32);
        self.dirty.push(free as u32);
        self.cursor = (free + 1) % n;
        free as u32
    }
}

/// The recording state of one device: compiled pipelines, the parameter pool, the open
/// encoder, counters.
pub(super) struct Recorder {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pipelines: Mutex<HashMap<Kernel, Pipeline>>,
    pending: Mutex<Pending>,
    slots: Mutex<ParamSlots>,
    /// The parameter blocks: [`PARAM_SLOTS`] slots (see [`ParamSlots`]).
    uniforms: wgpu::Buffer,
    /// Bytes per parameter slot (the adapter's uniform offset alignment, at least 64).
    param_slot: u64,
    /// Shared with the block writers of a streaming load, which outlive a borrow of this.
    pub(super) counters: Arc<Mutex<Counters>>,
    /// Freed output and input buffers.
    pool: PoolRef,
    /// Bind groups by kernel and resources (in binding order).
    bind_groups: Mutex<HashMap<(Kernel, Vec<ResKey>), Bound, BuildFx>>,
}

/// A resource bound at one of a kernel's bindings after the parameters.
#[derive(Clone, Copy)]
pub(super) enum Res<'a> {
    /// A storage or uniform buffer, whole.
    Buf(&'a wgpu::Buffer),
    /// A texture view.
    Tex(&'a wgpu::TextureView),
}

impl Res<'_> {
    fn key(&self) -> ResKey {
        match *self {
            Res::Buf(b) => ResKey::Buf(b.clone()),
            Res::Tex(t) => ResKey::Tex(t.clone()),
        }
    }
}

/// [`Res`] held by the bind-group cache.
#[derive(Clone, PartialEq, Eq, Hash)]
enum ResKey {
    Buf(wgpu::Buffer),
    Tex(wgpu::TextureView),
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
}

/// The storage usage of every buffer the kernels read or write.
pub(super) fn usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

impl Recorder {
    /// Recording on `device`, with parameter slots of `uniform_align` bytes (at least
    /// [`PARAM_BYTES`]); the uniform buffer holds [`PARAM_SLOTS`] of them.
    pub(super) fn new(device: wgpu::Device, queue: wgpu::Queue, uniform_align: u32) -> Self {
        let param_slot = u64::from(uniform_align).max(PARAM_BYTES);
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel parameters"),
            size: param_slot * PARAM_SLOTS as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self {
            device,
            queue,
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            slots: Mutex::new(ParamSlots::new()),
            uniforms,
            param_slot,
            counters: Arc::new(Mutex::new(Counters::default())),
            pool: PoolRef::new(Mutex::new(Pool::default())),
            bind_groups: Mutex::new(HashMap::default()),
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
            let ty = match access {
                Access::Read => buffer(wgpu::BufferBindingType::Storage { read_only: true }, false),
                Access::Write => {
                    buffer(wgpu::BufferBindingType::Storage { read_only: false }, false)
                }
                Access::Uniform => buffer(wgpu::BufferBindingType::Uniform, false),
                Access::Texture => wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: false },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
            };
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty,
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

    /// Records one dispatch of `kernel` with `params` (in the slot that holds them, written at
    /// the next submit when new) and the storage `buffers` at the kernel's bindings (in order),
    /// submitting every [`FLUSH_DISPATCHES`] dispatches.
    pub(super) fn dispatch(
        &self,
        kernel: Kernel,
        params: &impl Params,
        resources: &[Res<'_>],
        groups: (u32, u32, u32),
    ) {
        let (pipeline, bind) = self.bound(kernel, resources);
        let mut block: Block = [0; (PARAM_BYTES / 4) as usize];
        for (b, w) in block.iter_mut().zip(params.words()) {
            *b = w;
        }
        self.count(|c| c.dispatches += 1);
        let full = {
            // The slot is chosen and the dispatch recorded under the pending lock, which a
            // submit holds throughout: the slot is marked used in the submit that reads it.
            let mut p = locked(&self.pending);
            let now = locked(&self.pool).epoch;
            let offset = u64::from(locked(&self.slots).slot(&block, now)) * self.param_slot;
            let pass = match p.pass.take() {
                Some(pass) => pass,
                None => {
                    self.count(|c| c.passes += 1);
                    self.encoder(&mut p)
                        .begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: None,
                            timestamp_writes: None,
                        })
                        .forget_lifetime()
                }
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

    /// The pipeline of `kernel` and its bind group over `buffers`: from the cache, or created
    /// and cached.
    fn bound(
        &self,
        kernel: Kernel,
        resources: &[Res<'_>],
    ) -> (wgpu::ComputePipeline, wgpu::BindGroup) {
        let now = locked(&self.pool).epoch;
        let key = (kernel, resources.iter().map(Res::key).collect::<Vec<_>>());
        let mut cache = locked(&self.bind_groups);
        if let Some(b) = cache.get_mut(&key) {
            b.used = now;
            return (b.pipeline.clone(), b.group.clone());
        }
        let (pipeline, layout) = self.pipeline(kernel);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.uniforms,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        for ((binding, _), r) in kernel.bindings().into_iter().zip(resources) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: match r {
                    Res::Buf(b) => b.as_entire_binding(),
                    Res::Tex(t) => wgpu::BindingResource::TextureView(t),
                },
            });
        }
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        self.count(|c| c.bind_groups_created += 1);
        cache.insert(
            key,
            Bound {
                pipeline: pipeline.clone(),
                group: group.clone(),
                used: now,
            },
        );
        (pipeline, group)
    }

    pub(super) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut p = locked(&self.pending);
        // Copies are recorded outside compute passes.
        p.pass = None;
        self.count(|c| c.copies += 1);
        f(self.encoder(&mut p))
    }

    /// The open command encoder, created when there is none.
    fn encoder<'p>(&self, p: &'p mut Pending) -> &'p mut wgpu::CommandEncoder {
        p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        })
    }

    /// Submits recorded work (without waiting): the parameter blocks new since the last submit
    /// are written first (a run of adjacent slots in one write), which the queue orders before
    /// the commands that read them.
    pub fn submit(&self) {
        let mut p = locked(&self.pending);
        p.pass = None;
        self.write_params();
        if let Some(enc) = p.encoder.take() {
            self.queue.submit([enc.finish()]);
            self.count(|c| c.submits += 1);
            let now = {
                let mut pool = locked(&self.pool);
                pool.submitted();
                pool.epoch
            };
            // Bind groups unused for a few submits go: they hold their buffers alive, and
            // those of uploads (token ids, masks) never repeat.
            locked(&self.bind_groups).retain(|_, b| now - b.used <= KEEP_SUBMITS);
        }
        p.dispatches = 0;
    }

    /// Writes the slots given new blocks since the last submit.
    fn write_params(&self) {
        let mut slots = locked(&self.slots);
        if slots.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut slots.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let stride = self.param_slot as usize;
        let (mut blocks, mut writes) = (0, 0);
        let mut bytes = Vec::new();
        for run in dirty.chunk_by(|a, b| b - a == 1) {
            bytes.clear();
            bytes.resize(run.len() * stride, 0);
            for (i, &s) in run.iter().enumerate() {
                if let Some(block) = &slots.owner[s as usize] {
                    for (dst, w) in bytes[i * stride..].chunks_exact_mut(4).zip(block) {
                        dst.copy_from_slice(&w.to_le_bytes());
                    }
                }
            }
            // The last slot's padding beyond its block is not needed.
            let len = (run.len() - 1) * stride + PARAM_BYTES as usize;
            self.queue.write_buffer(
                &self.uniforms,
                u64::from(run[0]) * self.param_slot,
                &bytes[..len],
            );
            blocks += run.len() as u64;
            writes += 1;
        }
        slots.dirty = dirty;
        slots.dirty.clear();
        drop(slots);
        self.count(|c| {
            c.param_blocks_written += blocks;
            c.param_writes += writes;
        });
    }

    /// A storage buffer holding `bytes` (zero-padded to 4-byte multiples). Created empty and
    /// written through the queue: unlike `create_buffer_init`, this cannot panic when the
    /// device is lost (the fault is reported by the next readback instead).
    pub(super) fn upload(&self, bytes: &[u8]) -> wgpu::Buffer {
        let buf = self.empty(bytes.len());
        self.write(&buf, 0, bytes);
        buf
    }

    /// A storage buffer of exactly `size` bytes for a kernel output or a copy destination,
    /// from the pool when it has one (see [`Pool`]). Its contents are undefined.
    pub(super) fn output(&self, size: u64) -> Pooled {
        self.pooled(size, false)
    }

    /// A pooled storage buffer holding `bytes` (zero-padded to 4-byte multiples): for inputs
    /// that are uploaded again and again (token ids, rotary tables, attention ranges).
    pub(super) fn upload_pooled(&self, bytes: &[u8]) -> Pooled {
        let buf = self.pooled((bytes.len().div_ceil(4).max(1) * 4) as u64, true);
        self.write(&buf, 0, bytes);
        buf
    }

    fn pooled(&self, size: u64, upload: bool) -> Pooled {
        let mut pool = locked(&self.pool);
        let (id, buf) = match pool.take(size, upload) {
            Some(found) => found,
            None => {
                self.count(|c| c.output_buffers_created += 1);
                // `size` is a multiple of 4, so the buffer has exactly that size.
                (pool.new_id(), self.empty(size as usize))
            }
        };
        pool.note(id);
        Pooled {
            buf,
            home: Some((self.pool.clone(), id)),
        }
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
