//! `visionthink serve`: an OpenAI-compatible `/v1/chat/completions` endpoint over the SDK.
//!
//! - A user message with one image (`image_url` part, `data:` URL) and text runs the VisionThink
//!   protocol: half-size image first, the full image only if the model calls the resize tool.
//!   The reply's `content` is the answer; a `visionthink` object adds the turns, whether the
//!   full image was used and the visual tokens.
//! - Text-only conversations are generated with the Qwen chat format (user text is never read
//!   as control tokens).
//! - With a rule judge, requests that carry the official LLM-judge prompts (SPEC §9) are
//!   answered `Score: 1` / `Score: 0` by the deterministic rule judge: an offline judge endpoint
//!   for training pipelines and tests.
//! - `"stream": true` answers with server-sent events (`chat.completion.chunk`, then `[DONE]`).
//!
//! The model runs on a blocking thread, one request at a time.

use crate::engine::{AskOptions, GenerateOptions, VisionThink};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use visionthink_core::judge::{Judge, JudgeRequest, RuleJudge};
use visionthink_core::prompt::Prompt;
use visionthink_core::strings::{JUDGE_QUERY_TEMPLATE, JUDGE_SYSTEM_PROMPT};
use visionthink_model::generate::{Sampler, SamplingConfig};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Name reported in `/v1/models` and replies.
    pub model_name: String,
    /// Answer official judge requests with the rule judge instead of the model.
    pub rule_judge: bool,
    /// Cap on `max_tokens` per turn.
    pub max_tokens_cap: usize,
    /// Largest request body (images are sent inline), bytes.
    pub body_limit: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model_name: "visionthink".into(),
            rule_judge: false,
            max_tokens_cap: 4096,
            body_limit: 64 << 20,
        }
    }
}

struct AppState {
    vt: Option<Mutex<VisionThink>>,
    cfg: ServeConfig,
}

/// The router (mount it in an application, or run [`serve`]). `vt = None` serves only the
/// rule judge.
///
/// ```no_run
/// # async fn f() -> anyhow::Result<()> {
/// let vt = visionthink::VisionThink::from_dir("model")?;
/// let app = visionthink::serve::router(Some(vt), Default::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
pub fn router(vt: Option<VisionThink>, cfg: ServeConfig) -> Router {
    let limit = cfg.body_limit;
    let state = Arc::new(AppState {
        vt: vt.map(Mutex::new),
        cfg,
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"message": msg.into(), "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" }}}))).into_response()
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": s.cfg.model_name, "object": "model", "owned_by": "visionthink"}]}),
    )
}

/// One message's text parts joined, and its images (decoded from `data:` URLs).
fn parse_content(content: &Value) -> Result<(String, Vec<Vec<u8>>), String> {
    match content {
        Value::String(s) => Ok((s.clone(), Vec::new())),
        Value::Array(parts) => {
            let mut text = String::new();
            let mut images = Vec::new();
            for p in parts {
                match p["type"].as_str() {
                    Some("text") => text.push_str(
                        p["text"]
                            .as_str()
                            .ok_or("a text part has no `text` string")?,
                    ),
                    Some("image_url") => {
                        let url = p["image_url"]["url"]
                            .as_str()
                            .or_else(|| p["image_url"].as_str())
                            .ok_or("an image_url part has no url")?;
                        let data = url
                            .strip_prefix("data:")
                            .and_then(|r| r.split_once(";base64,"))
                            .map(|(_, b)| b)
                            .ok_or("only data: URLs with base64 images are accepted (the server fetches nothing)")?;
                        images.push(
                            base64::engine::general_purpose::STANDARD
                                .decode(data.trim())
                                .map_err(|e| format!("image data is not base64: {e}"))?,
                        );
                    }
                    other => return Err(format!("unsupported content part type {other:?}")),
                }
            }
            Ok((text, images))
        }
        Value::Null => Ok((String::new(), Vec::new())),
        _ => Err("message content must be a string or a list of parts".into()),
    }
}

/// Fields of an official judge query, if `user` is one.
fn judge_fields(user: &str) -> Option<JudgeRequest> {
    let (head, rest) = JUDGE_QUERY_TEMPLATE.split_once("{question}")?;
    let (mid1, rest) = rest.split_once("{ground_truth}")?;
    let (mid2, tail) = rest.split_once("{prediction}")?;
    let body = user.strip_prefix(head)?.strip_suffix(tail)?;
    let (question, rest) = body.split_once(mid1)?;
    let (gt, pred) = rest.rsplit_once(mid2)?;
    Some(JudgeRequest {
        question: question.into(),
        ground_truth: gt.into(),
        prediction: pred.into(),
    })
}

enum Job {
    Text(String),
    Ask { image: Vec<u8>, question: String },
    Chat(Vec<(String, String)>),
}

async fn chat(State(s): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("request body is not JSON: {e}"),
            )
        }
    };
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`messages` must be a non-empty list",
        );
    };
    let mut parsed = Vec::new();
    for m in messages {
        let role = m["role"].as_str().unwrap_or("user").to_string();
        match parse_content(&m["content"]) {
            Ok((text, images)) => parsed.push((role, text, images)),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    let stream = req["stream"].as_bool().unwrap_or(false);
    let max_tokens = req["max_tokens"]
        .as_u64()
        .or_else(|| req["max_completion_tokens"].as_u64())
        .unwrap_or(512)
        .clamp(1, s.cfg.max_tokens_cap as u64) as usize;
    let temperature = req["temperature"].as_f64().unwrap_or(0.0);
    if !(0.0..=5.0).contains(&temperature) {
        return error(StatusCode::BAD_REQUEST, "temperature must be in [0, 5]");
    }
    let system = parsed
        .iter()
        .find(|(r, _, _)| r == "system")
        .map(|(_, t, _)| t.clone());
    let last_user = parsed.iter().rev().find(|(r, _, _)| r == "user").cloned();
    let job = if s.cfg.rule_judge && system.as_deref() == Some(JUDGE_SYSTEM_PROMPT) {
        match last_user.as_ref().and_then(|(_, t, _)| judge_fields(t)) {
            Some(jr) => {
                let ok = RuleJudge.judge(&jr).unwrap_or(false);
                Job::Text(format!("Score: {}", u8::from(ok)))
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "a judge request whose user message is not the official judge query",
                )
            }
        }
    } else {
        let images: usize = parsed.iter().map(|(_, _, i)| i.len()).sum();
        match (images, last_user) {
            (0, _) => Job::Chat(parsed.into_iter().map(|(r, t, _)| (r, t)).collect()),
            (1, Some((_, text, mut imgs))) if imgs.len() == 1 => Job::Ask { image: imgs.remove(0), question: text },
            _ => return error(StatusCode::BAD_REQUEST, "send one image, in the last user message (the server runs the VisionThink protocol on it)"),
        }
    };
    let id = format!(
        "chatcmpl-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let model = s.cfg.model_name.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let state = s.clone();
    let work =
        tokio::task::spawn_blocking(move || run_job(&state, job, max_tokens, temperature, &tx));
    if stream {
        let (id2, model2) = (id.clone(), model.clone());
        let chunks = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        use tokio_stream::StreamExt as _;
        let head = tokio_stream::once(
            json!({"id": id, "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}),
        );
        let body = chunks.map(move |piece| json!({"id": id2, "object": "chat.completion.chunk", "model": model2, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}));
        let tail = tokio_stream::once(work).then(|w| async move {
            match w.await {
                Ok(Ok((_, extra))) => json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "visionthink": extra}),
                Ok(Err(e)) => json!({"error": {"message": e, "type": "server_error"}}),
                Err(e) => json!({"error": {"message": e.to_string(), "type": "server_error"}}),
            }
        });
        let events = head
            .chain(body)
            .chain(tail)
            .map(|v| Ok::<_, std::convert::Infallible>(SseEvent::default().data(v.to_string())))
            .chain(tokio_stream::once(Ok(SseEvent::default().data("[DONE]"))));
        return Sse::new(events).into_response();
    }
    drop(rx);
    match work.await {
        Ok(Ok((content, extra))) => Json(json!({
            "id": id, "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "visionthink": extra,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn run_job(
    s: &AppState,
    job: Job,
    max_tokens: usize,
    temperature: f64,
    tx: &tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<(String, Value), String> {
    let generation = GenerateOptions {
        max_new_tokens: max_tokens,
        sampling: SamplingConfig {
            temperature,
            ..Default::default()
        },
        ignore_eos: false,
    };
    let vt = || -> Result<std::sync::MutexGuard<'_, VisionThink>, String> {
        s.vt.as_ref()
            .ok_or("this server has no model (rule judge only)")?
            .lock()
            .map_err(|_| "the model is unavailable after a failed request".to_string())
    };
    match job {
        Job::Text(t) => {
            let _ = tx.send(t.clone());
            Ok((t, Value::Null))
        }
        Job::Ask { image, question } => {
            let img = visionthink_core::image::decode(&image, Default::default())
                .map_err(|e| format!("image: {e}"))?;
            let vt = vt()?;
            let opts = AskOptions {
                generation,
                ..Default::default()
            };
            let answer = vt
                .ask_streaming(&img, &question, &opts, |ev| {
                    if let crate::Event::Token { text, .. } = ev {
                        let _ = tx.send(text.to_string());
                    }
                })
                .map_err(|e| e.to_string())?;
            let extra = json!({"turns": answer.turns, "used_high_res": answer.used_high_res, "visual_tokens": answer.visual_tokens, "visual_tokens_full_res": answer.visual_tokens_full_res, "thinking": answer.thinking});
            Ok((answer.text.clone(), extra))
        }
        Job::Chat(messages) => {
            let vt = vt()?;
            let mut p = Prompt::new();
            if !messages.iter().any(|(r, _)| r == "system") {
                p.push_template("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n");
            }
            for (role, text) in &messages {
                p.push_template(format!("<|im_start|>{role}\n"));
                p.push_user(text);
                p.push_template("<|im_end|>\n");
            }
            p.push_template("<|im_start|>assistant\n");
            let ids = vt
                .dir
                .tokenizer
                .encode_prompt(&p, &[])
                .map_err(|e| e.to_string())?;
            let mut session = vt.session();
            let logits = session.feed(&ids, &[]).map_err(|e| e.to_string())?;
            let mut sampler = Sampler::new(generation.sampling.clone());
            let out = session
                .generate(logits, &generation, &mut sampler, None, &mut |_, piece| {
                    let _ = tx.send(piece.to_string());
                })
                .map_err(|e| e.to_string())?;
            let text = vt
                .dir
                .tokenizer
                .decode(&out, true)
                .map_err(|e| e.to_string())?;
            Ok((text, json!({"generated_tokens": out.len()})))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_judge_queries_are_recognised() {
        let req = JudgeRequest::for_question("What color?", "red", "Red.");
        let (_, user) = visionthink_core::judge::judge_messages(&req);
        let got = judge_fields(&user).expect("parsed");
        assert_eq!(got, req);
        assert!(judge_fields("hello").is_none());
    }

    #[test]
    fn content_parts() {
        let png = base64::engine::general_purpose::STANDARD.encode([1u8, 2, 3]);
        let v = json!([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}, {"type": "text", "text": "b"}]);
        let (t, i) = parse_content(&v).expect("ok");
        assert_eq!((t.as_str(), i), ("ab", vec![vec![1u8, 2, 3]]));
        assert!(parse_content(
            &json!([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])
        )
        .expect_err("remote")
        .contains("data:"));
        assert!(parse_content(&json!([{"type": "audio"}])).is_err());
    }
}
