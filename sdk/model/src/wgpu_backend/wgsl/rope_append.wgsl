struct P { n: u32, heads: u32, kv_heads: u32, d: u32, x_off: u32, c_off: u32, s_off: u32, k_off: u32, v_off: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;
@group(0) @binding(3) var<storage, read> sn: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<f32>;
@group(0) @binding(6) var<storage, read_write> vc: array<f32>;
// The attention ranges of the rows (`[start, end)` of the keys each query sees, uploaded every
// step): a row's key is the last it sees, so positions never travel in the parameters.
@group(0) @binding(7) var<storage, read> ranges: array<u32>;

// One fused q/k/v row `[q heads | k heads | v heads]` per input row: the query heads rotated
// into `q`, the key heads rotated and the value heads copied into the caches' row of it.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    let qw = p.heads * p.d;
    let kw = p.kv_heads * p.d;
    let w = qw + 2u * kw;
    if (i >= p.n * w) { return; }
    let row = i / w;
    let c = i % w;
    let at = ranges[2u * row + 1u] - 1u;
    if (c >= qw + kw) {
        vc[p.v_off + at * kw + c - qw - kw] = x[p.x_off + i];
        return;
    }
    let j = c % p.d;
    let half = p.d / 2u;
    var rot: f32;
    if (j < half) { rot = -x[p.x_off + i + half]; } else { rot = x[p.x_off + i - half]; }
    let t = row * p.d + j;
    let r = x[p.x_off + i] * cs[p.c_off + t] + rot * sn[p.s_off + t];
    if (c < qw) {
        q[row * qw + c] = r;
    } else {
        kc[p.k_off + at * kw + c - qw] = r;
    }
}
