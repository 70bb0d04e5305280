//! The `visionthink` CLI contract (issue: shared core): names, flags and JSON keys, checked against
//! the reference goldens, plus bad input and a real HTTP judge on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}

fn vt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_visionthink"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> Value {
    let out = vt(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fails_with(args: &[&str], needle: &str) {
    let out = vt(args);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(out.stdout.is_empty(), "nothing on stdout when failing");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: stderr {err:?} lacks {needle:?}"
    );
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("golden/{name}"))).unwrap())
        .unwrap()
}

#[test]
fn preprocess_json_contract_matches_reference() {
    let g = golden("preprocess.json");
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        if name.ends_with(".jpg") || case.get("error").is_some() || name.starts_with("photo_1024") {
            continue;
        }
        let img = fixture(&format!("images/{name}"));
        let (mn, mx) = (
            case["min_pixels"].to_string(),
            case["max_pixels"].to_string(),
        );
        let mut args = vec![
            "preprocess",
            "--image",
            img.to_str().unwrap(),
            "--min-pixels",
            &mn,
            "--max-pixels",
            &mx,
            "--json",
        ];
        if case["low_res"].as_bool().unwrap() {
            args.push("--low-res");
        }
        let v = ok_json(&args);
        for key in [
            "resized_hw",
            "grid_thw",
            "num_image_tokens",
            "resized_rgb_sha256",
        ] {
            assert_eq!(v[key], case[key], "{name}: {key}");
        }
        assert_eq!(v["input_size_wh"], case["input_size_wh"], "{name}");
        assert_eq!(v["pixel_values"]["shape"], case["pixel_values"]["shape"]);
        assert_eq!(
            v["pixel_values"]["sha256_f32le"],
            case["pixel_values"]["sha256_f32le"]
        );
        let (a, b) = (
            v["pixel_values"]["sum"].as_f64().unwrap(),
            case["pixel_values"]["sum"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-6 * b.abs().max(1.0),
            "{name}: sum {a} vs {b}"
        );
        n += 1;
    }
    assert!(n >= 20);
}

#[test]
fn tokenize_json_contract_matches_reference() {
    let g = golden("prompts.json");
    let dir = fixture("tokenizer");
    for case in g["cases"].as_array().unwrap() {
        let Some(file) = case["prompt_file"].as_str() else {
            continue;
        };
        // Low-res images are written out first so the CLI sees exactly the model's images.
        let tmp = std::env::temp_dir().join(format!(
            "vt-cli-{}-{}",
            std::process::id(),
            case["name"].as_str().unwrap()
        ));
        std::fs::create_dir_all(&tmp).unwrap();
        let _cleanup = Cleanup(tmp.clone());
        let mut args: Vec<String> = vec![
            "tokenize".into(),
            "--model-dir".into(),
            dir.display().to_string(),
            "--prompt-file".into(),
            fixture(&format!("golden/{file}")).display().to_string(),
            "--json".into(),
        ];
        for (i, (img, low)) in case["images"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["low_res"].as_array().unwrap())
            .enumerate()
        {
            let src = fixture(&format!("images/{}", img.as_str().unwrap()));
            let path = if low.as_bool().unwrap() {
                let out = tmp.join(format!("low{i}.png"));
                let v = vt(&[
                    "demo",
                    "--image",
                    src.to_str().unwrap(),
                    "--save-low-res",
                    out.to_str().unwrap(),
                    "--json",
                ]);
                assert!(v.status.success());
                out
            } else {
                src
            };
            args.push("--image".into());
            args.push(path.display().to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = ok_json(&refs);
        assert_eq!(v["input_ids"], case["input_ids"], "{}", case["name"]);
        assert_eq!(v["position_ids"], case["position_ids"], "{}", case["name"]);
        assert_eq!(v["rope_delta"], case["rope_delta"], "{}", case["name"]);
    }
}

#[test]
fn prompt_json_contract() {
    let g = golden("prompts.json");
    let case = &g["cases"][0];
    let v = ok_json(&[
        "prompt",
        "--question",
        case["question"].as_str().unwrap(),
        "--json",
    ]);
    let want = std::fs::read_to_string(fixture("golden/prompt_one_image_lowres.txt")).unwrap();
    assert_eq!(v["prompt_text"].as_str().unwrap(), want);
    let dir = fixture("tokenizer");
    let v2 = ok_json(&[
        "prompt",
        "--question",
        case["question"].as_str().unwrap(),
        "--model-dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v, v2, "chat template and built-in prompt agree");
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

const ROLLOUTS: &str = r#"{"id": "a1", "group": "g1", "turns": ["<think>r</think><answer>Paris</answer>"], "ground_truth": "Paris"}
{"id": "a2", "group": "g1", "turns": ["<think>r</think><tool_call>{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}</tool_call>", "<think>r</think><answer> paris. </answer>"], "ground_truth": "Paris"}
{"id": 3, "group": "g2", "turns": ["<think>r</think><answer>4</answer>"], "ground_truth": "4"}
{"id": 4, "group": "g2", "turns": ["<think>r</think><answer>4</answer>"], "ground_truth": "4"}
"#;

#[test]
fn score_jsonl_contract() {
    let dir = std::env::temp_dir().join(format!("vt-score-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let input = write(&dir, "in.jsonl", ROLLOUTS.as_bytes());
    let output = dir.join("out.jsonl");
    for (judge, a2_acc) in [("exact", 0.0), ("rule", 1.0)] {
        let out = vt(&[
            "score",
            "--judge",
            judge,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        for l in &lines {
            for key in [
                "id",
                "group",
                "format_score",
                "tool_call_count",
                "accuracy",
                "reward",
                "group_kept",
            ] {
                assert!(l.get(key).is_some(), "{judge}: missing {key} in {l}");
            }
        }
        assert_eq!(lines[0]["reward"], 1.5);
        assert_eq!(lines[1]["tool_call_count"], 1);
        assert_eq!(lines[1]["accuracy"], a2_acc);
        assert_eq!(lines[2]["id"], 3);
        assert_eq!(lines[2]["group_kept"], false, "identical rewards: std 0");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("vt-bad-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let tok = fixture("tokenizer");
    let img = fixture("images/photo_640x480.png");
    // Non-UTF-8 prompt file.
    let bad_prompt = write(&dir, "bad.txt", &[0xff, 0xfe, b'a']);
    fails_with(
        &[
            "tokenize",
            "--model-dir",
            tok.to_str().unwrap(),
            "--prompt-file",
            bad_prompt.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--json",
        ],
        "not UTF-8",
    );
    // Placeholders vs images.
    let two = write(&dir, "two.txt", b"<|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|>");
    fails_with(
        &[
            "tokenize",
            "--model-dir",
            tok.to_str().unwrap(),
            "--prompt-file",
            two.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--json",
        ],
        "2 image placeholder(s) but 1 image(s)",
    );
    // Malformed tokenizer.json and config.json in a model directory.
    let md = dir.join("model");
    write(&md, "tokenizer.json", b"{\"truncated\": ");
    fails_with(
        &[
            "tokenize",
            "--model-dir",
            md.to_str().unwrap(),
            "--prompt-file",
            two.to_str().unwrap(),
            "--json",
        ],
        "tokenizer.json",
    );
    std::fs::copy(tok.join("tokenizer.json"), md.join("tokenizer.json")).unwrap();
    write(&md, "config.json", b"{\"hidden_size\": \"big\"}");
    fails_with(
        &[
            "prompt",
            "--question",
            "q",
            "--model-dir",
            md.to_str().unwrap(),
        ],
        "config.json",
    );
    // Corrupt image, huge header, missing file.
    let corrupt = write(&dir, "corrupt.png", &std::fs::read(&img).unwrap()[..500]);
    fails_with(
        &["preprocess", "--image", corrupt.to_str().unwrap(), "--json"],
        "cannot decode image",
    );
    fails_with(
        &[
            "preprocess",
            "--image",
            dir.join("nope.png").to_str().unwrap(),
            "--json",
        ],
        "cannot read",
    );
    // Rollouts with missing fields name the line.
    let rl = write(&dir, "r.jsonl", b"{\"id\": 1, \"group\": 1, \"turns\": [\"x\"], \"ground_truth\": \"y\"}\n{\"id\": 2, \"group\": 1, \"ground_truth\": \"y\"}\n");
    fails_with(
        &[
            "score",
            "--judge",
            "exact",
            "--input",
            rl.to_str().unwrap(),
            "--output",
            dir.join("o.jsonl").to_str().unwrap(),
        ],
        "r.jsonl:2: missing field `turns`",
    );
    let good = write(&dir, "good.jsonl", ROLLOUTS.as_bytes());
    fails_with(
        &[
            "score",
            "--judge",
            "http",
            "--input",
            good.to_str().unwrap(),
            "--output",
            dir.join("o.jsonl").to_str().unwrap(),
        ],
        "--judge-url",
    );
}

#[derive(Clone, Copy)]
enum Mode {
    Good,
    Error500,
    Garbage,
    Hang,
    NoDigit,
}

/// A one-purpose OpenAI-compatible endpoint on 127.0.0.1; returns its base URL and the number of
/// requests it saw (through the join handle). It serves `max_requests` requests and exits.
fn serve(mode: Mode, max_requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        let mut held = Vec::new();
        for stream in listener.incoming().take(max_requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            bodies.push(String::from_utf8(body).unwrap());
            let (status, payload) = match mode {
                Mode::Good => (
                    "200 OK",
                    r#"{"choices":[{"message":{"role":"assistant","content":"Score: 1"}}]}"#
                        .to_string(),
                ),
                Mode::NoDigit => (
                    "200 OK",
                    r#"{"choices":[{"message":{"role":"assistant","content":"cannot say"}}]}"#
                        .to_string(),
                ),
                Mode::Error500 => ("500 Internal Server Error", "oops".to_string()),
                Mode::Garbage => ("200 OK", "<html>not json".to_string()),
                Mode::Hang => {
                    held.push(stream);
                    continue;
                }
            };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}", payload.len());
            stream.write_all(resp.as_bytes()).unwrap();
        }
        bodies
    });
    (url, handle)
}

#[test]
fn http_judge_against_a_real_server() {
    let dir = std::env::temp_dir().join(format!("vt-http-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let one = "{\"id\": 1, \"group\": \"g\", \"turns\": [\"<think>r</think><answer>Paris</answer>\"], \"ground_truth\": \"Paris\", \"question\": \"Capital of France?\"}\n";
    let input = write(&dir, "one.jsonl", one.as_bytes());
    let output = dir.join("scored.jsonl");
    let run = |url: &str| {
        vt(&[
            "score",
            "--judge",
            "http",
            "--judge-url",
            url,
            "--judge-model",
            "judge",
            "--judge-timeout",
            "1",
            "--workers",
            "1",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
    };
    // A good judge: one request, official prompts, temperature 0.
    let (url, h) = serve(Mode::Good, 1);
    assert!(run(&url).status.success());
    let bodies = h.join().unwrap();
    let req: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(req["temperature"], 0.0);
    let user = req["messages"][1]["content"][0]["text"].as_str().unwrap();
    assert!(
        user.contains("<image>\nCapital of France?")
            && user.contains("**Model Predicted Answer**: Paris")
    );
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
    assert_eq!(line["accuracy"], 1.0);
    // Failing judges: three attempts (temperatures 0, 0.2, 0.4), then the group is dropped.
    for mode in [Mode::Error500, Mode::Garbage, Mode::NoDigit, Mode::Hang] {
        let (url, h) = serve(mode, 3);
        let out = run(&url);
        assert!(
            out.status.success(),
            "a failing judge is reported per rollout, not fatal"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("judge failed on 1 rollout"));
        let line: Value =
            serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
        assert_eq!(line["group_kept"], false);
        assert!(line["judge_error"]
            .as_str()
            .unwrap()
            .contains("3 attempts failed"));
        let bodies = h.join().unwrap();
        if !matches!(mode, Mode::Hang) {
            let temps: Vec<f64> = bodies
                .iter()
                .map(|b| {
                    serde_json::from_str::<Value>(b).unwrap()["temperature"]
                        .as_f64()
                        .unwrap()
                })
                .collect();
            assert_eq!(temps, vec![0.0, 0.2, 0.4]);
        }
    }
    // Nothing listening at all.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(&format!("http://127.0.0.1:{port}/v1"));
    assert!(out.status.success());
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
    assert!(line["judge_error"].as_str().unwrap().contains("request to"));
}

#[test]
fn demo_runs_on_the_built_in_example() {
    let v = ok_json(&["demo", "--json"]);
    assert_eq!(v["original_wh"], serde_json::json!([896, 672]));
    assert_eq!(v["low_res_wh"], serde_json::json!([448, 336]));
    assert_eq!(v["visual_tokens_low_res"], 192);
    assert_eq!(v["visual_tokens_full_res"], 768);
}

/// The exact text of common errors: each cause printed once (an error whose message embeds its
/// source, printed with its cause chain, used to say "No such file or directory" twice).
#[test]
fn common_errors_print_each_cause_once() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("error_texts");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stderr = |args: &[&str]| {
        let out = vt(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.join("missing.png");
    let missing = missing.to_str().unwrap();
    assert_eq!(
        stderr(&["preprocess", "--image", missing, "--json"]),
        format!("error: cannot read {missing}: No such file or directory (os error 2)\n")
    );
    let not_image = write(&dir, "not_an_image.png", b"hello, I am text");
    let not_image = not_image.to_str().unwrap();
    assert_eq!(
        stderr(&["preprocess", "--image", not_image, "--json"]),
        format!(
            "error: {not_image}: cannot decode image (unknown): unrecognised image format (The \
             image format could not be determined); supported: PNG, JPEG, WebP, GIF\n"
        )
    );
    let empty_model = dir.join("empty_model");
    std::fs::create_dir_all(&empty_model).unwrap();
    let empty_model = empty_model.to_str().unwrap();
    let image = fixture("images/photo_300x200.jpg");
    assert_eq!(
        stderr(&[
            "ask",
            "--model-dir",
            empty_model,
            "--image",
            image.to_str().unwrap(),
            "--question",
            "q"
        ]),
        format!(
            "error: loading {empty_model}: {empty_model}/tokenizer.json: missing (a model folder \
             needs tokenizer.json)\n"
        )
    );
    // An unreachable judge: the rollout is kept with the reason, its group marked dropped.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener); // nothing listens there now
    let rollouts = write(
        &dir,
        "rollouts.jsonl",
        br#"{"id": 1, "group": 1, "turns": ["<answer>a</answer>"], "ground_truth": "a"}"#,
    );
    let scored = dir.join("scored.jsonl");
    let url = format!("http://127.0.0.1:{port}/v1");
    let out = vt(&[
        "score",
        "--judge",
        "http",
        "--judge-url",
        &url,
        "--judge-model",
        "m",
        "--input",
        rollouts.to_str().unwrap(),
        "--output",
        scored.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "warning: the judge failed on 1 rollout(s); their groups are marked group_kept=false\n"
    );
    let row: Value =
        serde_json::from_str(std::fs::read_to_string(&scored).unwrap().trim()).unwrap();
    assert_eq!(
        row["judge_error"],
        format!(
            "judge failed: 3 attempts failed; last: request to {url}/chat/completions failed: io: \
             Connection refused (os error 111)"
        )
    );
}

/// Removes a test's temporary folder when the test passes (kept when it fails, to look at).
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
