//! The model this crate ships: a small Qwen2.5-VL trained from scratch by `visionthink-train`
//! (SFT warm start, then multi-turn GRPO with the VisionThink rewards) on the synthetic task of
//! `visionthink-train synth`: coarse questions (the colour of a large shape, a light or dark
//! background) that the half-size image answers, and fine questions (a one-pixel background
//! texture) that need the full image. It is the CLI's default model (`visionthink ask` without `--model-dir`) and the
//! browser demo's. How it was trained, and how well it does, is in `model/README.md`.

use crate::engine::{DeviceChoice, LoadOptions, Precision, VisionThink};
use crate::error::Result;

/// The model's files, embedded in the binary (about 25 MB: bf16 weights, tokenizer, configs).
pub const FILES: &[(&str, &[u8])] = &[
    ("config.json", include_bytes!("../model/config.json")),
    (
        "model.safetensors",
        include_bytes!("../model/model.safetensors"),
    ),
    ("tokenizer.json", include_bytes!("../model/tokenizer.json")),
    (
        "tokenizer_config.json",
        include_bytes!("../model/tokenizer_config.json"),
    ),
    (
        "chat_template.json",
        include_bytes!("../model/chat_template.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../model/generation_config.json"),
    ),
    (
        "preprocessor_config.json",
        include_bytes!("../model/preprocessor_config.json"),
    ),
];

/// Name shown for the shipped model.
pub const NAME: &str = "visionthink-synth (shipped)";

/// An example image of the synthetic task (224×224): a large shape on a background whose
/// one-pixel texture only the full-resolution image shows.
pub const EXAMPLE_IMAGE: &[u8] = include_bytes!("../model/example.png");
/// A coarse question about [`EXAMPLE_IMAGE`] (answerable from the half-size image).
pub const EXAMPLE_COARSE: &str = "What color is the large shape?";
/// A fine question about [`EXAMPLE_IMAGE`] (needs the full image).
pub const EXAMPLE_FINE: &str =
    "What is the fine texture of the background: horizontal, vertical or checkered?";

/// Loads the shipped model.
///
/// ```no_run
/// let vt = visionthink::shipped::load(Default::default(), Default::default())?;
/// let img = visionthink::core::image::decode(visionthink::shipped::EXAMPLE_IMAGE, Default::default())?;
/// let a = vt.ask(&img, visionthink::shipped::EXAMPLE_FINE, &Default::default())?;
/// println!("{} (full image requested: {})", a.text, a.used_high_res);
/// # Ok::<(), visionthink::Error>(())
/// ```
pub fn load(device: DeviceChoice, precision: Precision) -> Result<VisionThink> {
    VisionThink::from_files(NAME, FILES, device, precision)
}

/// [`load`] with [`LoadOptions`].
pub fn load_with(opts: &LoadOptions) -> Result<VisionThink> {
    VisionThink::from_files_with(NAME, FILES, opts)
}
