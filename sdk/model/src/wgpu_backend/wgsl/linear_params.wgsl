struct P { n: u32, k: u32, m: u32, x_off: u32, w_off: u32, o_stride: u32, o_col: u32,
           b_off: u32, has_b: u32, glu: u32, has_r: u32, r_off: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read> resid: array<f32>;

// Input value `i` of a one-row product: `x[i]`, or with `glu` (the distance from each gate value
// to its up value) SwiGLU's `silu(gate) * up` computed on the fly (one-row kernels only).
fn xin(i: u32) -> f32 {
    let g = x[i];
    if (p.glu == 0u) { return g; }
    return g / (1.0 + exp(-g)) * x[i + p.glu];
}

// The residual added to output element `i` (after the bias), or nothing.
fn res(i: u32) -> f32 {
    if (p.has_r == 0u) { return 0.0; }
    return resid[p.r_off + i];
}

// Writes output (row `r`, column `c`): `v`, plus the bias and the residual when there are any.
fn store(r: u32, c: u32, v: f32) {
    let i = r * p.o_stride + p.o_col + c;
    var out = v;
    if (p.has_b != 0u) { out += b[p.b_off + c]; }
    o[i] = out + res(i);
}
