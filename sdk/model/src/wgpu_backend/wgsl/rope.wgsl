struct P { n: u32, heads: u32, d: u32, x_off: u32, c_off: u32, s_off: u32 }
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
    o[i] = x[p.x_off + i] * cs[p.c_off + t] + rot * sn[p.s_off + t];
}
