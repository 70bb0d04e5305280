//! # visionthink-core
//!
//! The sans-I/O core of VisionThink (arXiv 2507.13348): everything that must be identical in
//! the browser, the native SDK and the trainer, and nothing that touches a file, a socket or a
//! tensor library. It takes bytes and returns data.
//!
//! - [`strings`]: the protocol's prompts, byte-exact.
//! - [`prompt`]: turn-1 prompt, tool-response turns, chat templates (`minijinja`).
//! - [`tokenizer`]: Qwen2.5-VL tokenization; user text never becomes control tokens.
//! - [`image`]: decoding with limits, Pillow-exact resampling, `smart_resize`, `pixel_values`,
//!   the VisionThink low-/high-resolution paths.
//! - [`rope`]: M-RoPE position ids and `rope_delta`.
//! - [`protocol`]: the low-res-first episode as a state machine.
//! - [`driver`]: the token loop of an episode (turn 1, forced turns, the budget cut, tool
//!   turns, streaming text, the answer record) for any executor to drive.
//! - [`chat`]: the same episode over a chat API (messages instead of tokens), for remote
//!   engines such as vLLM.
//! - [`sampling`]: greedy / temperature / top-k / top-p token selection, seeded.
//! - [`reward`], [`judge`]: format/accuracy rewards, penalties, GRPO advantages, judges.
//! - [`config`]: `config.json` (flat and nested), `preprocessor_config.json`,
//!   `generation_config.json`.
//!
//! ```
//! use visionthink_core::{image, prompt, rope, tokens};
//! // A 640x480 photo: the model first sees 320x240 → smart_resize 308x252 → 11x9 = 99 tokens
//! // (the full image would cost 23x17 = 391).
//! let photo = image::RgbImage::new(640, 480, vec![90; 640 * 480 * 3]).unwrap();
//! let low = image::inference_low_res(&photo).unwrap();
//! let pv = image::preprocess(&low, &Default::default()).unwrap();
//! assert_eq!(pv.num_image_tokens(2), 99);
//! let p = prompt::visionthink_turn1("What animal is this?");
//! assert!(p.render().contains(tokens::IMAGE_PLACEHOLDER));
//! ```

#[cfg(not(any(feature = "fancy-regex", feature = "onig")))]
compile_error!("visionthink-core needs a tokenizer regex engine: enable feature `fancy-regex` (any target) or `onig` (native)");

pub mod answer;
pub mod chat;
pub mod config;
pub mod driver;
pub mod error;
pub mod gguf;
pub mod image;
pub mod judge;
pub mod model_files;
mod parallel;
pub mod prompt;
pub mod protocol;
pub mod reward;
pub mod rope;
pub mod sampling;
pub mod strings;
pub mod text;
pub mod tokenizer;
pub mod tokens;

pub use error::{Error, Result};
