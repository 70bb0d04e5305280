//! The [`Backend`] operations of the WebGPU executor: shape checks, then one typed dispatch
//! (or a copy) per operation; weights stored per [`WeightStorage`] and split into row chunks.

use super::kernels::{
    AttentionP, BinaryOp, BinaryP, GatherP, GeluP, Kernel, LinearP, RmsNormP, RopeAppendP, RopeP,
    WeightLayout, WeightStorage, GEMV_SHORT_MAX_K, TEXEL_WIDTH, X_UNIFORM_VEC4,
};
use super::record::{Pooled, Res};
use super::{grid, Chunk, ChunkRef, GpuTensor, WgpuBackend};
use crate::backend::{Backend, Mask, RopeAppended};
use crate::error::{Error, Result};

/// What a linear kernel does besides `x · wᵀ + b`.
#[derive(Debug, Clone, Copy, Default)]
struct Extra<'a> {
    /// Added to every output (laid out like it).
    residual: Option<&'a GpuTensor>,
    /// Non-zero: the input is SwiGLU's `silu(x[i]) * x[i + glu]` (one row only).
    glu: usize,
}

impl WgpuBackend {
    fn ranges_buffer(&self, mask: &Mask, n: usize, m: usize) -> Result<wgpu::Buffer> {
        if let Some((mk, nn, mm, buf)) = super::record::locked(&self.ranges).as_ref() {
            if mk == mask && *nn == n && *mm == m {
                return Ok((**buf).clone());
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
        let buf = self.rec.upload_pooled(bytemuck::cast_slice(&r));
        let out = (*buf).clone();
        *super::record::locked(&self.ranges) = Some((mask.clone(), n, m, buf));
        Ok(out)
    }

    /// A KV cache buffer of `cols` columns with room for `need` rows: `buffer` when it has it,
    /// else a new one (twice what is needed, at least 256 rows) holding a copy of its first
    /// `used` rows.
    fn cache_with_room(
        &self,
        buffer: Option<GpuTensor>,
        used: usize,
        need: usize,
        cols: usize,
    ) -> Result<GpuTensor> {
        Ok(match buffer {
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
        })
    }

    /// Whether the barrier-free kernels of software adapters run (`WgpuOptions::software_kernels`).
    fn software_kernels(&self) -> bool {
        self.opts.software_kernels.unwrap_or(self.info.software)
    }

    /// Whether one-row products over f32 weights read them from textures
    /// (`WgpuOptions::texel_weights`), where the adapter's limits allow.
    fn texel_weights(&self) -> bool {
        self.opts.texel_weights.unwrap_or(self.software_kernels())
            && self.info.max_texture_2d >= TEXEL_WIDTH
            && self.info.max_uniform_binding >= u64::from(X_UNIFORM_VEC4) * 16
    }

    /// The texels of an f32 chunk, copied from its buffer on the GPU on first use; `None` when
    /// they would need more texture rows than the adapter allows.
    fn texels<'c>(&self, c: &'c Chunk) -> Option<&'c wgpu::TextureView> {
        c.texels
            .get_or_init(|| {
                let texels = c.buf.size() / 16;
                let width = u64::from(TEXEL_WIDTH);
                let height = texels.div_ceil(width);
                if texels == 0 || height > u64::from(self.info.max_texture_2d) {
                    return None;
                }
                let texture = self.rec.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("f32 weight texels"),
                    size: wgpu::Extent3d {
                        width: TEXEL_WIDTH,
                        height: height as u32,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba32Float,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                // Whole texture rows, then the last, partial one.
                let (full, rest) = (texels / width, texels % width);
                self.with_encoder(|e| {
                    let mut copy = |row: u64, extent: (u64, u64)| {
                        e.copy_buffer_to_texture(
                            wgpu::TexelCopyBufferInfo {
                                buffer: &c.buf,
                                layout: wgpu::TexelCopyBufferLayout {
                                    offset: row * width * 16,
                                    bytes_per_row: Some(TEXEL_WIDTH * 16),
                                    rows_per_image: None,
                                },
                            },
                            wgpu::TexelCopyTextureInfo {
                                texture: &texture,
                                mip_level: 0,
                                origin: wgpu::Origin3d {
                                    x: 0,
                                    y: row as u32,
                                    z: 0,
                                },
                                aspect: wgpu::TextureAspect::All,
                            },
                            wgpu::Extent3d {
                                width: extent.0 as u32,
                                height: extent.1 as u32,
                                depth_or_array_layers: 1,
                            },
                        )
                    };
                    if full > 0 {
                        copy(0, (width, full));
                    }
                    if rest > 0 {
                        copy(full, (rest, 1));
                    }
                });
                self.rec.count(|n| n.texel_weights_made += 1);
                Some(texture.create_view(&wgpu::TextureViewDescriptor::default()))
            })
            .as_ref()
    }

    /// Whether the tiled matmul over weights of `kind` computes in f16 (`WgpuOptions::f16_math`).
    fn f16_math(&self, kind: WeightLayout) -> bool {
        self.info.shader_f16
            && match self.opts.f16_math {
                Some(on) => on,
                None => !self.info.software && (kind.is_blocks() || kind == WeightLayout::F16),
            }
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

    fn binary(&self, a: &GpuTensor, b: &GpuTensor, op: BinaryOp, what: &str) -> Result<GpuTensor> {
        self.same_shape(a, b, what)?;
        let out = self.buffer(a.len(), what)?;
        let params = BinaryP {
            n: a.len() as u32,
            a_off: a.off as u32,
            b_off: b.off as u32,
            mode: op as u32,
        };
        self.dispatch(
            Kernel::Binary,
            &params,
            &[a.single()?, b.single()?, &out],
            self.elementwise(a.len()),
        );
        Ok(self.plain(out, a.rows, a.cols))
    }

    /// Uploads a `[rows, cols]` weight in `kind` storage, split into row chunks that fit the
    /// binding limit. int8 uses a per-row absmax scale; f16 rounds to nearest even.
    fn store_weight(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        kind: WeightStorage,
    ) -> GpuTensor {
        let elem_bytes = kind.bytes();
        let max_rows = (self.chunk_limit() / (cols * elem_bytes).max(1))
            .max(1)
            .min(rows.max(1));
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = max_rows.min(rows - row0);
            let part = &data[row0 * cols..(row0 + n) * cols];
            let (buf, scales) = match kind {
                WeightStorage::F32 => (self.upload(bytemuck::cast_slice(part)), None),
                WeightStorage::F16 => {
                    let h: Vec<u16> = part
                        .iter()
                        .map(|v| half::f16::from_f32(*v).to_bits())
                        .collect();
                    (self.upload(bytemuck::cast_slice(&h)), None)
                }
                WeightStorage::Int8 => {
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
                buf: Pooled::unpooled(buf),
                row0,
                rows: n,
                kind: kind.into(),
                scales,
                texels: Default::default(),
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

    /// Uploads GGUF blocks as stored, split into row chunks of whole rows that fit the binding
    /// limit: the kernels read them in place. The matrix given at once to a [`BlockWriter`].
    fn store_blocks(
        &self,
        name: &str,
        bytes: &[u8],
        shape: [usize; 2],
        ty: visionthink_core::gguf::GgmlType,
    ) -> Result<GpuTensor> {
        let [rows, cols] = shape;
        let whole = ty
            .bytes_for(cols as u64, cols as u64)
            .is_some_and(|b| rows as u64 * b == bytes.len() as u64);
        if !whole {
            return Err(Error::Input(format!(
                "{name}: {} bytes are not {rows} rows of {cols} {} values",
                bytes.len(),
                ty.name()
            )));
        }
        let mut w = self.block_writer(name, ty, shape)?.ok_or_else(|| {
            Error::Config(format!(
                "{name}: the WebGPU kernels do not read {} blocks",
                ty.name()
            ))
        })?;
        crate::backend::QuantWriter::write(&mut w, bytes)?;
        crate::backend::QuantWriter::finish(Box::new(w))
    }

    /// `x · wᵀ + b`, plus what `extra` asks for, one dispatch per weight chunk.
    fn linear_with(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: Option<&GpuTensor>,
        extra: Extra<'_>,
    ) -> Result<GpuTensor> {
        let (n, k, m) = (x.rows, x.cols, w.rows);
        if w.cols != k {
            return Err(Error::Backend(format!(
                "linear: input has {k} columns, weight is [{}, {}]",
                w.rows, w.cols
            )));
        }
        if extra.glu != 0 && n != 1 {
            return Err(Error::Backend(
                "linear: SwiGLU input is read by the one-row kernels only".into(),
            ));
        }
        let residual = match extra.residual {
            Some(r) if r.rows != n || r.cols != m => {
                return Err(Error::Backend(format!(
                    "linear: residual [{}, {}] for an output [{n}, {m}]",
                    r.rows, r.cols
                )))
            }
            Some(r) => Some((r.single()?, r.off)),
            None => None,
        };
        let out = self.buffer(n * m, "a linear output")?;
        let xb = x.single()?;
        let (bb, b_off) = match b {
            Some(b) => (b.single()?, b.off),
            None => (xb, 0),
        };
        let software = self.software_kernels();
        // A chunk's parameters and rows (a one-chunk weight may be a view, a part of fused
        // rows: its own offset and rows).
        let chunk_params = |c: &Chunk| {
            let (w_off, rows, row0) = match w.chunks.len() {
                1 => (w.off, w.rows, 0),
                _ => (0, c.rows, c.row0),
            };
            let params = LinearP {
                n: n as u32,
                k: k as u32,
                m: rows as u32,
                x_off: x.off as u32,
                w_off: w_off as u32,
                o_stride: m as u32,
                o_col: row0 as u32,
                b_off: (b_off + row0) as u32,
                has_b: b.is_some() as u32,
                glu: extra.glu as u32,
                has_r: residual.is_some() as u32,
                r_off: residual.map_or(0, |(_, off)| off as u32),
            };
            (params, rows)
        };
        let resid = residual.map_or(xb, |(r, _)| r);
        if self.linear_texels(x, w, extra.glu, &chunk_params, [xb, bb, &out, resid]) {
            return Ok(self.plain(out, n, m));
        }
        for c in w.chunks.iter() {
            let (params, rows) = chunk_params(c);
            let (kernel, groups) = if n == 1 && software {
                (Kernel::GemvRows(c.kind), self.elementwise(rows.div_ceil(4)))
            } else if n == 1 && c.kind.is_blocks() {
                let (gx, gy) = grid(rows.div_ceil(4));
                (Kernel::GemvBlocks(c.kind), (gx, gy, 1))
            } else if n == 1 && k <= GEMV_SHORT_MAX_K {
                (Kernel::GemvShort(c.kind), self.elementwise(rows))
            } else if n == 1 {
                let (gx, gy) = grid(rows.div_ceil(4));
                (Kernel::Gemv(c.kind), (gx, gy, 1))
            } else if software {
                (
                    Kernel::MatmulRows(c.kind),
                    self.elementwise(n.div_ceil(8) * rows.div_ceil(4)),
                )
            } else {
                let groups = (rows.div_ceil(64) as u32, n.div_ceil(64) as u32, 1);
                if groups.0 > 65_535 || groups.1 > 65_535 {
                    return Err(Error::Backend(format!("linear of {n} rows is too large")));
                }
                if self.f16_math(c.kind) {
                    (Kernel::MatmulF16(c.kind), groups)
                } else {
                    (Kernel::Matmul(c.kind), groups)
                }
            };
            let mut buffers = vec![xb, &c.buf, bb, &out];
            buffers.extend(&c.scales);
            buffers.push(resid);
            self.dispatch(kernel, &params, &buffers, groups);
        }
        Ok(self.plain(out, n, m))
    }

    /// [`Self::linear_with`] on the texel kernels, when `texel_weights` is on and they can read
    /// this product (f32 weights whose texels fit a texture, rows a multiple of 4 long): the
    /// input rows go through the uniform buffer in blocks of as many rows as it holds, each
    /// block one copy then one dispatch per weight chunk ([`Kernel::GemvTexel`] for one row,
    /// [`Kernel::MatmulTexel`] for more). `false`, with nothing recorded, when they cannot.
    fn linear_texels(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        glu: usize,
        chunk_params: &dyn Fn(&Chunk) -> (LinearP, usize),
        [xb, bb, out, resid]: [&wgpu::Buffer; 4],
    ) -> bool {
        let (n, k, m) = (x.rows, x.cols, w.rows);
        // Values of one input row the kernels read (SwiGLU's two halves for one row).
        let span = glu + k;
        let block = X_UNIFORM_VEC4 as usize * 4 / span.max(1);
        if !self.texel_weights()
            || k % 4 != 0
            || glu % 4 != 0
            || block == 0
            || !w.chunks.iter().all(|c| c.kind == WeightLayout::F32)
            || (w.chunks.len() == 1 && w.off % 4 != 0)
        {
            return false;
        }
        let mut texels = Vec::with_capacity(w.chunks.len());
        for c in w.chunks.iter() {
            match self.texels(c) {
                Some(t) => texels.push(t),
                None => return false,
            }
        }
        for r0 in (0..n).step_by(block) {
            let nb = block.min(n - r0);
            let values = if n == 1 { span } else { nb * k };
            self.with_encoder(|e| {
                e.copy_buffer_to_buffer(
                    xb,
                    ((x.off + r0 * k) * 4) as u64,
                    &self.x_uniform,
                    0,
                    (values * 4) as u64,
                )
            });
            for (c, t) in w.chunks.iter().zip(&texels) {
                let (mut params, rows) = chunk_params(c);
                params.n = nb as u32;
                params.o_col += (r0 * m) as u32;
                let (kernel, groups) = if n == 1 {
                    (Kernel::GemvTexel, self.elementwise(rows.div_ceil(4)))
                } else {
                    (
                        Kernel::MatmulTexel,
                        self.elementwise(rows.div_ceil(8) * nb.div_ceil(4)),
                    )
                };
                self.rec.dispatch(
                    kernel,
                    &params,
                    &[
                        Res::Buf(xb),
                        Res::Tex(t),
                        Res::Buf(bb),
                        Res::Buf(out),
                        Res::Buf(resid),
                        Res::Buf(&self.x_uniform),
                    ],
                    groups,
                );
            }
        }
        true
    }

    /// [`Backend::fuse_rows`]: the parts copied one after another into one buffer (on the GPU),
    /// each then a view into it. For f32 and f16 tensors in one buffer each, and for matrices
    /// of GGUF blocks of one layout and row length (whose kernels address a value by its index,
    /// so a view starting at a whole row reads its blocks in place), when the whole fits one
    /// binding. Not int8, whose per-row scales the views would not follow, nor chunked weights.
    fn fuse_parts(&self, parts: &[&GpuTensor]) -> Result<crate::backend::FusedRows<GpuTensor>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let kind = match first.chunks.as_slice() {
            [c] => c.kind,
            _ => return Ok(None),
        };
        // Not int8, whose per-row scales the views would not follow.
        let Some(ty) = kind.ggml() else {
            return Ok(None);
        };
        // Bytes of `values` values (a whole number of blocks, for the block layouts).
        let bytes_of = |values: usize| values / ty.block_size() * ty.block_bytes();
        // Blocks: whole rows of whole blocks, each part's bytes starting and ending on a word
        // (the copy's alignment).
        let blocks_fit = !kind.is_blocks()
            || (!first.one_d
                && first.cols % ty.block_size() == 0
                && parts.iter().all(|t| {
                    t.off % t.cols.max(1) == 0
                        && bytes_of(t.off) % 4 == 0
                        && bytes_of(t.len()) % 4 == 0
                }));
        // f16: two values per u32, so every part starts and ends on a whole word.
        let align = if kind == WeightLayout::F16 { 2 } else { 1 };
        let fits = |t: &&GpuTensor| {
            matches!(t.chunks.as_slice(), [c] if c.kind == kind && c.scales.is_none())
                && t.one_d == first.one_d
                && (t.one_d || t.cols == first.cols)
                && t.off % align == 0
                && t.len() % align == 0
        };
        if !blocks_fit || parts.len() < 2 || !parts.iter().all(fits) {
            return Ok(None);
        }
        let total: usize = parts.iter().map(|t| t.len()).sum();
        if bytes_of(total) > self.chunk_limit() {
            return Ok(None);
        }
        self.fault.check()?;
        let buf = self.rec.empty(bytes_of(total));
        let mut at = 0;
        for t in parts {
            let src = &t.chunks[0].buf;
            let (from, to, bytes) = (bytes_of(t.off), bytes_of(at), bytes_of(t.len()));
            if bytes > 0 {
                self.with_encoder(|enc| {
                    enc.copy_buffer_to_buffer(src, from as u64, &buf, to as u64, bytes as u64)
                });
            }
            at += t.len();
        }
        let (rows, cols) = if first.one_d {
            (1, total)
        } else {
            (total / first.cols.max(1), first.cols)
        };
        let whole = GpuTensor {
            chunks: ChunkRef::new(vec![Chunk {
                buf: Pooled::unpooled(buf),
                row0: 0,
                rows,
                kind,
                scales: None,
                texels: Default::default(),
            }]),
            off: 0,
            rows,
            cols,
            one_d: first.one_d,
        };
        let mut at = 0;
        let views = parts
            .iter()
            .map(|t| {
                let v = GpuTensor {
                    off: at,
                    rows: t.rows,
                    cols: t.cols,
                    one_d: t.one_d,
                    ..whole.clone()
                };
                at += t.len();
                v
            })
            .collect();
        Ok(Some((whole, views)))
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
        self.fault.check()?;
        self.check_size((data.len() * 4) as u64, "a tensor")?;
        let mut t = self.plain(
            self.rec.upload_pooled(bytemuck::cast_slice(data)),
            rows,
            cols,
        );
        t.one_d = one_d;
        Ok(t)
    }

    fn weight(&self, data: Vec<f32>, shape: &[usize]) -> Result<GpuTensor> {
        match shape {
            [rows, cols] if data.len() == rows * cols && *rows > 1 => {
                // int8 rows need at least 16 values for a meaningful per-row scale.
                let kind = match self.opts.weights {
                    WeightStorage::Int8 if *cols < 16 => WeightStorage::F32,
                    w => w,
                };
                if kind == WeightStorage::F32 && data.len() * 4 <= self.chunk_limit() {
                    return self.tensor(&data, shape);
                }
                Ok(self.store_weight(&data, *rows, *cols, kind))
            }
            _ => self.tensor(&data, shape),
        }
    }

    fn takes_quantized(&self, ty: visionthink_core::gguf::GgmlType) -> bool {
        use visionthink_core::gguf::GgmlType;
        ty == GgmlType::Q5_0 || WeightLayout::of_gguf(ty).is_some()
    }

    fn quantized_weight(&self, q: &crate::gguf::QuantView<'_>) -> Result<GpuTensor> {
        use visionthink_core::gguf::GgmlType;
        if q.ty == GgmlType::Q5_0 {
            // Exact (the same dequantized values), onto the Q8_0 kernels.
            let q8 = crate::gguf::q5_0_as_q8_0(q.bytes)?;
            return self.store_blocks(q.name, &q8, q.shape, GgmlType::Q8_0);
        }
        self.store_blocks(q.name, q.bytes, q.shape, q.ty)
    }

    fn quantized_writer(
        &self,
        name: &str,
        ty: visionthink_core::gguf::GgmlType,
        shape: [usize; 2],
    ) -> Result<Option<Box<dyn crate::backend::QuantWriter<GpuTensor>>>> {
        Ok(self
            .block_writer(name, ty, shape)?
            .map(|w| Box::new(w) as Box<dyn crate::backend::QuantWriter<GpuTensor>>))
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
        self.linear_with(x, w, b, Extra::default())
    }

    fn linear_add(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: Option<&GpuTensor>,
        residual: &GpuTensor,
    ) -> Result<GpuTensor> {
        let extra = Extra {
            residual: Some(residual),
            glu: 0,
        };
        self.linear_with(x, w, b, extra)
    }

    fn swiglu_linear_add(
        &self,
        gate: &GpuTensor,
        up: &GpuTensor,
        w: &GpuTensor,
        b: Option<&GpuTensor>,
        residual: &GpuTensor,
    ) -> Result<GpuTensor> {
        // One row whose up half follows its gate half in the same buffer (a fused gate/up
        // product): SwiGLU is applied as the product reads its input.
        let same_buffer = match (gate.single(), up.single()) {
            (Ok(g), Ok(u)) => g == u,
            _ => false,
        };
        if same_buffer
            && gate.rows == 1
            && up.rows == 1
            && gate.cols == up.cols
            && up.off > gate.off
        {
            let extra = Extra {
                residual: Some(residual),
                glu: up.off - gate.off,
            };
            return self.linear_with(gate, w, b, extra);
        }
        let m = self.swiglu(gate, up)?;
        self.linear_add(&m, w, b, residual)
    }

    fn fuse_rows(&self, parts: &[&GpuTensor]) -> Result<crate::backend::FusedRows<GpuTensor>> {
        self.fuse_parts(parts)
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
        let params = RmsNormP {
            rows: x.rows as u32,
            cols: x.cols as u32,
            x_off: x.off as u32,
            w_off: w.off as u32,
            eps: eps as f32,
        };
        self.dispatch(
            Kernel::RmsNorm,
            &params,
            &[x.single()?, w.single()?, &out],
            (gx, gy, 1),
        );
        Ok(self.plain(out, x.rows, x.cols))
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.binary(a, b, BinaryOp::Add, "add")
    }

    fn swiglu(&self, gate: &GpuTensor, up: &GpuTensor) -> Result<GpuTensor> {
        self.binary(gate, up, BinaryOp::Swiglu, "swiglu")
    }

    fn gelu(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let out = self.buffer(x.len(), "a gelu output")?;
        let params = GeluP {
            n: x.len() as u32,
            a_off: x.off as u32,
        };
        self.dispatch(
            Kernel::Gelu,
            &params,
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
        let params = RopeP {
            n: x.rows as u32,
            heads: heads as u32,
            d: d as u32,
            x_off: x.off as u32,
            c_off: cos.off as u32,
            s_off: sin.off as u32,
        };
        self.dispatch(
            Kernel::Rope,
            &params,
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
        let params = AttentionP {
            n: n as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            d: d as u32,
            q_off: q.off as u32,
            k_off: k.off as u32,
            v_off: v.off as u32,
            scale,
        };
        let buffers = [q.single()?, k.single()?, v.single()?, &ranges, &out];
        if self.software_kernels() {
            let (gx, gy) = grid((n * heads).div_ceil(64));
            self.dispatch(Kernel::AttentionRows, &params, &buffers, (gx, gy, 1));
        } else {
            let groups = (
                heads as u32,
                n.min(65_535) as u32,
                n.div_ceil(65_535) as u32,
            );
            self.dispatch(Kernel::Attention, &params, &buffers, groups);
        }
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
        let idb = self.rec.upload_pooled(bytemuck::cast_slice(ids));
        let n = ids.len() * table.cols;
        for c in table.chunks.iter() {
            let off = if table.chunks.len() == 1 {
                table.off
            } else {
                0
            };
            let params = GatherP {
                n: ids.len() as u32,
                cols: table.cols as u32,
                t_off: off as u32,
                row0: c.row0 as u32,
                rows: c.rows as u32,
            };
            let mut buffers: Vec<&wgpu::Buffer> = vec![&idb, &c.buf, &out];
            buffers.extend(&c.scales);
            self.dispatch(
                Kernel::Gather(c.kind),
                &params,
                &buffers,
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
        let buf = self.cache_with_room(buffer, used, need, cols)?;
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

    fn rope_append(
        &self,
        qkv: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        (heads, kv_heads): (usize, usize),
        k_cache: &mut Option<GpuTensor>,
        v_cache: &mut Option<GpuTensor>,
        used: usize,
    ) -> Result<Option<RopeAppended<GpuTensor>>> {
        if !self
            .opts
            .rope_append
            .unwrap_or(!cfg!(target_arch = "wasm32"))
        {
            return Ok(None);
        }
        let (n, d) = (qkv.rows, cos.cols);
        let (qw, kw) = (heads * d, kv_heads * d);
        if qw + 2 * kw != qkv.cols
            || cos.rows != n
            || sin.len() != cos.len()
            || d % 2 != 0
            || heads == 0
            || kv_heads == 0
        {
            return Err(Error::Backend(format!(
                "rope_append: qkv [{n}, {}], cos [{}, {d}], {heads} heads, {kv_heads} kv heads",
                qkv.cols, cos.rows
            )));
        }
        let need = used + n;
        // The rows' cache positions come from the attention ranges (uploaded per step, and
        // reused by the attention that follows), not the parameters, so a decode step writes
        // no parameter block.
        let ranges = self.ranges_buffer(&Mask::Causal { past: used }, n, need)?;
        let kb = self.cache_with_room(k_cache.take(), used, need, kw)?;
        *k_cache = Some(kb.clone());
        let vb = self.cache_with_room(v_cache.take(), used, need, kw)?;
        *v_cache = Some(vb.clone());
        let q = self.buffer(n * qw, "a rope_append output")?;
        let params = RopeAppendP {
            n: n as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            d: d as u32,
            x_off: qkv.off as u32,
            c_off: cos.off as u32,
            s_off: sin.off as u32,
            k_off: kb.off as u32,
            v_off: vb.off as u32,
        };
        self.dispatch(
            Kernel::RopeAppend,
            &params,
            &[
                qkv.single()?,
                cos.single()?,
                sin.single()?,
                &q,
                kb.single()?,
                vb.single()?,
                &ranges,
            ],
            self.elementwise(qkv.len()),
        );
        let view = |b: GpuTensor| GpuTensor { rows: need, ..b };
        Ok(Some((self.plain(q, n, qw), view(kb), view(vb))))
    }
}

/// Bytes a [`BlockWriter`] gathers before writing them to the GPU.
const STAGE_BYTES: usize = 8 << 20;

/// GGUF blocks written into their GPU row chunks as they arrive (a streaming load): at most
/// [`STAGE_BYTES`] are held at a time, never the matrix.
pub(super) struct BlockWriter {
    queue: wgpu::Queue,
    counters: std::sync::Arc<std::sync::Mutex<super::Counters>>,
    fault: super::device::Fault,
    name: String,
    chunks: Vec<Chunk>,
    row_bytes: usize,
    rows: usize,
    cols: usize,
    /// The chunk being written, the bytes already written to it, and those staged for it.
    chunk: usize,
    at: usize,
    stage: Vec<u8>,
}

impl BlockWriter {
    fn chunk_bytes(&self) -> usize {
        self.chunks
            .get(self.chunk)
            .map_or(0, |c| c.rows * self.row_bytes)
    }

    /// Writes the staged bytes whose length is a multiple of 4 (all of them, zero-padded, at
    /// the end of a chunk).
    fn flush(&mut self, end: bool) {
        let n = if end {
            self.stage.len()
        } else {
            self.stage.len() / 4 * 4
        };
        if let Some(c) = self.chunks.get(self.chunk) {
            super::record::write_to(
                &self.queue,
                &self.counters,
                &c.buf,
                self.at as u64,
                &self.stage[..n],
            );
        }
        self.at += n;
        self.stage.drain(..n);
    }
}

impl crate::backend::QuantWriter<GpuTensor> for BlockWriter {
    fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let left = self.chunk_bytes() - self.at - self.stage.len();
            if left == 0 {
                return Err(Error::Input(format!(
                    "{}: more bytes than {} rows of {} values",
                    self.name, self.rows, self.cols
                )));
            }
            let take = left.min(bytes.len());
            if self.stage.is_empty() && take == left {
                // The rest of the chunk is at hand (a whole matrix given at once): no copy.
                if let Some(c) = self.chunks.get(self.chunk) {
                    let (queue, counters) = (&self.queue, &self.counters);
                    super::record::write_to(
                        queue,
                        counters,
                        &c.buf,
                        self.at as u64,
                        &bytes[..take],
                    );
                }
                bytes = &bytes[take..];
                self.chunk += 1;
                self.at = 0;
                continue;
            }
            self.stage.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if take == left {
                self.flush(true);
                self.chunk += 1;
                self.at = 0;
            } else if self.stage.len() >= STAGE_BYTES {
                self.flush(false);
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<GpuTensor> {
        if self.chunk < self.chunks.len() {
            return Err(Error::Input(format!(
                "{}: ended inside row chunk {} of {}",
                self.name,
                self.chunk + 1,
                self.chunks.len()
            )));
        }
        self.fault.check()?;
        Ok(GpuTensor {
            chunks: ChunkRef::new(self.chunks),
            off: 0,
            rows: self.rows,
            cols: self.cols,
            one_d: false,
        })
    }
}

impl WgpuBackend {
    /// A [`BlockWriter`] for a `[rows, cols]` matrix of `ty` blocks the kernels read as stored
    /// (not Q5_0, which is rewritten whole); `None` otherwise.
    pub(super) fn block_writer(
        &self,
        name: &str,
        ty: visionthink_core::gguf::GgmlType,
        [rows, cols]: [usize; 2],
    ) -> Result<Option<BlockWriter>> {
        let Some(layout) = WeightLayout::of_gguf(ty) else {
            return Ok(None);
        };
        let row_bytes = ty.bytes_for(cols as u64, cols as u64).ok_or_else(|| {
            Error::Input(format!(
                "{name}: rows of {cols} are not whole {} blocks",
                ty.name()
            ))
        })? as usize;
        self.fault.check()?;
        self.check_size(row_bytes as u64, &format!("one row of {name}"))?;
        let max_rows = (self.chunk_limit() / row_bytes.max(1)).clamp(1, rows.max(1));
        let chunks = (0..rows)
            .step_by(max_rows)
            .map(|row0| {
                let n = max_rows.min(rows - row0);
                Chunk {
                    buf: Pooled::unpooled(self.rec.empty(n * row_bytes)),
                    row0,
                    rows: n,
                    kind: layout,
                    scales: None,
                    texels: Default::default(),
                }
            })
            .collect();
        Ok(Some(BlockWriter {
            queue: self.rec.queue.clone(),
            counters: self.rec.counters.clone(),
            fault: self.fault.clone(),
            name: name.to_string(),
            chunks,
            row_bytes,
            rows,
            cols,
            chunk: 0,
            at: 0,
            stage: Vec::new(),
        }))
    }
}
