// GGUF blocks as stored in the file, read as bytes from a u32 array (blocks of 18, 34 or 210
// bytes are not 4-byte aligned) and dequantised in registers.
@group(0) @binding(2) var<storage, read> w: array<u32>;
// Byte `b` of the blocks.
fn wbyte(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 3u) << 3u)) & 0xffu;
}
// Byte `b` as a signed value.
fn wsbyte(b: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(wbyte(b)), 0u, 8u));
}
// The f16 at even byte `b`, as f32.
fn whalf(b: u32) -> f32 {
    return unpack2x16float(w[b >> 2u] >> ((b & 2u) << 3u)).x;
}
