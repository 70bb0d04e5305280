struct P { n: u32, a_off: u32, b_off: u32, mode: u32 }
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
        o[i] = x + y;
    } else {
        o[i] = x / (1.0 + exp(-x)) * y;
    }
}
