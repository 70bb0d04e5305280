//! The same scripted episodes on every executor: each case's answer record (timings aside) must
//! equal the committed one in tests/fixtures/episodes/records.json, which the browser tests
//! (WebGPU and the CPU fallback, wasm/tests/browser.rs) and the trainer's rollouts compare
//! against too. Cases: a direct answer, a resize call then an answer, a malformed tool call (an
//! error turn, then the model's own turn), and a turn cut by the token budget.
//!
//! The model is the tiny test checkpoint with the files the browser test embeds (tokenizer,
//! config, chat template; default preprocessor and generation settings).
//! `VT_UPDATE_SNAPSHOTS=1 cargo test -p visionthink --test episodes` rewrites the record after an
//! intended change.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use visionthink::{AskOptions, DeviceChoice, GenerateOptions, Precision, VisionThink};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The scripted cases: name, forced turns, token budget, tool set (shared with the browser
/// and trainer tests through records.json, which lists them).
fn cases() -> Vec<(&'static str, Vec<String>, usize, &'static str)> {
    let call = "<think>Too small.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";
    let broken = "<think>Hm.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"act\": 1}}\n</tool_call>";
    // The extended tool set (issue 16): boxes in the pixels of the turn-1 image as the model
    // sees it (the 320 × 240 half-size photo, smart-resized to 308 × 252).
    let crop = |b: &str| {
        format!("<think>The code is small.</think>\n<tool_call>\n{{\"name\": \"crop_image\", \"arguments\": {{\"bbox\": {b}}}}}\n</tool_call>")
    };
    let answer = "<think>Now clear.</think><answer>X7</answer>".to_string();
    vec![
        (
            "direct",
            vec!["<think>Clear.</think><answer>X7</answer>".into()],
            8,
            "resize",
        ),
        (
            "resize_then_answer",
            vec![call.into(), answer.clone()],
            8,
            "resize",
        ),
        ("malformed_tool_call", vec![broken.into()], 5, "resize"),
        ("budget_cut", vec![], 3, "resize"),
        (
            "crop_then_answer",
            vec![crop("[100, 60, 220, 150]"), answer.clone()],
            8,
            "resize,crop",
        ),
        (
            "crop_then_crop",
            vec![
                crop("[0, 0, 160, 120]"),
                crop("[200.5, 100, 308, 252]"),
                answer.clone(),
            ],
            8,
            "resize,crop",
        ),
        (
            "resize_then_crop",
            vec![call.into(), crop("[10, 10, 80, 80]"), answer],
            8,
            "resize,crop",
        ),
        (
            "malformed_box",
            vec![crop("[150, 100, 40, 20]")],
            5,
            "resize,crop",
        ),
        (
            "crop_budget_spent",
            vec![
                crop("[0, 0, 100, 100]"),
                crop("[100, 100, 200, 200]"),
                crop("[0, 0, 308, 252]"),
            ],
            4,
            "resize,crop",
        ),
    ]
}

fn load(device: DeviceChoice) -> visionthink::Result<VisionThink> {
    let read = |p: &str| std::fs::read(root().join(p)).unwrap();
    let files = [
        (
            "tokenizer.json",
            read("tests/fixtures/tokenizer/tokenizer.json"),
        ),
        (
            "config.json",
            read("tests/fixtures/models/tied_nested/config.json"),
        ),
        (
            "chat_template.json",
            read("tests/fixtures/models/tied_nested/chat_template.json"),
        ),
        (
            "model.safetensors",
            read("tests/fixtures/models/tied_nested/model.safetensors"),
        ),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    VisionThink::from_files("tied_nested", &refs, device, Precision::F32)
}

/// Every case's record, timings removed, in the shape of records.json.
fn records(vt: &VisionThink) -> Value {
    let image =
        visionthink::load_image(root().join("tests/fixtures/images/photo_640x480.png")).unwrap();
    let mut out = serde_json::Map::new();
    for (name, forced, budget, tools) in cases() {
        let opts = AskOptions {
            generation: GenerateOptions {
                max_new_tokens: budget,
                ..Default::default()
            },
            forced_turns: forced.clone(),
            protocol: visionthink::core::protocol::ProtocolConfig::from_tools(tools).unwrap(),
        };
        let mut streamed = String::new();
        let a = vt
            .ask_streaming(&image, "What is the code?", &opts, |ev| {
                if let visionthink::Event::Token { text, .. } = ev {
                    streamed.push_str(text);
                }
            })
            .unwrap();
        // The stream carries every turn's text.
        assert_eq!(streamed, a.turns.concat(), "{name}: streamed text");
        let mut v = serde_json::to_value(&a).unwrap();
        v.as_object_mut().unwrap().remove("timings");
        out.insert(
            name.into(),
            json!({"forced_turns": forced, "max_new_tokens": budget, "tools": tools, "record": v}),
        );
    }
    Value::Object(out)
}

fn check(got: &Value, executor: &str) {
    let path = root().join("tests/fixtures/episodes/records.json");
    if std::env::var_os("VT_UPDATE_SNAPSHOTS").is_some() && executor == "candle" {
        std::fs::write(&path, serde_json::to_string_pretty(got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (name, case) in want.as_object().unwrap() {
        let (w, g) = (&case["record"], &got[name]["record"]);
        for (field, value) in w.as_object().unwrap() {
            assert_eq!(&g[field], value, "{executor}: case {name}, field {field}");
        }
    }
    assert_eq!(
        got.as_object().unwrap().len(),
        want.as_object().unwrap().len(),
        "cases"
    );
}

#[test]
fn scripted_episodes_on_candle_match_the_record() {
    let vt = load(DeviceChoice::Cpu).unwrap();
    assert_eq!(vt.kept_pixel_bytes(), 0);
    let got = records(&vt);
    // The episodes ran one after another through the engine's pixel buffers (each preprocessed
    // into the previous episode's memory); the records below are unchanged by that.
    assert!(vt.kept_pixel_bytes() > 0);
    // The cases exercise what they name.
    assert_eq!(got["direct"]["record"]["end"], "answered");
    assert_eq!(got["direct"]["record"]["used_high_res"], false);
    assert_eq!(got["resize_then_answer"]["record"]["used_high_res"], true);
    assert_eq!(got["resize_then_answer"]["record"]["text"], "X7");
    assert_eq!(got["malformed_tool_call"]["record"]["used_high_res"], false);
    assert_eq!(
        got["malformed_tool_call"]["record"]["turns"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        got["budget_cut"]["record"]["turns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let field = |case: &str, f: &str| got[case]["record"][f].clone();
    assert_eq!(field("crop_then_answer", "crops"), 1);
    assert_eq!(field("crop_then_answer", "text"), "X7");
    assert_eq!(field("crop_then_crop", "crops"), 2);
    assert_eq!(field("resize_then_crop", "crops"), 1);
    assert_eq!(field("resize_then_crop", "used_high_res"), true);
    // The malformed box is an error turn, then the model answers (no image).
    assert_eq!(field("malformed_box", "crops"), 0);
    assert_eq!(field("malformed_box", "turns").as_array().unwrap().len(), 2);
    // Three images (the turn-1 one and two crops) are the budget: the third call ends it.
    assert_eq!(field("crop_budget_spent", "crops"), 2);
    assert_eq!(field("crop_budget_spent", "end"), "image_limit");
    // Crops cost their own visual tokens, fewer than the full image's.
    let vt = |case: &str| field(case, "visual_tokens").as_u64().unwrap();
    assert!(
        vt("direct") < vt("crop_then_answer") && vt("crop_then_answer") < vt("resize_then_answer")
    );
    check(&got, "candle");
}

#[cfg(feature = "wgpu")]
#[test]
fn scripted_episodes_on_wgpu_match_the_record() {
    match load(DeviceChoice::Wgpu) {
        Ok(vt) => check(&records(&vt), "wgpu"),
        Err(e) if e.to_string().contains("adapter") => {
            eprintln!("SKIPPED: no WebGPU adapter here ({e}); tests/run.sh provides lavapipe")
        }
        Err(e) => panic!("{e}"),
    }
}
