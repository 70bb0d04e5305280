//! A remote engine: the low-res-first protocol driven against any OpenAI-compatible chat server
//! that serves a Qwen2.5-VL model — vLLM serving the official VisionThink 7B
//! (`vllm serve Senqiao/VisionThink-Efficient --limit-mm-per-prompt image=2`), `visionthink
//! serve`'s `visionthink-raw` model, or any other.
//!
//! The protocol is the core's [`ChatEpisode`]: turn 1 sends the half-size image (as a PNG
//! `data:` URL) with the official prompt; a resize call is answered with the full image in a
//! following user turn with the official tool-response text; answer extraction and visual-token
//! accounting are the core's (the tokens are counted with the Qwen2.5-VL processor settings the
//! engine is given, by default the released ones). Only the transport is here.
//!
//! Failures are typed ([`Error::Remote`]): a server that cannot be reached, times out, answers a
//! status other than 2xx, answers without a choice, streams something that is not a chat
//! completion chunk or closes the stream before `[DONE]`. Connection failures, 408, 429 and 5xx
//! are retried `retries` times (a streamed reply only before its first token); nothing waits
//! longer than the request timeout.
//!
//! Chat APIs send text, not token ids: [`Event::Token`]'s `id` is 0 and its `text` is one
//! streamed chunk.

use crate::engine::{AskOptions, Engine};
use crate::error::{Error, Result};
use serde_json::Value;
use std::io::BufRead;
use std::time::{Duration, Instant};
use visionthink_core::answer::{Answer, Event};
use visionthink_core::chat::{encode_images, ChatAction, ChatEpisode};
use visionthink_core::config::PreprocessorConfig;
use visionthink_core::image::RgbImage;

/// Where and how to reach the server.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1` (with or without `/chat/completions`).
    pub url: String,
    /// Model name sent in each request; `None`: the first model `GET /models` lists.
    pub model: Option<String>,
    /// Bearer token, if the server needs one.
    pub api_key: Option<String>,
    /// Longest time one request may take, reply included.
    pub timeout: Duration,
    /// Extra attempts after a failure that may pass (connection, 408, 429, 5xx).
    pub retries: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// Ask for server-sent events (tokens arrive as they are generated).
    pub stream: bool,
    /// The processor settings visual tokens are counted with.
    pub preprocessor: PreprocessorConfig,
}

impl RemoteConfig {
    /// Defaults for a URL: the first listed model, 600 s per request, 2 retries 1 s apart, no
    /// streaming, the released Qwen2.5-VL processor settings.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            model: None,
            api_key: None,
            timeout: Duration::from_secs(600),
            retries: 2,
            retry_delay: Duration::from_secs(1),
            stream: false,
            preprocessor: PreprocessorConfig::default(),
        }
    }
}

/// The command-line flags of a remote engine, shared by `visionthink ask` and
/// `visionthink-train eval` (flatten them into a clap command).
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Base URL of an OpenAI-compatible chat server (vLLM, `visionthink serve`, …), e.g.
    /// http://127.0.0.1:8000/v1: the protocol runs against it instead of a local model.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Model name on the server (default: the first one `GET /models` lists).
    #[arg(long, requires = "endpoint")]
    pub remote_model: Option<String>,
    /// Bearer token for the server.
    #[arg(
        long,
        env = "VISIONTHINK_REMOTE_API_KEY",
        hide_env_values = true,
        requires = "endpoint"
    )]
    pub remote_api_key: Option<String>,
    /// Seconds one request to the server may take.
    #[arg(long, default_value_t = 600.0)]
    pub remote_timeout: f64,
    /// Extra attempts after a connection failure, 408, 429 or 5xx.
    #[arg(long, default_value_t = 2)]
    pub remote_retries: u32,
}

impl RemoteArgs {
    /// The engine's settings when `--endpoint` is given, or why the flags are wrong.
    pub fn config(&self) -> std::result::Result<Option<RemoteConfig>, String> {
        let Some(url) = &self.endpoint else {
            return Ok(None);
        };
        if !(self.remote_timeout > 0.0 && self.remote_timeout.is_finite()) {
            return Err("--remote-timeout must be a positive number of seconds".into());
        }
        let mut cfg = RemoteConfig::new(url);
        cfg.model = self.remote_model.clone();
        cfg.api_key = self.remote_api_key.clone().filter(|k| !k.is_empty());
        cfg.timeout = Duration::from_secs_f64(self.remote_timeout);
        cfg.retries = self.remote_retries;
        Ok(Some(cfg))
    }
}

/// A server that runs the model; [`Engine`] runs the protocol on it.
///
/// ```no_run
/// use visionthink::remote::{RemoteConfig, RemoteEngine};
/// use visionthink::Engine as _;
/// let mut cfg = RemoteConfig::new("http://127.0.0.1:8000/v1");
/// cfg.model = Some("Senqiao/VisionThink-Efficient".into());
/// let engine = RemoteEngine::connect(cfg)?;
/// let image = visionthink::load_image("photo.jpg")?;
/// let answer = engine.ask(&image, "What is written on the sign?", &Default::default())?;
/// println!("{} (full image requested: {})", answer.text, answer.used_high_res);
/// # Ok::<(), visionthink::Error>(())
/// ```
pub struct RemoteEngine {
    cfg: RemoteConfig,
    model: String,
    agent: ureq::Agent,
    base: String,
}

impl std::fmt::Debug for RemoteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteEngine({} / {})", self.base, self.model)
    }
}

/// What one failed attempt says.
struct Failure {
    reason: String,
    retry: bool,
    status: Option<u16>,
}

impl Failure {
    fn fatal(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: false,
            status: None,
        }
    }
}

/// A reply: its text and the server's token counts.
struct Reply {
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl RemoteEngine {
    /// An engine for a server; asks `GET /models` for the model name when none is given.
    pub fn connect(cfg: RemoteConfig) -> Result<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let url = cfg.url.trim_end_matches('/');
        let base = url
            .strip_suffix("/chat/completions")
            .unwrap_or(url)
            .to_string();
        let mut engine = Self {
            model: cfg.model.clone().unwrap_or_default(),
            cfg,
            agent,
            base,
        };
        if engine.cfg.model.is_none() {
            engine.model = engine.first_model()?;
        }
        Ok(engine)
    }

    /// The model name requests carry.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn err(&self, reason: impl Into<String>, status: Option<u16>) -> Error {
        Error::Remote {
            url: self.base.clone(),
            status,
            reason: reason.into(),
        }
    }

    fn first_model(&self) -> Result<String> {
        let url = format!("{}/models", self.base);
        let mut call = self.agent.get(&url);
        if let Some(key) = &self.cfg.api_key {
            call = call.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = call
            .call()
            .map_err(|e| self.err(format!("GET /models failed: {e}"), None))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .map_err(|e| self.err(format!("reading /models failed: {e}"), Some(status)))?;
        if !(200..300).contains(&status) {
            return Err(self.err(format!("GET /models: {}", snippet(&body)), Some(status)));
        }
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/data/0/id")?.as_str().map(str::to_string))
            .ok_or_else(|| {
                self.err(
                    "GET /models lists no model (pass the model name: --remote-model)",
                    Some(status),
                )
            })
    }

    /// One request, retried as configured.
    fn complete(
        &self,
        body: &Value,
        opts: &AskOptions,
        on_chunk: &mut dyn FnMut(&str),
    ) -> Result<Reply> {
        let mut attempt = 0;
        loop {
            opts.generation.check_cancel()?;
            let mut emitted = false;
            let out = self.attempt(body, opts, &mut |c| {
                emitted = true;
                on_chunk(c);
            });
            match out {
                Ok(r) => return Ok(r),
                Err(f) if f.retry && !emitted && attempt < self.cfg.retries => {
                    attempt += 1;
                    std::thread::sleep(self.cfg.retry_delay);
                }
                Err(f) => {
                    let tries = if attempt > 0 {
                        format!(" (after {} attempts)", attempt + 1)
                    } else {
                        String::new()
                    };
                    return Err(self.err(format!("{}{tries}", f.reason), f.status));
                }
            }
        }
    }

    fn attempt(
        &self,
        body: &Value,
        opts: &AskOptions,
        on_chunk: &mut dyn FnMut(&str),
    ) -> std::result::Result<Reply, Failure> {
        let url = format!("{}/chat/completions", self.base);
        let mut call = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.cfg.api_key {
            call = call.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = call.send(body.to_string()).map_err(|e| Failure {
            reason: format!("POST /chat/completions failed: {e}"),
            retry: true,
            status: None,
        })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp
                .body_mut()
                .with_config()
                .limit(1 << 20)
                .read_to_string()
                .unwrap_or_default();
            return Err(Failure {
                reason: format!("HTTP {status}: {}", error_message(&text)),
                retry: matches!(status, 408 | 429) || status >= 500,
                status: Some(status),
            });
        }
        let with_status = |mut f: Failure| {
            f.status = Some(status);
            f
        };
        if self.cfg.stream {
            let reader = std::io::BufReader::new(resp.body_mut().as_reader());
            read_stream(reader, opts, on_chunk).map_err(with_status)
        } else {
            let text = resp
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_string()
                .map_err(|e| Failure {
                    reason: format!("reading the reply failed: {e}"),
                    retry: true,
                    status: Some(status),
                })?;
            let reply = parse_reply(&text).map_err(with_status)?;
            on_chunk(&reply.text);
            Ok(reply)
        }
    }
}

impl Engine for RemoteEngine {
    fn ask_streaming(
        &self,
        image: &RgbImage,
        question: &str,
        opts: &AskOptions,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Answer> {
        let t0 = Instant::now();
        let clock = move || t0.elapsed().as_secs_f64() * 1e3;
        let mut episode = ChatEpisode::new(
            image,
            question,
            &opts.protocol,
            &self.cfg.preprocessor,
            &clock,
        )?;
        // Each image is encoded once, the first time a request carries it.
        let mut urls: Vec<String> = Vec::new();
        let mut turn = 0usize;
        let mut action = episode.start()?;
        loop {
            let body = match action {
                ChatAction::Done(answer) => return Ok(answer),
                ChatAction::Request(req) => {
                    if req.resized {
                        on_event(Event::ResizeRequested);
                    }
                    encode_images(&mut urls, req.images)?;
                    req.openai_body(
                        &urls,
                        &self.model,
                        opts.generation.max_new_tokens,
                        &opts.generation.sampling,
                        self.cfg.stream,
                    )
                }
            };
            let text = match opts.forced_turns.get(turn) {
                Some(forced) => forced.clone(),
                None => {
                    let t = Instant::now();
                    let reply = self.complete(&body, opts, &mut |chunk| {
                        on_event(Event::Token {
                            turn,
                            id: 0,
                            text: chunk,
                        })
                    })?;
                    episode.add_request_ms(t.elapsed().as_secs_f64() * 1e3);
                    episode.add_usage(reply.prompt_tokens, reply.completion_tokens);
                    reply.text
                }
            };
            turn += 1;
            action = episode.on_reply(&text)?;
        }
    }
}

fn snippet(body: &str) -> String {
    body.chars().take(300).collect()
}

/// The `error.message` of an OpenAI-style error body, or the body's start.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| snippet(body))
}

fn usage(v: &Value, key: &str) -> usize {
    v.pointer(&format!("/usage/{key}"))
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

/// A non-streamed chat completion: `choices[0].message.content` and the usage counts.
fn parse_reply(body: &str) -> std::result::Result<Reply, Failure> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| Failure::fatal(format!("the reply is not JSON ({e}): {}", snippet(body))))?;
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| Failure::fatal(format!("the reply has no choice: {}", snippet(body))))?;
    let text = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        // A reply with only a refusal or tool calls has no content.
        Some(Value::Null) | None => {
            return Err(Failure::fatal("the reply's choice has no message content"))
        }
        Some(other) => {
            return Err(Failure::fatal(format!(
                "the reply's message content is not a string: {other}"
            )))
        }
    };
    Ok(Reply {
        text,
        prompt_tokens: usage(&v, "prompt_tokens"),
        completion_tokens: usage(&v, "completion_tokens"),
    })
}

/// Server-sent chat completion chunks up to `data: [DONE]`: the content deltas joined.
fn read_stream(
    mut reader: impl BufRead,
    opts: &AskOptions,
    on_chunk: &mut dyn FnMut(&str),
) -> std::result::Result<Reply, Failure> {
    let mut reply = Reply {
        text: String::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let mut line = String::new();
    let mut chunks = 0usize;
    loop {
        if let Err(e) = opts.generation.check_cancel() {
            return Err(Failure::fatal(e.to_string()));
        }
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| Failure {
            reason: format!("the stream broke after {chunks} chunk(s): {e}"),
            retry: true,
            status: None,
        })?;
        if n == 0 {
            return Err(Failure {
                reason: format!("the stream ended before `data: [DONE]` (after {chunks} chunk(s))"),
                retry: true,
                status: None,
            });
        }
        let l = line.trim_end_matches(['\r', '\n']);
        // Blank lines end events; comments and other fields carry no content.
        let Some(data) = l.strip_prefix("data:") else {
            if l.is_empty()
                || l.starts_with(':')
                || l.starts_with("event:")
                || l.starts_with("id:")
                || l.starts_with("retry:")
            {
                continue;
            }
            return Err(Failure::fatal(format!(
                "the stream is not server-sent events: {}",
                snippet(l)
            )));
        };
        match stream_event(data.trim_start(), &mut reply, on_chunk)? {
            Some(()) => chunks += 1,
            None => return Ok(reply),
        }
    }
}

/// One `data:` payload of the stream: a chunk added to `reply` (`Some`), or the end (`None`).
fn stream_event(
    data: &str,
    reply: &mut Reply,
    on_chunk: &mut dyn FnMut(&str),
) -> std::result::Result<Option<()>, Failure> {
    if data == "[DONE]" {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| {
        Failure::fatal(format!(
            "a streamed event is not JSON ({e}): {}",
            snippet(data)
        ))
    })?;
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| err.to_string(), str::to_string);
        return Err(Failure::fatal(format!("the server reported: {msg}")));
    }
    if v.get("usage").is_some_and(Value::is_object) {
        reply.prompt_tokens = usage(&v, "prompt_tokens");
        reply.completion_tokens = usage(&v, "completion_tokens");
    }
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return Err(Failure::fatal(format!(
            "a streamed event has no `choices`: {}",
            snippet(data)
        )));
    };
    if let Some(piece) = choices
        .first()
        .and_then(|c| c.pointer("/delta/content"))
        .and_then(Value::as_str)
    {
        if !piece.is_empty() {
            reply.text.push_str(piece);
            on_chunk(piece);
        }
    }
    Ok(Some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(s: &str) -> std::result::Result<Reply, Failure> {
        read_stream(
            std::io::Cursor::new(s.as_bytes().to_vec()),
            &AskOptions::default(),
            &mut |_| {},
        )
    }

    #[test]
    fn streams_join_their_deltas() {
        let r = stream(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n: keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"<answer>\"}}]}\n\ndata:{\"choices\":[{\"delta\":{\"content\":\"red</answer>\"}}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
        )
        .unwrap_or_else(|f| panic!("{}", f.reason));
        assert_eq!(r.text, "<answer>red</answer>");
        assert_eq!((r.prompt_tokens, r.completion_tokens), (9, 3));
    }

    #[test]
    fn broken_streams_are_named() {
        let cut = stream("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n").err();
        assert!(cut
            .as_ref()
            .is_some_and(|f| f.retry && f.reason.contains("[DONE]")));
        let garbage = stream("<html>oops</html>\n").err();
        assert!(garbage.is_some_and(|f| !f.retry && f.reason.contains("server-sent events")));
        let not_json = stream("data: {oops\n\n").err();
        assert!(not_json.is_some_and(|f| f.reason.contains("not JSON")));
        let err = stream("data: {\"error\":{\"message\":\"overloaded\"}}\n\n").err();
        assert!(err.is_some_and(|f| f.reason.contains("overloaded")));
        let no_choices = stream("data: {\"id\":1}\n\n").err();
        assert!(no_choices.is_some_and(|f| f.reason.contains("choices")));
    }

    #[test]
    fn replies_without_content_are_named() {
        assert_eq!(
            parse_reply(
                r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":4}}"#
            )
            .map(|r| (r.text, r.prompt_tokens))
            .unwrap_or_else(|f| panic!("{}", f.reason)),
            ("hi".to_string(), 4)
        );
        for (body, says) in [
            ("{}", "no choice"),
            (r#"{"choices":[]}"#, "no choice"),
            (
                r#"{"choices":[{"message":{"content":null}}]}"#,
                "no message content",
            ),
            (r#"{"choices":[{"message":{"content":3}}]}"#, "not a string"),
            ("Bad Gateway", "not JSON"),
        ] {
            let f = parse_reply(body).err().unwrap_or_else(|| panic!("{body}"));
            assert!(f.reason.contains(says), "{body}: {}", f.reason);
        }
        assert_eq!(
            error_message(
                r#"{"error":{"message":"At most 1 image(s) may be provided in one request."}}"#
            ),
            "At most 1 image(s) may be provided in one request."
        );
    }
}
