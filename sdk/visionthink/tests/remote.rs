//! The remote engine: `visionthink ask --endpoint` against `visionthink serve`'s raw model gives
//! what the local `ask` gives; against a server that behaves like vLLM in its limits (one image
//! per request unless configured, plain chat completions) the protocol's requests are what the
//! official evaluation sends; and a server that fails in any of the usual ways ends the episode
//! with a typed error, retried as configured, never a hang.

use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use visionthink::{Engine as _, RemoteConfig, RemoteEngine};

mod common;
use common::{root, start_with, Server};

fn serve() -> Server {
    start_with(&[], &[])
}

fn ask_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_visionthink"))
        .current_dir(root())
        .arg("ask")
        .args(args)
        .env_remove("VISIONTHINK_REMOTE_API_KEY")
        .output()
        .expect("run ask");
    assert!(
        out.status.success(),
        "ask {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

const IMAGE: &str = "sdk/visionthink/model/example.png";

#[test]
fn ask_through_the_raw_model_answers_as_the_local_model() {
    let s = serve();
    let (status, models) = get(&format!("{}/models", s.url));
    assert_eq!(status, 200);
    let ids: Vec<String> = serde_json::from_str::<Value>(&models).expect("JSON")["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, ["visionthink", "visionthink-raw"]);
    for (question, high) in [
        (visionthink::shipped::EXAMPLE_COARSE, false),
        (visionthink::shipped::EXAMPLE_FINE, true),
    ] {
        let local = ask_json(&["--image", IMAGE, "--question", question, "--json"]);
        for stream in [false, true] {
            let mut args = vec![
                "--image",
                IMAGE,
                "--question",
                question,
                "--json",
                "--endpoint",
                &s.url,
                "--remote-model",
                "visionthink-raw",
            ];
            if stream {
                args.push("--stream");
            }
            let remote = ask_json(&args);
            let keys = |v: &Value| -> Vec<String> {
                v.as_object().expect("object").keys().cloned().collect()
            };
            assert_eq!(keys(&remote), keys(&local), "the same keys");
            for key in [
                "text",
                "used_high_res",
                "turns",
                "thinking",
                "end",
                "visual_tokens",
                "visual_tokens_full_res",
                "num_turns",
            ] {
                assert_eq!(
                    remote[key], local[key],
                    "{question} (stream {stream}): {key}"
                );
            }
            assert_eq!(local["used_high_res"], json!(high), "{question}");
        }
    }
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().expect("get");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().expect("body"))
}

/// How the scripted server answers a chat completion.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// vLLM in its limits: at most `images` images per request (vLLM's
    /// `--limit-mm-per-prompt`), a tool call to a one-image conversation, an answer otherwise.
    VllmLike { images: usize },
    /// Always this status.
    Status(u16),
    /// A chat completion without a choice.
    NoChoice,
    /// `text/event-stream` that is not server-sent events.
    GarbageStream,
    /// One streamed chunk, then the connection closes.
    ClosedMidStream,
    /// Answers after this many milliseconds.
    Slow(u64),
}

/// A chat server on a thread, one connection at a time; it records every request body.
struct Scripted {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

const TOOL_CALL: &str = "<think>Too small to read.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";
const ANSWER: &str = "<think>Now it is clear.</think><answer>vertical</answer>";

fn scripted(mode: Mode) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            handle(conn, mode, &seen);
        }
    });
    Scripted { url, requests }
}

fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some((first, body))
}

fn respond(conn: &mut TcpStream, status: u16, kind: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(mut conn: TcpStream, mode: Mode, seen: &Mutex<Vec<Value>>) {
    let Some((line, body)) = read_request(&mut conn) else {
        return;
    };
    if line.starts_with("GET /v1/models") {
        let list = json!({"object": "list", "data": [{"id": "Senqiao/VisionThink-Efficient", "object": "model"}]});
        return respond(&mut conn, 200, "application/json", &list.to_string());
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut s) = seen.lock() {
        s.push(req.clone());
    }
    let images = image_parts(&req).len();
    match mode {
        Mode::VllmLike { images: limit } => {
            if images > limit {
                let e = json!({"object": "error", "message": format!("At most {limit} image(s) may be provided in one request."), "type": "BadRequestError", "code": 400});
                return respond(&mut conn, 400, "application/json", &e.to_string());
            }
            let text = if images == 1 { TOOL_CALL } else { ANSWER };
            if req["stream"] == json!(true) {
                let mut sse = String::new();
                for piece in text.split_inclusive(' ') {
                    let c = json!({"choices": [{"index": 0, "delta": {"content": piece}}]});
                    sse.push_str(&format!("data: {c}\n\n"));
                }
                sse.push_str("data: [DONE]\n\n");
                respond(&mut conn, 200, "text/event-stream", &sse);
            } else {
                let r = json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 100 * images, "completion_tokens": 20}});
                respond(&mut conn, 200, "application/json", &r.to_string());
            }
        }
        Mode::Status(code) => respond(
            &mut conn,
            code,
            "application/json",
            &json!({"error": {"message": "engine overloaded"}}).to_string(),
        ),
        Mode::NoChoice => respond(&mut conn, 200, "application/json", r#"{"choices": []}"#),
        Mode::GarbageStream => respond(
            &mut conn,
            200,
            "text/event-stream",
            "<html>proxy error</html>\n",
        ),
        Mode::ClosedMidStream => {
            let c = json!({"choices": [{"index": 0, "delta": {"content": "<think>"}}]});
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {c}\n\n"
            );
        }
        Mode::Slow(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            respond(&mut conn, 200, "application/json", r#"{"choices": []}"#);
        }
    }
}

/// The `data:` URLs of a request's image parts, in order.
fn image_parts(req: &Value) -> Vec<String> {
    req["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|p| p["type"] == "image_url")
        .filter_map(|p| p["image_url"]["url"].as_str().map(str::to_string))
        .collect()
}

fn png_size(data_url: &str) -> (u32, u32) {
    let b64 = data_url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let img = visionthink::core::image::decode(&png, Default::default()).expect("PNG");
    (img.width, img.height)
}

fn engine(url: &str, stream: bool, retries: u32) -> RemoteEngine {
    let mut cfg = RemoteConfig::new(url);
    cfg.stream = stream;
    cfg.retries = retries;
    cfg.retry_delay = Duration::from_millis(10);
    cfg.timeout = Duration::from_secs(30);
    RemoteEngine::connect(cfg).expect("connect")
}

fn example() -> visionthink::core::image::RgbImage {
    visionthink::core::image::decode(visionthink::shipped::EXAMPLE_IMAGE, Default::default())
        .expect("example image")
}

#[test]
fn against_a_vllm_like_server_the_requests_are_the_official_ones() {
    let img = example();
    for stream in [false, true] {
        let s = scripted(Mode::VllmLike { images: 2 });
        let e = engine(&s.url, stream, 0);
        assert_eq!(
            e.model(),
            "Senqiao/VisionThink-Efficient",
            "the first listed model"
        );
        let mut resized = 0;
        let mut streamed = String::new();
        let a = e
            .ask_streaming(
                &img,
                "What texture?",
                &Default::default(),
                &mut |ev| match ev {
                    visionthink::Event::ResizeRequested => resized += 1,
                    visionthink::Event::Token { text, .. } => streamed.push_str(text),
                },
            )
            .expect("answer");
        assert_eq!(a.text, "vertical");
        assert!(a.used_high_res);
        assert_eq!(a.turns, [TOOL_CALL, ANSWER]);
        assert_eq!(resized, 1);
        assert_eq!(streamed, format!("{TOOL_CALL}{ANSWER}"));
        // Visual tokens: the core's count for the half-size and the full image.
        let pre = visionthink::core::config::PreprocessorConfig::default();
        let low = visionthink::core::image::inference_low_res(&img).expect("low");
        let full_tokens =
            visionthink::core::image::visual_tokens(img.width, img.height, &pre).expect("tokens");
        let low_tokens =
            visionthink::core::image::visual_tokens(low.width, low.height, &pre).expect("tokens");
        assert_eq!(a.visual_tokens, low_tokens + full_tokens);
        assert_eq!(a.visual_tokens_full_res, full_tokens);
        let reqs = s.requests.lock().expect("lock").clone();
        assert_eq!(reqs.len(), 2);
        let turn1 = &reqs[0]["messages"];
        assert_eq!(turn1[0]["role"], "system");
        assert_eq!(
            turn1[0]["content"],
            visionthink::core::strings::SYSTEM_PROMPT
        );
        assert_eq!(turn1[1]["role"], "user");
        assert!(turn1[1]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Answer the question based on the image provided.")));
        assert_eq!(turn1[1]["content"][2]["text"], "\nWhat texture?");
        let first = image_parts(&reqs[0]);
        assert_eq!(
            png_size(&first[0]),
            (low.width, low.height),
            "half size first"
        );
        let turn2 = reqs[1]["messages"].as_array().expect("messages");
        assert_eq!(turn2.len(), 4);
        assert_eq!(turn2[2], json!({"role": "assistant", "content": TOOL_CALL}));
        assert_eq!(turn2[3]["role"], "user");
        assert_eq!(
            turn2[3]["content"][0]["text"],
            "<tool_response>\nThe resized image is shown below:\n"
        );
        let both = image_parts(&reqs[1]);
        assert_eq!(
            both[0], first[0],
            "the conversation is sent again as it was"
        );
        assert_eq!(
            png_size(&both[1]),
            (img.width, img.height),
            "then the original"
        );
        assert_eq!(reqs[1]["temperature"], 0.0);
        assert_eq!(reqs[1]["stream"], stream);
        if !stream {
            assert_eq!(a.timings.prefill_tokens, 300, "the server's usage counts");
            assert_eq!(a.timings.generated_tokens, 40);
        }
    }
}

fn remote_error(e: visionthink::Error) -> (Option<u16>, String) {
    assert_eq!(e.name(), "RemoteError", "{e}");
    match e {
        visionthink::Error::Remote { status, reason, .. } => (status, reason),
        other => panic!("not a remote error: {other}"),
    }
}

#[test]
fn a_second_image_refused_by_the_server_is_a_typed_error_naming_the_limit() {
    let s = scripted(Mode::VllmLike { images: 1 });
    let e = engine(&s.url, false, 3);
    let err = e
        .ask(&example(), "What texture?", &Default::default())
        .expect_err("refused");
    let (status, reason) = remote_error(err);
    assert_eq!(status, Some(400));
    assert!(reason.contains("At most 1 image(s)"), "{reason}");
    assert_eq!(
        s.requests.lock().expect("lock").len(),
        2,
        "a 400 is not retried"
    );
}

#[test]
fn failing_servers_end_the_episode_with_a_typed_error() {
    let img = example();
    // (server, stream, retries, status, the error says, requests made)
    type Case = (Mode, bool, u32, Option<u16>, &'static str, usize);
    let cases: [Case; 5] = [
        (
            Mode::Status(500),
            false,
            2,
            Some(500),
            "engine overloaded (after 3 attempts)",
            3,
        ),
        (Mode::Status(503), true, 0, Some(503), "HTTP 503", 1),
        (Mode::NoChoice, false, 2, Some(200), "no choice", 1),
        (
            Mode::GarbageStream,
            true,
            2,
            Some(200),
            "not server-sent events",
            1,
        ),
        (
            Mode::ClosedMidStream,
            true,
            2,
            Some(200),
            "before `data: [DONE]`",
            1,
        ),
    ];
    for (mode, stream, retries, status, says, attempts) in cases {
        let s = scripted(mode);
        let e = engine(&s.url, stream, retries);
        let err = e.ask(&img, "q", &Default::default()).expect_err("fails");
        let (got_status, reason) = remote_error(err);
        assert_eq!(got_status, status, "{reason}");
        assert!(reason.contains(says), "{says}: {reason}");
        assert_eq!(s.requests.lock().expect("lock").len(), attempts, "{says}");
    }
}

#[test]
fn an_unreachable_or_slow_server_is_an_error_within_the_timeout() {
    // Nothing listens on a port we bound and closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut cfg = RemoteConfig::new(&format!("http://127.0.0.1:{port}/v1"));
    cfg.model = Some("m".into());
    cfg.retries = 1;
    cfg.retry_delay = Duration::from_millis(10);
    let e = RemoteEngine::connect(cfg).expect("no request yet");
    let (status, reason) = remote_error(
        e.ask(&example(), "q", &Default::default())
            .expect_err("unreachable"),
    );
    assert_eq!(status, None);
    assert!(reason.contains("after 2 attempts"), "{reason}");
    // Without a model name, connecting asks the server, and says so when it cannot.
    let err = RemoteEngine::connect(RemoteConfig::new(&format!("http://127.0.0.1:{port}/v1")))
        .expect_err("unreachable");
    assert!(err.to_string().contains("/models"), "{err}");

    let s = scripted(Mode::Slow(5_000));
    let mut cfg = RemoteConfig::new(&s.url);
    cfg.model = Some("m".into());
    cfg.timeout = Duration::from_millis(300);
    cfg.retries = 0;
    let e = RemoteEngine::connect(cfg).expect("engine");
    let t = Instant::now();
    let err = e
        .ask(&example(), "q", &Default::default())
        .expect_err("slow");
    // A bound on a liveness wait (the server answers after 5 s), not a timing assertion.
    assert!(t.elapsed() < Duration::from_secs(4), "{err}");
    remote_error(err);
}
