//! The VisionThink protocol as a sans-I/O state machine (SPEC §1).
//!
//! The caller owns the model and the images. It asks an [`Episode`] for the turn-1 prompt, feeds
//! it each model turn (text decoded with special tokens skipped) and gets back a [`Step`]: the
//! final [`Outcome`], or a [`ToolTurn`] to append directly after the model's `<|im_end|>` — with
//! an [`ImageRequest`] when the tool returns an image. The trainer's rollouts, the Rust SDK and
//! the browser all drive this same machine.
//!
//! ```
//! use visionthink_core::protocol::{Episode, ProtocolConfig, Step, ImageRequest};
//! let mut ep = Episode::new("What is the code on the label?", ProtocolConfig::default());
//! assert_eq!(ep.initial_prompt().num_images(), 1); // the low-resolution image
//! let turn1 = "<think>Too small to read.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";
//! match ep.on_model_turn(turn1).unwrap() {
//!     Step::ToolTurn(t) => {
//!         assert_eq!(t.image, Some(ImageRequest::HighRes));
//!         assert_eq!(t.prompt.num_images(), 1);
//!     }
//!     Step::Done(_) => unreachable!(),
//! }
//! match ep.on_model_turn("<think>Now I can read it.</think><answer>X7Q</answer>").unwrap() {
//!     Step::Done(o) => {
//!         assert_eq!(o.answer.as_deref(), Some("X7Q"));
//!         assert!(o.used_high_res);
//!     }
//!     Step::ToolTurn(_) => unreachable!(),
//! }
//! ```

use crate::error::{Error, Result};
use crate::image::{self, Filter, RgbImage};
use crate::prompt::{
    tool_response_crop, tool_response_error, tool_response_image, visionthink_turn1_with, Prompt,
};
use regex::Regex;
use std::sync::OnceLock;

/// What image a tool asks the caller for. New tools add variants; callers fulfil any request
/// with [`ImageRequest::fulfil`], so they need no change when a tool is added.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ImageRequest {
    /// The episode's high-resolution image (the original on the evaluation path; twice the
    /// low-resolution size on the training path).
    HighRes,
    /// The low-resolution image scaled by `factor` (LANCZOS, int truncation of the sides).
    Scaled {
        /// Scale relative to the low-resolution image.
        factor: f64,
    },
    /// A region of the episode's high-resolution image, in its pixels (the `crop_image` tool
    /// beyond the paper; [`CropTool`] maps the model's box onto it).
    Crop {
        /// Left column.
        x: u32,
        /// Top row.
        y: u32,
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
    },
}

/// The images of one episode, from which requests are fulfilled.
#[derive(Debug, Clone)]
pub struct EpisodeImages {
    /// What turn 1 shows.
    pub low_res: RgbImage,
    /// What [`ImageRequest::HighRes`] returns.
    pub high_res: RgbImage,
}

impl EpisodeImages {
    /// The evaluation-path pair of an original image (SPEC §4).
    pub fn for_inference(original: &RgbImage) -> Result<Self> {
        Ok(Self {
            low_res: image::inference_low_res(original)?,
            high_res: image::inference_high_res(original)?,
        })
    }

    /// The training-path pair of an original image (SPEC §4).
    pub fn for_training(original: &RgbImage) -> Result<Self> {
        let t = image::training_images(original)?;
        Ok(Self {
            low_res: t.low_res,
            high_res: t.high_res,
        })
    }
}

impl ImageRequest {
    /// Produces the requested image.
    pub fn fulfil(&self, images: &EpisodeImages) -> Result<RgbImage> {
        match self {
            ImageRequest::HighRes => Ok(images.high_res.clone()),
            ImageRequest::Scaled { factor } => {
                if !(factor.is_finite() && *factor > 0.0) {
                    return Err(Error::Protocol(format!(
                        "scale factor {factor} must be positive"
                    )));
                }
                let w = (f64::from(images.low_res.width) * factor) as u32;
                let h = (f64::from(images.low_res.height) * factor) as u32;
                image::resize(&images.low_res, w, h, Filter::Lanczos)
            }
            ImageRequest::Crop {
                x,
                y,
                width,
                height,
            } => image::crop(&images.high_res, *x, *y, *width, *height),
        }
    }
}

/// What a tool may need to know about the episode's images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolContext {
    /// `(width, height)` of the turn-1 image as the model sees it (after the processor's
    /// `smart_resize`: Qwen2.5-VL grounds boxes in those pixels).
    pub seen: Option<(u32, u32)>,
    /// `(width, height)` of the episode's high-resolution image, which crops are cut from.
    pub source: Option<(u32, u32)>,
}

/// A tool the model may call. The official protocol dispatches on `arguments.action` (the
/// function `name` is not checked).
pub trait Tool: Send + Sync + std::fmt::Debug {
    /// The `action` value this tool answers to.
    fn action(&self) -> &str;
    /// Runs the call with its `arguments` object; `Err` becomes the error turn's text.
    fn call(
        &self,
        arguments: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<ImageRequest, String>;
    /// The function name this tool also answers to when a call's `arguments` has no `action`
    /// (tools beyond the official protocol, called as `{"name": …, "arguments": {…}}`). `None`
    /// (the default): dispatched on `action` only, as the official code does.
    fn name(&self) -> Option<&str> {
        None
    }
    /// [`Tool::call`] with what the episode knows about its images (the default ignores it).
    fn call_in(
        &self,
        arguments: &serde_json::Map<String, serde_json::Value>,
        ctx: &ToolContext,
    ) -> std::result::Result<ImageRequest, String> {
        let _ = ctx;
        self.call(arguments)
    }
}

/// The official `resize_image` tool: returns the high-resolution image (or a scaled copy).
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeTool {
    /// `None`: the episode's high-resolution image (official). `Some(f)`: low-res × f.
    pub factor: Option<f64>,
}

impl Tool for ResizeTool {
    fn action(&self) -> &str {
        "resize"
    }

    fn call(
        &self,
        _arguments: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<ImageRequest, String> {
        Ok(match self.factor {
            None => ImageRequest::HighRes,
            Some(factor) => ImageRequest::Scaled { factor },
        })
    }
}

/// The `crop_image` tool (beyond the paper, issue 16): `{"name": "crop_image", "arguments":
/// {"bbox": [x1, y1, x2, y2]}}`, a box in pixels of the turn-1 image as the model sees it,
/// returns that region of the episode's high-resolution image. The box is mapped by the ratio of
/// the two images' sizes, widened to whole pixels (floor of the first corner, ceiling of the
/// second). Boxes that are not four finite numbers, leave the image, are empty or inverted, or
/// map to fewer than [`CropTool::min_side`] pixels a side get an error turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CropTool {
    /// Smallest side of a crop in source pixels (28: one merged patch of Qwen2.5-VL).
    pub min_side: u32,
}

impl Default for CropTool {
    fn default() -> Self {
        Self { min_side: 28 }
    }
}

impl Tool for CropTool {
    fn action(&self) -> &str {
        "crop"
    }

    fn name(&self) -> Option<&str> {
        Some("crop_image")
    }

    fn call(
        &self,
        arguments: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<ImageRequest, String> {
        self.call_in(arguments, &ToolContext::default())
    }

    fn call_in(
        &self,
        arguments: &serde_json::Map<String, serde_json::Value>,
        ctx: &ToolContext,
    ) -> std::result::Result<ImageRequest, String> {
        let bbox = arguments.get("bbox").ok_or_else(|| key_error("bbox"))?;
        let shape = || format!("bbox must be a list of four numbers [x1, y1, x2, y2], got {bbox}");
        let corners: Vec<f64> = match bbox {
            serde_json::Value::Array(v) if v.len() == 4 => v
                .iter()
                .map(|c| c.as_f64().filter(|f| f.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(shape)?,
            _ => return Err(shape()),
        };
        let (Some((sw, sh)), Some((ow, oh))) = (ctx.seen, ctx.source) else {
            return Err(
                "the crop tool was not told the image sizes (Episode::set_image_sizes)".into(),
            );
        };
        let [x1, y1, x2, y2] = [corners[0], corners[1], corners[2], corners[3]];
        if x1 >= x2 || y1 >= y2 {
            return Err(format!(
                "bbox {bbox} is empty or inverted: it needs x1 < x2 and y1 < y2"
            ));
        }
        let (fw, fh) = (f64::from(sw), f64::from(sh));
        if x1 < 0.0 || y1 < 0.0 || x2 > fw || y2 > fh {
            return Err(format!(
                "bbox {bbox} is outside the image, which is {sw}x{sh} pixels"
            ));
        }
        let (sx, sy) = (f64::from(ow) / fw, f64::from(oh) / fh);
        let left = ((x1 * sx).floor() as u32).min(ow);
        let top = ((y1 * sy).floor() as u32).min(oh);
        let right = ((x2 * sx).ceil() as u32).min(ow);
        let bottom = ((y2 * sy).ceil() as u32).min(oh);
        let (width, height) = (right.saturating_sub(left), bottom.saturating_sub(top));
        if width < self.min_side || height < self.min_side {
            return Err(format!(
                "bbox {bbox} covers {width}x{height} pixels of the original image; a crop needs at least {0}x{0}",
                self.min_side
            ));
        }
        Ok(ImageRequest::Crop {
            x: left,
            y: top,
            width,
            height,
        })
    }
}

/// Settings of an episode.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    /// Model generation rounds (official: 2).
    pub max_rounds: usize,
    /// Images per episode, the turn-1 image included (official: 2).
    pub max_images: usize,
    /// The tools; the official set is just [`ResizeTool`].
    pub tools: Vec<std::sync::Arc<dyn Tool>>,
    /// The turn-1 system prompt listing the tools (official: [`crate::strings::SYSTEM_PROMPT`]).
    pub system_prompt: &'static str,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            max_rounds: 2,
            max_images: 2,
            tools: vec![std::sync::Arc::new(ResizeTool { factor: None })],
            system_prompt: crate::strings::SYSTEM_PROMPT,
        }
    }
}

impl ProtocolConfig {
    /// The tool set named by a list such as `--tools` takes it: `resize` (the official protocol,
    /// [`ProtocolConfig::default`]) or `resize,crop` ([`ProtocolConfig::resize_and_crop`]), in
    /// any order; anything else is an error naming the choices.
    ///
    /// ```
    /// use visionthink_core::protocol::ProtocolConfig;
    /// assert_eq!(ProtocolConfig::from_tools("crop, resize").unwrap().max_rounds, 3);
    /// assert!(ProtocolConfig::from_tools("zoom").is_err());
    /// ```
    pub fn from_tools(list: &str) -> Result<Self> {
        let mut names: Vec<&str> = list.split(',').map(str::trim).collect();
        names.sort_unstable();
        match names.as_slice() {
            ["resize"] => Ok(Self::default()),
            ["crop", "resize"] => Ok(Self::resize_and_crop()),
            _ => Err(Error::Protocol(format!(
                "tools {list:?}: expected `resize` or `resize,crop`"
            ))),
        }
    }

    /// The same tools with the given round and image limits, where they are given (a caller's
    /// options over the tool set's defaults).
    ///
    /// ```
    /// use visionthink_core::protocol::ProtocolConfig;
    /// let cfg = ProtocolConfig::resize_and_crop().with_limits(Some(4), None);
    /// assert_eq!((cfg.max_rounds, cfg.max_images), (4, 3));
    /// ```
    pub fn with_limits(mut self, max_rounds: Option<usize>, max_images: Option<usize>) -> Self {
        self.max_rounds = max_rounds.unwrap_or(self.max_rounds);
        self.max_images = max_images.unwrap_or(self.max_images);
        self
    }

    /// The extended tool set (beyond the paper, issue 16): `resize_image` and `crop_image`, up to
    /// 3 rounds and 3 images (each tool image counts), and the system prompt that lists both
    /// ([`crate::strings::SYSTEM_PROMPT_RESIZE_CROP`]).
    ///
    /// ```
    /// use visionthink_core::protocol::ProtocolConfig;
    /// let cfg = ProtocolConfig::resize_and_crop();
    /// assert_eq!((cfg.max_rounds, cfg.max_images, cfg.tools.len()), (3, 3, 2));
    /// ```
    pub fn resize_and_crop() -> Self {
        Self {
            max_rounds: 3,
            max_images: 3,
            tools: vec![
                std::sync::Arc::new(ResizeTool { factor: None }),
                std::sync::Arc::new(CropTool::default()),
            ],
            system_prompt: crate::strings::SYSTEM_PROMPT_RESIZE_CROP,
        }
    }
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The model answered without calling a tool.
    Answered,
    /// The model called a tool in the last allowed round.
    RoundLimit,
    /// The model called a tool with the image budget spent.
    ImageLimit,
}

/// The result of an episode.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// The content of the last complete `<answer>…</answer>` over all turns, stripped.
    pub answer: Option<String>,
    /// The reward-style prediction: all turns joined by a space, then the text after the last
    /// `<answer>` up to the next `</answer>`, stripped (SPEC §6).
    pub prediction: String,
    /// The `<think>` contents of every turn, joined by a blank line.
    pub thinking: String,
    /// Every model turn, decoded with special tokens skipped.
    pub turns: Vec<String>,
    /// Whether a tool turn delivered an image (a resized or, with the extended tool set, a
    /// cropped one).
    pub used_high_res: bool,
    /// Tool calls made (well-formed or not).
    pub tool_calls: usize,
    /// Of the images tool turns delivered, how many were crops (the extended tool set).
    pub crops: usize,
    /// The regions those crops cut, in order, as `[left, top, right, bottom]` fractions of the
    /// image (0 to 1; what a page draws on its preview, whatever its size).
    pub crop_regions: Vec<[f64; 4]>,
    /// Why the episode ended.
    pub end: EndReason,
}

/// A tool turn to append after the model's `<|im_end|>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolTurn {
    /// The tool response and the next generation prompt.
    pub prompt: Prompt,
    /// The image to put in `prompt`'s placeholder, if the tool returns one.
    pub image: Option<ImageRequest>,
    /// The error text of a malformed call (the prompt then has no image).
    pub error: Option<String>,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Append this turn and generate again.
    ToolTurn(ToolTurn),
    /// The episode is over.
    Done(Outcome),
}

/// One VisionThink episode.
#[derive(Debug, Clone)]
pub struct Episode {
    question: String,
    cfg: ProtocolConfig,
    turns: Vec<String>,
    images: usize,
    tool_calls: usize,
    used_high_res: bool,
    crops: usize,
    crop_regions: Vec<[f64; 4]>,
    ctx: ToolContext,
    done: bool,
}

fn json_object_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // Official: `re.compile(r'\{.*?\}\}')` without DOTALL.
    RE.get_or_init(|| Regex::new(r"\{.*?\}\}").expect("static regex"))
}

pub use crate::text::tool_call_contents;

/// Python's `str(e)` of a `KeyError`.
fn key_error(key: &str) -> String {
    format!("'{key}'")
}

/// Parses the tool calls of a turn with the official semantics: every `{…}}` inside every
/// `<tool_call>` is a JSON object; each must have `arguments.action` naming a known tool, and
/// there must be exactly one. Errors are the texts the official code puts in the error turn.
pub fn parse_tool_call(
    contents: &[&str],
    tools: &[std::sync::Arc<dyn Tool>],
) -> std::result::Result<ImageRequest, String> {
    parse_tool_call_in(contents, tools, &ToolContext::default())
}

/// [`parse_tool_call`] with what the episode knows about its images (for tools such as
/// [`CropTool`]). A call without `arguments.action` goes to the tool whose [`Tool::name`] is
/// its `name`; with the official tool set there is none, and the official error stands.
pub fn parse_tool_call_in(
    contents: &[&str],
    tools: &[std::sync::Arc<dyn Tool>],
    ctx: &ToolContext,
) -> std::result::Result<ImageRequest, String> {
    let mut objects = Vec::new();
    for c in contents {
        for m in json_object_re().find_iter(c) {
            let v: serde_json::Value =
                serde_json::from_str(m.as_str()).map_err(|e| format!("JSON decode error: {e}"))?;
            objects.push(v);
        }
    }
    if objects.is_empty() {
        return Err("No function call JSON object found inside <tool_call></tool_call>".into());
    }
    let available = tools
        .iter()
        .map(|t| format!("`{}`", t.action()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut chosen = None;
    for obj in &objects {
        let args = match obj.get("arguments") {
            Some(serde_json::Value::Object(a)) => a,
            Some(_) => return Err("arguments must be a JSON object".into()),
            None => return Err(key_error("arguments")),
        };
        let named = obj
            .get("name")
            .and_then(serde_json::Value::as_str)
            .and_then(|n| tools.iter().find(|t| t.name() == Some(n)));
        let action = match (args.get("action"), named) {
            (Some(serde_json::Value::String(s)), _) => s.clone(),
            (Some(other), _) => other.to_string(),
            (None, Some(tool)) => tool.action().to_string(),
            (None, None) => return Err(key_error("action")),
        };
        let tool = tools.iter().find(|t| t.action() == action).ok_or_else(|| {
            format!("Unknown Tool Type: {action}. Available function tools are: {available}")
        })?;
        if objects.len() != 1 {
            return Err(format!(
                "You should only call function `{action}` once per function call."
            ));
        }
        chosen = Some((tool.clone(), args.clone()));
    }
    match chosen {
        Some((tool, args)) => tool.call_in(&args, ctx),
        None => Err("No function call JSON object found inside <tool_call></tool_call>".into()),
    }
}

/// The content of the last complete `<answer>…</answer>`, stripped.
pub fn last_answer(text: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(?s)<answer>(.*?)</answer>").expect("static regex"));
    re.captures_iter(text)
        .last()
        .and_then(|c| c.get(1))
        .map(|m| crate::text::py_strip(m.as_str()).to_string())
}

fn thinking_of(turns: &[String]) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(?s)<think>(.*?)</think>").expect("static regex"));
    turns
        .iter()
        .flat_map(|t| {
            re.captures_iter(t)
                .filter_map(|c| c.get(1))
                .map(|m| crate::text::py_strip(m.as_str()).to_string())
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

impl Episode {
    /// A new episode for a question (an `<image>` tag in it places the image; otherwise the
    /// image comes first, as in the official code).
    pub fn new(question: &str, cfg: ProtocolConfig) -> Self {
        Self {
            question: question.to_string(),
            cfg,
            turns: Vec::new(),
            images: 0,
            tool_calls: 0,
            used_high_res: false,
            crops: 0,
            crop_regions: Vec::new(),
            ctx: ToolContext::default(),
            done: false,
        }
    }

    /// Tells the tools the sizes of the episode's images: the turn-1 image as the model sees it
    /// (after `smart_resize`) and the high-resolution image crops are cut from. The crop tool
    /// needs them; the official tool does not.
    pub fn set_image_sizes(&mut self, seen: (u32, u32), source: (u32, u32)) {
        self.ctx = ToolContext {
            seen: Some(seen),
            source: Some(source),
        };
    }

    /// The turn-1 prompt (VisionThink system prompt, user template, the low-resolution image).
    pub fn initial_prompt(&mut self) -> Prompt {
        let p = visionthink_turn1_with(self.cfg.system_prompt, &self.question);
        self.images = p.num_images();
        p
    }

    /// Starts from a turn-1 prompt built elsewhere (e.g. through a model's chat template).
    pub fn with_initial_prompt(&mut self, prompt: &Prompt) {
        self.images = prompt.num_images();
    }

    /// The model turns so far.
    pub fn turns(&self) -> &[String] {
        &self.turns
    }

    /// Feeds one model turn, decoded with special tokens skipped.
    pub fn on_model_turn(&mut self, text: &str) -> Result<Step> {
        if self.done {
            return Err(Error::Protocol(
                "the episode is over; start a new one".into(),
            ));
        }
        self.turns.push(text.to_string());
        let contents = tool_call_contents(text);
        if contents.is_empty() {
            return Ok(Step::Done(self.finish(EndReason::Answered)));
        }
        self.tool_calls += 1;
        if self.images >= self.cfg.max_images {
            return Ok(Step::Done(self.finish(EndReason::ImageLimit)));
        }
        if self.turns.len() >= self.cfg.max_rounds {
            return Ok(Step::Done(self.finish(EndReason::RoundLimit)));
        }
        Ok(Step::ToolTurn(
            match parse_tool_call_in(&contents, &self.cfg.tools, &self.ctx) {
                Ok(request) => {
                    self.images += 1;
                    self.used_high_res = true;
                    let prompt = match request {
                        ImageRequest::Crop {
                            x,
                            y,
                            width,
                            height,
                        } => {
                            self.crops += 1;
                            if let Some((w, h)) = self.ctx.source {
                                let (w, h) = (f64::from(w.max(1)), f64::from(h.max(1)));
                                self.crop_regions.push([
                                    f64::from(x) / w,
                                    f64::from(y) / h,
                                    f64::from(x + width) / w,
                                    f64::from(y + height) / h,
                                ]);
                            }
                            tool_response_crop()
                        }
                        _ => tool_response_image(),
                    };
                    ToolTurn {
                        prompt,
                        image: Some(request),
                        error: None,
                    }
                }
                Err(error) => ToolTurn {
                    prompt: tool_response_error(&error),
                    image: None,
                    error: Some(error),
                },
            },
        ))
    }

    fn finish(&mut self, end: EndReason) -> Outcome {
        self.done = true;
        let joined = self.turns.join(" ");
        Outcome {
            answer: last_answer(&joined),
            prediction: crate::reward::extract_prediction(&self.turns),
            thinking: thinking_of(&self.turns),
            turns: self.turns.clone(),
            used_high_res: self.used_high_res,
            tool_calls: self.tool_calls,
            crops: self.crops,
            crop_regions: self.crop_regions.clone(),
            end,
        }
    }
}
