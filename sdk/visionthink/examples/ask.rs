//! The SDK end to end on the tiny reference checkpoint shipped with the tests: load a Qwen2.5-VL
//! directory, ask about an image, stream tokens, read the answer record. The tiny model is
//! random, so the episode's two turns are teacher-forced (a resize call, then an answer) to show
//! the full-resolution branch; drop `forced_turns` to let a real checkpoint decide.
//!
//! Run: `cargo run -p visionthink --example ask [MODEL_DIR] [IMAGE]`

use visionthink::{AskOptions, Event, VisionThink};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| format!("{root}/tests/fixtures/models/tied_nested"));
    let image = args
        .next()
        .unwrap_or_else(|| format!("{root}/sdk/visionthink/assets/example.png"));
    let vt = VisionThink::from_dir(&dir)?;
    let opts = AskOptions {
        forced_turns: vec![
            "<think>The serial is printed too small to read.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>".into(),
            "<think>At full resolution it reads K7Q-4829-ZX.</think>\n<answer>K7Q-4829-ZX</answer>".into(),
        ],
        ..Default::default()
    };
    let answer = vt.ask_streaming(
        &visionthink::load_image(&image)?,
        "What is the serial code?",
        &opts,
        |event| match event {
            Event::Token { text, .. } => print!("{text}"),
            Event::ResizeRequested => println!("\n[the model asked for the full-resolution image]"),
        },
    )?;
    println!("\n\nanswer: {}", answer.text);
    println!(
        "full image requested: {}; visual tokens {} (full-resolution only: {}); prefill {} tokens in {:.1} ms, {} generated in {:.1} ms",
        answer.used_high_res,
        answer.visual_tokens,
        answer.visual_tokens_full_res,
        answer.timings.prefill_tokens,
        answer.timings.prefill_ms,
        answer.timings.generated_tokens,
        answer.timings.decode_ms
    );
    Ok(())
}
