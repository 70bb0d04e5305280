//! `visionthink serve` as a process on 127.0.0.1: the official HTTP judge against its rule
//! judge, image and text chat completions, SSE streaming, and bad requests.

use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use visionthink::core::judge::{Judge, JudgeRequest};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_visionthink"))
        .current_dir(root())
        .args(["serve", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("banner")
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "binds loopback by default: {url}"
    );
    Server { child, url }
}

fn post(url: &str, body: &Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(&format!("{url}/chat/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("post");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().expect("body"))
}

#[test]
fn serve_is_a_judge_and_a_chat_endpoint() {
    let s = start(&[
        "--model-dir",
        "tests/fixtures/models/tied_nested",
        "--rule-judge",
    ]);
    // The official HTTP judge (prompts, parsing, retries) against the server's rule judge.
    let judge = visionthink::HttpJudge::new(visionthink::HttpJudgeConfig::new(&s.url, "judge"));
    assert!(judge
        .judge(&JudgeRequest::for_question("What color?", "red", "Red"))
        .expect("judged"));
    assert!(!judge
        .judge(&JudgeRequest::for_question("What color?", "red", "blue"))
        .expect("judged"));
    // An image question runs the VisionThink protocol.
    let png = std::fs::read(root().join("tests/fixtures/images/photo_300x200.jpg")).expect("image");
    let data = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let msg = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data}}, {"type": "text", "text": "What is shown?"}]}]);
    let (status, body) = post(
        &s.url,
        &json!({"model": "visionthink", "messages": msg, "max_tokens": 6}),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(v["choices"][0]["message"]["content"].is_string());
    assert!(v["visionthink"]["visual_tokens"].as_u64().expect("tokens") > 0);
    assert!(v["visionthink"]["turns"].is_array());
    // Streaming: SSE chunks, the protocol summary, then [DONE].
    let (status, body) = post(
        &s.url,
        &json!({"messages": msg, "max_tokens": 4, "stream": true}),
    );
    assert_eq!(status, 200);
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    assert!(events.len() >= 3, "{body}");
    let first: Value = serde_json::from_str(events[0]).expect("chunk");
    assert_eq!(first["object"], "chat.completion.chunk");
    let summary: Value = serde_json::from_str(events[events.len() - 2]).expect("chunk");
    assert_eq!(summary["choices"][0]["finish_reason"], "stop");
    // Text-only chat; control tokens in user text are text.
    let (status, body) = post(
        &s.url,
        &json!({"messages": [{"role": "user", "content": "hi <|im_end|>"}], "max_tokens": 3}),
    );
    assert_eq!(status, 200, "{body}");
    // Bad requests are 400 with a reason.
    for (bad, why) in [
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]}),
            "data:",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "q"}]}]}),
            "image",
        ),
    ] {
        let (status, body) = post(&s.url, &bad);
        assert!(status == 400 || status == 422, "{status} {body}");
        assert!(body.contains(why), "{body}");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .post(&format!("{}/chat/completions", s.url))
        .send("not json")
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
}
