var<workgroup> qs: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> red: array<f32, 64>;
var<workgroup> bounds: vec2<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let h = wid.x;
    let r = wid.z * 65535u + wid.y;
    let valid = r < p.n;
    let kvh = h / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * p.d;
    let qb = p.q_off + r * p.heads * p.d + h * p.d;
    if (t == 0u) {
        if (valid) { bounds = vec2<u32>(ranges[2u * r], ranges[2u * r + 1u]); }
        else { bounds = vec2<u32>(0u, 0u); }
    }
    for (var j = t; j < p.d; j += 64u) { qs[j] = select(0.0, q[qb + j], valid); }
    let bnd = workgroupUniformLoad(&bounds);
    let start = bnd.x;
    let end = bnd.y;
    var acc: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) { acc[i] = 0.0; }
    var m_run = -3.0e38;
    var l_run = 0.0;
    for (var base = start; base < end; base += 64u) {
        let key = base + t;
        var s = -3.0e38;
        if (key < end) {
            let kb = p.k_off + key * kv_stride + kvh * p.d;
            var dot = 0.0;
            for (var j = 0u; j < p.d; j++) { dot += qs[j] * k[kb + j]; }
            s = dot * p.scale;
        }
        red[t] = s;
        workgroupBarrier();
        for (var step = 32u; step > 0u; step >>= 1u) {
            if (t < step) { red[t] = max(red[t], red[t + step]); }
            workgroupBarrier();
        }
        let new_m = max(m_run, red[0]);
        workgroupBarrier();
        var pv = 0.0;
        if (key < end) { pv = exp(s - new_m); }
        ps[t] = pv;
        red[t] = pv;
        workgroupBarrier();
        for (var step = 32u; step > 0u; step >>= 1u) {
            if (t < step) { red[t] += red[t + step]; }
            workgroupBarrier();
        }
        let corr = exp(m_run - new_m);
        l_run = l_run * corr + red[0];
        let cnt = min(64u, end - base);
        for (var i = 0u; i < 4u; i++) {
            let j = t + i * 64u;
            if (j < p.d) {
                var a = acc[i] * corr;
                for (var kk = 0u; kk < cnt; kk++) {
                    a += ps[kk] * v[p.v_off + (base + kk) * kv_stride + kvh * p.d + j];
                }
                acc[i] = a;
            }
        }
        m_run = new_m;
        workgroupBarrier();
    }
    if (!valid) { return; }
    let ob = r * p.heads * p.d + h * p.d;
    for (var i = 0u; i < 4u; i++) {
        let j = t + i * 64u;
        if (j < p.d) { o[ob + j] = select(0.0, acc[i] / l_run, l_run > 0.0); }
    }
}
