//! The WGSL compute kernels (in `wgsl/*.wgsl`), each named by a typed [`Kernel`] id, with its
//! parameter struct and its bindings. Every kernel reads its sizes and element offsets from a
//! uniform struct `P`, so views (KV-cache prefixes, narrowed rows, weight chunks) need no
//! buffer-offset alignment; the Rust struct of each kernel has the same fields in the same order
//! (a test compares them with the WGSL). Outputs are always written from element 0 of a fresh
//! buffer. Large 1-D grids are dispatched 2-D (`x ≤ 65535`).
//!
//! Kernels that read weights (matmul, the three matrix-vector products, gather) are written once
//! against `wv(index, row)` and instantiated per [`WeightLayout`]: the executor's own storages,
//! f32, f16 (two per u32, unpacked with `unpack2x16float`: half the memory, f32 arithmetic, no
//! `shader-f16` needed) and int8 (four per u32, one f32 scale per row); and GGUF blocks as the
//! file stores them (Q8_0, Q4_0, Q4_K, Q6_K), read byte by byte and dequantised in registers,
//! never expanded in memory.

pub use crate::storage::WeightStorage;
use visionthink_core::gguf::GgmlType;

/// How a weight's values are laid out on the GPU: the key of its kernels' accessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightLayout {
    /// f32 values.
    F32,
    /// f16 values, two per u32.
    F16,
    /// int8 values, four per u32, with a per-row f32 scale (binding 5).
    Int8,
    /// GGUF Q8_0 blocks (32 values in 34 bytes).
    Q8_0,
    /// GGUF Q4_0 blocks (32 values in 18 bytes).
    Q4_0,
    /// GGUF Q4_K super-blocks (256 values in 144 bytes).
    Q4_K,
    /// GGUF Q6_K super-blocks (256 values in 210 bytes).
    Q6_K,
}

impl WeightLayout {
    /// Every layout.
    pub const ALL: [WeightLayout; 7] = [
        Self::F32,
        Self::F16,
        Self::Int8,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_K,
        Self::Q6_K,
    ];

    /// Whether the values are GGUF blocks (the accessor has `wq` / `wsub` for the block kernels).
    pub fn is_blocks(self) -> bool {
        matches!(self, Self::Q8_0 | Self::Q4_0 | Self::Q4_K | Self::Q6_K)
    }

    /// The GGUF type whose encoding this layout holds as stored (`F32`, `F16` or the block
    /// types); `None` for int8, whose per-row scales no GGUF type has.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            Self::F32 => Some(GgmlType::F32),
            Self::F16 => Some(GgmlType::F16),
            Self::Int8 => None,
            Self::Q8_0 => Some(GgmlType::Q8_0),
            Self::Q4_0 => Some(GgmlType::Q4_0),
            Self::Q4_K => Some(GgmlType::Q4_K),
            Self::Q6_K => Some(GgmlType::Q6_K),
        }
    }

    /// The layout that reads GGUF blocks of `ty` as stored, if the kernels have one.
    pub fn of_gguf(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q8_0 => Some(Self::Q8_0),
            GgmlType::Q4_0 => Some(Self::Q4_0),
            GgmlType::Q4_K => Some(Self::Q4_K),
            GgmlType::Q6_K => Some(Self::Q6_K),
            _ => None,
        }
    }

    /// The weight binding and its accessors: `wv` (one value), and `wscale` / `wint` (a
    /// stretch of 8 values' scale and offset read once, then each value's integer).
    fn accessor(self) -> String {
        let blocks = include_str!("wgsl/blocks.wgsl");
        let scaled_blocks = include_str!("wgsl/wscale_blocks.wgsl");
        let scaled_values = include_str!("wgsl/wscale_values.wgsl");
        let values = |layout: &str| format!("{layout}\n{scaled_values}");
        let blocks = |layout: &str| format!("{blocks}\n{layout}\n{scaled_blocks}");
        match self {
            Self::F32 => values(include_str!("wgsl/weights_f32.wgsl")),
            Self::F16 => values(include_str!("wgsl/weights_f16.wgsl")),
            Self::Int8 => values(include_str!("wgsl/weights_int8.wgsl")),
            Self::Q8_0 => blocks(include_str!("wgsl/weights_q8_0.wgsl")),
            Self::Q4_0 => blocks(include_str!("wgsl/weights_q4_0.wgsl")),
            Self::Q4_K => blocks(include_str!("wgsl/weights_q4_k.wgsl")),
            Self::Q6_K => blocks(include_str!("wgsl/weights_q6_k.wgsl")),
        }
    }
}

impl From<WeightStorage> for WeightLayout {
    fn from(w: WeightStorage) -> Self {
        match w {
            WeightStorage::F32 => Self::F32,
            WeightStorage::F16 => Self::F16,
            WeightStorage::Int8 => Self::Int8,
        }
    }
}

/// Shared prelude: the flat index of an element-wise invocation.
const FLAT: &str = include_str!("wgsl/flat.wgsl");
/// Parameters and bindings shared by the linear kernels.
const LINEAR_P: &str = include_str!("wgsl/linear_params.wgsl");
/// Parameters and bindings shared by the attention kernels.
const ATTENTION_P: &str = include_str!("wgsl/attention_params.wgsl");
/// The tiled matmul of GGUF blocks (in f32) and of the f16 arithmetic, over a tile type `T`
/// ([`TILE_F32`] or [`TILE_F16`]).
const MATMUL_TILED: &str = include_str!("wgsl/matmul_tiled.wgsl");
/// Four weight rows read side by side (the barrier-free matmul and gemv of software adapters).
const ROWS4: &str = include_str!("wgsl/rows4.wgsl");
/// `T` = f32 for [`MATMUL_TILED`].
const TILE_F32: &str = include_str!("wgsl/tile_f32.wgsl");
/// `T` = f16 for [`MATMUL_TILED`].
const TILE_F16: &str = include_str!("wgsl/tile_f16.wgsl");

/// Width in texels of the textures that hold f32 weights for [`Kernel::GemvTexel`] (every
/// adapter's `maxTextureDimension2D` is at least 8,192).
pub const TEXEL_WIDTH: u32 = 8192;

/// Length in vec4 of [`Kernel::GemvTexel`]'s uniform input row (64 KiB, WebGPU's default
/// `maxUniformBufferBindingSize`): at most 16,384 input values, SwiGLU's two halves included.
pub const X_UNIFORM_VEC4: u32 = 4096;

/// Reduction length up to which [`Kernel::GemvShort`] is used.
pub const GEMV_SHORT_MAX_K: usize = 128;

/// A compute kernel: the key of the pipeline cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `o = a + b` or `o = silu(a) * b` ([`BinaryOp`]).
    Binary,
    /// Exact GELU through erfc (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
    Gelu,
    /// RMSNorm: one workgroup per row, f32 accumulation.
    RmsNorm,
    /// Rotary embedding, rotate-half convention.
    Rope,
    /// A fused q/k/v product's rows split in one pass: query heads rotated into their own
    /// buffer, key heads rotated and value heads copied into the KV caches' next rows (a
    /// decode step's rotary embedding and cache append without buffer copies).
    RopeAppend,
    /// Attention without a score matrix: one workgroup per (head, query row) streams the keys
    /// of the query's range in blocks of 64 with an online softmax; GQA heads share a KV head.
    Attention,
    /// [`Kernel::Attention`] without workgroup memory or barrier (software adapters): one
    /// invocation per (query row, head), keys streamed one by one with an online softmax.
    AttentionRows,
    /// Rows of a weight table at ids, for the ids inside one chunk's rows.
    Gather(WeightLayout),
    /// `out = x · wᵀ + b`: 64×64 output tiles, 16×16 threads each computing 4×4; over GGUF
    /// blocks the reduction steps 32 values at a time and each sub-block's scale is read once
    /// per 8 values widened into the tile.
    Matmul(WeightLayout),
    /// [`Kernel::Matmul`] in f16 arithmetic (adapters with `shader-f16`): f16 tiles, products
    /// summed in f16 over each 32-value step, the steps summed in f32.
    MatmulF16(WeightLayout),
    /// `out = x · wᵀ + b` with no workgroup memory or barrier (software adapters): each
    /// invocation computes 8 rows × 4 columns (vec4 accumulators), each sub-block scale read
    /// once per 8 values.
    MatmulRows(WeightLayout),
    /// One-row product: 4 outputs per workgroup, 64 lanes each (GPUs, long rows).
    Gemv(WeightLayout),
    /// One-row product with no workgroup memory or barrier (software adapters, which pay
    /// heavily per barrier): 4 outputs per invocation as a vec4, each sub-block scale read once
    /// per 8 values; any layout.
    GemvRows(WeightLayout),
    /// One-row product over f32 weights held in a texture (rgba32float, [`TEXEL_WIDTH`] texels
    /// a row), the input row copied into a uniform buffer (software adapters: Mesa's
    /// llvmpipe loads a storage buffer value by value per lane, but fetches texels and
    /// uniforms as vectors); 4 outputs per invocation, no barrier.
    GemvTexel,
    /// [`Kernel::GemvTexel`]'s storage for products of several rows (software adapters): the
    /// uniform buffer holds a block of input rows, and each invocation computes 8 weight rows
    /// × 4 input rows (32 vec4 accumulators, unrolled), no barrier.
    MatmulTexel,
    /// One-row product for rows up to [`GEMV_SHORT_MAX_K`] long: no barrier at all.
    GemvShort(WeightLayout),
    /// One-row product over GGUF blocks: 4 outputs per workgroup, lanes over sub-blocks, each
    /// sub-block's scale read once (GPUs).
    GemvBlocks(WeightLayout),
}

/// How a kernel binds a storage buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Written (the output).
    Write,
    /// A uniform buffer (besides the parameters at binding 0).
    Uniform,
    /// A 2-D float texture read with `textureLoad`.
    Texture,
}

impl Kernel {
    /// The WGSL source, prelude included.
    pub fn source(self) -> String {
        let plain = |body: &str| format!("{FLAT}\n{body}");
        let weighted = |body: &str, w: WeightLayout, params: &str| {
            format!("{FLAT}\n{params}\n{}\n{body}", w.accessor())
        };
        match self {
            Kernel::Binary => plain(include_str!("wgsl/binary.wgsl")),
            Kernel::Gelu => plain(include_str!("wgsl/gelu.wgsl")),
            Kernel::RmsNorm => plain(include_str!("wgsl/rms_norm.wgsl")),
            Kernel::Rope => plain(include_str!("wgsl/rope.wgsl")),
            Kernel::RopeAppend => plain(include_str!("wgsl/rope_append.wgsl")),
            Kernel::Attention => plain(&format!(
                "{ATTENTION_P}\n{}",
                include_str!("wgsl/attention.wgsl")
            )),
            Kernel::AttentionRows => plain(&format!(
                "{ATTENTION_P}\n{}",
                include_str!("wgsl/attention_rows.wgsl")
            )),
            Kernel::Gather(w) => weighted(include_str!("wgsl/gather.wgsl"), w, ""),
            Kernel::Matmul(w) if w.is_blocks() => {
                weighted(&format!("{TILE_F32}\n{MATMUL_TILED}"), w, LINEAR_P)
            }
            Kernel::Matmul(w) => weighted(include_str!("wgsl/matmul.wgsl"), w, LINEAR_P),
            Kernel::MatmulRows(w) => weighted(
                &format!("{ROWS4}\n{}", include_str!("wgsl/matmul_rows.wgsl")),
                w,
                LINEAR_P,
            ),
            // `enable` must come before every declaration.
            Kernel::MatmulF16(w) => format!(
                "enable f16;\n{}",
                weighted(&format!("{TILE_F16}\n{MATMUL_TILED}"), w, LINEAR_P)
            ),
            Kernel::Gemv(w) => weighted(include_str!("wgsl/gemv.wgsl"), w, LINEAR_P),
            Kernel::GemvRows(w) => weighted(
                &format!("{ROWS4}\n{}", include_str!("wgsl/gemv_rows.wgsl")),
                w,
                LINEAR_P,
            ),
            Kernel::GemvTexel => plain(&format!(
                "{}\n{}",
                texel_prelude(),
                include_str!("wgsl/gemv_texel.wgsl")
            )),
            Kernel::MatmulTexel => plain(&format!("{}\n{}", texel_prelude(), matmul_texel())),
            Kernel::GemvShort(w) => weighted(include_str!("wgsl/gemv_short.wgsl"), w, LINEAR_P),
            Kernel::GemvBlocks(w) => weighted(include_str!("wgsl/gemv_blocks.wgsl"), w, LINEAR_P),
        }
    }

    /// The storage bindings after the uniform (binding 0), in binding order.
    pub fn bindings(self) -> Vec<(u32, Access)> {
        use Access::{Read as R, Texture as T, Uniform as U, Write as W};
        let int8 = |w: WeightLayout, mut v: Vec<(u32, Access)>| {
            if w == WeightLayout::Int8 {
                v.push((5, R));
            }
            v
        };
        // The linear kernels: input, weight, bias, output, the int8 scales, the residual.
        let linear = |w: WeightLayout| {
            let mut v = int8(w, vec![(1, R), (2, R), (3, R), (4, W)]);
            v.push((6, R));
            v
        };
        match self {
            Kernel::Binary | Kernel::RmsNorm => vec![(1, R), (2, R), (3, W)],
            Kernel::Gelu => vec![(1, R), (2, W)],
            Kernel::Rope => vec![(1, R), (2, R), (3, R), (4, W)],
            Kernel::RopeAppend => vec![(1, R), (2, R), (3, R), (4, W), (5, W), (6, W), (7, R)],
            Kernel::Attention | Kernel::AttentionRows => {
                vec![(1, R), (2, R), (3, R), (4, R), (5, W)]
            }
            Kernel::Gather(w) => int8(w, vec![(1, R), (2, R), (3, W)]),
            // As `linear`, the weight a texture, and the input row's uniform copy at 7.
            Kernel::GemvTexel | Kernel::MatmulTexel => {
                vec![(1, R), (2, T), (3, R), (4, W), (6, R), (7, U)]
            }
            Kernel::Matmul(w)
            | Kernel::MatmulRows(w)
            | Kernel::MatmulF16(w)
            | Kernel::Gemv(w)
            | Kernel::GemvRows(w)
            | Kernel::GemvShort(w)
            | Kernel::GemvBlocks(w) => linear(w),
        }
    }

    /// A label for debuggers.
    pub fn label(self) -> &'static str {
        match self {
            Kernel::Binary => "binary",
            Kernel::Gelu => "gelu",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Rope => "rope",
            Kernel::RopeAppend => "rope_append",
            Kernel::Attention => "attention",
            Kernel::AttentionRows => "attention_rows",
            Kernel::Gather(_) => "gather",
            Kernel::Matmul(_) => "matmul",
            Kernel::MatmulRows(_) => "matmul_rows",
            Kernel::MatmulF16(_) => "matmul_f16",
            Kernel::Gemv(_) => "gemv",
            Kernel::GemvRows(_) => "gemv_rows",
            Kernel::GemvTexel => "gemv_texel",
            Kernel::MatmulTexel => "matmul_texel",
            Kernel::GemvShort(_) => "gemv_short",
            Kernel::GemvBlocks(_) => "gemv_blocks",
        }
    }
}

/// What the texel kernels share: their constants, the linear kernels' parameters and output,
/// the weight texture at binding 2 and the input rows' uniform copy at binding 7.
fn texel_prelude() -> String {
    format!(
        "const TEXEL_WIDTH: u32 = {TEXEL_WIDTH}u;\nconst X_UNIFORM_VEC4: u32 = {X_UNIFORM_VEC4}u;\n\
         {LINEAR_P}\n{}",
        include_str!("wgsl/texel.wgsl")
    )
}

/// Weight rows and input rows of one [`Kernel::MatmulTexel`] invocation.
const MATMUL_TEXEL_ROWS: (usize, usize) = (8, 4);

/// [`Kernel::MatmulTexel`]'s body, its accumulators unrolled (llvmpipe keeps a private array
/// indexed in a loop in memory, indexed per lane).
fn matmul_texel() -> String {
    let (wr, xr) = MATMUL_TEXEL_ROWS;
    let mut s = format!(
        "// {wr} weight rows x {xr} input rows per invocation; the input rows are the uniform block's.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let i = flat(wid, nwg, lid);
    let blocks = (p.n + {xr}u - 1u) / {xr}u;
    let c0 = (i / blocks) * {wr}u;
    let r0 = (i % blocks) * {xr}u;
    if (c0 >= p.m) {{ return; }}
    let k4 = p.k / 4u;
    // Past the last weight or input row, the last one again (computed, not stored).
"
    );
    for r in 0..wr {
        s += &format!("    let t{r} = p.w_off / 4u + min(c0 + {r}u, p.m - 1u) * k4;\n");
    }
    for q in 0..xr {
        s += &format!("    let x{q} = min(r0 + {q}u, p.n - 1u) * k4;\n");
        for r in 0..wr {
            s += &format!("    var a{r}_{q} = vec4<f32>(0.0);\n");
        }
    }
    s += "    for (var j = 0u; j < k4; j++) {\n";
    for q in 0..xr {
        s += &format!("        let v{q} = xu[x{q} + j];\n");
    }
    for r in 0..wr {
        s += &format!("        let w{r} = texel(t{r} + j);\n");
        for q in 0..xr {
            s += &format!("        a{r}_{q} += v{q} * w{r};\n");
        }
    }
    s += "    }\n    let one = vec4<f32>(1.0);\n";
    for q in 0..xr {
        for r in 0..wr {
            s += &format!(
                "    if (c0 + {r}u < p.m && r0 + {q}u < p.n) {{ store(r0 + {q}u, c0 + {r}u, dot(a{r}_{q}, one)); }}\n"
            );
        }
    }
    s + "}\n"
}

/// A kernel's uniform parameters: the WGSL struct `P`, field by field.
pub trait Params {
    /// The field names, in order (checked against the WGSL in a test).
    const FIELDS: &'static [&'static str];
    /// The fields as 32-bit words, in order.
    fn words(&self) -> Vec<u32>;
}

/// A scalar of a parameter struct.
trait Word {
    fn word(self) -> u32;
}

impl Word for u32 {
    fn word(self) -> u32 {
        self
    }
}

impl Word for f32 {
    fn word(self) -> u32 {
        self.to_bits()
    }
}

/// Defines a parameter struct and its [`Params`] impl from one field list.
macro_rules! params {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
        impl Params for $name {
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn words(&self) -> Vec<u32> {
                vec![$(Word::word(self.$field)),*]
            }
        }
    };
}

/// The operation of [`Kernel::Binary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BinaryOp {
    /// `a + b`.
    Add = 0,
    /// `silu(a) * b`.
    Swiglu = 1,
}

params!(
    /// [`Kernel::Binary`].
    BinaryP {
        /// Elements.
        n: u32,
        /// Element offset of `a`.
        a_off: u32,
        /// Element offset of `b`.
        b_off: u32,
        /// A [`BinaryOp`].
        mode: u32,
    }
);

params!(
    /// [`Kernel::Gelu`].
    GeluP {
        /// Elements.
        n: u32,
        /// Element offset of the input.
        a_off: u32,
    }
);

params!(
    /// [`Kernel::RmsNorm`].
    RmsNormP {
        /// Rows.
        rows: u32,
        /// Columns (the normalised width).
        cols: u32,
        /// Element offset of `x`.
        x_off: u32,
        /// Element offset of the scale.
        w_off: u32,
        /// Epsilon.
        eps: f32,
    }
);

params!(
    /// [`Kernel::Rope`]: `x [n, heads · d]`, `cos`, `sin` `[n, d]`.
    RopeP {
        /// Rows.
        n: u32,
        /// Heads.
        heads: u32,
        /// Head dimension.
        d: u32,
        /// Element offset of `x`.
        x_off: u32,
        /// Element offset of `cos`.
        c_off: u32,
        /// Element offset of `sin`.
        s_off: u32,
    }
);

params!(
    /// [`Kernel::RopeAppend`]: `x [n, (heads + 2 · kv_heads) · d]`, `cos`, `sin` `[n, d]`.
    RopeAppendP {
        /// Rows.
        n: u32,
        /// Query heads.
        heads: u32,
        /// Key/value heads.
        kv_heads: u32,
        /// Head dimension.
        d: u32,
        /// Element offset of `x`.
        x_off: u32,
        /// Element offset of `cos`.
        c_off: u32,
        /// Element offset of `sin`.
        s_off: u32,
        /// Element offset of the key cache (its rows are those of the attention ranges).
        k_off: u32,
        /// Element offset of the value cache.
        v_off: u32,
    }
);

params!(
    /// [`Kernel::Gather`].
    GatherP {
        /// Ids.
        n: u32,
        /// Columns of the table.
        cols: u32,
        /// Element offset of the table.
        t_off: u32,
        /// First row of the table this chunk holds.
        row0: u32,
        /// Rows of this chunk.
        rows: u32,
    }
);

params!(
    /// The linear kernels: `out[r, o_col + c] = x[r, :] · w[c, :] + b[c] (+ residual)` for the
    /// `m` output columns of one weight chunk.
    LinearP {
        /// Input rows.
        n: u32,
        /// Reduction length (input columns).
        k: u32,
        /// Output columns of this chunk (its weight rows).
        m: u32,
        /// Element offset of `x`.
        x_off: u32,
        /// Element offset of the weight.
        w_off: u32,
        /// Output row stride (all chunks' columns).
        o_stride: u32,
        /// First output column of this chunk.
        o_col: u32,
        /// Element offset of this chunk's bias.
        b_off: u32,
        /// 1 with a bias.
        has_b: u32,
        /// 0, or (one-row kernels) the input is SwiGLU's `silu(x[i]) * x[i + glu]`: the gate
        /// and up halves of a fused projection, combined as they are read.
        glu: u32,
        /// 1 with a residual added to every output (after the bias).
        has_r: u32,
        /// Element offset of the residual (laid out like the output).
        r_off: u32,
    }
);

params!(
    /// [`Kernel::Attention`].
    AttentionP {
        /// Query rows.
        n: u32,
        /// Query heads.
        heads: u32,
        /// Key/value heads.
        kv_heads: u32,
        /// Head dimension (≤ 256).
        d: u32,
        /// Element offset of `q`.
        q_off: u32,
        /// Element offset of `k`.
        k_off: u32,
        /// Element offset of `v`.
        v_off: u32,
        /// `1 / sqrt(d)`.
        scale: f32,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names of `struct P` in a kernel's source.
    fn wgsl_fields(src: &str) -> Vec<String> {
        let start = src.find("struct P {").expect("struct P") + "struct P {".len();
        let end = start + src[start..].find('}').expect("end of P");
        src[start..end]
            .split(',')
            .filter_map(|f| f.split(':').next())
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    }

    #[test]
    fn rust_parameter_structs_match_the_wgsl_ones() {
        let w = WeightLayout::Int8;
        for (kernel, fields) in [
            (Kernel::Binary, BinaryP::FIELDS),
            (Kernel::Gelu, GeluP::FIELDS),
            (Kernel::RmsNorm, RmsNormP::FIELDS),
            (Kernel::Rope, RopeP::FIELDS),
            (Kernel::RopeAppend, RopeAppendP::FIELDS),
            (Kernel::Attention, AttentionP::FIELDS),
            (Kernel::AttentionRows, AttentionP::FIELDS),
            (Kernel::Gather(w), GatherP::FIELDS),
            (Kernel::Matmul(w), LinearP::FIELDS),
            (Kernel::MatmulRows(w), LinearP::FIELDS),
            (Kernel::MatmulF16(w), LinearP::FIELDS),
            (Kernel::Gemv(w), LinearP::FIELDS),
            (Kernel::GemvRows(w), LinearP::FIELDS),
            (Kernel::GemvShort(w), LinearP::FIELDS),
            (Kernel::GemvTexel, LinearP::FIELDS),
            (Kernel::MatmulTexel, LinearP::FIELDS),
            (Kernel::GemvBlocks(WeightLayout::Q4_K), LinearP::FIELDS),
            (Kernel::GemvRows(WeightLayout::Q6_K), LinearP::FIELDS),
        ] {
            assert_eq!(wgsl_fields(&kernel.source()), fields, "{kernel:?}");
        }
    }

    #[test]
    fn declared_bindings_match_the_wgsl_ones() {
        for w in WeightLayout::ALL {
            for kernel in [
                Kernel::Binary,
                Kernel::Gelu,
                Kernel::RmsNorm,
                Kernel::Rope,
                Kernel::RopeAppend,
                Kernel::Attention,
                Kernel::AttentionRows,
                Kernel::Gather(w),
                Kernel::Matmul(w),
                Kernel::MatmulRows(w),
                Kernel::MatmulF16(w),
                Kernel::Gemv(w),
                Kernel::GemvRows(w),
                Kernel::GemvShort(w),
                Kernel::GemvTexel,
                Kernel::MatmulTexel,
            ]
            .into_iter()
            .chain(
                w.is_blocks()
                    .then_some([Kernel::GemvBlocks(w)])
                    .into_iter()
                    .flatten(),
            ) {
                let src = kernel.source();
                let mut found: Vec<(u32, Access)> = src
                    .lines()
                    .filter_map(|l| {
                        let rest = l.split("@binding(").nth(1)?;
                        let b: u32 = rest.split(')').next()?.parse().ok()?;
                        let access = match l {
                            _ if b == 0 => return None,
                            _ if l.contains("var<uniform>") => Access::Uniform,
                            _ if l.contains("texture_2d") => Access::Texture,
                            _ if l.contains("read_write") => Access::Write,
                            _ => Access::Read,
                        };
                        Some((b, access))
                    })
                    .collect();
                found.sort_by_key(|b| b.0);
                assert_eq!(found, kernel.bindings(), "{kernel:?}");
            }
        }
    }
}
