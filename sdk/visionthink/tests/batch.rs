//! Continuous batching: requests decoded together on one model thread get exactly the answers
//! they get alone, and they really are decoded together.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use visionthink::batch::{BatchConfig, Batcher};
use visionthink::AskOptions;

fn example() -> visionthink::core::image::RgbImage {
    visionthink::core::image::decode(visionthink::shipped::EXAMPLE_IMAGE, Default::default())
        .expect("example image")
}

#[test]
fn concurrent_requests_answer_as_they_do_alone_and_share_decode_steps() {
    let vt = Arc::new(
        visionthink::shipped::load(Default::default(), Default::default()).expect("model"),
    );
    let image = example();
    let questions = [
        visionthink::shipped::EXAMPLE_COARSE,
        visionthink::shipped::EXAMPLE_FINE,
        "What shape is it?",
        "Is the background dark?",
    ];
    // Alone: the plain engine, one after another (greedy), and one sampled request.
    let sampled = AskOptions {
        generation: visionthink::GenerateOptions {
            sampling: visionthink::core::sampling::SamplingConfig {
                temperature: 0.9,
                top_k: 5,
                seed: 7,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let opts = |i: usize| {
        if i == 3 {
            sampled.clone()
        } else {
            AskOptions::default()
        }
    };
    let alone: Vec<_> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| vt.ask(&image, q, &opts(i)).expect("alone"))
        .collect();
    let batcher = Batcher::start(vt.clone(), BatchConfig::default());
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (vt, batcher, image, o) = (&vt, &batcher, &image, opts(i));
                s.spawn(move || vt.ask_in(batcher.session(vt), image, q, &o, &mut |_| {}))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("batched"))
            .collect()
    });
    for ((q, a), b) in questions.iter().zip(&alone).zip(&together) {
        assert_eq!(a.turns, b.turns, "{q}");
        assert_eq!(a.used_high_res, b.used_high_res, "{q}");
        assert_eq!(a.visual_tokens, b.visual_tokens, "{q}");
        assert_eq!(
            a.timings.generated_tokens, b.timings.generated_tokens,
            "{q}"
        );
    }
    let stats = batcher.stats();
    let (batches, rows) = (
        stats.batches.load(Ordering::Relaxed),
        stats.rows.load(Ordering::Relaxed),
    );
    let generated: usize = together.iter().map(|a| a.timings.generated_tokens).sum();
    // Every generated token but each turn's last is one decode step; the turns' first tokens
    // come from their prefills.
    assert!(
        rows > 0 && rows as usize <= generated,
        "{rows} rows, {generated} tokens"
    );
    assert!(
        rows > batches,
        "decode steps were shared: {rows} sequence steps in {batches} batches"
    );
    // A session used after its batcher is gone is an error, not a hang.
    drop(batcher);
}

#[test]
fn a_sequence_that_fills_the_context_fails_alone() {
    let vt = Arc::new(
        visionthink::shipped::load(Default::default(), Default::default()).expect("model"),
    );
    let batcher = Batcher::start(vt.clone(), BatchConfig::default());
    let context = vt.config.text.max_position_embeddings;
    let ids = |n: usize| -> Vec<u32> { (0..n as u32).map(|i| 1000 + i % 500).collect() };
    let opts = visionthink::GenerateOptions {
        max_new_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    let (full, fine) = std::thread::scope(|s| {
        let (vt, batcher, opts) = (&vt, &batcher, &opts);
        // Two tokens of room: its second decode step does not fit.
        let full = s.spawn(move || {
            let mut session = batcher.session(vt);
            let logits = session.feed(&ids(context - 2), &[])?;
            let mut sampler = visionthink::core::sampling::Sampler::new(Default::default());
            session.generate(logits, opts, &mut sampler, None, &mut |_, _| {})
        });
        let fine = s.spawn(move || {
            let mut session = batcher.session(vt);
            let logits = session.feed(&ids(8), &[])?;
            let mut sampler = visionthink::core::sampling::Sampler::new(Default::default());
            session.generate(logits, opts, &mut sampler, None, &mut |_, _| {})
        });
        (full.join().expect("thread"), fine.join().expect("thread"))
    });
    let e = full.expect_err("past the context");
    assert!(e.to_string().contains("context"), "{e}");
    assert_eq!(fine.expect("the other request").len(), 6);
}
