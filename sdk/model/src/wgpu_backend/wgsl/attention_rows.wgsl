// Attention without workgroup memory or barriers (software adapters, which pay heavily per
// barrier): one invocation per (query row, head), neighbouring invocations on neighbouring rows
// of one head (so they read the same keys), the keys of the row's range streamed one by one
// with an online softmax; the output row accumulates in the invocation's own memory.
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
    let g = (wid.y * nwg.x + wid.x) * 64u + t;
    if (g >= p.n * p.heads) { return; }
    let r = g % p.n;
    let h = g / p.n;
    let kvh = h / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * p.d;
    let qb = p.q_off + r * p.heads * p.d + h * p.d;
    var qv: array<f32, 256>;
    var acc: array<f32, 256>;
    for (var j = 0u; j < p.d; j++) {
        qv[j] = q[qb + j] * p.scale;
        acc[j] = 0.0;
    }
    var m_run = -3.0e38;
    var l_run = 0.0;
    let end = ranges[2u * r + 1u];
    for (var key = ranges[2u * r]; key < end; key++) {
        let kb = p.k_off + key * kv_stride + kvh * p.d;
        var s = 0.0;
        for (var j = 0u; j < p.d; j++) { s += qv[j] * k[kb + j]; }
        if (s > m_run) {
            let corr = exp(m_run - s);
            l_run *= corr;
            for (var j = 0u; j < p.d; j++) { acc[j] *= corr; }
            m_run = s;
        }
        let pv = exp(s - m_run);
        l_run += pv;
        let vb = p.v_off + key * kv_stride + kvh * p.d;
        for (var j = 0u; j < p.d; j++) { acc[j] += pv * v[vb + j]; }
    }
    let ob = r * p.heads * p.d + h * p.d;
    for (var j = 0u; j < p.d; j++) { o[ob + j] = select(0.0, acc[j] / l_run, l_run > 0.0); }
}
