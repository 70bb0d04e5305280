// One-row product without workgroup memory or barriers (software adapters, which pay heavily per
// barrier): each invocation computes 4 outputs as a vec4, 8 reduction steps at a time; its 4
// weight rows' scales and offsets (a GGUF sub-block's) are read once per 8 values, and each
// input value (SwiGLU's product with `glu`) serves the 4 rows.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c0 = flat(wid, nwg, lid) * 4u;
    if (c0 >= p.m) { return; }
    let c = rows4(c0);
    let wb = starts4(c);
    var a = vec4<f32>(0.0);
    var k0 = 0u;
    for (; k0 + 8u <= p.k; k0 += 8u) {
        let s = wscale4(wb, c, k0);
        for (var t = 0u; t < 8u; t++) {
            let k = k0 + t;
            let wk = wint4(wb, c, k, s);
            a += xin(p.x_off + k) * wk;
        }
    }
    for (; k0 < p.k; k0++) {
        a += xin(p.x_off + k0) * wv4(wb, c, k0);
    }
    for (var j = 0u; j < 4u; j++) {
        let cj = c0 + j;
        if (cj >= p.m) { break; }
        store(0u, cj, a[j]);
    }
}
