// Parameters and bindings of the attention kernels: q `[n, heads·d]`, k and v `[keys, kv_heads·d]`,
// each query row's key range `[start, end)`, the output like q.
struct P { n: u32, heads: u32, kv_heads: u32, d: u32, q_off: u32, k_off: u32, v_off: u32,
           scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> ranges: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
