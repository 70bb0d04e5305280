//! WGSL compute kernels of the WebGPU executor. Every kernel reads its sizes and element offsets
//! from a 64-byte uniform (`P`), so views (KV-cache prefixes, narrowed rows, weight chunks) need
//! no buffer-offset alignment. Large 1-D grids are dispatched 2-D (`x ≤ 65535`).
//!
//! Kernels that read weights (matmul, the two matrix-vector products, gather) are written once
//! against `wv(index, row)` and instantiated per weight storage ([`WeightKind`]): f32, f16
//! (two per u32, unpacked with `unpack2x16float`: half the memory, f32 arithmetic, no
//! `shader-f16` needed) and int8 (four per u32, one f32 scale per row).

/// How a weight tensor is stored on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightKind {
    /// f32 values.
    F32,
    /// f16 values, two per u32.
    F16,
    /// int8 values, four per u32, with per-row f32 scales (binding 5).
    Q8,
}

impl WeightKind {
    /// Pipeline-name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            WeightKind::F32 => "",
            WeightKind::F16 => "_f16",
            WeightKind::Q8 => "_q8",
        }
    }

    /// The weight binding and its accessor.
    fn accessor(self) -> &'static str {
        match self {
            WeightKind::F32 => {
                r"
@group(0) @binding(2) var<storage, read> w: array<f32>;
fn wv(i: u32, row: u32) -> f32 { return w[i]; }
"
            }
            WeightKind::F16 => {
                r"
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn wv(i: u32, row: u32) -> f32 {
    let v = unpack2x16float(w[i / 2u]);
    return select(v.x, v.y, (i & 1u) == 1u);
}
"
            }
            WeightKind::Q8 => {
                r"
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(5) var<storage, read> sc: array<f32>;
fn wv(i: u32, row: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(w[i / 4u]), (i % 4u) * 8u, 8u)) * sc[row];
}
"
            }
        }
    }
}

/// Shared prelude: the flat index of an element-wise invocation.
const FLAT: &str = r"
fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}
";

/// `o = a + b` (mode 0) or `o = silu(a) * b` (mode 1).
pub const BINARY: &str = r"
struct P { n: u32, a_off: u32, b_off: u32, o_off: u32, mode: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let x = a[p.a_off + i];
    let y = b[p.b_off + i];
    if (p.mode == 0u) {
        o[p.o_off + i] = x + y;
    } else {
        o[p.o_off + i] = x / (1.0 + exp(-x)) * y;
    }
}
";

/// Exact GELU through erfc (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
pub const GELU: &str = r"
struct P { n: u32, a_off: u32, o_off: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;

fn erfc_(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(2.0 - r, r, x >= 0.0);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let x = a[p.a_off + i];
    o[p.o_off + i] = 0.5 * x * erfc_(-x * 0.70710678118654752);
}
";

/// RMSNorm: one workgroup per row, f32 accumulation.
pub const RMS_NORM: &str = r"
struct P { rows: u32, cols: u32, x_off: u32, w_off: u32, o_off: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
var<workgroup> acc: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let base = p.x_off + row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        let v = x[base + c];
        s += v * v;
    }
    acc[lid] = s;
    workgroupBarrier();
    for (var step = 128u; step > 0u; step >>= 1u) {
        if (lid < step) { acc[lid] += acc[lid + step]; }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(acc[0] / f32(p.cols) + p.eps);
    let ob = p.o_off + row * p.cols;
    for (var c = lid; c < p.cols; c += 256u) {
        o[ob + c] = w[p.w_off + c] * (x[base + c] * inv);
    }
}
";

/// Rotary embedding, rotate-half convention: `x [n, heads * d]`, `cos`, `sin` `[n, d]`.
pub const ROPE: &str = r"
struct P { n: u32, heads: u32, d: u32, x_off: u32, c_off: u32, s_off: u32, o_off: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;
@group(0) @binding(3) var<storage, read> sn: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.heads * p.d) { return; }
    let j = i % p.d;
    let row = i / (p.heads * p.d);
    let half = p.d / 2u;
    var rot: f32;
    if (j < half) { rot = -x[p.x_off + i + half]; } else { rot = x[p.x_off + i - half]; }
    let t = row * p.d + j;
    o[p.o_off + i] = x[p.x_off + i] * cs[p.c_off + t] + rot * sn[p.s_off + t];
}
";

/// Rows of the table `w` at `ids`, for the ids inside this chunk's row range
/// `[row0, row0 + rows)` (uses `wv`).
pub const GATHER: &str = r"
struct P { n: u32, cols: u32, t_off: u32, o_off: u32, row0: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.cols) { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    let id = ids[r];
    if (id < p.row0 || id >= p.row0 + p.rows) { return; }
    let row = id - p.row0;
    o[p.o_off + i] = wv(p.t_off + row * p.cols + c, row);
}
";

/// Parameters shared by the three weight-reading linear kernels.
const LINEAR_P: &str = r"
struct P { n: u32, k: u32, m: u32, x_off: u32, w_off: u32, o_off: u32, o_stride: u32,
           o_col: u32, b_off: u32, has_b: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
";

/// `out[r, o_col + c] = x[r, :] · w[c, :] + b[c]`: 64×64 output tiles, 16×16 threads each
/// computing 4×4, K in steps of 16 through workgroup memory.
pub const MATMUL: &str = r"
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var e = lid; e < 1024u; e += 256u) {
            let rr = e / 16u;
            let kk = e % 16u;
            let gk = k0 + kk;
            let gr = row0 + rr;
            let gc = col0 + rr;
            xs[e] = select(0.0, x[p.x_off + gr * p.k + gk], gr < p.n && gk < p.k);
            var wval = 0.0;
            if (gc < p.m && gk < p.k) { wval = wv(p.w_off + gc * p.k + gk, gc); }
            ws[e] = wval;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = xs[(l.y * 4u + i) * 16u + kk];
                bv[i] = ws[(l.x * 4u + i) * 16u + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] += av[i] * bv[j]; }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + l.y * 4u + i;
        if (r >= p.n) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + l.x * 4u + j;
            if (c >= p.m) { continue; }
            var v = acc[i][j];
            if (p.has_b != 0u) { v += b[p.b_off + c]; }
            o[p.o_off + r * p.o_stride + p.o_col + c] = v;
        }
    }
}
";

/// Matrix-vector product for one row (decoding): 4 outputs per workgroup, 64 lanes each,
/// reduced through workgroup memory. For GPUs and long rows.
pub const GEMV: &str = r"
var<workgroup> acc: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % 64u;
    let c = (wid.y * nwg.x + wid.x) * 4u + lid / 64u;
    var s = 0.0;
    if (c < p.m) {
        let wb = p.w_off + c * p.k;
        for (var k = lane; k < p.k; k += 64u) { s += x[p.x_off + k] * wv(wb + k, c); }
    }
    acc[lid] = s;
    workgroupBarrier();
    for (var step = 32u; step > 0u; step >>= 1u) {
        if (lane < step) { acc[lid] += acc[lid + step]; }
        workgroupBarrier();
    }
    if (lane == 0u && c < p.m) {
        var v = acc[lid];
        if (p.has_b != 0u) { v += b[p.b_off + c]; }
        o[p.o_off + p.o_col + c] = v;
    }
}
";

/// Matrix-vector product for one row, one invocation per output: `x` is staged through
/// workgroup memory 256 values at a time (two barriers per 256 columns instead of a reduction
/// per output). Chosen for short rows and on software adapters (SwiftShader, lavapipe), which
/// pay heavily per barrier.
pub const GEMV_ROWS: &str = r"
var<workgroup> xs: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    let live = c < p.m;
    let cc = min(c, p.m - 1u);
    let wb = p.w_off + cc * p.k;
    var s = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += 256u) {
        let kk = k0 + lid;
        xs[lid] = select(0.0, x[p.x_off + min(kk, p.k - 1u)], kk < p.k);
        workgroupBarrier();
        let len = min(256u, p.k - k0);
        for (var j = 0u; j < len; j++) { s += xs[j] * wv(wb + k0 + j, cc); }
        workgroupBarrier();
    }
    if (!live) { return; }
    if (p.has_b != 0u) { s += b[p.b_off + c]; }
    o[p.o_off + p.o_col + c] = s;
}
";

/// Matrix-vector product for short rows: one invocation per output reading `x` straight from
/// memory, no barrier at all (SwiftShader: ~5× faster decoding than [`GEMV_ROWS`] on the tiny
/// model, whose rows are 16–48 long).
pub const GEMV_SHORT: &str = r"
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    if (c >= p.m) { return; }
    let wb = p.w_off + c * p.k;
    var s = 0.0;
    for (var k = 0u; k < p.k; k++) { s += x[p.x_off + k] * wv(wb + k, c); }
    if (p.has_b != 0u) { s += b[p.b_off + c]; }
    o[p.o_off + p.o_col + c] = s;
}
";

/// Reduction length up to which [`GEMV_SHORT`] is used.
pub const GEMV_ROWS_MAX_K: usize = 128;

/// Attention without a score matrix: one workgroup per (head, query row) streams the keys of
/// the query's range `[ranges[2r], ranges[2r+1])` in blocks of 64 with an online softmax.
/// Grouped-query heads share a key/value head. `d ≤ 256`.
pub const ATTENTION: &str = r"
struct P { n: u32, heads: u32, kv_heads: u32, d: u32, q_off: u32, k_off: u32, v_off: u32,
           o_off: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> ranges: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
var<workgroup> qs: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> red: array<f32, 64>;
var<workgroup> bounds: vec2<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let h = wid.x;
    let r = wid.z * 65535u + wid.y;
    let valid = r < p.n;
    let kvh = h / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * p.d;
    let qb = p.q_off + r * p.heads * p.d + h * p.d;
    if (t == 0u) {
        if (valid) { bounds = vec2<u32>(ranges[2u * r], ranges[2u * r + 1u]); }
        else { bounds = vec2<u32>(0u, 0u); }
    }
    for (var j = t; j < p.d; j += 64u) { qs[j] = select(0.0, q[qb + j], valid); }
    let bnd = workgroupUniformLoad(&bounds);
    let start = bnd.x;
    let end = bnd.y;
    var acc: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) { acc[i] = 0.0; }
    var m_run = -3.0e38;
    var l_run = 0.0;
    for (var base = start; base < end; base += 64u) {
        let key = base + t;
        var s = -3.0e38;
        if (key < end) {
            let kb = p.k_off + key * kv_stride + kvh * p.d;
            var dot = 0.0;
            for (var j = 0u; j < p.d; j++) { dot += qs[j] * k[kb + j]; }
            s = dot * p.scale;
        }
        red[t] = s;
        workgroupBarrier();
        for (var step = 32u; step > 0u; step >>= 1u) {
            if (t < step) { red[t] = max(red[t], red[t + step]); }
            workgroupBarrier();
        }
        let new_m = max(m_run, red[0]);
        workgroupBarrier();
        var pv = 0.0;
        if (key < end) { pv = exp(s - new_m); }
        ps[t] = pv;
        red[t] = pv;
        workgroupBarrier();
        for (var step = 32u; step > 0u; step >>= 1u) {
            if (t < step) { red[t] += red[t + step]; }
            workgroupBarrier();
        }
        let corr = exp(m_run - new_m);
        l_run = l_run * corr + red[0];
        let cnt = min(64u, end - base);
        for (var i = 0u; i < 4u; i++) {
            let j = t + i * 64u;
            if (j < p.d) {
                var a = acc[i] * corr;
                for (var kk = 0u; kk < cnt; kk++) {
                    a += ps[kk] * v[p.v_off + (base + kk) * kv_stride + kvh * p.d + j];
                }
                acc[i] = a;
            }
        }
        m_run = new_m;
        workgroupBarrier();
    }
    if (!valid) { return; }
    let ob = p.o_off + r * p.heads * p.d + h * p.d;
    for (var i = 0u; i < 4u; i++) {
        let j = t + i * 64u;
        if (j < p.d) { o[ob + j] = select(0.0, acc[i] / l_run, l_run > 0.0); }
    }
}
";

/// A kernel that reads no weights, with the prelude prepended.
pub fn source(body: &str) -> String {
    format!("{FLAT}\n{body}")
}

/// A weight-reading kernel instantiated for a weight storage (`GATHER` binds its own
/// parameters; the linear kernels share [`LINEAR_P`]).
pub fn weighted(body: &str, kind: WeightKind) -> String {
    let params = if body.contains("struct P") {
        ""
    } else {
        LINEAR_P
    };
    format!("{FLAT}\n{params}\n{}\n{body}", kind.accessor())
}
