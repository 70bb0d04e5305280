//! The one error type of the core. Variants carry the offending values so a message names the
//! problem without the caller having to add context.

/// Everything that can go wrong in the core. Nothing in the core panics on user input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image bytes could not be decoded (corrupt, truncated or unsupported).
    #[error("cannot decode image ({format}): {reason}")]
    ImageDecode {
        /// The detected format, or "unknown".
        format: String,
        /// What the decoder said.
        reason: String,
    },
    /// The image header announces more pixels or bytes than the configured limits allow.
    #[error("image of {width}x{height} exceeds the decode limit ({limit}); refusing to decode (decompression-bomb guard)")]
    ImageTooLarge {
        /// Announced width.
        width: u64,
        /// Announced height.
        height: u64,
        /// The limit that was hit, in words.
        limit: String,
    },
    /// A width or height of zero, or too small to be processed.
    #[error("image of {width}x{height} is too small: {reason}")]
    ImageTooSmall {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Why it cannot be processed.
        reason: String,
    },
    /// `smart_resize` refuses aspect ratios above 200 (as HF `transformers` does).
    #[error("absolute aspect ratio must be smaller than 200, got {ratio:.3} for a {width}x{height} image")]
    AspectRatio {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// max(h, w) / min(h, w).
        ratio: f64,
    },
    /// A pixel buffer whose length does not match its stated size.
    #[error("pixel buffer of {got} bytes does not match {width}x{height}x3 = {expected}")]
    PixelBuffer {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Expected byte count.
        expected: usize,
        /// Actual byte count.
        got: usize,
    },
    /// `tokenizer.json` could not be parsed or is not a Qwen2.5-VL tokenizer.
    #[error("invalid tokenizer.json: {0}")]
    Tokenizer(String),
    /// A configuration file could not be parsed or misses a required field.
    #[error("invalid {file}: {reason}")]
    Config {
        /// Which file (`config.json`, `preprocessor_config.json`, …).
        file: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The chat template failed to compile or render.
    #[error("chat template error: {0}")]
    Template(String),
    /// The prompt's image placeholders do not match the images supplied.
    #[error("the prompt has {placeholders} image placeholder(s) but {images} image(s) were given")]
    ImageCountMismatch {
        /// `<|image_pad|>` placeholders found in the prompt.
        placeholders: usize,
        /// Images supplied.
        images: usize,
    },
    /// A position-id computation got inconsistent inputs.
    #[error("position ids: {0}")]
    Positions(String),
    /// The protocol state machine was driven out of order.
    #[error("protocol misuse: {0}")]
    Protocol(String),
    /// Rollouts or rewards input that cannot be scored.
    #[error("reward input: {0}")]
    Reward(String),
}

impl Error {
    /// The error's stable name (the JS `Error.name` in the browser package): `ImageError` for
    /// an image that cannot be used, `ProtocolError` for everything else of the core.
    ///
    /// ```
    /// let e = visionthink_core::Error::Protocol("x".into());
    /// assert_eq!(e.name(), "ProtocolError");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Error::ImageDecode { .. }
            | Error::ImageTooLarge { .. }
            | Error::ImageTooSmall { .. }
            | Error::AspectRatio { .. } => "ImageError",
            _ => "ProtocolError",
        }
    }
}

/// Result alias of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
