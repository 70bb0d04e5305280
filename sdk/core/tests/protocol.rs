//! The low-res-first state machine: every branch of SPEC §1 and the official rollout code.
#![allow(clippy::unwrap_used)]
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::sync::Arc;
use visionthink_core::image::RgbImage;
use visionthink_core::protocol::*;

const CALL: &str = "<think>too small</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";
const ANSWER: &str = "<think>I see it.</think>\n<answer>42</answer>";

fn done(step: Step) -> Outcome {
    match step {
        Step::Done(o) => o,
        Step::ToolTurn(t) => panic!("expected the end, got a tool turn {t:?}"),
    }
}

fn tool(step: Step) -> ToolTurn {
    match step {
        Step::ToolTurn(t) => t,
        Step::Done(o) => panic!("expected a tool turn, got {o:?}"),
    }
}

#[test]
fn direct_answer_ends_in_one_round() {
    let mut ep = Episode::new("q", ProtocolConfig::default());
    let _ = ep.initial_prompt();
    let o = done(ep.on_model_turn(ANSWER).unwrap());
    assert_eq!(o.answer.as_deref(), Some("42"));
    assert_eq!(o.thinking, "I see it.");
    assert!(!o.used_high_res);
    assert_eq!(
        (o.end, o.tool_calls, o.turns.len()),
        (EndReason::Answered, 0, 1)
    );
    assert!(
        ep.on_model_turn(ANSWER).is_err(),
        "a finished episode refuses more turns"
    );
}

#[test]
fn resize_then_answer() {
    let mut ep = Episode::new("q", ProtocolConfig::default());
    let _ = ep.initial_prompt();
    let t = tool(ep.on_model_turn(CALL).unwrap());
    assert_eq!(t.image, Some(ImageRequest::HighRes));
    assert!(t.error.is_none());
    assert!(t
        .prompt
        .render()
        .starts_with("<|im_start|>user\n<tool_response>\nThe resized image is shown below:\n"));
    let o = done(ep.on_model_turn(ANSWER).unwrap());
    assert!(o.used_high_res);
    assert_eq!(
        (o.end, o.tool_calls, o.turns.len()),
        (EndReason::Answered, 1, 2)
    );
    assert_eq!(o.thinking, "too small\n\nI see it.");
}

#[test]
fn tool_call_in_the_last_round_ends_the_episode() {
    let mut ep = Episode::new("q", ProtocolConfig::default());
    let _ = ep.initial_prompt();
    let t = tool(ep.on_model_turn("<think>a</think><tool_call>{\"name\": \"x\", \"arguments\": {\"action\": \"zoom\"}}</tool_call>").unwrap());
    // A malformed call costs a round but no image.
    assert!(t.image.is_none());
    let err = t.error.unwrap();
    assert_eq!(
        err,
        "Unknown Tool Type: zoom. Available function tools are: `resize`"
    );
    assert!(t
        .prompt
        .render()
        .contains("Error Information: Unknown Tool Type: zoom."));
    let o = done(ep.on_model_turn(CALL).unwrap());
    assert_eq!(o.end, EndReason::RoundLimit);
    assert!(!o.used_high_res);
    assert_eq!(o.answer, None);
}

#[test]
fn image_budget_ends_an_endless_caller() {
    let cfg = ProtocolConfig {
        max_rounds: 10,
        ..ProtocolConfig::default()
    };
    let mut ep = Episode::new("q", cfg);
    let _ = ep.initial_prompt();
    let _ = tool(ep.on_model_turn(CALL).unwrap());
    let o = done(ep.on_model_turn(CALL).unwrap());
    assert_eq!((o.end, o.tool_calls), (EndReason::ImageLimit, 2));
}

#[test]
fn endless_tool_calls_are_bounded_by_rounds() {
    // Malformed calls never consume images, so only the round limit stops them.
    let cfg = ProtocolConfig {
        max_rounds: 5,
        max_images: 9,
        ..ProtocolConfig::default()
    };
    let mut ep = Episode::new("q", cfg);
    let _ = ep.initial_prompt();
    let bad = "<think>t</think><tool_call>not json}}</tool_call>";
    let mut rounds = 0;
    loop {
        rounds += 1;
        match ep.on_model_turn(bad).unwrap() {
            Step::ToolTurn(t) => assert!(t.error.is_some()),
            Step::Done(o) => {
                assert_eq!(o.end, EndReason::RoundLimit);
                break;
            }
        }
        assert!(rounds < 100);
    }
    assert_eq!(rounds, 5);
}

#[test]
fn malformed_tool_calls_give_official_errors() {
    let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(ResizeTool { factor: None })];
    let cases = [
        (
            "{\"name\": \"resize_image\", \"args\": {\"action\": \"resize\"}}",
            "'arguments'",
        ),
        (
            "{\"name\": \"r\", \"arguments\": {\"act\": \"resize\"}}",
            "'action'",
        ),
        (
            "{\"arguments\": {\"action\": \"resize\"}} {\"arguments\": {\"action\": \"resize\"}}",
            "You should only call function `resize` once per function call.",
        ),
        (
            "no json here",
            "No function call JSON object found inside <tool_call></tool_call>",
        ),
        ("{\"arguments\": {\"action\": resize}}", "JSON decode error"),
        (
            "{\"arguments\": \"resize\"}",
            "No function call JSON object found",
        ),
    ];
    for (content, want) in cases {
        let err = parse_tool_call(&[content], &tools).unwrap_err();
        assert!(err.starts_with(want), "{content}: {err}");
    }
    // The official JSON pattern does not cross lines: `{…}}` must sit on one line.
    assert!(parse_tool_call(&["{\"arguments\":\n{\"action\": \"resize\"}}"], &tools).is_err());
    // The function name is not checked.
    assert_eq!(
        parse_tool_call(
            &["{\"name\": \"anything\", \"arguments\": {\"action\": \"resize\"}}"],
            &tools
        )
        .unwrap(),
        ImageRequest::HighRes
    );
}

/// A second tool, as a crop tool would be added: callers still only fulfil `ImageRequest`s.
#[derive(Debug)]
struct DoubleTool;
impl Tool for DoubleTool {
    fn action(&self) -> &str {
        "double"
    }
    fn call(&self, _: &serde_json::Map<String, serde_json::Value>) -> Result<ImageRequest, String> {
        Ok(ImageRequest::Scaled { factor: 2.0 })
    }
}

#[test]
fn a_second_tool_plugs_in_without_caller_changes() {
    let cfg = ProtocolConfig {
        tools: vec![Arc::new(ResizeTool { factor: None }), Arc::new(DoubleTool)],
        ..ProtocolConfig::default()
    };
    let mut ep = Episode::new("q", cfg);
    let _ = ep.initial_prompt();
    let t = tool(ep.on_model_turn("<think>x</think><tool_call>{\"name\": \"d\", \"arguments\": {\"action\": \"double\"}}</tool_call>").unwrap());
    let images = EpisodeImages {
        low_res: RgbImage::new(30, 20, vec![100; 30 * 20 * 3]).unwrap(),
        high_res: RgbImage::new(60, 40, vec![100; 60 * 40 * 3]).unwrap(),
    };
    let img = t.image.unwrap().fulfil(&images).unwrap();
    assert_eq!((img.width, img.height), (60, 40));
    let err = parse_tool_call(
        &["{\"arguments\": {\"action\": \"crop\"}}"],
        &[Arc::new(ResizeTool { factor: None }), Arc::new(DoubleTool)],
    )
    .unwrap_err();
    assert_eq!(
        err,
        "Unknown Tool Type: crop. Available function tools are: `resize`, `double`"
    );
}

#[test]
fn inference_images_follow_the_official_path() {
    let img = RgbImage::new(40, 100, vec![50; 40 * 100 * 3]).unwrap();
    let e = EpisodeImages::for_inference(&img).unwrap();
    // 40x100 → 20x50, then the 20-px side is raised to 28: scale 1.4 → 28x70.
    assert_eq!((e.low_res.width, e.low_res.height), (28, 70));
    assert_eq!(e.high_res, img);
}

// The extended tool set (issue 16): resize_image and crop_image, up to 3 rounds.

fn crop_call(bbox: &str) -> String {
    format!("<think>the label is small</think>\n<tool_call>\n{{\"name\": \"crop_image\", \"arguments\": {{\"bbox\": {bbox}}}}}\n</tool_call>")
}

/// An episode of the extended set whose turn-1 image is seen at 200x100 and whose
/// high-resolution image is 400x200.
fn crop_episode() -> Episode {
    let mut ep = Episode::new("q", ProtocolConfig::resize_and_crop());
    ep.set_image_sizes((200, 100), (400, 200));
    let p = ep.initial_prompt().render();
    assert!(
        p.contains("\"name\": \"crop_image\""),
        "the extended system prompt"
    );
    ep
}

#[test]
fn crop_maps_the_box_onto_the_high_res_image() {
    let mut ep = crop_episode();
    let t = tool(ep.on_model_turn(&crop_call("[10, 20.5, 40, 50]")).unwrap());
    // ×2 each way; the first corner floored, the second ceiled.
    assert_eq!(
        t.image,
        Some(ImageRequest::Crop {
            x: 20,
            y: 41,
            width: 60,
            height: 59
        })
    );
    assert!(t
        .prompt
        .render()
        .starts_with("<|im_start|>user\n<tool_response>\nThe cropped region is shown below:\n"));
    assert_eq!(t.prompt.num_images(), 1);
    // The crop is cut from the high-resolution image.
    let high: Vec<u8> = (0..400 * 200)
        .flat_map(|i| [(i % 400) as u8, (i / 400) as u8, 7])
        .collect();
    let images = EpisodeImages {
        low_res: RgbImage::new(200, 100, vec![0; 200 * 100 * 3]).unwrap(),
        high_res: RgbImage::new(400, 200, high).unwrap(),
    };
    let img = t.image.unwrap().fulfil(&images).unwrap();
    assert_eq!((img.width, img.height), (60, 59));
    assert_eq!(img.pixel(0, 0), [20, 41, 7]);
    assert_eq!(img.pixel(59, 58), [79, 99, 7]);
    let o = done(ep.on_model_turn(ANSWER).unwrap());
    assert_eq!((o.crops, o.tool_calls, o.used_high_res), (1, 1, true));
}

#[test]
fn crop_then_crop_then_the_round_limit() {
    let mut ep = crop_episode();
    tool(ep.on_model_turn(&crop_call("[0, 0, 100, 50]")).unwrap());
    let t = tool(ep.on_model_turn(&crop_call("[100, 50, 200, 100]")).unwrap());
    assert_eq!(
        t.image,
        Some(ImageRequest::Crop {
            x: 200,
            y: 100,
            width: 200,
            height: 100
        })
    );
    // Round 3 is the last: a third call ends the episode.
    let o = done(ep.on_model_turn(&crop_call("[0, 0, 50, 50]")).unwrap());
    assert_eq!(o.end, EndReason::ImageLimit);
    assert_eq!((o.crops, o.tool_calls, o.turns.len()), (2, 3, 3));
}

#[test]
fn crop_then_resize_then_answer() {
    let mut ep = crop_episode();
    tool(ep.on_model_turn(&crop_call("[0, 0, 100, 50]")).unwrap());
    let t = tool(ep.on_model_turn(CALL).unwrap());
    assert_eq!(t.image, Some(ImageRequest::HighRes));
    let o = done(ep.on_model_turn(ANSWER).unwrap());
    assert_eq!((o.crops, o.tool_calls, o.end), (1, 2, EndReason::Answered));
}

#[test]
fn malformed_boxes_get_error_turns() {
    for (bbox, says) in [
        (
            "[1, 2, 3]",
            "bbox must be a list of four numbers [x1, y1, x2, y2], got [1,2,3]",
        ),
        ("\"10,10,50,50\"", "bbox must be a list of four numbers"),
        ("[10, \"a\", 50, 50]", "bbox must be a list of four numbers"),
        (
            "[50, 10, 10, 50]",
            "is empty or inverted: it needs x1 < x2 and y1 < y2",
        ),
        ("[10, 10, 10, 50]", "is empty or inverted"),
        (
            "[-1, 10, 50, 50]",
            "is outside the image, which is 200x100 pixels",
        ),
        ("[10, 10, 50, 101]", "is outside the image"),
        (
            "[10, 10, 20, 50]",
            "covers 20x80 pixels of the original image; a crop needs at least 28x28",
        ),
    ] {
        let mut ep = crop_episode();
        let t = tool(ep.on_model_turn(&crop_call(bbox)).unwrap());
        let err = t.error.unwrap_or_default();
        assert!(err.contains(says), "{bbox}: {err}");
        assert!(t.image.is_none() && t.prompt.num_images() == 0, "{bbox}");
        assert!(t
            .prompt
            .render()
            .contains("ERROR occurs during the function tool call"));
        // An error turn spends a round, not an image.
        let o = done(ep.on_model_turn(ANSWER).unwrap());
        assert_eq!((o.crops, o.used_high_res), (0, false), "{bbox}");
    }
    // A missing bbox is the official KeyError style.
    let mut ep = crop_episode();
    let t = tool(
        ep.on_model_turn("<tool_call>{\"name\": \"crop_image\", \"arguments\": {\"box\": [1, 2, 3, 4]}}</tool_call>")
            .unwrap(),
    );
    assert_eq!(t.error.as_deref(), Some("'bbox'"));
    // Without the image sizes the crop tool says what the caller forgot.
    let mut ep = Episode::new("q", ProtocolConfig::resize_and_crop());
    let _ = ep.initial_prompt();
    let t = tool(ep.on_model_turn(&crop_call("[0, 0, 100, 50]")).unwrap());
    assert!(t.error.unwrap_or_default().contains("set_image_sizes"));
}

#[test]
fn the_official_tool_set_does_not_know_crop_image() {
    // With the official tools a crop call is the official KeyError: the default protocol is
    // unchanged by the extension.
    let mut ep = Episode::new("q", ProtocolConfig::default());
    ep.set_image_sizes((200, 100), (400, 200));
    let p = ep.initial_prompt().render();
    assert!(!p.contains("crop_image"));
    let t = tool(ep.on_model_turn(&crop_call("[0, 0, 100, 50]")).unwrap());
    assert_eq!(t.error.as_deref(), Some("'action'"));
}
