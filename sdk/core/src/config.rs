//! Qwen2.5-VL configuration files: `config.json` (flat or nested layout),
//! `preprocessor_config.json` and `generation_config.json`. Parsed from bytes.

use crate::error::{Error, Result};
use serde_json::Value;

/// The most pixels one image may be resized to: 32 768 visual tokens of 28 × 28 px (25.7 Mpx,
/// twice Qwen2.5-VL's default `max_pixels`). A `preprocessor_config.json` whose limits would
/// resize beyond it is refused instead of allocating gigabytes per image.
pub const MAX_RESIZED_PIXELS: u64 = 32_768 * 28 * 28;

/// The largest `temporal_patch_size` accepted (Qwen2.5-VL uses 2; each image is repeated that
/// many times in `pixel_values`).
pub const MAX_TEMPORAL_PATCH: u32 = 16;

/// The image processor settings (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorConfig {
    /// Minimum area after `smart_resize` (`min_pixels` or `size.shortest_edge`).
    pub min_pixels: u64,
    /// Maximum area after `smart_resize` (`max_pixels` or `size.longest_edge`).
    pub max_pixels: u64,
    /// Vision patch side (14).
    pub patch_size: u32,
    /// Spatial merge (2): tokens are 2×2 patches.
    pub merge_size: u32,
    /// Temporal patch (2): an image is duplicated into two frames.
    pub temporal_patch_size: u32,
    /// Per-channel mean (CLIP).
    pub image_mean: [f32; 3],
    /// Per-channel std (CLIP).
    pub image_std: [f32; 3],
    /// Whether to `smart_resize`.
    pub do_resize: bool,
    /// Whether to multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// 1/255.
    pub rescale_factor: f64,
    /// Whether to normalise with mean/std.
    pub do_normalize: bool,
}

/// CLIP mean used by Qwen2.5-VL (the Python doubles cast to f32, as numpy does).
pub const OPENAI_CLIP_MEAN: [f32; 3] = [
    0.48145466_f64 as f32,
    0.4578275_f64 as f32,
    0.40821073_f64 as f32,
];
/// CLIP std used by Qwen2.5-VL.
pub const OPENAI_CLIP_STD: [f32; 3] = [
    0.26862954_f64 as f32,
    0.26130258_f64 as f32,
    0.27577711_f64 as f32,
];

impl Default for PreprocessorConfig {
    /// The values of the released Qwen2.5-VL `preprocessor_config.json` (min 3136, max 12845056).
    fn default() -> Self {
        Self {
            min_pixels: 3136,
            max_pixels: 12_845_056,
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
        }
    }
}

fn cfg_err(file: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        file,
        reason: reason.into(),
    }
}

fn parse_object(file: &'static str, bytes: &[u8]) -> Result<serde_json::Map<String, Value>> {
    let text = std::str::from_utf8(bytes).map_err(|e| cfg_err(file, format!("not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(cfg_err(
            file,
            format!("expected a JSON object, found {}", json_kind(&other)),
        )),
        Err(e) => Err(cfg_err(file, format!("malformed JSON: {e}"))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn get_u64(
    file: &'static str,
    m: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<u64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            cfg_err(
                file,
                format!("`{key}` must be a non-negative integer, found {v}"),
            )
        }),
    }
}

fn get_f64(
    file: &'static str,
    m: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<f64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| cfg_err(file, format!("`{key}` must be a number, found {v}"))),
    }
}

fn get_bool(
    file: &'static str,
    m: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<bool>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| cfg_err(file, format!("`{key}` must be true or false, found {v}"))),
    }
}

fn get_triple(
    file: &'static str,
    m: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<[f32; 3]>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, v) in out.iter_mut().zip(a) {
                *o = v
                    .as_f64()
                    .ok_or_else(|| cfg_err(file, format!("`{key}` must hold numbers, found {v}")))?
                    as f32;
            }
            Ok(Some(out))
        }
        Some(v) => Err(cfg_err(
            file,
            format!("`{key}` must be an array of 3 numbers, found {v}"),
        )),
    }
}

impl PreprocessorConfig {
    /// Parses `preprocessor_config.json`; absent keys keep the Qwen2.5-VL defaults. Limits come
    /// from `min_pixels`/`max_pixels` or from `size.shortest_edge`/`size.longest_edge`
    /// (explicit `min_pixels`/`max_pixels` win, as in `transformers`).
    ///
    /// ```
    /// use visionthink_core::config::PreprocessorConfig;
    /// let c = PreprocessorConfig::from_json(br#"{"size": {"shortest_edge": 100, "longest_edge": 5000}}"#).unwrap();
    /// assert_eq!((c.min_pixels, c.max_pixels), (100, 5000));
    /// let c = PreprocessorConfig::from_json(br#"{"min_pixels": 3136, "max_pixels": 1003520}"#).unwrap();
    /// assert_eq!(c.max_pixels, 1003520);
    /// assert!(PreprocessorConfig::from_json(b"{\"patch_size\": -1}").is_err());
    /// ```
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m = parse_object(PRE, bytes)?;
        let mut c = Self::default();
        c.read_pixel_limits(&m)?;
        let u32_field = |key: &str, default: u32| -> Result<u32> {
            match get_u64(PRE, &m, key)? {
                None => Ok(default),
                Some(0) => Err(cfg_err(PRE, format!("`{key}` must be positive"))),
                Some(v) => u32::try_from(v)
                    .map_err(|_| cfg_err(PRE, format!("`{key}` = {v} is too large"))),
            }
        };
        c.patch_size = u32_field("patch_size", c.patch_size)?;
        c.merge_size = u32_field("merge_size", c.merge_size)?;
        c.temporal_patch_size = u32_field("temporal_patch_size", c.temporal_patch_size)?;
        c.read_normalisation(&m)?;
        c.check_limits()?;
        Ok(c)
    }

    /// `size.{shortest_edge, longest_edge, min_pixels, max_pixels}`, then the top-level
    /// `min_pixels` / `max_pixels`, which win.
    fn read_pixel_limits(&mut self, m: &serde_json::Map<String, Value>) -> Result<()> {
        match m.get("size") {
            Some(Value::Object(s)) => {
                for (key, max) in [
                    ("shortest_edge", false),
                    ("longest_edge", true),
                    ("min_pixels", false),
                    ("max_pixels", true),
                ] {
                    self.set_pixel_limit(get_u64(PRE, s, key)?, max);
                }
            }
            Some(Value::Null) | None => {}
            Some(other) => {
                return Err(cfg_err(
                    PRE,
                    format!("`size` must be an object, found {other}"),
                ))
            }
        }
        self.set_pixel_limit(get_u64(PRE, m, "min_pixels")?, false);
        self.set_pixel_limit(get_u64(PRE, m, "max_pixels")?, true);
        Ok(())
    }

    fn set_pixel_limit(&mut self, v: Option<u64>, max: bool) {
        match (v, max) {
            (Some(v), true) => self.max_pixels = v,
            (Some(v), false) => self.min_pixels = v,
            (None, _) => {}
        }
    }

    /// `image_mean`, `image_std`, `rescale_factor` and the three `do_*` switches, bounded so
    /// that every normalised value is a finite f32: |x·rescale − mean| / |std| stays below
    /// 3·10¹⁴ for 8-bit pixels (real configs use values near 1/255, 0.5 and 0.27).
    fn read_normalisation(&mut self, m: &serde_json::Map<String, Value>) -> Result<()> {
        if let Some(v) = get_triple(PRE, m, "image_mean")? {
            self.image_mean = v;
        }
        if let Some(v) = get_triple(PRE, m, "image_std")? {
            self.image_std = v;
        }
        if self.image_std.contains(&0.0) {
            return Err(cfg_err(PRE, "`image_std` must not contain 0"));
        }
        let normal = |v: f64| v.is_finite() && v.abs() <= 1e6;
        if !self.image_mean.iter().all(|&v| normal(f64::from(v))) {
            return Err(cfg_err(
                PRE,
                "`image_mean` values must be finite and at most 10⁶ in magnitude",
            ));
        }
        if !self
            .image_std
            .iter()
            .all(|&v| normal(f64::from(v)) && v.abs() >= 1e-6)
        {
            return Err(cfg_err(
                PRE,
                "`image_std` values must be between 10⁻⁶ and 10⁶ in magnitude",
            ));
        }
        for (key, flag) in [
            ("do_resize", &mut self.do_resize),
            ("do_rescale", &mut self.do_rescale),
            ("do_normalize", &mut self.do_normalize),
        ] {
            if let Some(v) = get_bool(PRE, m, key)? {
                *flag = v;
            }
        }
        if let Some(v) = get_f64(PRE, m, "rescale_factor")? {
            if !normal(v) {
                return Err(cfg_err(
                    PRE,
                    format!("`rescale_factor` {v} must be finite and at most 10⁶ in magnitude"),
                ));
            }
            self.rescale_factor = v;
        }
        Ok(())
    }

    /// The pixel range is ordered and below [`MAX_RESIZED_PIXELS`]; the temporal patch is at
    /// most [`MAX_TEMPORAL_PATCH`].
    fn check_limits(&self) -> Result<()> {
        if self.min_pixels > self.max_pixels {
            return Err(cfg_err(
                PRE,
                format!(
                    "min_pixels {} > max_pixels {}",
                    self.min_pixels, self.max_pixels
                ),
            ));
        }
        if self.min_pixels > MAX_RESIZED_PIXELS {
            return Err(cfg_err(
                PRE,
                format!(
                    "min_pixels {} would resize every image beyond {MAX_RESIZED_PIXELS} pixels",
                    self.min_pixels
                ),
            ));
        }
        if self.temporal_patch_size > MAX_TEMPORAL_PATCH {
            return Err(cfg_err(
                PRE,
                format!(
                    "temporal_patch_size {} is over {MAX_TEMPORAL_PATCH}",
                    self.temporal_patch_size
                ),
            ));
        }
        Ok(())
    }
}

const PRE: &str = "preprocessor_config.json";
const MODEL: &str = "config.json";

/// The vision-tower part of a Qwen2.5-VL `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Number of vision blocks.
    pub depth: usize,
    /// Vision hidden size.
    pub hidden_size: usize,
    /// Vision MLP size.
    pub intermediate_size: usize,
    /// Vision attention heads.
    pub num_heads: usize,
    /// Input channels (`in_channels` or `in_chans`).
    pub in_channels: usize,
    /// Patch side (14).
    pub patch_size: usize,
    /// Spatial merge (2).
    pub spatial_merge_size: usize,
    /// Temporal patch (2).
    pub temporal_patch_size: usize,
    /// Window side in pixels (112).
    pub window_size: usize,
    /// Blocks with full attention.
    pub fullatt_block_indexes: Vec<usize>,
    /// Output width of the merger (= text hidden size).
    pub out_hidden_size: usize,
    /// Temporal rope scale for video.
    pub tokens_per_second: f64,
    /// MLP activation name.
    pub hidden_act: String,
}

/// The text-decoder part of a Qwen2.5-VL `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Vocabulary rows of the embedding (152064 for 7B).
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// KV heads (GQA).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// M-RoPE sections (t, h, w) in rotary half-dims; sums to head_dim / 2.
    pub mrope_section: Vec<usize>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Activation name.
    pub hidden_act: String,
}

/// A Qwen2.5-VL `config.json`, flat (transformers 4) or nested (`text_config`, `vision_config`,
/// `rope_parameters`; transformers 5) layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Decoder settings.
    pub text: TextConfig,
    /// Vision-tower settings.
    pub vision: VisionConfig,
    /// `<|image_pad|>` id.
    pub image_token_id: u32,
    /// `<|video_pad|>` id.
    pub video_token_id: u32,
    /// `<|vision_start|>` id.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>` id.
    pub vision_end_token_id: u32,
}

impl ModelConfig {
    /// Parses `config.json` in either layout.
    ///
    /// ```
    /// use visionthink_core::config::ModelConfig;
    /// let nested = br#"{"text_config": {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    ///   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    ///   "rope_parameters": {"rope_theta": 10000.0, "mrope_section": [1, 1, 0]}},
    ///   "vision_config": {"depth": 1, "hidden_size": 8, "intermediate_size": 16, "num_heads": 2,
    ///   "out_hidden_size": 8, "fullatt_block_indexes": [0]}}"#;
    /// let c = ModelConfig::from_json(nested).unwrap();
    /// assert_eq!(c.text.mrope_section, vec![1, 1, 0]);
    /// let err = ModelConfig::from_json(br#"{"hidden_size": 8}"#).unwrap_err();
    /// assert!(err.to_string().contains("missing required field `num_attention_heads`"));
    /// ```
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let root = parse_object(MODEL, bytes)?;
        let empty = serde_json::Map::new();
        let text = Section {
            keys: sub_object(&root, "text_config")?.unwrap_or(&root),
            root: &root,
        };
        let vision = sub_object(&root, "vision_config")?.unwrap_or(&empty);
        let text_cfg = TextConfig::from_section(&text)?;
        let vision_cfg = VisionConfig::from_section(vision, text_cfg.hidden_size)?;
        let token = |key: &str, default: u32| -> Result<u32> {
            match root.get(key).or_else(|| text.keys.get(key)) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| {
                        cfg_err(MODEL, format!("`{key}` must be a token id, found {v}"))
                    }),
            }
        };
        Ok(Self {
            text: text_cfg,
            vision: vision_cfg,
            image_token_id: token("image_token_id", crate::tokens::IMAGE_PAD)?,
            video_token_id: token("video_token_id", crate::tokens::VIDEO_PAD)?,
            vision_start_token_id: token("vision_start_token_id", crate::tokens::VISION_START)?,
            vision_end_token_id: token("vision_end_token_id", crate::tokens::VISION_END)?,
        })
    }
}

type JsonMap = serde_json::Map<String, Value>;

/// `root[key]` when it is an object; `None` when absent or null.
fn sub_object<'a>(root: &'a JsonMap, key: &str) -> Result<Option<&'a JsonMap>> {
    match root.get(key) {
        Some(Value::Object(t)) => Ok(Some(t)),
        Some(Value::Null) | None => Ok(None),
        Some(other) => Err(cfg_err(
            MODEL,
            format!("`{key}` must be an object, found {other}"),
        )),
    }
}

/// The text section of `config.json`: a key is looked up there first, then at the root
/// (nested configs keep some keys, like `tie_word_embeddings` or token ids, at the top level).
struct Section<'a> {
    keys: &'a JsonMap,
    root: &'a JsonMap,
}

impl Section<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.keys
            .get(key)
            .filter(|v| !v.is_null())
            .or_else(|| self.root.get(key).filter(|v| !v.is_null()))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(cfg_err(MODEL, format!("missing required field `{key}`"))),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                cfg_err(
                    MODEL,
                    format!("`{key}` must be a non-negative integer, found {v}"),
                )
            }),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| cfg_err(MODEL, format!("`{key}` must be a number, found {v}"))),
        }
    }

    /// `mrope_section` and `rope_theta` from `rope_parameters` (transformers 5) or
    /// `rope_scaling` (4), with `rope_theta` also read from the section itself.
    fn rope(&self) -> Result<(Vec<usize>, f64)> {
        let mut mrope_section = Vec::new();
        let mut rope_theta = self.f64_or("rope_theta", 1_000_000.0)?;
        let rope = self
            .get("rope_parameters")
            .or_else(|| self.get("rope_scaling"))
            .and_then(|v| v.as_object());
        if let Some(r) = rope {
            if let Some(ms) = r.get("mrope_section") {
                mrope_section = usize_list(ms, "mrope_section")?;
            }
            if let Some(t) = r.get("rope_theta").and_then(Value::as_f64) {
                rope_theta = t;
            }
        }
        Ok((mrope_section, rope_theta))
    }
}

/// A JSON array of non-negative integers.
fn usize_list(v: &Value, key: &str) -> Result<Vec<usize>> {
    let arr = v
        .as_array()
        .ok_or_else(|| cfg_err(MODEL, format!("`{key}` must be an array, found {v}")))?;
    arr.iter()
        .map(|x| {
            x.as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| cfg_err(MODEL, format!("`{key}` must hold integers, found {x}")))
        })
        .collect()
}

impl TextConfig {
    /// The decoder settings, checked: heads divide the hidden size, KV heads divide the heads,
    /// the M-RoPE sections cover half a head.
    fn from_section(text: &Section) -> Result<Self> {
        let (mrope_section, rope_theta) = text.rope()?;
        let hidden_size = text.usize("hidden_size")?;
        let num_attention_heads = text.usize("num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(cfg_err(MODEL, format!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")));
        }
        let head_dim = hidden_size / num_attention_heads;
        if mrope_section.is_empty() {
            return Err(cfg_err(
                MODEL,
                "missing required field `mrope_section` (in `rope_scaling` or `rope_parameters`)",
            ));
        }
        if mrope_section.iter().sum::<usize>() * 2 != head_dim {
            return Err(cfg_err(
                MODEL,
                format!(
                    "mrope_section {mrope_section:?} must sum to head_dim / 2 = {}",
                    head_dim / 2
                ),
            ));
        }
        let num_key_value_heads = text.usize_or("num_key_value_heads", num_attention_heads)?;
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(cfg_err(MODEL, format!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}")));
        }
        Ok(Self {
            vocab_size: text.usize("vocab_size")?,
            hidden_size,
            intermediate_size: text.usize("intermediate_size")?,
            num_hidden_layers: text.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            rms_norm_eps: text.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            mrope_section,
            max_position_embeddings: text.usize_or("max_position_embeddings", 128_000)?,
            tie_word_embeddings: text
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            hidden_act: text
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu")
                .to_string(),
        })
    }
}

impl VisionConfig {
    /// The vision settings (`vision_config`), with Qwen2.5-VL's defaults where optional;
    /// `out_hidden_size` defaults to the text hidden size.
    fn from_section(vision: &JsonMap, text_hidden: usize) -> Result<Self> {
        let v_usize = |key: &str, alt: Option<&str>, default: Option<usize>| -> Result<usize> {
            let v = vision.get(key).or_else(|| alt.and_then(|a| vision.get(a)));
            match (v, default) {
                (Some(v), _) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    cfg_err(
                        MODEL,
                        format!("`vision_config.{key}` must be a non-negative integer, found {v}"),
                    )
                }),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(cfg_err(
                    MODEL,
                    format!("missing required field `vision_config.{key}`"),
                )),
            }
        };
        let fullatt_block_indexes = match vision.get("fullatt_block_indexes") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => usize_list(v, "fullatt_block_indexes")?,
        };
        let depth = v_usize("depth", None, None)?;
        if let Some(bad) = fullatt_block_indexes.iter().find(|&&i| i >= depth) {
            return Err(cfg_err(
                MODEL,
                format!("fullatt_block_indexes contains {bad}, but depth is {depth}"),
            ));
        }
        Ok(Self {
            depth,
            hidden_size: v_usize("hidden_size", Some("embed_dim"), None)?,
            intermediate_size: v_usize("intermediate_size", None, None)?,
            num_heads: v_usize("num_heads", None, None)?,
            in_channels: v_usize("in_channels", Some("in_chans"), Some(3))?,
            patch_size: v_usize("patch_size", None, Some(14))?,
            spatial_merge_size: v_usize("spatial_merge_size", None, Some(2))?,
            temporal_patch_size: v_usize("temporal_patch_size", None, Some(2))?,
            window_size: v_usize("window_size", None, Some(112))?,
            fullatt_block_indexes,
            out_hidden_size: v_usize("out_hidden_size", None, Some(text_hidden))?,
            tokens_per_second: vision
                .get("tokens_per_second")
                .and_then(Value::as_f64)
                .unwrap_or(2.0),
            hidden_act: vision
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu")
                .to_string(),
        })
    }
}

/// `generation_config.json`: the decoding defaults a checkpoint ships with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationConfig {
    /// Sample instead of greedy.
    pub do_sample: Option<bool>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Top-k cutoff.
    pub top_k: Option<usize>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f64>,
    /// Stop ids (`eos_token_id` may be an int or a list).
    pub eos_token_ids: Vec<u32>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// Start id.
    pub bos_token_id: Option<u32>,
    /// New-token budget.
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Parses `generation_config.json`.
    ///
    /// ```
    /// use visionthink_core::config::GenerationConfig;
    /// let g = GenerationConfig::from_json(br#"{"eos_token_id": [151645, 151643], "temperature": 0.1, "top_k": 1}"#).unwrap();
    /// assert_eq!(g.eos_token_ids, vec![151645, 151643]);
    /// assert_eq!(g.top_k, Some(1));
    /// ```
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        const F: &str = "generation_config.json";
        let m = parse_object(F, bytes)?;
        let id = |v: &Value| -> Result<u32> {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| cfg_err(F, format!("expected a token id, found {v}")))
        };
        let eos_token_ids = match m.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.iter().map(id).collect::<Result<_>>()?,
            Some(v) => vec![id(v)?],
        };
        let opt_id = |key: &str| -> Result<Option<u32>> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => id(v).map(Some),
            }
        };
        Ok(Self {
            do_sample: get_bool(F, &m, "do_sample")?,
            temperature: get_f64(F, &m, "temperature")?,
            top_p: get_f64(F, &m, "top_p")?,
            top_k: get_u64(F, &m, "top_k")?.map(|v| v as usize),
            repetition_penalty: get_f64(F, &m, "repetition_penalty")?,
            eos_token_ids,
            pad_token_id: opt_id("pad_token_id")?,
            bos_token_id: opt_id("bos_token_id")?,
            max_new_tokens: get_u64(F, &m, "max_new_tokens")?.map(|v| v as usize),
        })
    }
}
/// The ids that end a model turn: `generation_config.json`'s `eos_token_id`s (when given) plus
/// `<|im_end|>` and `<|endoftext|>`, which always do.
///
/// ```
/// use visionthink_core::config::stop_ids;
/// use visionthink_core::tokens::{ENDOFTEXT, IM_END};
/// assert_eq!(stop_ids(None), vec![IM_END, ENDOFTEXT]);
/// ```
pub fn stop_ids(generation: Option<&GenerationConfig>) -> Vec<u32> {
    let mut ids = generation
        .map(|g| g.eos_token_ids.clone())
        .unwrap_or_default();
    for t in [crate::tokens::IM_END, crate::tokens::ENDOFTEXT] {
        if !ids.contains(&t) {
            ids.push(t);
        }
    }
    ids
}
