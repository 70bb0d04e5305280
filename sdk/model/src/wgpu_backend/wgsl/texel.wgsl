// The texel kernels' inputs (software adapters). Mesa's llvmpipe reads a storage buffer one
// invocation at a time (a bounds-checked scalar load per lane and value), but fetches texels
// and uniform data as vectors: the f32 weights come as rgba32float texels laid out row after
// row (texel t at (t % TEXEL_WIDTH, t / TEXEL_WIDTH); a view starts at texel w_off / 4), and
// the input values from a uniform copy of the input rows, one after another (`k`, and SwiGLU's
// distance `glu`, multiples of 4).
@group(0) @binding(2) var wt: texture_2d<f32>;
@group(0) @binding(7) var<uniform> xu: array<vec4<f32>, X_UNIFORM_VEC4>;

fn texel(t: u32) -> vec4<f32> {
    return textureLoad(wt, vec2<u32>(t % TEXEL_WIDTH, t / TEXEL_WIDTH), 0);
}

