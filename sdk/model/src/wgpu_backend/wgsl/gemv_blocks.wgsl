// One-row product over GGUF blocks (GPUs): 4 outputs per workgroup, 64 lanes each taking
// sub-blocks in turn (scale and offset read once per sub-block), then a tree reduction.
var<workgroup> acc: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % 64u;
    let c = (wid.y * nwg.x + wid.x) * 4u + lid / 64u;
    var s = 0.0;
    if (c < p.m) {
        let wb = p.w_off + c * p.k;
        for (var j0 = lane * QSUB; j0 < p.k; j0 += 64u * QSUB) {
            let sc = wsub((wb + j0) / QSUB);
            var dot = 0.0;
            var sx = 0.0;
            for (var j = 0u; j < QSUB; j++) {
                let xv = xin(p.x_off + j0 + j);
                dot += xv * wq(wb + j0 + j);
                sx += xv;
            }
            s += dot * sc.x + sx * sc.y;
        }
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
