// `out = x · wᵀ + b` in f16 arithmetic (adapters with `shader-f16`): 64×64 output tiles, 16×16
// threads each computing 4×4. The inputs and the widened weights go to workgroup memory as f16,
// 32 reduction values at a time; each thread multiplies and sums them in f16 over those 32, then
// adds each step's sums to f32 accumulators, so rounding grows with 32 terms, not with `k`.
// Inputs beyond f16's range are clamped to it. Each thread widens 8 values of one weight row per
// step (`wscale` / `wint`: a GGUF sub-block's scale read once).
var<workgroup> xs: array<f16, 2048>;
var<workgroup> ws: array<f16, 2048>;

const F16_MAX: f32 = 65504.0;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let wr = lid / 4u;
    let wk = (lid % 4u) * 8u;
    let gc = col0 + wr;
    let wrow = p.w_off + gc * p.k;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        for (var e = lid; e < 2048u; e += 256u) {
            let gr = row0 + e / 32u;
            let gk = k0 + e % 32u;
            let v = select(0.0, x[p.x_off + gr * p.k + gk], gr < p.n && gk < p.k);
            xs[e] = f16(clamp(v, -F16_MAX, F16_MAX));
        }
        let k1 = k0 + wk;
        if (gc < p.m && k1 + 8u <= p.k) {
            let sc = wscale(wrow + k1, gc);
            for (var j = 0u; j < 8u; j++) {
                let v = wint(wrow + k1 + j, gc) * sc.x + sc.y;
                ws[wr * 32u + wk + j] = f16(clamp(v, -F16_MAX, F16_MAX));
            }
        } else {
            for (var j = 0u; j < 8u; j++) {
                var v = 0.0;
                if (gc < p.m && k1 + j < p.k) { v = clamp(wv(wrow + k1 + j, gc), -F16_MAX, F16_MAX); }
                ws[wr * 32u + wk + j] = f16(v);
            }
        }
        workgroupBarrier();
        var part: array<array<f16, 4>, 4>;
        for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { part[i][j] = 0.0h; } }
        for (var kk = 0u; kk < 32u; kk++) {
            var av: array<f16, 4>;
            var bv: array<f16, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = xs[(l.y * 4u + i) * 32u + kk];
                bv[i] = ws[(l.x * 4u + i) * 32u + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { part[i][j] += av[i] * bv[j]; }
            }
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) { acc[i][j] += f32(part[i][j]); }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + l.y * 4u + i;
        if (r >= p.n) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + l.x * 4u + j;
            if (c >= p.m) { continue; }
            store(r, c, acc[i][j]);
        }
    }
}
