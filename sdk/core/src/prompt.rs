//! Prompt construction: the VisionThink turn-1 prompt, the tool-response turns, and chat
//! templates rendered with a real Jinja engine (`minijinja`).
//!
//! A [`Prompt`] keeps apart text that comes from our templates (which may contain control tokens
//! such as `<|im_start|>`) and text a user supplied (a question, a tool error message), which the
//! tokenizer never turns into control tokens. Images are placeholders that the tokenizer expands
//! to `<|vision_start|>` + n × `<|image_pad|>` + `<|vision_end|>`.

use crate::error::{Error, Result};
use crate::strings::{
    GENERAL_QA_SYSTEM_PROMPT, SYSTEM_PROMPT, TOOL_RESPONSE_ERROR, TOOL_RESPONSE_IMAGE,
    USER_TEMPLATE,
};
use crate::tokens::IMAGE_PLACEHOLDER;

/// The image placeholder inside questions (VisionThink / LLaVA convention).
pub const IMAGE_TAG: &str = "<image>";

/// One piece of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text from our own templates: control tokens in it are recognised.
    Template(String),
    /// Text a user (or a model, in an error message) supplied: always plain text.
    User(String),
    /// The text of a chat message a client sent (a server's raw chat): control (special)
    /// tokens stay text, the non-special added tokens (`<tool_call>`, `</tool_call>`) are
    /// recognised as HF tokenizers recognise them — a model's own tool call, sent back as an
    /// assistant message, is the token it generated.
    Message(String),
    /// One image; expanded to its visual tokens at tokenization.
    Image,
}

/// A prompt as an ordered list of [`Segment`]s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prompt {
    segments: Vec<Segment>,
}

impl Prompt {
    /// An empty prompt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends template text (control tokens recognised). Adjacent text of the same kind is
    /// merged, so equal prompts compare equal however they were built.
    pub fn push_template(&mut self, text: impl AsRef<str>) -> &mut Self {
        self.push_text(Segment::Template(text.as_ref().to_string()))
    }

    /// Appends user-supplied text (never control tokens).
    pub fn push_user(&mut self, text: impl AsRef<str>) -> &mut Self {
        self.push_text(Segment::User(text.as_ref().to_string()))
    }

    /// Appends the text of a client's chat message (see [`Segment::Message`]).
    pub fn push_message(&mut self, text: impl AsRef<str>) -> &mut Self {
        self.push_text(Segment::Message(text.as_ref().to_string()))
    }

    fn push_text(&mut self, seg: Segment) -> &mut Self {
        match (self.segments.last_mut(), seg) {
            (_, Segment::Template(t) | Segment::User(t) | Segment::Message(t)) if t.is_empty() => {}
            (Some(Segment::Template(a)), Segment::Template(b))
            | (Some(Segment::User(a)), Segment::User(b))
            | (Some(Segment::Message(a)), Segment::Message(b)) => a.push_str(&b),
            (_, seg) => self.segments.push(seg),
        }
        self
    }

    /// Appends an image placeholder.
    pub fn push_image(&mut self) -> &mut Self {
        self.segments.push(Segment::Image);
        self
    }

    /// Appends template text in which every `<image>` tag becomes an image placeholder.
    fn push_template_with_images(&mut self, text: &str) {
        let mut parts = text.split(IMAGE_TAG);
        if let Some(first) = parts.next() {
            self.push_template(first);
        }
        for p in parts {
            self.push_image();
            self.push_template(p);
        }
    }

    /// Appends user text in which every `<image>` tag becomes an image placeholder (the official
    /// code replaces `<image>` after templating, so a question places its own images).
    pub fn push_user_with_images(&mut self, text: &str) -> &mut Self {
        let mut parts = text.split(IMAGE_TAG);
        if let Some(first) = parts.next() {
            self.push_user(first);
        }
        for p in parts {
            self.push_image();
            self.push_user(p);
        }
        self
    }

    /// Appends all segments of another prompt.
    pub fn extend(&mut self, other: &Prompt) -> &mut Self {
        for s in &other.segments {
            match s {
                Segment::Template(t) => self.push_template(t),
                Segment::User(t) => self.push_user(t),
                Segment::Message(t) => self.push_message(t),
                Segment::Image => self.push_image(),
            };
        }
        self
    }

    /// The segments in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Number of image placeholders.
    pub fn num_images(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Image))
            .count()
    }

    /// The prompt as text, each image written `<|vision_start|><|image_pad|><|vision_end|>`
    /// (what the official code feeds its tokenizer before expanding image pads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Template(t) | Segment::User(t) | Segment::Message(t) => out.push_str(t),
                Segment::Image => out.push_str(IMAGE_PLACEHOLDER),
            }
        }
        out
    }
}

/// Prepends `"<image>\n"` when the question has no `<image>` tag (official behaviour).
///
/// ```
/// use visionthink_core::prompt::question_with_image;
/// assert_eq!(question_with_image("What colour?"), "<image>\nWhat colour?");
/// assert_eq!(question_with_image("Look: <image> what?"), "Look: <image> what?");
/// ```
pub fn question_with_image(question: &str) -> String {
    if question.contains(IMAGE_TAG) {
        question.to_string()
    } else {
        format!("{IMAGE_TAG}\n{question}")
    }
}

/// `USER_TEMPLATE` split around `{Question}`.
fn user_template_parts() -> (&'static str, &'static str) {
    const KEY: &str = "{Question}";
    match USER_TEMPLATE.find(KEY) {
        Some(i) => (&USER_TEMPLATE[..i], &USER_TEMPLATE[i + KEY.len()..]),
        None => (USER_TEMPLATE, ""),
    }
}

/// The VisionThink turn-1 prompt for a question (SPEC §2): system prompt with the resize tool,
/// the user template around the question, Qwen2.5-VL chat markup, generation prompt.
///
/// ```
/// use visionthink_core::prompt::visionthink_turn1;
/// let p = visionthink_turn1("What is written on the sign?");
/// let text = p.render();
/// assert!(text.starts_with("<|im_start|>system\nYou are a helpful assistant."));
/// assert!(text.ends_with("question:\n<|vision_start|><|image_pad|><|vision_end|>\nWhat is written on the sign?<|im_end|>\n<|im_start|>assistant\n"));
/// assert_eq!(p.num_images(), 1);
/// ```
pub fn visionthink_turn1(question: &str) -> Prompt {
    turn1_with_system(SYSTEM_PROMPT, question, true)
}

/// [`visionthink_turn1`] with another tool-use system prompt (the extended tool set's,
/// [`crate::strings::SYSTEM_PROMPT_RESIZE_CROP`]); the user template is the official one.
///
/// ```
/// use visionthink_core::prompt::visionthink_turn1_with;
/// use visionthink_core::strings::SYSTEM_PROMPT_RESIZE_CROP;
/// let p = visionthink_turn1_with(SYSTEM_PROMPT_RESIZE_CROP, "Read the label.");
/// assert!(p.render().contains("\"name\": \"crop_image\""));
/// assert_eq!(p.num_images(), 1);
/// ```
pub fn visionthink_turn1_with(system: &str, question: &str) -> Prompt {
    turn1_with_system(system, question, true)
}

/// The general-QA (no tool) prompt: the general system prompt and the question as the user turn.
pub fn general_qa_turn1(question: &str) -> Prompt {
    turn1_with_system(GENERAL_QA_SYSTEM_PROMPT, question, false)
}

fn turn1_with_system(system: &str, question: &str, user_template: bool) -> Prompt {
    let mut p = Prompt::new();
    p.push_template(format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    ));
    let q = question_with_image(question);
    if user_template {
        let (before, after) = user_template_parts();
        p.push_template(before);
        p.push_user_with_images(&q);
        p.push_template(after);
    } else {
        p.push_user_with_images(&q);
    }
    p.push_template("<|im_end|>\n<|im_start|>assistant\n");
    p
}

/// The tool response that carries the requested image (SPEC §2), appended directly after the
/// model's `<|im_end|>`.
///
/// ```
/// use visionthink_core::prompt::tool_response_image;
/// let p = tool_response_image();
/// assert_eq!(p.render().len(), 424);
/// assert_eq!(p.num_images(), 1);
/// ```
pub fn tool_response_image() -> Prompt {
    image_response(TOOL_RESPONSE_IMAGE)
}

/// The tool response that carries a cropped region (beyond the paper: the `crop_image` tool of
/// the extended tool set), appended like [`tool_response_image`].
///
/// ```
/// use visionthink_core::prompt::tool_response_crop;
/// let p = tool_response_crop();
/// assert!(p.render().contains("The cropped region is shown below:"));
/// assert_eq!(p.num_images(), 1);
/// ```
pub fn tool_response_crop() -> Prompt {
    image_response(crate::strings::TOOL_RESPONSE_CROP)
}

fn image_response(template: &str) -> Prompt {
    let mut p = Prompt::new();
    let parts: Vec<&str> = template.split(IMAGE_PLACEHOLDER).collect();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            p.push_image();
        }
        p.push_template(part);
    }
    p
}

/// The tool response for a malformed tool call (SPEC §2). The error text is user-level text: it
/// may quote model output, so it is never tokenized as control tokens.
///
/// ```
/// use visionthink_core::prompt::tool_response_error;
/// let p = tool_response_error("Unknown Tool Type: zoom");
/// assert!(p.render().contains("Error Information: Unknown Tool Type: zoom.\n</tool_response>"));
/// assert_eq!(p.num_images(), 0);
/// ```
pub fn tool_response_error(error_info: &str) -> Prompt {
    const KEY: &str = "{error_info}";
    let mut p = Prompt::new();
    match TOOL_RESPONSE_ERROR.find(KEY) {
        Some(i) => {
            p.push_template(&TOOL_RESPONSE_ERROR[..i]);
            p.push_user(error_info);
            p.push_template(&TOOL_RESPONSE_ERROR[i + KEY.len()..]);
        }
        None => {
            p.push_template(TOOL_RESPONSE_ERROR);
        }
    }
    p
}

/// The whole formatted user prompt of turn 1 as the official judge sees it (`{question}` of the
/// judge query): the user template filled with the question (with its `<image>` tag).
pub fn judge_question_text(question: &str) -> String {
    let (before, after) = user_template_parts();
    format!("{before}{}{after}", question_with_image(question))
}

/// A chat template (Jinja) as shipped in `tokenizer_config.json` or `chat_template.json`,
/// rendered with HF's settings (`trim_blocks`, `lstrip_blocks`, Python-style string methods,
/// `tojson` as Python's `json.dumps`).
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

/// One chat message (string content).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The content.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

const QUESTION_SENTINEL: &str = "\u{E000}visionthink-question\u{E001}";

impl ChatTemplate {
    /// Compiles a Jinja source.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", py_tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("{e:#}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
        })
    }

    /// The Jinja source it was compiled from (what a GGUF's `tokenizer.chat_template` carries).
    ///
    /// ```
    /// let t = visionthink_core::prompt::ChatTemplate::new("{{ messages }}").unwrap();
    /// assert_eq!(t.source(), "{{ messages }}");
    /// ```
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Reads the template from `tokenizer_config.json` (`chat_template` as a string, or a list
    /// of `{name, template}` where `default` is used).
    pub fn from_tokenizer_config(bytes: &[u8]) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::Config {
            file: "tokenizer_config.json",
            reason: format!("malformed JSON: {e}"),
        })?;
        let src = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| Error::Config {
                    file: "tokenizer_config.json",
                    reason: "`chat_template` list has no `default` entry".into(),
                })?,
            _ => {
                return Err(Error::Config {
                    file: "tokenizer_config.json",
                    reason: "no `chat_template`".into(),
                })
            }
        };
        Self::new(&src)
    }

    /// Reads the template from `chat_template.json` (`{"chat_template": "…"}`).
    pub fn from_chat_template_json(bytes: &[u8]) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::Config {
            file: "chat_template.json",
            reason: format!("malformed JSON: {e}"),
        })?;
        match v.get("chat_template").and_then(|t| t.as_str()) {
            Some(s) => Self::new(s),
            None => Err(Error::Config {
                file: "chat_template.json",
                reason: "no `chat_template` string".into(),
            }),
        }
    }

    /// Renders messages.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(format!("{e:#}")))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
        })
        .map_err(|e| Error::Template(format!("{e:#}")))
    }

    /// The VisionThink turn-1 prompt rendered through this template. For the Qwen2.5-VL template
    /// it equals [`visionthink_turn1`]; the question stays user text either way.
    pub fn visionthink_turn1(&self, question: &str) -> Result<Prompt> {
        self.visionthink_turn1_with(SYSTEM_PROMPT, question)
    }

    /// [`Self::visionthink_turn1`] with another tool-use system prompt (the extended tool set's).
    pub fn visionthink_turn1_with(&self, system: &str, question: &str) -> Result<Prompt> {
        let (before, after) = user_template_parts();
        let content = format!("{before}{QUESTION_SENTINEL}{after}");
        let text = self.render(
            &[
                Message::new("system", system),
                Message::new("user", &content),
            ],
            true,
        )?;
        let mut pieces = text.split(QUESTION_SENTINEL);
        let (head, tail) = match (pieces.next(), pieces.next(), pieces.next()) {
            (Some(h), Some(t), None) => (h, t),
            _ => {
                return Err(Error::Template(
                    "the template must output the user content exactly once and unchanged".into(),
                ))
            }
        };
        let mut p = Prompt::new();
        p.push_template_with_images(head);
        p.push_user_with_images(&question_with_image(question));
        p.push_template_with_images(tail);
        Ok(p)
    }
}

/// Python `json.dumps(value, ensure_ascii=False)` formatting: `", "` and `": "` separators, no
/// HTML escaping (HF's `tojson`). `indent` is honoured like Python's.
fn py_tojson(
    value: minijinja::Value,
    indent: Option<usize>,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value;
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(m) if !m.is_empty() => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}
