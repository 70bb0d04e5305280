//! The SDK and the model CLI (`logits`, `generate`, `ask`) on the tiny reference checkpoints:
//! JSON contracts, both protocol branches, KV-cache continuation, budgets, and bad checkpoints.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use visionthink::core::protocol::{EndReason, ProtocolConfig};
use visionthink::{AskOptions, GenerateOptions, VisionThink};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("models/golden.json")).unwrap())
        .unwrap()
}

fn vt_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_visionthink"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the CLI, asserts success (showing stderr otherwise) and parses its JSON output.
fn vt_json(args: &[&str]) -> Value {
    let out = vt_cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Two JSON arrays of numbers, element by element within `tol`.
fn assert_close(got: &Value, want: &Value, tol: f64, label: &str) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "{label}");
    for (a, b) in got.iter().zip(want) {
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= tol,
            "{label}: {a} vs {b}"
        );
    }
}

const CALL: &str = "<think>The code is too small.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";
const ANSWER: &str = "<think>Now I can read it.</think>\n<answer>K7Q</answer>";

#[test]
fn logits_and_generate_cli_match_the_reference() {
    let g = golden();
    for variant in ["tied_nested", "untied_flat"] {
        let case = &g["variants"][variant][1];
        let dir = fixtures().join("models").join(variant);
        let prompt = fixtures()
            .join("golden")
            .join(case["prompt_file"].as_str().unwrap());
        let img = fixtures()
            .join("images")
            .join(case["images"][0].as_str().unwrap());
        let args = [
            "logits",
            "--model-dir",
            dir.to_str().unwrap(),
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--backend",
            "candle",
            "--json",
        ];
        let v = vt_json(&args);
        assert_eq!(v["argmax"], case["argmax"]);
        let scale = case["logit_scale"].as_f64().unwrap();
        assert_close(
            &v["logits_last_first16"],
            &case["logits_first16"],
            1e-4 * scale,
            variant,
        );
        let ids: Vec<&Value> = v["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p[0])
            .collect();
        let want: Vec<&Value> = case["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p[0])
            .collect();
        assert_eq!(ids, want, "{variant}: top5 ids");
        let v = vt_json(&[
            "generate",
            "--model-dir",
            dir.to_str().unwrap(),
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--max-new-tokens",
            "8",
            "--greedy",
            "--ignore-eos",
            "--json",
        ]);
        assert_eq!(
            v["tokens"], case["greedy_tokens"],
            "{variant}: greedy tokens"
        );
        assert!(v["text"].is_string());
    }
}

#[test]
fn ask_direct_answer_branch() {
    let vt = VisionThink::from_dir(fixtures().join("models/tied_nested")).unwrap();
    let img = visionthink::load_image(fixtures().join("images/photo_640x480.png")).unwrap();
    let opts = AskOptions {
        forced_turns: vec![ANSWER.into()],
        ..Default::default()
    };
    let a = vt.ask(&img, "What is the code?", &opts).unwrap();
    assert_eq!(a.text, "K7Q");
    assert!(!a.used_high_res);
    assert_eq!((a.turns.len(), a.end), (1, EndReason::Answered));
    assert_eq!((a.visual_tokens, a.visual_tokens_full_res), (99, 391));
    assert!(a.timings.prefill_ms > 0.0 && a.timings.vision_ms > 0.0);
}

#[test]
fn ask_resize_branch_continues_the_cache() {
    let vt = VisionThink::from_dir(fixtures().join("models/untied_flat")).unwrap();
    let img = visionthink::load_image(fixtures().join("images/photo_640x480.png")).unwrap();
    let mut events = Vec::new();
    let mut pieces: Vec<(usize, String)> = Vec::new();
    let opts = AskOptions {
        forced_turns: vec![CALL.into(), ANSWER.into()],
        ..Default::default()
    };
    let a = vt
        .ask_streaming(&img, "What is the code?", &opts, |e| {
            if let visionthink::Event::Token { turn, text, .. } = &e {
                pieces.push((*turn, text.to_string()));
            }
            events.push(format!("{e:?}"))
        })
        .unwrap();
    assert!(a.used_high_res);
    assert_eq!(a.text, "K7Q");
    assert_eq!(a.turns, vec![CALL.to_string(), ANSWER.to_string()]);
    assert_eq!(a.visual_tokens, 99 + 391);
    assert!(events.iter().any(|e| e == "ResizeRequested"));
    // The streamed pieces of each turn add up to exactly that turn's text.
    for (turn, want) in a.turns.iter().enumerate() {
        let got: String = pieces
            .iter()
            .filter(|(t, _)| *t == turn)
            .map(|(_, p)| p.as_str())
            .collect();
        assert_eq!(&got, want, "streamed text of turn {turn}");
    }
    // No re-prefill: the prompt tokens computed are turn 1, the call's closing `<|im_end|>`
    // (the driver feeds a turn's last token together with the tool turn) and the tool turn,
    // nothing twice.
    let tok = &vt.dir.tokenizer;
    let turn1 = tok
        .encode_prompt(
            &visionthink::core::prompt::visionthink_turn1("What is the code?"),
            &[99],
        )
        .unwrap();
    let tool = tok
        .encode_prompt(&visionthink::core::prompt::tool_response_image(), &[391])
        .unwrap();
    assert_eq!(a.timings.prefill_tokens, turn1.len() + 1 + tool.len());
}

#[test]
fn endless_tool_calls_and_endless_text_are_bounded() {
    let vt = VisionThink::from_dir(fixtures().join("models/tied_nested")).unwrap();
    let img = visionthink::load_image(fixtures().join("images/half_even_98x126.png")).unwrap();
    // A model that keeps calling the tool: stopped by the round limit (official semantics).
    let opts = AskOptions {
        forced_turns: vec![CALL.into(), CALL.into(), CALL.into()],
        protocol: ProtocolConfig {
            max_rounds: 2,
            max_images: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let a = vt.ask(&img, "q", &opts).unwrap();
    assert_eq!((a.end, a.turns.len()), (EndReason::RoundLimit, 2));
    // A model that never emits <|im_end|>: bounded by max_new_tokens, turn closed with <|im_end|>.
    let opts = AskOptions {
        generation: GenerateOptions {
            max_new_tokens: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let a = vt.ask(&img, "q", &opts).unwrap();
    assert_eq!(a.turns.len(), 1);
    assert!(a.timings.generated_tokens <= 5);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        std::fs::copy(&p, to.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let base = std::env::temp_dir().join(format!("vt-badckpt-{}", std::process::id()));
    let _cleanup = Cleanup(base.clone());
    let src = fixtures().join("models/tied_nested");
    // Wrong shapes: a config that disagrees with the weights names the tensor and both shapes.
    let d = base.join("shape");
    copy_dir(&src, &d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 48", "\"intermediate_size\": 40");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = VisionThink::from_dir(&d).unwrap_err().to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[48, 16]") && e.contains("[40, 16]"),
        "{e}"
    );
    // Truncated safetensors.
    let d = base.join("trunc");
    copy_dir(&src, &d);
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let e = VisionThink::from_dir(&d).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors"),
        "{e}"
    );
    // Untied config without lm_head.
    let d = base.join("untied");
    copy_dir(&src, &d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        );
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = VisionThink::from_dir(&d).unwrap_err().to_string();
    assert!(e.contains("lm_head.weight"), "{e}");
    // A config missing a required field.
    let d = base.join("cfg");
    copy_dir(&src, &d);
    std::fs::write(
        d.join("config.json"),
        r#"{"text_config": {"hidden_size": 16}}"#,
    )
    .unwrap();
    let e = VisionThink::from_dir(&d).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("missing required field"),
        "{e}"
    );
    // No weights at all.
    let d = base.join("empty");
    copy_dir(&src, &d);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = VisionThink::from_dir(&d).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn prompts_longer_than_the_context_and_placeholder_mismatches_are_errors() {
    let vt = VisionThink::from_dir(fixtures().join("models/tied_nested")).unwrap();
    let long = "word ".repeat(5000);
    let e = vt.prompt_logits(&long, &[]).unwrap_err().to_string();
    assert!(e.contains("exceeds the context of 4096"), "{e}");
    let img = visionthink::load_image(fixtures().join("images/exact_28x28.png")).unwrap();
    let e = vt
        .prompt_logits("no placeholder here", &[img])
        .unwrap_err()
        .to_string();
    assert!(e.contains("0 image placeholder(s) but 1 image(s)"), "{e}");
    // Without --model-dir the shipped model answers (embedded in the binary).
    let out = vt_cli(&[
        "ask",
        "--image",
        fixtures().join("images/exact_28x28.png").to_str().unwrap(),
        "--question",
        "q",
        "--json",
        "--max-new-tokens",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["text"].is_string() && v["visual_tokens"].as_u64().unwrap() > 0,
        "{v}"
    );
    // A Hub id without the `hub` feature says how to get it; a bad path says what it is.
    let img = fixtures().join("images/exact_28x28.png");
    let out = vt_cli(&[
        "ask",
        "--model-dir",
        "Senqiao/VisionThink-Efficient",
        "--image",
        img.to_str().unwrap(),
        "--question",
        "q",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--features hub") || err.contains("Hugging Face Hub"),
        "{err}"
    );
    let out = vt_cli(&[
        "ask",
        "--model-dir",
        "/no/such/dir",
        "--image",
        img.to_str().unwrap(),
        "--question",
        "q",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn streaming_pieces_are_whole_characters_and_add_up() {
    let vt = VisionThink::from_dir(fixtures().join("models/tied_nested")).unwrap();
    let img = visionthink::load_image(fixtures().join("images/exact_28x28.png")).unwrap();
    let turn = "<think>数字 🤖 café — ünïcödé</think><answer>K7Q</answer>";
    let opts = AskOptions {
        forced_turns: vec![turn.into()],
        ..Default::default()
    };
    let mut pieces = Vec::new();
    let a = vt
        .ask_streaming(&img, "q", &opts, |e| {
            if let visionthink::Event::Token { text, .. } = e {
                assert!(
                    !text.contains('\u{FFFD}'),
                    "partial character streamed: {text:?}"
                );
                pieces.push(text.to_string());
            }
        })
        .unwrap();
    assert_eq!(pieces.concat(), a.turns[0]);
    assert_eq!(a.turns[0], turn);
}

/// The first golden case of the untied checkpoint: the case, the model folder, its prompt file
/// and its image.
fn untied_flat_case() -> (Value, PathBuf, PathBuf, PathBuf) {
    let case = golden()["variants"]["untied_flat"][0].clone();
    let dir = fixtures().join("models/untied_flat");
    let prompt = fixtures()
        .join("golden")
        .join(case["prompt_file"].as_str().expect("prompt"));
    let img = fixtures()
        .join("images")
        .join(case["images"][0].as_str().expect("image"));
    (case, dir, prompt, img)
}

/// `logits --backend wgpu` (contract): the same JSON keys as candle, values within 1e-3 of the
/// logit scale, same argmax and top-5; `ask --backend wgpu` gives candle's answer record.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_backend_prints_the_same_json_as_candle() {
    let (case, dir, prompt, img) = untied_flat_case();
    let run = |backend: &str| -> Value {
        vt_json(&[
            "logits",
            "--model-dir",
            dir.to_str().unwrap(),
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--backend",
            backend,
            "--json",
        ])
    };
    let (c, w) = (run("candle"), run("wgpu"));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&c), keys(&w));
    assert_eq!(c["argmax"], w["argmax"]);
    assert_eq!(c["num_tokens"], w["num_tokens"]);
    let ids = |v: &Value| -> Vec<Value> {
        v["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].clone())
            .collect()
    };
    assert_eq!(ids(&c), ids(&w));
    let scale = case["logit_scale"].as_f64().unwrap();
    for (a, b) in c["logits_last_first16"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["logits_last_first16"].as_array().unwrap())
    {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-3 * scale);
    }
    let ask = |backend: &str| -> Value {
        vt_json(&[
            "ask",
            "--model-dir",
            dir.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--question",
            "What is the code?",
            "--max-new-tokens",
            "6",
            "--force-turn",
            CALL,
            "--backend",
            backend,
            "--json",
        ])
    };
    let (c, w) = (ask("candle"), ask("wgpu"));
    for k in ["text", "used_high_res", "turns", "visual_tokens", "end"] {
        assert_eq!(c[k], w[k], "ask {k}");
    }
}

/// `--weights f32|f16|int8` (parsed once, at the CLI): the reduced storages answer with
/// candle's argmax on a golden case; an unknown name, a storage for the candle executor, and a
/// storage together with `--dtype f16` are errors that say so.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_weight_storage_is_chosen_by_name() {
    let (_, dir, prompt, img) = untied_flat_case();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "logits",
            "--model-dir",
            dir.to_str().expect("dir"),
            "--prompt-file",
            prompt.to_str().expect("prompt"),
            "--image",
            img.to_str().expect("image"),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| -> Value {
        let a = args(extra);
        vt_json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let candle = run(&[]);
    for w in ["f32", "f16", "int8"] {
        let out = run(&["--backend", "wgpu", "--weights", w]);
        assert_eq!(out["argmax"], candle["argmax"], "--weights {w}");
    }
    for (extra, says) in [
        (
            vec!["--backend", "wgpu", "--weights", "q4"],
            "f32, f16 or int8",
        ),
        (vec!["--weights", "int8"], "--weights is for --backend wgpu"),
        (
            vec!["--backend", "wgpu", "--weights", "int8", "--dtype", "f16"],
            "not both",
        ),
    ] {
        let a = args(&extra);
        let out = vt_cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{extra:?}: {err}"
        );
    }
}

/// `--dtype bf16` (weights and activations in bf16; one-row products through the bf16
/// matrix-vector kernel): the same argmax and generated ids as f32 on a golden case, logits
/// within bf16's precision of the logit scale.
#[test]
fn bf16_compute_agrees_with_f32() {
    let (case, dir, prompt, img) = untied_flat_case();
    let run = |cmd: &str, dtype: &str| -> Value {
        let mut args = vec![
            cmd,
            "--model-dir",
            dir.to_str().expect("dir"),
            "--prompt-file",
            prompt.to_str().expect("prompt"),
            "--image",
            img.to_str().expect("image"),
            "--dtype",
            dtype,
            "--json",
        ];
        if cmd == "generate" {
            args.extend(["--max-new-tokens", "8"]);
        }
        vt_json(&args)
    };
    let (f, b) = (run("logits", "f32"), run("logits", "bf16"));
    assert_eq!(f["argmax"], b["argmax"]);
    let scale = case["logit_scale"].as_f64().expect("scale");
    for (x, y) in f["logits_last_first16"]
        .as_array()
        .expect("logits")
        .iter()
        .zip(b["logits_last_first16"].as_array().expect("logits"))
    {
        let (x, y) = (x.as_f64().expect("x"), y.as_f64().expect("y"));
        assert!((x - y).abs() <= 0.05 * scale, "{x} vs {y}");
    }
    assert_eq!(
        run("generate", "f32")["tokens"],
        run("generate", "bf16")["tokens"]
    );
}

/// Contract (issue 14): `logits|generate|ask … --model PATH.gguf --mmproj PATH.gguf` prints the
/// same JSON as with `--model-dir`, here on GGUF files written by llama.cpp's converter from the
/// same checkpoint; `--model FOLDER` finds the two files itself.
#[test]
fn gguf_model_flags_print_the_same_json_as_model_dir() {
    let g = golden();
    let case = &g["variants"]["tied_nested"][1];
    let dir = fixtures().join("models/tied_nested");
    let text = fixtures().join("gguf/tied_nested-f16.gguf");
    let mmproj = fixtures().join("gguf/tied_nested-mmproj-f32.gguf");
    let folder = std::env::temp_dir().join(format!("vt-gguf-folder-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    for (src, name) in [
        (&text, "model-f16.gguf"),
        (&mmproj, "mmproj-model-f32.gguf"),
    ] {
        std::fs::copy(src, folder.join(name)).unwrap();
    }
    let prompt = fixtures()
        .join("golden")
        .join(case["prompt_file"].as_str().unwrap());
    let img = fixtures()
        .join("images")
        .join(case["images"][0].as_str().unwrap());
    let (p, i) = (prompt.to_str().unwrap(), img.to_str().unwrap());
    let by_dir = ["--model-dir", dir.to_str().unwrap()];
    let by_gguf = [
        "--model",
        text.to_str().unwrap(),
        "--mmproj",
        mmproj.to_str().unwrap(),
    ];
    let by_folder = ["--model", folder.to_str().unwrap()];
    let run = |model: &[&str], cmd: &[&str]| -> Value {
        let mut args = vec![cmd[0]];
        args.extend(model);
        args.extend(&cmd[1..]);
        vt_json(&args)
    };
    let logits = ["logits", "--prompt-file", p, "--image", i, "--json"];
    let generate = [
        "generate",
        "--prompt-file",
        p,
        "--image",
        i,
        "--max-new-tokens",
        "8",
        "--greedy",
        "--ignore-eos",
        "--json",
    ];
    let ask = [
        "ask",
        "--image",
        i,
        "--question",
        "What is the code?",
        "--max-new-tokens",
        "12",
        "--json",
    ];
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let want_logits = run(&by_dir, &logits);
    let want_gen = run(&by_dir, &generate);
    let want_ask = run(&by_dir, &ask);
    let scale = case["logit_scale"].as_f64().unwrap();
    for model in [&by_gguf[..], &by_folder[..]] {
        let v = run(model, &logits);
        assert_eq!(keys(&v), keys(&want_logits));
        assert_eq!(v["argmax"], want_logits["argmax"]);
        assert_eq!(v["num_tokens"], want_logits["num_tokens"]);
        assert_close(
            &v["logits_last_first16"],
            &want_logits["logits_last_first16"],
            1e-3 * scale,
            "gguf",
        );
        let v = run(model, &generate);
        assert_eq!(keys(&v), keys(&want_gen));
        assert_eq!(
            (&v["tokens"], &v["text"]),
            (&want_gen["tokens"], &want_gen["text"])
        );
        assert_eq!(v["tokens"], case["greedy_tokens"]);
        let v = run(model, &ask);
        assert_eq!(keys(&v), keys(&want_ask));
        for k in [
            "text",
            "used_high_res",
            "turns",
            "visual_tokens",
            "visual_tokens_full_res",
            "end",
        ] {
            assert_eq!(v[k], want_ask[k], "ask {k}");
        }
    }
    // A folder with two candidate mmproj files asks which one.
    std::fs::copy(&mmproj, folder.join("mmproj-other.gguf")).unwrap();
    let out = vt_cli(&[
        "ask",
        "--model",
        folder.to_str().unwrap(),
        "--image",
        i,
        "--question",
        "q",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 files named mmproj"));
    // A file without --mmproj says what is missing.
    let out = vt_cli(&[
        "ask",
        "--model",
        text.to_str().unwrap(),
        "--image",
        i,
        "--question",
        "q",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --mmproj"));
    std::fs::remove_dir_all(&folder).unwrap();
}

/// `ask --tools resize,crop` (beyond the paper, issue 16): scripted crop calls reach the model as
/// crops of the original image (each adds visual tokens), in up to 3 rounds; with the official
/// tools the same call is the official error turn; an unknown tool set is refused.
#[test]
fn ask_with_the_crop_tool_follows_scripted_crops() {
    let (_, dir, _, img) = untied_flat_case();
    let crop = "<think>The code is small.</think>\n<tool_call>\n{\"name\": \"crop_image\", \"arguments\": {\"bbox\": [0, 0, 28, 28]}}\n</tool_call>";
    let ask = |extra: &[&str]| -> Value {
        let mut args = vec![
            "ask",
            "--model-dir",
            dir.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--question",
            "What is the code?",
            "--max-new-tokens",
            "4",
            "--force-turn",
            crop,
            "--force-turn",
            crop,
            "--json",
        ];
        args.extend_from_slice(extra);
        vt_json(&args)
    };
    let extended = ask(&["--tools", "resize,crop"]);
    assert_eq!(extended["crops"], 2, "{extended}");
    assert_eq!(extended["used_high_res"], true);
    assert_eq!(extended["turns"].as_array().unwrap().len(), 3);
    let official = ask(&[]);
    assert_eq!(official["crops"], 0, "{official}");
    assert_eq!(official["used_high_res"], false);
    assert!(
        extended["visual_tokens"].as_u64().unwrap() > official["visual_tokens"].as_u64().unwrap()
    );
    let bad = vt_cli(&[
        "ask",
        "--model-dir",
        dir.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--question",
        "q",
        "--tools",
        "zoom",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected `resize` or `resize,crop`"));
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

/// The shipped crop model (`sdk/visionthink/model-crop`, issue 16) on its example image (a
/// held-out row of `synth --task v2 --seed 2`), greedy: the local question gets one crop whose
/// box is the framed square's cell and the right texture from 20 visual tokens; the shade and
/// colour questions are answered from the half-size image alone (16 visual tokens, no tool; the
/// crop model shipped before 2026-12-04's fourteenth round answered the colour with the shade).
#[test]
fn the_crop_model_crops_for_the_framed_square_and_not_for_the_background() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("model-crop");
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("example.json")).unwrap()).unwrap();
    let img = dir.join("example.png");
    let ask = |question: &str| -> Value {
        vt_json(&[
            "ask",
            "--model-dir",
            dir.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--question",
            question,
            "--tools",
            "resize,crop",
            "--max-new-tokens",
            "96",
            "--json",
        ])
    };
    let local = ask(card["local_question"].as_str().unwrap());
    let first = local["turns"][0].as_str().unwrap();
    let bbox = format!("\"bbox\": {}", card["box"].as_str().unwrap());
    assert!(
        first.contains("crop_image") && first.contains(&bbox),
        "{local}"
    );
    assert_eq!(local["crops"], 1, "{local}");
    assert_eq!(local["text"], card["local_answer"], "{local}");
    assert_eq!(local["visual_tokens"], 20, "{local}");
    for (q, a) in [
        ("shade_question", "shade_answer"),
        ("color_question", "color_answer"),
    ] {
        let coarse = ask(card[q].as_str().unwrap());
        assert_eq!(coarse["turns"].as_array().unwrap().len(), 1, "{coarse}");
        assert_eq!(coarse["text"], card[a], "{coarse}");
        assert_eq!(coarse["visual_tokens"], 16, "{coarse}");
    }
}
