//! The low-res-first episode over a chat API (OpenAI-compatible `/v1/chat/completions`), sans
//! I/O: for engines that take messages rather than tokens — vLLM serving the official
//! VisionThink checkpoint, `visionthink serve`'s `visionthink-raw` model, any server of a
//! Qwen2.5-VL model.
//!
//! The protocol is the same [`Episode`] the token driver runs; only the transport differs. Each
//! round the caller gets the whole conversation as [`ChatMessage`]s (the server renders them with
//! its chat template), sends it, and hands back the reply's text:
//!
//! - turn 1: the VisionThink system prompt, then one user message with the official user
//!   template around the half-size image and the question;
//! - a resize call: the model's turn as an assistant message, then the official tool-response
//!   text with the full image as a following user message (as the official vLLM evaluation
//!   does); a malformed call gets the official error turn, with no image.
//!
//! The messages are cut out of the very [`Prompt`]s the token driver feeds, so the two paths
//! cannot drift apart. One difference is the chat format's, not ours: a chat template ends every
//! message with `<|im_end|>\n`, so the tool turn follows the model's `<|im_end|>` after a
//! newline, where the token driver appends it directly (SPEC §2), and the model's turn is
//! re-tokenized from its text.
//!
//! ```
//! use visionthink_core::chat::{ChatAction, ChatEpisode, Part};
//! use visionthink_core::image::RgbImage;
//! let photo = RgbImage::new(112, 84, vec![200; 112 * 84 * 3]).unwrap();
//! let mut ep = ChatEpisode::new(&photo, "What is written here?", &Default::default(), &Default::default(), &|| 0.0).unwrap();
//! let ChatAction::Request(req) = ep.start().unwrap() else { unreachable!() };
//! assert_eq!(req.messages.len(), 2); // system, user
//! assert!(req.messages[1].parts.iter().any(|p| *p == Part::Image(0)));
//! assert_eq!((req.images[0].width, req.images[0].height), (56, 42)); // half size first
//! let call = "<think>Too small.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";
//! let ChatAction::Request(req) = ep.on_reply(call).unwrap() else { unreachable!() };
//! assert_eq!(req.messages.len(), 4); // … assistant, user with the full image
//! assert!(req.resized);
//! assert_eq!(req.images[1].width, 112);
//! let ChatAction::Done(answer) = ep.on_reply("<think>Now I see.</think><answer>HELLO</answer>").unwrap() else { unreachable!() };
//! assert_eq!(answer.text, "HELLO");
//! assert!(answer.used_high_res);
//! ```

use crate::answer::{Answer, Timings};
use crate::config::PreprocessorConfig;
use crate::error::{Error, Result};
use crate::image::{visual_tokens, RgbImage};
use crate::prompt::{ChatTemplate, Message, Prompt, Segment};
use crate::protocol::{Episode, EpisodeImages, ProtocolConfig, Step};

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text (sent as a `text` part; never control tokens on our side).
    Text(String),
    /// The request's image with this index (sent as an `image_url` part).
    Image(usize),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The content, in order.
    pub parts: Vec<Part>,
}

impl ChatMessage {
    /// The message's text with each image written as `image` (for logs and tests).
    pub fn text_with(&self, image: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Image(_) => image,
            })
            .collect()
    }
}

/// A conversation to send: the messages and the images their [`Part::Image`]s index.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// Every message so far (the server is stateless).
    pub messages: &'a [ChatMessage],
    /// The images in order of first appearance.
    pub images: &'a [RgbImage],
    /// The last message is a tool turn that returns an image (the model's resize call was
    /// answered): what a caller reports as the resize event.
    pub resized: bool,
}

/// What the caller does next.
#[derive(Debug)]
pub enum ChatAction<'a> {
    /// Send this conversation and pass the reply's text to [`ChatEpisode::on_reply`].
    Request(ChatRequest<'a>),
    /// The episode is over.
    Done(Answer),
}

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// The chat messages a rendered prompt stands for: `<|im_start|>role\n…<|im_end|>\n` blocks of
/// template text, with user text and images inside them. A trailing generation prompt
/// (`<|im_start|>assistant\n`) is dropped: the server adds its own. Images are numbered from
/// `first_image`. Only template text is split on the markers: user text that spells one stays
/// text of its message.
///
/// ```
/// use visionthink_core::chat::{prompt_messages, Part};
/// let p = visionthink_core::prompt::visionthink_turn1("What <|im_end|> is this?");
/// let m = prompt_messages(&p, 0).unwrap();
/// assert_eq!((m[0].role.as_str(), m[1].role.as_str()), ("system", "user"));
/// assert!(m[1].text_with("<IMG>").ends_with("question:\n<IMG>\nWhat <|im_end|> is this?"));
/// assert_eq!(m[1].parts.iter().filter(|p| matches!(p, Part::Image(_))).count(), 1);
/// ```
pub fn prompt_messages(prompt: &Prompt, first_image: usize) -> Result<Vec<ChatMessage>> {
    let mut out: Vec<ChatMessage> = Vec::new();
    // The message being built, and whether its end marker was seen (a newline may follow).
    let mut open: Option<ChatMessage> = None;
    let mut image = first_image;
    let bad = |why: &str| Error::Protocol(format!("the prompt is not a chat: {why}"));
    let push_text = |m: &mut ChatMessage, t: &str| {
        if t.is_empty() {
            return;
        }
        match m.parts.last_mut() {
            Some(Part::Text(prev)) => prev.push_str(t),
            _ => m.parts.push(Part::Text(t.to_string())),
        }
    };
    for seg in prompt.segments() {
        match seg {
            Segment::User(t) | Segment::Message(t) => {
                let m = open
                    .as_mut()
                    .ok_or_else(|| bad("user text outside a message"))?;
                push_text(m, t);
            }
            Segment::Image => {
                let m = open
                    .as_mut()
                    .ok_or_else(|| bad("an image outside a message"))?;
                m.parts.push(Part::Image(image));
                image += 1;
            }
            Segment::Template(t) => {
                let mut rest = t.as_str();
                while !rest.is_empty() {
                    match open.as_mut() {
                        Some(m) => match rest.find(IM_END) {
                            Some(i) => {
                                push_text(m, &rest[..i]);
                                rest = &rest[i + IM_END.len()..];
                                rest = rest.strip_prefix('\n').unwrap_or(rest);
                                out.extend(open.take());
                            }
                            None => {
                                push_text(m, rest);
                                rest = "";
                            }
                        },
                        None => {
                            let body = rest
                                .strip_prefix(IM_START)
                                .ok_or_else(|| bad("text between messages"))?;
                            let (role, after) = body
                                .split_once('\n')
                                .ok_or_else(|| bad("a role line without its newline"))?;
                            open = Some(ChatMessage {
                                role: role.to_string(),
                                parts: Vec::new(),
                            });
                            rest = after;
                        }
                    }
                }
            }
        }
    }
    match open {
        // The generation prompt.
        Some(m) if m.role == "assistant" && m.parts.is_empty() => Ok(out),
        Some(m) => Err(bad(&format!("the `{}` message is not closed", m.role))),
        None => Ok(out),
    }
}

impl ChatRequest<'_> {
    /// The messages as the OpenAI chat API takes them: a string when a message is only text,
    /// else a list of `text` and `image_url` parts, `urls[i]` standing for image `i` (see
    /// [`encode_images`]).
    ///
    /// ```
    /// use visionthink_core::chat::{ChatMessage, ChatRequest, Part};
    /// let messages = [ChatMessage { role: "user".into(), parts: vec![Part::Text("Look: ".into()), Part::Image(0)] }];
    /// let req = ChatRequest { messages: &messages, images: &[], resized: false };
    /// let json = req.openai_messages(&["data:image/png;base64,AA==".into()]);
    /// assert_eq!(json[0]["content"][1]["image_url"]["url"], "data:image/png;base64,AA==");
    /// ```
    pub fn openai_messages(&self, urls: &[String]) -> serde_json::Value {
        use serde_json::json;
        let messages = self.messages.iter().map(|m| {
            if m.parts.iter().all(|p| matches!(p, Part::Text(_))) {
                return json!({"role": m.role, "content": m.text_with("")});
            }
            let parts: Vec<serde_json::Value> = m
                .parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => json!({"type": "text", "text": t}),
                    Part::Image(i) => json!({
                        "type": "image_url",
                        "image_url": {"url": urls.get(*i).map(String::as_str).unwrap_or("")},
                    }),
                })
                .collect();
            json!({"role": m.role, "content": parts})
        });
        serde_json::Value::Array(messages.collect())
    }
}

impl ChatRequest<'_> {
    /// The whole `/v1/chat/completions` request body: the messages ([`Self::openai_messages`]),
    /// the model name, the per-turn token budget and the sampling settings (`top_k` only when
    /// set: OpenAI's API has none, vLLM's has).
    pub fn openai_body(
        &self,
        urls: &[String],
        model: &str,
        max_tokens: usize,
        sampling: &crate::sampling::SamplingConfig,
        stream: bool,
    ) -> serde_json::Value {
        let mut body = serde_json::json!({
            "model": model,
            "messages": self.openai_messages(urls),
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "stream": stream,
        });
        if sampling.top_k > 0 {
            body["top_k"] = serde_json::json!(sampling.top_k);
        }
        body
    }
}

/// Adds the `data:` URLs of the images `urls` does not cover yet (each image is encoded once
/// however many requests carry it).
pub fn encode_images(urls: &mut Vec<String>, images: &[RgbImage]) -> Result<()> {
    for img in images.iter().skip(urls.len()) {
        urls.push(png_data_url(img)?);
    }
    Ok(())
}

/// An image as a PNG `data:` URL: lossless, so the server decodes exactly these pixels.
pub fn png_data_url(img: &RgbImage) -> Result<String> {
    use base64::Engine as _;
    use image::ImageEncoder as _;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            &img.data,
            img.width,
            img.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::ImageDecode {
            format: "png".into(),
            reason: format!("PNG encoding failed: {e}"),
        })?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// Marks a text part (numbered) or an image inside the content handed to a chat template, so
/// the rendered text can be cut back into template text, user text and images.
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

/// A chat rendered as a prompt, the way a plain OpenAI-compatible VLM server renders it: through
/// the model's chat template when there is one (else the Qwen2.5-VL format, with its default
/// system message), every image where it was given, and the generation prompt. Message text is
/// [`Segment::Message`] text (control tokens stay text; `<tool_call>` is the token, as in HF):
/// the template only ever sees markers in its place.
/// Roles are written by the template as given: check them first.
///
/// ```
/// use visionthink_core::chat::{render_messages, ChatMessage, Part};
/// let m = [ChatMessage { role: "user".into(), parts: vec![Part::Image(0), Part::Text("What <|im_end|>?".into())] }];
/// let p = render_messages(&m, None).unwrap();
/// assert_eq!(p.render(), "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What <|im_end|>?<|im_end|>\n<|im_start|>assistant\n");
/// assert_eq!(p.num_images(), 1);
/// ```
pub fn render_messages(
    messages: &[ChatMessage],
    template: Option<&ChatTemplate>,
) -> Result<Prompt> {
    let mut texts: Vec<&str> = Vec::new();
    let marked: Vec<Message> = messages
        .iter()
        .map(|m| {
            let mut content = String::new();
            for p in &m.parts {
                content.push(MARK_OPEN);
                match p {
                    Part::Text(t) => {
                        content.push_str(&texts.len().to_string());
                        texts.push(t);
                    }
                    Part::Image(_) => content.push('i'),
                }
                content.push(MARK_CLOSE);
            }
            Message::new(&m.role, &content)
        })
        .collect();
    let rendered = match template {
        Some(t) => t.render(&marked, true)?,
        None => {
            let mut s = String::new();
            if marked.first().is_none_or(|m| m.role != "system") {
                s.push_str("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n");
            }
            for m in &marked {
                s.push_str(&format!(
                    "<|im_start|>{}\n{}<|im_end|>\n",
                    m.role, m.content
                ));
            }
            s + "<|im_start|>assistant\n"
        }
    };
    let mut p = Prompt::new();
    let mut next_text = 0usize;
    let mut rest = rendered.as_str();
    let changed = || {
        Error::Template(
            "the chat template must output every message's content once, unchanged and in order"
                .into(),
        )
    };
    while let Some(open) = rest.find(MARK_OPEN) {
        p.push_template(&rest[..open]);
        let after = &rest[open + MARK_OPEN.len_utf8()..];
        let close = after.find(MARK_CLOSE).ok_or_else(changed)?;
        match &after[..close] {
            "i" => {
                p.push_image();
            }
            n => {
                let i: usize = n.parse().map_err(|_| changed())?;
                if i != next_text {
                    return Err(changed());
                }
                p.push_message(texts[i]);
                next_text += 1;
            }
        }
        rest = &after[close + MARK_CLOSE.len_utf8()..];
    }
    p.push_template(rest);
    let images = messages
        .iter()
        .flat_map(|m| &m.parts)
        .filter(|p| matches!(p, Part::Image(_)))
        .count();
    if next_text != texts.len() || p.num_images() != images {
        return Err(changed());
    }
    Ok(p)
}

/// One low-res-first episode over a chat API (see the module docs).
pub struct ChatEpisode<'a> {
    clock: &'a dyn Fn() -> f64,
    episode: Episode,
    pair: EpisodeImages,
    messages: Vec<ChatMessage>,
    images: Vec<RgbImage>,
    visual_tokens: usize,
    full_tokens: usize,
    preprocessor: PreprocessorConfig,
    timings: Timings,
    start_ms: f64,
    started: bool,
    done: bool,
}

impl std::fmt::Debug for ChatEpisode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatEpisode")
            .field("messages", &self.messages.len())
            .field("images", &self.images.len())
            .field("visual_tokens", &self.visual_tokens)
            .field("done", &self.done)
            .finish()
    }
}

impl<'a> ChatEpisode<'a> {
    /// Prepares an episode on `image` (the original): the half-size image of the evaluation
    /// path is made now. `preprocessor` only counts visual tokens (the server preprocesses);
    /// `clock` returns milliseconds from any origin.
    pub fn new(
        image: &RgbImage,
        question: &str,
        protocol: &ProtocolConfig,
        preprocessor: &PreprocessorConfig,
        clock: &'a dyn Fn() -> f64,
    ) -> Result<Self> {
        if protocol.max_rounds == 0 || protocol.max_images == 0 {
            return Err(Error::Protocol(
                "max_rounds and max_images must be at least 1".into(),
            ));
        }
        let start_ms = clock();
        let pair = EpisodeImages::for_inference(image)?;
        let low = visual_tokens(pair.low_res.width, pair.low_res.height, preprocessor)?;
        let full_tokens = visual_tokens(pair.high_res.width, pair.high_res.height, preprocessor)?;
        let mut episode = Episode::new(question, protocol.clone());
        // Boxes (the crop tool) are in pixels of the image the server's model sees.
        let seen = crate::image::seen_size(pair.low_res.width, pair.low_res.height, preprocessor)?;
        episode.set_image_sizes(seen, (pair.high_res.width, pair.high_res.height));
        Ok(Self {
            clock,
            episode,
            images: Vec::new(),
            pair,
            messages: Vec::new(),
            visual_tokens: low,
            full_tokens,
            preprocessor: preprocessor.clone(),
            timings: Timings {
                preprocess_ms: clock() - start_ms,
                ..Timings::default()
            },
            start_ms,
            started: false,
            done: false,
        })
    }

    /// The turn-1 conversation.
    pub fn start(&mut self) -> Result<ChatAction<'_>> {
        if self.started {
            return Err(Error::Protocol("the episode has started already".into()));
        }
        self.started = true;
        let p = self.episode.initial_prompt();
        if p.num_images() != 1 {
            return Err(Error::Protocol(format!(
                "the question places {} images; the episode has one",
                p.num_images()
            )));
        }
        self.messages = prompt_messages(&p, 0)?;
        self.images.push(self.pair.low_res.clone());
        Ok(self.request(false))
    }

    fn request(&self, resized: bool) -> ChatAction<'_> {
        ChatAction::Request(ChatRequest {
            messages: &self.messages,
            images: &self.images,
            resized,
        })
    }

    /// Takes the reply's text (the assistant message's content): the next conversation, or the
    /// answer.
    pub fn on_reply(&mut self, text: &str) -> Result<ChatAction<'_>> {
        if !self.started || self.done {
            return Err(Error::Protocol(
                "on_reply outside a running episode (call start first; a finished episode takes no more)"
                    .into(),
            ));
        }
        match self.episode.on_model_turn(text)? {
            Step::Done(outcome) => {
                self.done = true;
                let timings = Timings {
                    total_ms: (self.clock)() - self.start_ms,
                    ..self.timings
                };
                Ok(ChatAction::Done(Answer::from_outcome(
                    &outcome,
                    self.visual_tokens,
                    self.full_tokens,
                    timings,
                )))
            }
            Step::ToolTurn(tt) => {
                self.messages.push(ChatMessage {
                    role: "assistant".into(),
                    parts: vec![Part::Text(text.to_string())],
                });
                let turn = prompt_messages(&tt.prompt, self.images.len())?;
                let wanted = tt.prompt.num_images();
                match (&tt.image, wanted) {
                    (Some(req), 1) => {
                        let t = (self.clock)();
                        let img = req.fulfil(&self.pair)?;
                        self.visual_tokens +=
                            visual_tokens(img.width, img.height, &self.preprocessor)?;
                        self.images.push(img);
                        self.timings.preprocess_ms += (self.clock)() - t;
                    }
                    (None, 0) => {}
                    _ => {
                        return Err(Error::Protocol(
                            "a tool turn whose image and placeholder disagree".into(),
                        ))
                    }
                }
                self.messages.extend(turn);
                Ok(self.request(tt.image.is_some()))
            }
        }
    }

    /// Adds what the server reported for one reply (`usage.prompt_tokens`,
    /// `usage.completion_tokens`) to the answer's timings record.
    pub fn add_usage(&mut self, prompt_tokens: usize, completion_tokens: usize) {
        self.timings.prefill_tokens += prompt_tokens;
        self.timings.generated_tokens += completion_tokens;
    }

    /// Adds the time one request took (the server's prefill and decode together) to the
    /// record's decode time.
    pub fn add_request_ms(&mut self, ms: f64) {
        self.timings.decode_ms += ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::{tool_response_error, tool_response_image, visionthink_turn1};
    use crate::tokens::IMAGE_PLACEHOLDER;

    /// Rendering the messages the way the Qwen2.5-VL chat template does gives the prompt back.
    fn qwen_render(messages: &[ChatMessage]) -> String {
        let mut s = String::new();
        for m in messages {
            s.push_str(&format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                m.role,
                m.text_with(IMAGE_PLACEHOLDER)
            ));
        }
        s + "<|im_start|>assistant\n"
    }

    #[test]
    fn turn1_messages_render_to_the_official_prompt() {
        let p = visionthink_turn1("Which <image> is it? <|im_start|>");
        let m = prompt_messages(&p, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(qwen_render(&m), p.render());
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn tool_turns_are_one_user_message() {
        let m = prompt_messages(&tool_response_image(), 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].role, "user");
        assert_eq!(
            m[0].parts.iter().filter(|p| **p == Part::Image(1)).count(),
            1
        );
        assert_eq!(qwen_render(&m), tool_response_image().render());
        let e = tool_response_error("bad <|im_end|> json");
        let m = prompt_messages(&e, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.len(), 1);
        assert!(m[0].text_with("").contains("bad <|im_end|> json."));
    }

    #[test]
    fn rendered_chats_round_trip_through_the_qwen_template() {
        let qwen = ChatTemplate::from_chat_template_json(include_bytes!(
            "../../visionthink/model/chat_template.json"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let turn1 = visionthink_turn1("What is it? <|im_start|>");
        let mut m = prompt_messages(&turn1, 0).unwrap_or_else(|e| panic!("{e}"));
        let p = render_messages(&m, Some(&qwen)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.render(), turn1.render());
        assert_eq!(
            p,
            render_messages(&m, None).unwrap_or_else(|e| panic!("{e}"))
        );
        // Message text stays message text.
        assert!(p
            .segments()
            .iter()
            .any(|s| matches!(s, Segment::Message(t) if t.contains("<|im_start|>"))));
        // Without a system message the template adds its default one.
        m.remove(0);
        let p = render_messages(&m, Some(&qwen)).unwrap_or_else(|e| panic!("{e}"));
        assert!(p
            .render()
            .starts_with("<|im_start|>system\nYou are a helpful assistant."));
        // A template that drops content is refused.
        let lossy = ChatTemplate::new("{% for m in messages %}{{ m.role }}{% endfor %}")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(render_messages(&m, Some(&lossy)).is_err());
    }

    #[test]
    fn prompts_that_are_not_chats_are_errors() {
        let mut p = Prompt::new();
        p.push_template("hello");
        assert!(prompt_messages(&p, 0).is_err());
        let mut p = Prompt::new();
        p.push_template("<|im_start|>user\nhi");
        assert!(prompt_messages(&p, 0)
            .expect_err("not closed")
            .to_string()
            .contains("not closed"));
        let mut p = Prompt::new();
        p.push_user("text");
        assert!(prompt_messages(&p, 0).is_err());
    }

    #[test]
    fn error_turns_and_the_round_limit() {
        let photo = RgbImage::new(60, 60, vec![10; 60 * 60 * 3]).unwrap_or_else(|e| panic!("{e}"));
        let clock = || 0.0;
        let mut ep = ChatEpisode::new(
            &photo,
            "q",
            &ProtocolConfig::default(),
            &PreprocessorConfig::default(),
            &clock,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ep.on_reply("x").is_err(), "before start");
        let _ = ep.start().unwrap_or_else(|e| panic!("{e}"));
        let broken = "<tool_call>{\"name\": \"resize_image\"}</tool_call>";
        match ep.on_reply(broken).unwrap_or_else(|e| panic!("{e}")) {
            ChatAction::Request(r) => {
                assert_eq!(r.images.len(), 1, "an error turn has no image");
                assert!(!r.resized);
                let last = r
                    .messages
                    .last()
                    .map(|m| m.text_with(""))
                    .unwrap_or_default();
                assert!(last.contains("ERROR occurs"), "{last}");
            }
            ChatAction::Done(_) => panic!("an error turn follows"),
        }
        // A second call in the last round ends the episode.
        match ep.on_reply(broken).unwrap_or_else(|e| panic!("{e}")) {
            ChatAction::Done(a) => {
                assert!(!a.used_high_res);
                assert_eq!(a.turns.len(), 2);
            }
            ChatAction::Request(_) => panic!("two rounds at most"),
        }
        assert!(ep.on_reply("x").is_err(), "after the end");
    }
}
