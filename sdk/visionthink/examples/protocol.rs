//! Drives one VisionThink episode end to end with scripted model turns (no model yet): the
//! turn-1 prompt on the half-size image, a resize call, the tool turn with the full image, and
//! the answer — exactly the inputs a Qwen2.5-VL executor receives at each step.
//!
//! Run: `cargo run -p visionthink --example protocol`

use visionthink::core::image::preprocess;
use visionthink::core::protocol::{Episode, EpisodeImages, Step};
use visionthink::ModelDir;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let model = ModelDir::open(format!("{root}/tests/fixtures/tokenizer"))?;
    let photo = visionthink::load_image(format!("{root}/sdk/visionthink/assets/example.png"))?;
    let images = EpisodeImages::for_inference(&photo)?;

    let mut episode = Episode::new("What is the serial code?", Default::default());
    let turn1 = episode.initial_prompt();
    let low = preprocess(&images.low_res, &model.preprocessor)?;
    let mut ids = model
        .tokenizer
        .encode_prompt(&turn1, &[low.num_image_tokens(2)])?;
    println!(
        "turn 1: {} tokens, {} visual",
        ids.len(),
        low.num_image_tokens(2)
    );

    // Scripted model turns, as a model would produce them.
    let outputs = [
        "<think>The print is too small to read.</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>",
        "<think>Now it reads K7Q-4829-ZX.</think>\n<answer>K7Q-4829-ZX</answer>",
    ];
    for text in outputs {
        // The generated ids (here: re-encoded text) end with <|im_end|>.
        ids.extend(
            model
                .tokenizer
                .encode_template(&format!("{text}<|im_end|>"))?,
        );
        match episode.on_model_turn(text)? {
            Step::ToolTurn(turn) => {
                let counts = match &turn.image {
                    Some(request) => {
                        vec![preprocess(&request.fulfil(&images)?, &model.preprocessor)?
                            .num_image_tokens(2)]
                    }
                    None => vec![],
                };
                ids.extend(model.tokenizer.encode_prompt(&turn.prompt, &counts)?);
                println!("tool turn: the model asked for the full image ({} visual tokens); context now {} tokens", counts.iter().sum::<usize>(), ids.len());
            }
            Step::Done(outcome) => {
                println!(
                    "answer: {:?}; used high-res: {}; turns: {}",
                    outcome.answer,
                    outcome.used_high_res,
                    outcome.turns.len()
                );
                assert_eq!(outcome.answer.as_deref(), Some("K7Q-4829-ZX"));
            }
        }
    }
    Ok(())
}
