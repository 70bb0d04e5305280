//! Fixtures shared by the core's integration tests. Everything is embedded at compile time so the
//! same tests run natively and on wasm32 (no file system there).
#![allow(dead_code)]

use sha2::{Digest, Sha256};

/// The reduced Qwen2.5-VL tokenizer (tests/scripts/reduce_qwen_tokenizer.py).
pub const TOKENIZER_JSON: &[u8] =
    include_bytes!("../../../../tests/fixtures/tokenizer/tokenizer.json");
/// Its chat template (Qwen2.5-VL).
pub const CHAT_TEMPLATE_JSON: &[u8] =
    include_bytes!("../../../../tests/fixtures/tokenizer/chat_template.json");
/// Its tokenizer_config.json.
pub const TOKENIZER_CONFIG_JSON: &[u8] =
    include_bytes!("../../../../tests/fixtures/tokenizer/tokenizer_config.json");
/// Golden preprocessing results (tests/scripts/gen_fixtures.py).
pub const PREPROCESS_JSON: &str = include_str!("../../../../tests/fixtures/golden/preprocess.json");
/// Golden tokenizer ids.
pub const TOKENS_JSON: &str = include_str!("../../../../tests/fixtures/golden/tokens.json");
/// Golden prompts, ids and positions.
pub const PROMPTS_JSON: &str = include_str!("../../../../tests/fixtures/golden/prompts.json");

/// A fixture image's bytes by file name.
pub fn image_bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        "exact_28x28.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/exact_28x28.png"
        )),
        "gray16_40x30.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/gray16_40x30.png"
        )),
        "gray_90x60.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/gray_90x60.png"
        )),
        "half_even_42x70.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/half_even_42x70.png"
        )),
        "half_even_98x126.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/half_even_98x126.png"
        )),
        "lossless_150x100.webp" => Some(include_bytes!(
            "../../../../tests/fixtures/images/lossless_150x100.webp"
        )),
        "odd_333x517.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/odd_333x517.png"
        )),
        "palette_120x90.gif" => Some(include_bytes!(
            "../../../../tests/fixtures/images/palette_120x90.gif"
        )),
        "photo_1024x768.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/photo_1024x768.png"
        )),
        "photo_300x200.jpg" => Some(include_bytes!(
            "../../../../tests/fixtures/images/photo_300x200.jpg"
        )),
        "photo_640x480.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/photo_640x480.png"
        )),
        "rgb16_40x30.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/rgb16_40x30.png"
        )),
        "rgba_100x80.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/rgba_100x80.png"
        )),
        "small_27x40.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/small_27x40.png"
        )),
        "tall_57x1601.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/tall_57x1601.png"
        )),
        "tiny_1x1.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/tiny_1x1.png"
        )),
        "tiny_3x5.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/tiny_3x5.png"
        )),
        "too_wide_3000x14.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/too_wide_3000x14.png"
        )),
        "wide_2000x20.png" => Some(include_bytes!(
            "../../../../tests/fixtures/images/wide_2000x20.png"
        )),
        _ => None,
    }
}

/// A golden prompt file by name.
pub fn prompt_file(name: &str) -> Option<&'static str> {
    match name {
        "prompt_one_image_lowres.txt" => Some(include_str!(
            "../../../../tests/fixtures/golden/prompt_one_image_lowres.txt"
        )),
        "prompt_one_image_full.txt" => Some(include_str!(
            "../../../../tests/fixtures/golden/prompt_one_image_full.txt"
        )),
        "prompt_two_images_visionthink.txt" => Some(include_str!(
            "../../../../tests/fixtures/golden/prompt_two_images_visionthink.txt"
        )),
        "prompt_two_images_wide.txt" => Some(include_str!(
            "../../../../tests/fixtures/golden/prompt_two_images_wide.txt"
        )),
        _ => None,
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of f32 values as little-endian bytes.
pub fn sha256_f32le(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}
