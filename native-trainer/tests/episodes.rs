//! The trainer's rollouts reproduce the scripted episodes every executor must give
//! (tests/fixtures/episodes/records.json, written by the Rust SDK on candle): the generated case
//! through a greedy `rollout_group`, the teacher-forced ones through `forced_trajectory` (the
//! SFT traces' path). The malformed-tool-call case forces a turn and then generates one, a mix
//! the trainer never runs; the SDK and browser tests cover it.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use visionthink_core::answer::{Answer, Timings};
use visionthink_core::model_files::ModelFiles;
use visionthink_core::protocol::ProtocolConfig;
use visionthink_core::sampling::SamplingConfig;
use visionthink_model::{CandleBackend, Qwen25VL, WeightStore};
use visionthink_train::rollout::{
    forced_trajectory, prepare, prepare_with, rollout_group, ImagePath, RolloutConfig, Steer,
    Trajectory,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(root().join(p)).unwrap()
}

/// The record of a trajectory, in the SDK's answer shape (timings aside).
fn record(t: &Trajectory, full_res_tokens: usize) -> Value {
    let a = Answer::from_outcome(
        &t.outcome,
        t.visual_tokens,
        full_res_tokens,
        Timings::default(),
    );
    let mut v = serde_json::to_value(a).unwrap();
    v.as_object_mut().unwrap().remove("timings");
    v
}

fn assert_same(got: &Value, want: &Value, case: &str) {
    for (field, value) in want.as_object().unwrap() {
        assert_eq!(&got[field], value, "trainer: case {case}, field {field}");
    }
}

#[test]
fn rollouts_reproduce_the_scripted_episode_records() {
    let want: Value =
        serde_json::from_slice(&read("tests/fixtures/episodes/records.json")).unwrap();
    let files = ModelFiles::parse(|name| {
        Ok::<_, ()>(match name {
            "tokenizer.json" => Some(read("tests/fixtures/tokenizer/tokenizer.json")),
            "config.json" => Some(read("tests/fixtures/models/tied_nested/config.json")),
            "chat_template.json" => {
                Some(read("tests/fixtures/models/tied_nested/chat_template.json"))
            }
            _ => None,
        })
    })
    .unwrap();
    let store = WeightStore::from_bytes(vec![(
        "model.safetensors".into(),
        read("tests/fixtures/models/tied_nested/model.safetensors"),
    )])
    .unwrap();
    let be = CandleBackend::cpu();
    let model = Qwen25VL::load(&be, files.config.as_ref().unwrap(), &store).unwrap();
    let image = visionthink_core::image::decode(
        &read("tests/fixtures/images/photo_640x480.png"),
        Default::default(),
    )
    .unwrap();
    let prompt = prepare(&files, &image, "What is the code?", ImagePath::Inference).unwrap();

    // Generated: greedy, the case's token budget.
    let case = &want["budget_cut"];
    let cfg = RolloutConfig {
        sampling: SamplingConfig::default(),
        max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
        max_rounds: 2,
        max_images: 2,
        record_logps: false,
    };
    let t = rollout_group(&be, &model, &files, &prompt, 2, &cfg, &Steer::Free, 0)
        .unwrap()
        .remove(1);
    assert_same(
        &record(&t, prompt.high_tokens),
        &case["record"],
        "budget_cut",
    );

    // Teacher-forced: the same turns, tool turns and visual tokens, under each case's tool
    // set (the crop cases: the extended system prompt, crops of the original image).
    let forced = [
        "direct",
        "resize_then_answer",
        "crop_then_answer",
        "crop_then_crop",
        "resize_then_crop",
        "crop_budget_spent",
    ];
    for name in forced {
        let case = &want[name];
        let turns: Vec<String> = case["forced_turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let tools = ProtocolConfig::from_tools(case["tools"].as_str().unwrap()).unwrap();
        let prompt = prepare_with(
            &files,
            &image,
            "What is the code?",
            ImagePath::Inference,
            &tools,
        )
        .unwrap();
        let t = forced_trajectory(&files, &prompt, &turns).unwrap();
        assert_same(&record(&t, prompt.high_tokens), &case["record"], name);
    }
}

/// The fair full-resolution baseline's image path: turn 1 shows the original, so the prompt's
/// two images (and their visual tokens) are the same.
#[test]
fn the_full_image_path_shows_the_original_in_turn_1() {
    let files = ModelFiles::parse(|name| {
        Ok::<_, ()>(match name {
            "tokenizer.json" => Some(read("tests/fixtures/tokenizer/tokenizer.json")),
            "config.json" => Some(read("tests/fixtures/models/tied_nested/config.json")),
            _ => None,
        })
    })
    .unwrap();
    let image = visionthink_core::image::decode(
        &read("tests/fixtures/images/photo_640x480.png"),
        Default::default(),
    )
    .unwrap();
    let full = prepare(&files, &image, "What is the code?", ImagePath::Full).unwrap();
    assert_eq!(full.images.low_res, image);
    assert_eq!(full.images.high_res, image);
    assert_eq!(full.low_tokens, full.high_tokens);
    assert_eq!(full.seen, (644, 476));
    let half = prepare(&files, &image, "What is the code?", ImagePath::Inference).unwrap();
    assert_eq!(full.high_tokens, half.high_tokens);
    assert!(half.low_tokens * 3 < full.low_tokens);
}
