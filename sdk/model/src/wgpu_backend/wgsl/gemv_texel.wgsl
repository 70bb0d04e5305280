// One-row product over texels (see texel.wgsl): 4 outputs per invocation, two 4-value steps
// per loop turn.
// Values `4j..4j + 4` of the input: SwiGLU's `silu(gate) * up`, the up half `up` vec4 further.
fn swiglu(j: u32, up: u32) -> vec4<f32> {
    let g = xu[j];
    return g / (1.0 + exp(-g)) * xu[j + up];
}

// Two steps of one row: the input's `v0`, `v1` against texels `t`, `t + 1`.
fn pair(v0: vec4<f32>, v1: vec4<f32>, t: u32) -> vec4<f32> {
    return v0 * texel(t) + v1 * texel(t + 1u);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c0 = flat(wid, nwg, lid) * 4u;
    if (c0 >= p.m) { return; }
    let k4 = p.k / 4u;
    // Past the last row, the last row again.
    let last = p.m - 1u;
    let rows = vec4<u32>(c0, min(c0 + 1u, last), min(c0 + 2u, last), min(c0 + 3u, last));
    let t = vec4<u32>(p.w_off / 4u) + rows * k4;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    // Two steps at a time (the best unrolling on llvmpipe), then an odd last step.
    let pairs = k4 & ~1u;
    if (p.glu == 0u) {
        for (var j = 0u; j < pairs; j += 2u) {
            let v0 = xu[j];
            let v1 = xu[j + 1u];
            a0 += pair(v0, v1, t.x + j);
            a1 += pair(v0, v1, t.y + j);
            a2 += pair(v0, v1, t.z + j);
            a3 += pair(v0, v1, t.w + j);
        }
    } else {
        let up = p.glu / 4u;
        for (var j = 0u; j < pairs; j += 2u) {
            let v0 = swiglu(j, up);
            let v1 = swiglu(j + 1u, up);
            a0 += pair(v0, v1, t.x + j);
            a1 += pair(v0, v1, t.y + j);
            a2 += pair(v0, v1, t.z + j);
            a3 += pair(v0, v1, t.w + j);
        }
    }
    if (pairs < k4) {
        let j = pairs;
        var v = xu[j];
        if (p.glu != 0u) { v = swiglu(j, p.glu / 4u); }
        a0 += v * texel(t.x + j);
        a1 += v * texel(t.y + j);
        a2 += v * texel(t.z + j);
        a3 += v * texel(t.w + j);
    }
    let one = vec4<f32>(1.0);
    let sums = vec4<f32>(dot(a0, one), dot(a1, one), dot(a2, one), dot(a3, one));
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j >= p.m) { break; }
        store(0u, c0 + j, sums[j]);
    }
}
