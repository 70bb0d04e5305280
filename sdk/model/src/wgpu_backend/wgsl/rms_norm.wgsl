struct P { rows: u32, cols: u32, x_off: u32, w_off: u32, eps: f32 }
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
    let ob = row * p.cols;
    for (var c = lid; c < p.cols; c += 256u) {
        o[ob + c] = w[p.w_off + c] * (x[base + c] * inv);
    }
}
