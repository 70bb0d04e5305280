var<workgroup> acc: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % 64u;
    let c = (wid.y * nwg.x + wid.x) * 4u + lid / 64u;
    var s = 0.0;
    if (c < p.m) {
        let wb = p.w_off + c * p.k;
        for (var k = lane; k < p.k; k += 64u) { s += xin(p.x_off + k) * wv(wb + k, c); }
    }
    acc[lid] = s;
    workgroupBarrier();
    for (var step = 32u; step > 0u; step >>= 1u) {
        if (lane < step) { acc[lid] += acc[lid + step]; }
        workgroupBarrier();
    }
    if (lane == 0u && c < p.m) {
        store(0u, c, acc[lid]);
    }
}
