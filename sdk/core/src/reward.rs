//! Rewards and GRPO arithmetic of the official code (SPEC §6, §7).

use regex::Regex;
use std::sync::OnceLock;

pub use crate::text::py_strip;

fn direct_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // Python `re.match(r'^<think>.*</think>.*<answer>.*</answer>$', s, re.DOTALL)`: anchored at
    // the start; `$` also matches before one final newline.
    RE.get_or_init(|| {
        Regex::new(r"(?s)\A<think>.*</think>.*<answer>.*</answer>\n?\z").expect("static regex")
    })
}

fn tool_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?s)\A<think>.*</think>.*<tool_call>.*</tool_call>\n?\z")
            .expect("static regex")
    })
}

/// Official `is_valid_direct_answer`: the structure regex, exactly one of each think/answer
/// tag, and no tool-call tags.
pub fn is_valid_direct_answer(response: &str) -> bool {
    direct_re().is_match(response)
        && response.matches("<think>").count() == 1
        && response.matches("</think>").count() == 1
        && response.matches("<answer>").count() == 1
        && response.matches("</answer>").count() == 1
        && !response.contains("<tool_call>")
        && !response.contains("</tool_call>")
}

/// Official `is_valid_tool_call`. Note the official count check uses **and**: a turn is only
/// rejected when both `<tool_call>` and `</tool_call>` counts differ from 1.
pub fn is_valid_tool_call(response: &str) -> bool {
    tool_re().is_match(response)
        && response.matches("<think>").count() == 1
        && response.matches("</think>").count() == 1
        && !(response.matches("<tool_call>").count() != 1
            && response.matches("</tool_call>").count() != 1)
        && !response.contains("<answer>")
        && !response.contains("</answer>")
}

/// Official `format_reward`: `(valid, tool_call_count)`.
///
/// One turn: stripped, it must be a valid direct answer. Several turns: every turn but the last,
/// stripped, must be a valid tool turn (checking stops at the first invalid one) and the last,
/// not stripped, a valid direct answer. `tool_call_count` counts the checked turns that contain a
/// `<tool_call>…</tool_call>` (for one turn: whether it contains one).
///
/// ```
/// use visionthink_core::reward::format_reward;
/// assert_eq!(format_reward(&["<think>a</think><answer>b</answer>".into()]), (true, 0));
/// let turns = vec![
///     "<think>x</think><tool_call>{}</tool_call>".to_string(),
///     "<think>y</think><answer>z</answer>\n".to_string(),
/// ];
/// assert_eq!(format_reward(&turns), (true, 1));
/// ```
pub fn format_reward(turns: &[String]) -> (bool, usize) {
    let has_call = |s: &str| !crate::text::tool_call_contents(s).is_empty();
    match turns {
        [] => (false, 0),
        [only] => {
            let r = py_strip(only);
            (is_valid_direct_answer(r), usize::from(has_call(r)))
        }
        [init @ .., last] => {
            let mut count = 0;
            let mut calls_ok = true;
            for t in init {
                let r = py_strip(t);
                if has_call(r) {
                    count += 1;
                }
                if !is_valid_tool_call(r) {
                    calls_ok = false;
                    break;
                }
            }
            (calls_ok && is_valid_direct_answer(last), count)
        }
    }
}

/// The prediction the judge sees: turns joined by a space, then
/// `split("<answer>")[-1].split("</answer>")[0].strip()`.
///
/// ```
/// use visionthink_core::reward::extract_prediction;
/// let t = vec!["<think>a</think><answer> 42 </answer>".to_string()];
/// assert_eq!(extract_prediction(&t), "42");
/// assert_eq!(extract_prediction(&["no tags".to_string()]), "no tags");
/// ```
pub fn extract_prediction(turns: &[String]) -> String {
    let joined = turns.join(" ");
    let after = joined.rsplit("<answer>").next().unwrap_or("");
    let inner = after.split("</answer>").next().unwrap_or("");
    py_strip(inner).to_string()
}

/// How the group penalty that discourages needless resizing is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyMode {
    /// The released code: with `r = correct_direct / (correct_all + 1e-4)`, when `0 < r < θ`
    /// correct direct answers get accuracy 0.9 instead of 1.0.
    #[default]
    Code,
    /// The paper: direct answers lose 0.1 when `r < θ`, tool answers lose 0.1 when `r ≥ θ`
    /// (and the 0.9 tool factor is not applied).
    Paper,
    /// No group penalty (ablation).
    None,
    /// Ablation: every answer that used the tool loses 0.1, whatever the group did.
    AlwaysPenalizeTool,
}

/// Reward weights and penalties.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RewardConfig {
    /// Accuracy weight (1.0).
    pub acc_weight: f64,
    /// Format weight (0.5).
    pub format_weight: f64,
    /// A correct answer that used the tool keeps `1 - tool_call_penalty` of its accuracy (0.1).
    pub tool_call_penalty: f64,
    /// Bonus added to the format score when a tool was used (official `use_tool_reward_weight`;
    /// 0 in the released recipe).
    pub use_tool_bonus: f64,
    /// Group penalty mode.
    pub penalty: PenaltyMode,
    /// θ of the group penalty (0.2).
    pub threshold: f64,
    /// Beyond the paper (the crop tool's cost): subtracted from the reward once per full
    /// image's worth of visual tokens that tool turns delivered
    /// ([`JudgedRollout::tool_image_share`]): a crop of a sixteenth of the image's tokens costs
    /// a sixteenth of it, the full image (a resize, the crop of everything) all of it. On top
    /// of the official tool penalty, so a crop that answers pays less than a resize that does.
    /// 0 (the default, and the official recipe): images cost nothing more.
    #[serde(default)]
    pub image_cost: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            acc_weight: 1.0,
            format_weight: 0.5,
            tool_call_penalty: 0.1,
            use_tool_bonus: 0.0,
            penalty: PenaltyMode::Code,
            threshold: 0.2,
            image_cost: 0.0,
        }
    }
}

/// One rollout's judged inputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JudgedRollout {
    /// Model turns (special tokens removed).
    pub turns: Vec<String>,
    /// `Some(true/false)`: the judge's verdict; `None`: the judge failed (the group is dropped).
    pub correct: Option<bool>,
    /// The visual tokens of the images tool turns delivered (crops and the full image), over
    /// those of the full-resolution image (0 without tool images; see
    /// [`RewardConfig::image_cost`]).
    pub tool_image_share: f64,
}

/// One rollout's scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutScore {
    /// Weighted format score (0 or 0.5 by default, plus any tool bonus).
    pub format_score: f64,
    /// Official tool-call count.
    pub tool_call_count: usize,
    /// Accuracy before penalties (0/1; 0 when the judge failed).
    pub accuracy: f64,
    /// Final reward after the tool, group and crop penalties.
    pub reward: f64,
}

/// Scores of one group of rollouts of the same prompt.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupScore {
    /// Per-rollout scores, in input order.
    pub rollouts: Vec<RolloutScore>,
    /// Whether GRPO keeps this group (a judge failure, or unbiased std < 1e-4, drops it).
    pub kept: bool,
    /// `correct_direct / (correct_all + 1e-4)`.
    pub direct_ratio: f64,
}

/// Scores a group (SPEC §6): format, accuracy, tool penalty, group penalty, and whether GRPO
/// keeps it.
///
/// ```
/// use visionthink_core::reward::{score_group, JudgedRollout, RewardConfig};
/// let direct = "<think>a</think><answer>b</answer>".to_string();
/// let tool = vec!["<think>a</think><tool_call>{}</tool_call>".to_string(), direct.clone()];
/// let g = score_group(&[
///     JudgedRollout { turns: vec![direct.clone()], correct: Some(true), ..Default::default() },
///     JudgedRollout { turns: tool, correct: Some(true), ..Default::default() },
/// ], &RewardConfig::default());
/// assert_eq!(g.rollouts[0].reward, 1.5);
/// assert!((g.rollouts[1].reward - 1.4).abs() < 1e-12);
/// assert!(g.kept);
/// ```
pub fn score_group(group: &[JudgedRollout], cfg: &RewardConfig) -> GroupScore {
    let mut scores = Vec::with_capacity(group.len());
    let (mut correct_all, mut correct_direct) = (0usize, 0usize);
    for r in group {
        let (valid, count) = format_reward(&r.turns);
        let acc = if r.correct == Some(true) { 1.0 } else { 0.0 };
        if acc > 0.0 {
            correct_all += 1;
            if count == 0 {
                correct_direct += 1;
            }
        }
        let mut format_score = cfg.format_weight * if valid { 1.0 } else { 0.0 };
        if count > 0 {
            format_score += cfg.use_tool_bonus;
        }
        scores.push(RolloutScore {
            format_score,
            tool_call_count: count,
            accuracy: acc,
            reward: 0.0,
        });
    }
    let ratio = correct_direct as f64 / (correct_all as f64 + 1e-4);
    for (s, r) in scores.iter_mut().zip(group) {
        let acc_part = cfg.acc_weight * s.accuracy;
        let used_tool = s.tool_call_count > 0;
        let reward = match cfg.penalty {
            PenaltyMode::Code => {
                // The tool penalty, and the group penalty on correct direct answers when too few
                // of the group's correct answers were direct.
                let group_penalized = s.accuracy > 0.0 && ratio > 0.0 && ratio < cfg.threshold;
                let factor = if used_tool || group_penalized {
                    1.0 - cfg.tool_call_penalty
                } else {
                    1.0
                };
                factor * acc_part + s.format_score
            }
            PenaltyMode::Paper => {
                let penalty = match (used_tool, ratio < cfg.threshold) {
                    (false, true) | (true, false) => cfg.tool_call_penalty,
                    _ => 0.0,
                };
                acc_part + s.format_score - penalty
            }
            PenaltyMode::None => acc_part + s.format_score,
            PenaltyMode::AlwaysPenalizeTool => {
                acc_part + s.format_score
                    - if used_tool {
                        cfg.tool_call_penalty
                    } else {
                        0.0
                    }
            }
        };
        s.reward = reward - cfg.image_cost * r.tool_image_share.max(0.0);
    }
    let judge_failed = group.iter().any(|r| r.correct.is_none());
    let rewards: Vec<f64> = scores.iter().map(|s| s.reward).collect();
    let kept = !judge_failed && std_unbiased(&rewards).is_some_and(|sd| sd >= GROUP_STD_EPS);
    GroupScore {
        rollouts: scores,
        kept,
        direct_ratio: ratio,
    }
}

/// Groups whose reward std is below this are dropped (DAPO-style dynamic sampling).
pub const GROUP_STD_EPS: f64 = 1e-4;

/// Mean of a slice (0 for an empty one).
pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Unbiased (n − 1) standard deviation, as `torch.std`; `None` for fewer than two values.
pub fn std_unbiased(x: &[f64]) -> Option<f64> {
    if x.len() < 2 {
        return None;
    }
    let m = mean(x);
    let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64;
    Some(var.sqrt())
}

/// GRPO advantages of a group: `(r − mean) / (std_unbiased + 1e-6)`, broadcast over each
/// rollout's tokens by the trainer. A group of one has advantage 0.
///
/// ```
/// let a = visionthink_core::reward::grpo_advantages(&[1.5, 0.5]);
/// assert!((a[0] - 0.7071062).abs() < 1e-6 && (a[1] + 0.7071062).abs() < 1e-6);
/// ```
pub fn grpo_advantages(rewards: &[f64]) -> Vec<f64> {
    advantages(rewards, AdvantageNorm::Std)
}

/// How a group's rewards become advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageNorm {
    /// The official GRPO: `(r − mean) / (std_unbiased + 1e-6)`.
    #[default]
    Std,
    /// Beyond the paper (Dr. GRPO, Liu et al. 2025): `r − mean`, no division by the group's
    /// std. Dividing by it gives a group whose rewards barely differ the same weight as one
    /// whose rewards differ by a whole point: with a tool that costs 0.25 of reward and a guess
    /// that is either always right or always wrong within a group (the sampled guesses agree),
    /// the groups where the guess happens to be right punish the tool as hard as the others
    /// reward it, and GRPO drops a tool that raises the expected reward.
    None,
}

/// A group's advantages under `norm` (see [`AdvantageNorm`]); a group of one has advantage 0.
///
/// ```
/// use visionthink_core::reward::{advantages, AdvantageNorm};
/// // Two rollouts whose rewards differ by 0.25 and two whose rewards differ by 1.0.
/// let small = advantages(&[1.5, 1.25], AdvantageNorm::Std);
/// let large = advantages(&[1.25, 0.25], AdvantageNorm::Std);
/// assert!((small[0] - large[0]).abs() < 1e-4); // the same weight under the std
/// let (small, large) = (
///     advantages(&[1.5, 1.25], AdvantageNorm::None),
///     advantages(&[1.25, 0.25], AdvantageNorm::None),
/// );
/// assert_eq!((small[0], large[0]), (0.125, 0.5)); // in proportion to the reward gap
/// ```
pub fn advantages(rewards: &[f64], norm: AdvantageNorm) -> Vec<f64> {
    let m = mean(rewards);
    match (std_unbiased(rewards), norm) {
        (Some(sd), AdvantageNorm::Std) => rewards.iter().map(|r| (r - m) / (sd + 1e-6)).collect(),
        (Some(_), AdvantageNorm::None) => rewards.iter().map(|r| r - m).collect(),
        (None, _) => vec![0.0; rewards.len()],
    }
}
