// `out = x · wᵀ + b` with the tiles in workgroup memory as `T` (f32, or f16 where the adapter
// has `shader-f16`; `to_t` converts, clamping to f16's range): 64×64 output tiles, 16×16 threads
// each computing 4×4, the reduction taken 32 values at a time. Each thread multiplies and sums
// its products in `T` over those 32, then adds each step's sums to f32 accumulators, so f16
// rounding grows with 32 terms, not with `k`. Each thread widens 8 consecutive values of one
// weight row per step (`wscale` / `wint`: a GGUF sub-block's scale and offset read once, not per
// value; rows of block weights are whole blocks, so `k` is a multiple of 32 there), value by
// value where fewer than 8 remain. Workgroup memory: 2 × 64 × 32 × sizeof(T), at most 16 KiB,
// WebGPU's default limit.
var<workgroup> xs: array<T, 2048>;
var<workgroup> ws: array<T, 2048>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    // The weight values this thread widens: row `wr` of the tile, values `wk..wk + 8` of the step.
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
            xs[e] = to_t(select(0.0, x[p.x_off + gr * p.k + gk], gr < p.n && gk < p.k));
        }
        let k1 = k0 + wk;
        if (gc < p.m && k1 + 8u <= p.k) {
            let sc = wscale(wrow + k1, gc);
            for (var j = 0u; j < 8u; j++) {
                ws[wr * 32u + wk + j] = to_t(wint(wrow + k1 + j, gc) * sc.x + sc.y);
            }
        } else {
            for (var j = 0u; j < 8u; j++) {
                var v = 0.0;
                if (gc < p.m && k1 + j < p.k) { v = wv(wrow + k1 + j, gc); }
                ws[wr * 32u + wk + j] = to_t(v);
            }
        }
        workgroupBarrier();
        var part: array<array<T, 4>, 4>;
        for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { part[i][j] = T(0.0); } }
        for (var kk = 0u; kk < 32u; kk++) {
            var av: array<T, 4>;
            var bv: array<T, 4>;
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
