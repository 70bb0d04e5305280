//! `visionthink serve`: an OpenAI-compatible `/v1/chat/completions` endpoint over the SDK.
//!
//! - A user message with one image (`image_url` part, `data:` URL) and text runs the VisionThink
//!   protocol: half-size image first, the full image only if the model calls the resize tool.
//!   The reply's `content` is the answer; a `visionthink` object adds the turns, whether the
//!   full image was used and the visual tokens.
//! - Text-only conversations are generated with the Qwen chat format (user text is never read
//!   as control tokens; roles are limited to `system`, `user`, `assistant` and `tool`).
//! - With a rule judge, requests that carry the official LLM-judge prompts (SPEC §9) are
//!   answered `Score: 1` / `Score: 0` by the deterministic rule judge: an offline judge endpoint
//!   for training pipelines and tests.
//! - `"stream": true` answers with server-sent events (`chat.completion.chunk`, then `[DONE]`).
//!
//! Every request is validated before the model is touched (400 naming the field), runs under a
//! deadline (504 once it passes), and is cancelled when its client goes away (the model is free
//! for the next request within one forward pass). With an API key, every route but `/health`
//! needs `Authorization: Bearer KEY`. `/metrics` reports request counters in the Prometheus text
//! format.
//!
//! Up to `max_batch` requests run at once, each on a blocking thread of its own; their forward
//! passes run on one model thread that decodes them together (continuous batching, see
//! [`crate::batch`]): requests join and leave the batch between any two tokens. Up to
//! `max_queue` more wait for a place; one more is a 503 with `Retry-After`. `/metrics` adds the
//! queue depth, batch counters and a request-duration histogram. On SIGTERM (or Ctrl-C) the
//! listener closes and requests in flight finish ([`shutdown_signal`]).

mod config;
mod jobs;
mod metrics;
mod request;
mod state;

use crate::batch::{BatchConfig, Batcher};
use crate::engine::{Cancel, VisionThink};
use axum::extract::connect_info::Connected;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
pub use config::{check_bind, ServeConfig, ROLES};
use jobs::*;
use metrics::*;
pub use request::{validate, Job};
use serde_json::{json, Value};
use state::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resolves at Ctrl-C or SIGTERM: hand it to `axum::serve(…).with_graceful_shutdown` so the
/// listener closes (new connections are refused) and requests in flight finish first.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The router (mount it in an application, or run [`serve`]). `vt = None` serves only the
/// rule judge.
///
/// ```no_run
/// # async fn f() -> anyhow::Result<()> {
/// let vt = visionthink::VisionThink::from_dir("model")?;
/// let app = visionthink::serve::router(Some(vt), Default::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
/// // `Peer` lets a request be cancelled as soon as its client hangs up.
/// let app = app.into_make_service_with_connect_info::<visionthink::serve::Peer>();
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
pub fn router(vt: Option<VisionThink>, cfg: ServeConfig) -> Router {
    let limit = cfg.body_limit;
    let model = vt.map(|v| {
        let vt = Arc::new(v);
        let batcher = Batcher::start(
            vt.clone(),
            BatchConfig {
                window: cfg.batch_window,
            },
        );
        Arc::new(Model { vt, batcher })
    });
    let state = Arc::new(AppState {
        model,
        gate: Gate::new(cfg.max_batch, cfg.max_queue),
        cfg,
        counters: Counters::default(),
        latency: Latency::new(),
    });
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(protected)
        .route("/health", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// CORS for the configured origins: a preflight (`OPTIONS` with the origin) is answered here,
/// before authorization (browsers send it without credentials); every other answer to an
/// allowed origin carries `Access-Control-Allow-Origin`.
async fn cors(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| {
            o.to_str().is_ok_and(|o| {
                s.cfg
                    .allowed_origins
                    .iter()
                    .any(|a| a == "*" || a.trim_end_matches('/') == o)
            })
        })
        .cloned();
    let Some(origin) = allowed else {
        return next.run(req).await;
    };
    let mut resp = if req.method() == axum::http::Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.as_bytes(), key.as_bytes()) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (send `Authorization: Bearer <key>`)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": s.cfg.model_name, "object": "model", "owned_by": "visionthink"},
        {"id": s.cfg.raw_model_name(), "object": "model", "owned_by": "visionthink"},
    ]}))
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut body = String::new();
    s.counters.render(&mut body);
    let waiting = s.gate.waiting.load(Ordering::Relaxed);
    family(
        &mut body,
        "gauge",
        "visionthink_queue_depth",
        &[("", &waiting)],
    );
    if let Some(m) = &s.model {
        render_batch(&mut body, m.batcher.stats());
    }
    s.latency.render(&mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Cancels the request's generation when dropped before [`Self::disarm`]: the handler's future
/// (or the response stream) is dropped when the client goes away.
struct CancelOnDrop {
    cancel: Cancel,
    armed: bool,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.cancel.cancel();
        }
    }
}

/// The client's socket (a duplicate of its descriptor), watched for a hang-up while its
/// request runs: hyper notices a closed connection only when it writes, which a non-streaming
/// answer does at the very end. Attach it with
/// `router.into_make_service_with_connect_info::<Peer>()`; without it, a hang-up is noticed when
/// the answer (or a streamed token) is written.
#[derive(Clone, Debug)]
pub struct Peer(Option<Arc<std::net::TcpStream>>);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(dup_socket(stream.io()).map(Arc::new))
    }
}

#[cfg(unix)]
fn dup_socket(s: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd as _;
    let dup = std::net::TcpStream::from(s.as_fd().try_clone_to_owned().ok()?);
    // The descriptor shares its flags with tokio's, which is non-blocking already.
    dup.set_nonblocking(true).ok()?;
    Some(dup)
}

#[cfg(not(unix))]
fn dup_socket(_: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    None
}

impl Peer {
    /// Whether the client closed its end (a pipelined next request still counts as alive).
    fn hung_up(&self) -> bool {
        let Some(sock) = &self.0 else { return false };
        let mut byte = [0u8; 1];
        match sock.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Runs `job` to its end, cancelling it as soon as `peer` hangs up.
async fn watch_peer(
    job: impl std::future::Future<Output = JobResult>,
    peer: Option<Peer>,
    cancel: Cancel,
) -> JobResult {
    tokio::pin!(job);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut watching = peer.is_some();
    loop {
        tokio::select! {
            out = &mut job => return out,
            _ = tick.tick(), if watching => {
                if peer.as_ref().is_some_and(Peer::hung_up) {
                    cancel.cancel();
                    watching = false;
                }
            }
        }
    }
}

async fn chat(
    State(s): State<Arc<AppState>>,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let arrived = Instant::now();
    s.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (job, mut generation, stream) = match validate(&s.cfg, &body) {
        Ok(v) => v,
        Err(e) => {
            s.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    // A full queue is refused before anything is streamed (a 503 a client can act on).
    if let Some(busy) = queue_full(&s, &job) {
        return busy.response();
    }
    let model = if matches!(job, Job::Raw { .. }) {
        s.cfg.raw_model_name()
    } else {
        s.cfg.model_name.clone()
    };
    let cancel = Cancel::with_deadline(arrived + s.cfg.request_timeout);
    generation.cancel = Some(cancel.clone());
    let guard = CancelOnDrop {
        cancel: cancel.clone(),
        armed: true,
    };
    let id = format!(
        "chatcmpl-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let state = s.clone();
    let work = async move {
        let _in_flight = InFlight::enter(&state.counters);
        let out = watch_peer(run(&state, job, generation, tx, arrived), peer, cancel).await;
        state.counters.record(&out);
        state.latency.observe(arrived.elapsed());
        out
    };
    // The job runs as a task of its own: when the client goes away and this handler (or the
    // response stream) is dropped, the guard cancels the generation and the task still ends
    // the request's bookkeeping after the model stops.
    let handle = tokio::spawn(work);
    if stream {
        return stream_response(id, model, rx, handle, guard);
    }
    drop(rx);
    let mut guard = guard;
    let out = handle.await;
    guard.disarm();
    match out.unwrap_or_else(|e| {
        Err(JobError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("internal error: {e}"),
        })
    }) {
        Ok(done) => {
            let mut reply = json!({
                "id": id, "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.content}, "finish_reason": done.finish_reason}],
            });
            match done.usage {
                Some(usage) => reply["usage"] = usage,
                None => reply["visionthink"] = done.visionthink,
            }
            Json(reply).into_response()
        }
        Err(e) => e.response(),
    }
}

/// Server-sent events: a role chunk, a chunk per token, the protocol summary (or the error),
/// then `[DONE]`. The stream owns the cancel guard: a client that disconnects drops the stream,
/// which stops the generation.
fn stream_response(
    id: String,
    model: String,
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    handle: tokio::task::JoinHandle<JobResult>,
    guard: CancelOnDrop,
) -> Response {
    use tokio_stream::StreamExt as _;
    let (id2, model2) = (id.clone(), model.clone());
    let chunks = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let head = tokio_stream::once(
        json!({"id": id, "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}),
    );
    let body = chunks.map(move |piece| json!({"id": id2, "object": "chat.completion.chunk", "model": model2, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}));
    let mut pending = Some((handle, guard));
    let tail = tokio_stream::once(()).then(move |()| {
        let pending = pending.take();
        async move {
            let Some((handle, mut guard)) = pending else {
                return json!({"error": {"message": "the response ended twice", "type": "server_error"}});
            };
            let out = handle.await;
            guard.disarm();
            match out {
                Ok(Ok(done)) => {
                    let mut last = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": done.finish_reason}]});
                    match done.usage {
                        Some(usage) => last["usage"] = usage,
                        None => last["visionthink"] = done.visionthink,
                    }
                    last
                }
                Ok(Err(e)) => json!({"error": {"message": e.message, "type": if e.status.is_server_error() { "server_error" } else { "invalid_request_error" }, "code": e.status.as_u16()}}),
                Err(e) => json!({"error": {"message": e.to_string(), "type": "server_error"}}),
            }
        }
    });
    let events = head
        .chain(body)
        .chain(tail)
        .map(|v| Ok::<_, std::convert::Infallible>(SseEvent::default().data(v.to_string())))
        .chain(tokio_stream::once(Ok(SseEvent::default().data("[DONE]"))));
    Sse::new(events).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
