//! Reward table over hand-made rollouts covering every branch of the official format check,
//! the tool penalty and both group penalties; written as a snapshot so changes show in review.
#![allow(clippy::unwrap_used)]
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use visionthink_core::judge::{ExactJudge, Judge, JudgeRequest, RuleJudge};
use visionthink_core::reward::*;

const D: &str = "<think>r</think><answer>A</answer>";
const T: &str = "<think>r</think>\n<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn format_check_branches() {
    let cases: Vec<(&str, Vec<String>, (bool, usize))> = vec![
        ("direct", s(&[D]), (true, 0)),
        (
            "direct, final newline (Python `$`)",
            s(&["<think>r</think><answer>A</answer>\n"]),
            (true, 0),
        ),
        (
            "direct, surrounding whitespace stripped",
            s(&["  \n<think>r</think><answer>A</answer>\n\n"]),
            (true, 0),
        ),
        (
            "direct, text after </answer>",
            s(&["<think>r</think><answer>A</answer> ok"]),
            (false, 0),
        ),
        (
            "direct, two answers",
            s(&["<think>r</think><answer>A</answer><answer>B</answer>"]),
            (false, 0),
        ),
        ("direct, no think", s(&["<answer>A</answer>"]), (false, 0)),
        ("one turn with a tool call", s(&[T]), (false, 1)),
        ("tool then answer", s(&[T, D]), (true, 1)),
        (
            "tool then answer with final newline",
            s(&[T, "<think>r</think><answer>A</answer>\n"]),
            (true, 1),
        ),
        (
            "tool then answer, last turn not stripped",
            s(&[T, " <think>r</think><answer>A</answer>"]),
            (false, 1),
        ),
        (
            "tool turn with answer tags",
            s(&[
                "<think>r</think><answer>A</answer><tool_call>{}</tool_call>",
                D,
            ]),
            (false, 1),
        ),
        // The official count check is `!= 1 and != 1`: two <tool_call> with one </tool_call> passes.
        (
            "two openers, one closer (official `and`)",
            s(&["<think>r</think><tool_call><tool_call>{}</tool_call>", D]),
            (true, 1),
        ),
        (
            "two full calls",
            s(&[
                "<think>r</think><tool_call>{}</tool_call><tool_call>{}</tool_call>",
                D,
            ]),
            (false, 1),
        ),
        (
            "invalid first turn stops counting",
            s(&["<think>r</think>no call", T, D]),
            (false, 0),
        ),
        ("two tool turns then answer", s(&[T, T, D]), (true, 2)),
    ];
    for (name, turns, want) in cases {
        assert_eq!(format_reward(&turns), want, "{name}");
    }
}

#[test]
fn prediction_extraction_is_the_split_rule() {
    assert_eq!(
        extract_prediction(&s(&[T, "<think>x</think><answer> Paris </answer>"])),
        "Paris"
    );
    assert_eq!(
        extract_prediction(&s(&["<answer>a</answer> <answer>b"])),
        "b"
    );
    assert_eq!(extract_prediction(&s(&["plain"])), "plain");
    assert_eq!(
        extract_prediction(&s(&["<answer>x</answer>tail</answer>"])),
        "x"
    );
}

/// A named group of (turns, judge verdict) rollouts.
type Group<'a> = (&'a str, Vec<(Vec<String>, Option<bool>)>);

fn table(cfg: &RewardConfig, groups: &[Group<'_>]) -> String {
    let mut out = format!("penalty={:?}\n", cfg.penalty);
    for (name, group) in groups {
        let judged: Vec<JudgedRollout> = group
            .iter()
            .map(|(t, c)| JudgedRollout {
                turns: t.clone(),
                correct: *c,
                ..Default::default()
            })
            .collect();
        let g = score_group(&judged, cfg);
        out.push_str(&format!(
            "{name}: kept={} direct_ratio={:.4}\n",
            g.kept, g.direct_ratio
        ));
        for (r, (turns, c)) in g.rollouts.iter().zip(group) {
            out.push_str(&format!(
                "  turns={} correct={:?} format={:.1} tools={} acc={:.1} reward={:.2}\n",
                turns.len(),
                c,
                r.format_score,
                r.tool_call_count,
                r.accuracy,
                r.reward
            ));
        }
    }
    out
}

#[test]
fn reward_table_snapshot() {
    let direct_ok = (s(&[D]), Some(true));
    let direct_bad = (s(&[D]), Some(false));
    let tool_ok = (s(&[T, D]), Some(true));
    let tool_bad = (s(&[T, D]), Some(false));
    let broken_ok = (s(&["A"]), Some(true));
    let groups = vec![
        (
            "all direct correct (std 0: dropped)",
            vec![direct_ok.clone(), direct_ok.clone()],
        ),
        (
            "mixed direct",
            vec![direct_ok.clone(), direct_bad.clone(), broken_ok.clone()],
        ),
        (
            "tool only correct",
            vec![tool_ok.clone(), tool_bad.clone(), direct_bad.clone()],
        ),
        (
            "1 of 6 correct direct (r<0.2 → penalised)",
            vec![
                direct_ok.clone(),
                tool_ok.clone(),
                tool_ok.clone(),
                tool_ok.clone(),
                tool_ok.clone(),
                tool_ok.clone(),
            ],
        ),
        (
            "judge failure drops group",
            vec![direct_ok.clone(), (s(&[D]), None)],
        ),
        ("singleton", vec![tool_ok.clone()]),
    ];
    let mut text = String::new();
    for penalty in [
        PenaltyMode::Code,
        PenaltyMode::Paper,
        PenaltyMode::None,
        PenaltyMode::AlwaysPenalizeTool,
    ] {
        text.push_str(&table(
            &RewardConfig {
                penalty,
                ..RewardConfig::default()
            },
            &groups,
        ));
    }
    #[cfg(not(target_arch = "wasm32"))]
    if std::env::var_os("VT_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(
            format!(
                "{}/../../tests/fixtures/snapshots/reward_table.txt",
                env!("CARGO_MANIFEST_DIR")
            ),
            &text,
        )
        .unwrap();
        return;
    }
    assert_eq!(
        text,
        include_str!("../../../tests/fixtures/snapshots/reward_table.txt")
    );
}

#[test]
fn code_penalty_values_are_the_documented_set() {
    let g = score_group(
        &[
            JudgedRollout {
                turns: s(&[D]),
                correct: Some(true),
                ..Default::default()
            },
            JudgedRollout {
                turns: s(&[T, D]),
                correct: Some(true),
                ..Default::default()
            },
            JudgedRollout {
                turns: s(&["A"]),
                correct: Some(true),
                ..Default::default()
            },
            JudgedRollout {
                turns: s(&[T, "x"]),
                correct: Some(true),
                ..Default::default()
            },
            JudgedRollout {
                turns: s(&[D]),
                correct: Some(false),
                ..Default::default()
            },
            JudgedRollout {
                turns: s(&["x"]),
                correct: Some(false),
                ..Default::default()
            },
        ],
        &RewardConfig::default(),
    );
    let rewards: Vec<f64> = g
        .rollouts
        .iter()
        .map(|r| (r.reward * 100.0).round() / 100.0)
        .collect();
    assert_eq!(rewards, vec![1.5, 1.4, 1.0, 0.9, 0.5, 0.0]);
}

#[test]
fn advantages_use_unbiased_std() {
    let a = grpo_advantages(&[1.5, 0.5, 0.5, 1.4]);
    let m = 0.975;
    let sd = ((0.525f64.powi(2) + 2.0 * 0.475f64.powi(2) + 0.425f64.powi(2)) / 3.0).sqrt();
    assert!((a[0] - (1.5 - m) / (sd + 1e-6)).abs() < 1e-12);
    assert_eq!(grpo_advantages(&[1.0]), vec![0.0]);
    assert!(std_unbiased(&[1.0, 1.0 + 5e-5]).unwrap() < GROUP_STD_EPS);
    assert_eq!(advantages(&[1.5, 0.5, 0.5, 1.4], AdvantageNorm::Std), a);
}

/// Dr. GRPO's advantages keep the reward gaps: `r − mean`, in the group's order, summing to 0.
#[test]
fn advantages_without_std_are_centred_rewards() {
    let a = advantages(&[1.5, 0.5, 0.5, 1.4], AdvantageNorm::None);
    let want = [0.525, -0.475, -0.475, 0.425];
    for (got, w) in a.iter().zip(want) {
        assert!((got - w).abs() < 1e-12, "{a:?}");
    }
    assert!(a.iter().sum::<f64>().abs() < 1e-12);
    assert_eq!(advantages(&[1.0], AdvantageNorm::None), vec![0.0]);
    // A group of equal rewards has nothing to learn from under either norm.
    assert_eq!(advantages(&[0.5, 0.5], AdvantageNorm::None), vec![0.0, 0.0]);
}

#[test]
fn judges() {
    let req = |p: &str, g: &str| JudgeRequest::for_question("q", g, p);
    assert!(ExactJudge.judge(&req(" B ", "B")).unwrap());
    assert!(!ExactJudge.judge(&req("b", "B")).unwrap());
    for (p, g, want) in [
        ("\\boxed{12.50}", "12.5", true),
        ("$1,234", "1234", true),
        ("50%", "50", true),
        ("\"Yes.\"", "yes", true),
        ("The answer is yes", "yes", false),
        ("3", "4", false),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", true),
        ("", "", true),
    ] {
        assert_eq!(RuleJudge.judge(&req(p, g)).unwrap(), want, "{p} vs {g}");
    }
}

/// The image cost (beyond the paper, for the crop tool): each rollout loses `image_cost` per
/// full image's worth of visual tokens its tool turns delivered, after the official penalties;
/// 0 (the default) changes nothing.
#[test]
fn the_image_cost_scales_with_the_cropped_tokens() {
    let direct = "<think>a</think><answer>b</answer>".to_string();
    let crop = "<think>a</think><tool_call>{\"name\": \"crop_image\", \"arguments\": {\"bbox\": [0, 0, 9, 9]}}</tool_call>".to_string();
    let group = [
        JudgedRollout {
            turns: vec![direct.clone()],
            correct: Some(true),
            tool_image_share: 0.0,
        },
        JudgedRollout {
            turns: vec![crop.clone(), direct.clone()],
            correct: Some(true),
            tool_image_share: 0.25,
        },
        JudgedRollout {
            turns: vec![crop, direct],
            correct: Some(false),
            tool_image_share: 0.5,
        },
    ];
    let official = score_group(&group, &RewardConfig::default());
    let costed = score_group(
        &group,
        &RewardConfig {
            image_cost: 0.4,
            ..RewardConfig::default()
        },
    );
    let base: Vec<f64> = official.rollouts.iter().map(|r| r.reward).collect();
    // The official rewards: 1.5 direct, 0.9 + 0.5 after a tool call, 0.5 for a wrong answer.
    assert_eq!(base.len(), 3);
    assert!((base[0] - 1.5).abs() < 1e-12 && (base[1] - 1.4).abs() < 1e-12);
    assert!((base[2] - 0.5).abs() < 1e-12);
    for (k, (b, c)) in base.iter().zip(&costed.rollouts).enumerate() {
        let want = b - 0.4 * group[k].tool_image_share;
        assert!(
            (c.reward - want).abs() < 1e-12,
            "{k}: {} vs {want}",
            c.reward
        );
    }
}
