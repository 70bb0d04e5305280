//! The low-res-first protocol over a chat server, for the npm package's remote engine
//! (`createEngine({ endpoint })`): the core's [`ChatEpisode`] builds every request body (the
//! official prompts, the half-size image first, the full image after a resize call, as PNG
//! `data:` URLs) and reads every reply; the TypeScript side only sends them with `fetch`.

use crate::runner::{AskOptions, RunError};
use crate::{js_error, options};
use visionthink_core::chat::{encode_images, ChatAction, ChatEpisode};
use visionthink_core::config::PreprocessorConfig;
use visionthink_core::image::{decode, DecodeLimits};
use visionthink_core::sampling::SamplingConfig;
use wasm_bindgen::prelude::*;

fn now_ms() -> f64 {
    js_sys::Date::now()
}

static CLOCK: fn() -> f64 = now_ms;

/// One episode against a chat server.
#[wasm_bindgen]
pub struct ChatSession {
    episode: ChatEpisode<'static>,
    body: Body,
}

/// What every request body carries besides the conversation.
struct Body {
    urls: Vec<String>,
    model: String,
    stream: bool,
    max_tokens: usize,
    sampling: SamplingConfig,
}

#[wasm_bindgen]
impl ChatSession {
    /// An episode on an encoded image (PNG/JPEG/WebP/GIF bytes) for `model` on the server.
    /// Options: the same as `Engine.ask`'s (`maxNewTokens`, `temperature`, `topP`, `topK`,
    /// `seed`, `maxRounds`, `maxImages`); `stream` asks the server for server-sent events.
    #[wasm_bindgen(constructor)]
    pub fn new(
        image: js_sys::Uint8Array,
        question: String,
        model: String,
        stream: bool,
        options_js: JsValue,
    ) -> Result<ChatSession, JsValue> {
        let opts: AskOptions = options(options_js)?;
        let eo = opts.episode_options()?;
        let img = decode(&image.to_vec(), DecodeLimits::default()).map_err(RunError::from)?;
        let episode = ChatEpisode::new(
            &img,
            &question,
            &eo.protocol,
            &PreprocessorConfig::default(),
            &CLOCK,
        )
        .map_err(RunError::from)?;
        Ok(Self {
            episode,
            body: Body {
                urls: Vec::new(),
                model,
                stream,
                max_tokens: eo.max_new_tokens,
                sampling: eo.sampling,
            },
        })
    }

    /// The first request: `{done: false, resized: false, body}` (`body` is the JSON to POST to
    /// `/chat/completions`).
    pub fn start(&mut self) -> Result<JsValue, JsValue> {
        let action = self.episode.start().map_err(RunError::from)?;
        self.body.step(action)
    }

    /// Takes the reply's text: the next request (`resized: true` when it carries the full
    /// image), or `{done: true, answer}` with the answer record.
    #[wasm_bindgen(js_name = onReply)]
    pub fn on_reply(&mut self, text: &str) -> Result<JsValue, JsValue> {
        let action = self.episode.on_reply(text).map_err(RunError::from)?;
        self.body.step(action)
    }

    /// Adds one reply's `usage` counts and the milliseconds its request took to the record.
    #[wasm_bindgen(js_name = addUsage)]
    pub fn add_usage(&mut self, prompt_tokens: u32, completion_tokens: u32, ms: f64) {
        self.episode
            .add_usage(prompt_tokens as usize, completion_tokens as usize);
        self.episode.add_request_ms(ms);
    }
}

impl Body {
    /// What to do next, as JS: the request body to POST, or the answer.
    fn step(&mut self, action: ChatAction<'_>) -> Result<JsValue, JsValue> {
        let v = match action {
            ChatAction::Done(answer) => serde_json::json!({"done": true, "answer": answer}),
            ChatAction::Request(req) => {
                let urls = &mut self.urls;
                let resized = req.resized;
                encode_images(urls, req.images).map_err(RunError::from)?;
                let body = req.openai_body(
                    urls,
                    &self.model,
                    self.max_tokens,
                    &self.sampling,
                    self.stream,
                );
                serde_json::json!({"done": false, "resized": resized, "body": body})
            }
        };
        let ser = serde_wasm_bindgen::Serializer::json_compatible();
        serde::Serialize::serialize(&v, &ser).map_err(|e| js_error("BackendError", &e.to_string()))
    }
}
