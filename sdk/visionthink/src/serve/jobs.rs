//! Running a checked request: admission (a place in the batch, a bounded queue, the deadline),
//! the model job on a blocking thread, and the errors and answers it ends with.

use super::metrics::*;
use super::request::*;
use super::state::*;
use crate::engine::{AskOptions, Cancel, CancelReason, GenerateOptions};
use crate::error::Error;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use visionthink_core::chat::ChatMessage;
use visionthink_core::prompt::Prompt;
use visionthink_core::sampling::Sampler;

pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    (
        status,
        Json(json!({"error": {"message": msg.into(), "type": kind}})),
    )
        .into_response()
}

/// Why a job failed, and the status that says so.
pub(super) struct JobError {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl JobError {
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The answer: the error JSON, with `Retry-After` on a 503 (the queue is full, or the
    /// device is coming back).
    pub(super) fn response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut r = error(self.status, self.message);
        if retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Cancelled(CancelReason::DeadlinePassed) => StatusCode::GATEWAY_TIMEOUT,
            // Nobody reads this one: the client is gone.
            Error::Cancelled(CancelReason::Requested) => StatusCode::REQUEST_TIMEOUT,
            Error::Core(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // The prompt does not fit the model (context length, image rows).
            Error::Model(visionthink_model::Error::Input(_)) => StatusCode::BAD_REQUEST,
            // Transient: another request may fit, or the device comes back after a reload.
            Error::Model(
                visionthink_model::Error::OutOfMemory(_) | visionthink_model::Error::DeviceLost(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

/// What a finished job answers.
pub(super) struct Done {
    pub(super) content: String,
    /// `stop`, or `length` when the token budget cut the turn.
    pub(super) finish_reason: &'static str,
    /// Prompt and completion token counts (the raw model reports them).
    pub(super) usage: Option<Value>,
    /// The protocol's record (`visionthink` key of the reply).
    pub(super) visionthink: Value,
}

impl Done {
    pub(super) fn text(content: String, visionthink: Value) -> Self {
        Self {
            content,
            finish_reason: "stop",
            usage: None,
            visionthink,
        }
    }
}

pub(super) type JobResult = Result<Done, JobError>;

impl Counters {
    pub(super) fn record(&self, out: &JobResult) {
        let counter = match out {
            Ok(_) => &self.completed,
            Err(e) if e.status == StatusCode::GATEWAY_TIMEOUT => &self.deadline,
            Err(e) if e.status == StatusCode::REQUEST_TIMEOUT => &self.client_gone,
            Err(e) if e.status.is_client_error() => &self.rejected,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decodes the image (off the async threads), waits for a place in the batch until the deadline,
/// then runs the job on a blocking thread whose forward passes the batcher runs.
pub(super) async fn run(
    s: &Arc<AppState>,
    job: Job,
    generation: GenerateOptions,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    arrived: Instant,
) -> JobResult {
    let job = match job {
        Job::Text(t) => {
            let _ = tx.send(t.clone());
            return Ok(Done::text(t, Value::Null));
        }
        Job::Ask { image, question } => {
            let limits = s.cfg.image_limits;
            let img = tokio::task::spawn_blocking(move || {
                visionthink_core::image::decode(&image, limits)
            })
            .await
            .map_err(|e| JobError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("image decoding failed: {e}"),
            })?
            .map_err(|e| JobError::bad_request(format!("image: {e}")))?;
            Ready::Ask(img, question)
        }
        Job::Chat(messages) => Ready::Chat(messages),
        Job::Raw { messages, images } => {
            let limits = s.cfg.image_limits;
            let decoded = tokio::task::spawn_blocking(move || {
                images
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        visionthink_core::image::decode(b, limits)
                            .map_err(|e| format!("image {}: {e}", i + 1))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|e| JobError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("image decoding failed: {e}"),
            })?
            .map_err(JobError::bad_request)?;
            Ready::Raw(messages, decoded)
        }
    };
    let model = s.model.clone().ok_or_else(|| JobError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "this server has no model (rule judge only)".into(),
    })?;
    let deadline = arrived + s.cfg.request_timeout;
    let state = s.clone();
    with_model(&s.gate, model, deadline, s.cfg.request_timeout, move |m| {
        run_model_job(m, job, &generation, &tx, &state.counters.generated_tokens)
    })
    .await
    .inspect_err(|e| {
        if e.status == StatusCode::SERVICE_UNAVAILABLE && e.message.contains("queue") {
            s.counters.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// The 503 for a model job when no place in the batch is free and the queue is full (judge
/// answers need no place), counted.
pub(super) fn queue_full(s: &AppState, job: &Job) -> Option<JobError> {
    let g = &s.gate;
    let full = !matches!(job, Job::Text(_))
        && g.slots.available_permits() == 0
        && g.waiting.load(Ordering::Relaxed) >= g.max_waiting;
    full.then(|| {
        s.counters.queue_full.fetch_add(1, Ordering::Relaxed);
        busy(g.max_waiting)
    })
}

fn busy(waiting: u64) -> JobError {
    JobError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "the server is busy: the batch is full and {waiting} requests wait in the queue; retry later"
        ),
    }
}

/// Counts a request waiting for a place in the batch for as long as it waits.
pub(super) struct Waiting<'a>(pub(super) &'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a place in the batch (waiting until `deadline` behind at most `max_waiting` others),
/// then runs `f` on a blocking thread. A full queue is a 503, a deadline passed while waiting a
/// 504. A panic in `f` is a 500 for this request only: the place is given back while unwinding,
/// so later requests are served.
pub(super) async fn with_model<T: Send + Sync + 'static>(
    gate: &Gate,
    model: Arc<T>,
    deadline: Instant,
    timeout: Duration,
    f: impl FnOnce(&T) -> JobResult + Send + 'static,
) -> JobResult {
    let permit = match gate.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if gate.waiting.fetch_add(1, Ordering::Relaxed) >= gate.max_waiting {
                gate.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(busy(gate.max_waiting));
            }
            let _waiting = Waiting(&gate.waiting);
            tokio::time::timeout_at(deadline.into(), gate.slots.clone().acquire_owned())
                .await
                .map_err(|_| JobError {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    message: format!(
                        "generation stopped: {} (the model was busy for the whole {:.1} s request timeout)",
                        CancelReason::DeadlinePassed,
                        timeout.as_secs_f64()
                    ),
                })?
                .map_err(|e| JobError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: format!("the server is shutting down: {e}"),
                })?
        }
    };
    let out = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&model)))
    })
    .await;
    match out {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => Err(JobError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("internal error: {}", panic_message(panic.as_ref())),
        }),
        Err(e) => Err(JobError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("internal error: {e}"),
        }),
    }
}

pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a request handler panicked".into())
}

/// A job whose inputs are decoded and checked.
pub(super) enum Ready {
    Ask(visionthink_core::image::RgbImage, String),
    Chat(Vec<(String, String)>),
    Raw(Vec<ChatMessage>, Vec<visionthink_core::image::RgbImage>),
}

pub(super) fn run_model_job(
    m: &Model,
    job: Ready,
    generation: &GenerateOptions,
    tx: &tokio::sync::mpsc::UnboundedSender<String>,
    tokens: &AtomicU64,
) -> JobResult {
    let send = |piece: &str| {
        tokens.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(piece.to_string());
    };
    match job {
        Ready::Ask(img, question) => ask_job(m, &img, &question, generation, &send),
        Ready::Chat(messages) => {
            let mut p = Prompt::new();
            if !messages.iter().any(|(r, _)| r == "system") {
                p.push_template("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n");
            }
            for (role, text) in &messages {
                // `role` is one of ROLES (checked in `parse_messages`): never client text.
                p.push_template(format!("<|im_start|>{role}\n"));
                p.push_user(text);
                p.push_template("<|im_end|>\n");
            }
            p.push_template("<|im_start|>assistant\n");
            let (text, _, out) = generate(m, &p, &[], generation, &send)?;
            Ok(Done::text(text, json!({"generated_tokens": out})))
        }
        Ready::Raw(messages, images) => {
            let p =
                visionthink_core::chat::render_messages(&messages, m.vt.dir.chat_template.as_ref())
                    .map_err(Error::from)?;
            let (text, prompt, out) = generate(m, &p, &images, generation, &send)?;
            // The turn decoder ends a turn the budget cuts with `<|im_end|>` as well.
            let cut = out >= generation.max_new_tokens;
            Ok(Done {
                content: text,
                finish_reason: if cut { "length" } else { "stop" },
                usage: Some(
                    json!({"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}),
                ),
                visionthink: Value::Null,
            })
        }
    }
}

/// The protocol on one image, in a batched session.
fn ask_job(
    m: &Model,
    img: &visionthink_core::image::RgbImage,
    question: &str,
    generation: &GenerateOptions,
    send: &dyn Fn(&str),
) -> JobResult {
    let vt = &*m.vt;
    let opts = AskOptions {
        generation: generation.clone(),
        ..Default::default()
    };
    let answer = vt.ask_in(m.batcher.session(vt), img, question, &opts, &mut |ev| {
        if let crate::Event::Token { text, .. } = ev {
            send(text);
        }
    })?;
    let extra = json!({"turns": answer.turns, "used_high_res": answer.used_high_res, "visual_tokens": answer.visual_tokens, "visual_tokens_full_res": answer.visual_tokens_full_res, "thinking": answer.thinking});
    Ok(Done::text(answer.text, extra))
}

/// One assistant turn after a rendered prompt with its images, in a batched session: the
/// text, the prompt's token count and the generated token count.
fn generate(
    m: &Model,
    p: &Prompt,
    images: &[visionthink_core::image::RgbImage],
    generation: &GenerateOptions,
    send: &dyn Fn(&str),
) -> Result<(String, usize, usize), JobError> {
    let vt = &*m.vt;
    let pvs = images
        .iter()
        .map(|i| vt.preprocess(i))
        .collect::<crate::error::Result<Vec<_>>>()?;
    let merge = vt.dir.preprocessor.merge_size;
    let counts: Vec<usize> = pvs.iter().map(|p| p.num_image_tokens(merge)).collect();
    let ids = vt
        .dir
        .tokenizer
        .encode_prompt(p, &counts)
        .map_err(Error::from)?;
    generation.cancel.as_ref().map_or(Ok(()), Cancel::check)?;
    let mut session = m.batcher.session(vt);
    let logits = session.feed(&ids, &pvs)?;
    let mut sampler = Sampler::new(generation.sampling.clone());
    let out = session.generate(logits, generation, &mut sampler, None, &mut |_, piece| {
        send(piece)
    })?;
    let text = vt.dir.tokenizer.decode(&out, true).map_err(Error::from)?;
    Ok((text, ids.len(), out.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_panicking_request_leaves_the_model_usable_and_the_queue_is_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let model = Arc::new(41);
        let gate = Gate::new(1, 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        let t = Duration::from_secs(60);
        rt.block_on(async {
            let e = with_model(&gate, model.clone(), deadline, t, |_| {
                panic!("boom in the kernel")
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("the panic is an error"));
            assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(e.message.contains("boom in the kernel"), "{}", e.message);
            let ok = with_model(&gate, model.clone(), deadline, t, |v| {
                Ok(Done::text(format!("{}", v + 1), Value::Null))
            })
            .await
            .unwrap_or_else(|e| panic!("{}", e.message));
            assert_eq!(ok.content, "42");
            // The only place taken: one request may wait, past the deadline it is a 504 …
            let _held = gate.slots.clone().acquire_owned().await;
            let soon = Instant::now() + Duration::from_millis(20);
            let e = with_model(&gate, model.clone(), soon, t, |_| {
                Ok(Done::text(String::new(), Value::Null))
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("busy"));
            assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(
                gate.waiting.load(Ordering::Relaxed),
                0,
                "it no longer waits"
            );
            // … and while one waits, the next one is a 503 with Retry-After.
            gate.waiting.store(1, Ordering::Relaxed);
            let e = with_model(&gate, model.clone(), deadline, t, |_| {
                Ok(Done::text(String::new(), Value::Null))
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("full"));
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            let r = e.response();
            assert_eq!(
                r.headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
                Some("1")
            );
        });
    }
}
