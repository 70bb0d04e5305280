//! Batch scoring of rollouts (the `visionthink score` command): JSONL in, JSONL out.
//!
//! Input line: `{"id", "group", "turns": [text, …], "ground_truth"}` and optionally
//! `"question"` (the raw question; the HTTP judge sees it formatted as the official judge does).
//! Output line: `id`, `group`, `format_score`, `tool_call_count`, `accuracy`, `reward`,
//! `group_kept` (and `judge_error` when the judge failed).

use crate::error::{Error, Result};
use serde_json::{json, Value};
use visionthink_core::judge::{Judge, JudgeRequest};
use visionthink_core::reward::{extract_prediction, score_group, JudgedRollout, RewardConfig};

/// One parsed input line.
#[derive(Debug, Clone)]
pub struct RolloutLine {
    /// `id` as given (string or number).
    pub id: Value,
    /// `group` as given.
    pub group: Value,
    /// Model turns.
    pub turns: Vec<String>,
    /// Reference answer.
    pub ground_truth: String,
    /// Optional raw question.
    pub question: Option<String>,
}

fn line_err(source: &str, line: usize, reason: impl Into<String>) -> Error {
    Error::Content {
        path: format!("{source}:{line}"),
        reason: reason.into(),
    }
}

/// Parses a rollouts JSONL text; blank lines are skipped, anything malformed is an error that
/// names the line and the field.
pub fn parse_rollouts(text: &str, source: &str) -> Result<Vec<RolloutLine>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| line_err(source, n, format!("malformed JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| line_err(source, n, "expected a JSON object"))?;
        let field = |k: &str| {
            obj.get(k)
                .ok_or_else(|| line_err(source, n, format!("missing field `{k}`")))
        };
        let id = field("id")?.clone();
        let group = field("group")?.clone();
        let turns = field("turns")?
            .as_array()
            .ok_or_else(|| line_err(source, n, "`turns` must be an array of strings"))?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| line_err(source, n, "`turns` must be an array of strings"))
            })
            .collect::<Result<Vec<_>>>()?;
        if turns.is_empty() {
            return Err(line_err(source, n, "`turns` is empty"));
        }
        let ground_truth = match field("ground_truth")? {
            Value::String(s) => s.clone(),
            Value::Number(x) => x.to_string(),
            other => {
                return Err(line_err(
                    source,
                    n,
                    format!("`ground_truth` must be a string, found {other}"),
                ))
            }
        };
        let question = match obj.get("question") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(line_err(
                    source,
                    n,
                    format!("`question` must be a string, found {other}"),
                ))
            }
        };
        out.push(RolloutLine {
            id,
            group,
            turns,
            ground_truth,
            question,
        });
    }
    Ok(out)
}

/// Judges every request with up to `workers` calls in flight (a pool of scoped threads taking
/// the next request as they finish); the verdicts come back in request order, a failure as
/// its message. The one place judging runs concurrently: `visionthink score` and the trainer
/// (GRPO rewards, `eval`) both call it.
///
/// ```
/// use visionthink_core::judge::{ExactJudge, JudgeRequest};
/// let reqs = [JudgeRequest::for_question("q", "cat", "cat"), JudgeRequest::for_question("q", "cat", "dog")];
/// assert_eq!(visionthink::score::judge_all(&ExactJudge, &reqs, 4), [Ok(true), Ok(false)]);
/// ```
pub fn judge_all(
    judge: &(dyn Judge + Sync),
    reqs: &[JudgeRequest],
    workers: usize,
) -> Vec<std::result::Result<bool, String>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<std::result::Result<bool, String>>>> =
        reqs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers.max(1).min(reqs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(req) = reqs.get(i) else { break };
                let v = judge.judge(req).map_err(|e| e.to_string());
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(v);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err("judge worker panicked".into()))
        })
        .collect()
}

/// Judges every rollout (with up to `workers` concurrent judge calls) and scores the groups.
/// Returns one JSON object per input line, in input order.
pub fn score_rollouts(
    lines: &[RolloutLine],
    judge: &(dyn Judge + Sync),
    cfg: &RewardConfig,
    workers: usize,
) -> Vec<Value> {
    let reqs: Vec<JudgeRequest> = lines
        .iter()
        .map(|l| {
            JudgeRequest::for_question(
                l.question.as_deref().unwrap_or(""),
                &l.ground_truth,
                &extract_prediction(&l.turns),
            )
        })
        .collect();
    let verdicts = judge_all(judge, &reqs, workers);
    // Groups in order of first appearance.
    let mut groups: Vec<(Value, Vec<usize>)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == l.group) {
            Some((_, members)) => members.push(i),
            None => groups.push((l.group.clone(), vec![i])),
        }
    }
    let mut out = vec![Value::Null; lines.len()];
    for (_, members) in groups {
        let judged: Vec<JudgedRollout> = members
            .iter()
            .map(|&i| JudgedRollout {
                turns: lines[i].turns.clone(),
                correct: verdicts[i].as_ref().ok().copied(),
                ..Default::default()
            })
            .collect();
        let g = score_group(&judged, cfg);
        for (&i, s) in members.iter().zip(&g.rollouts) {
            let mut v = json!({
                "id": lines[i].id,
                "group": lines[i].group,
                "format_score": s.format_score,
                "tool_call_count": s.tool_call_count,
                "accuracy": s.accuracy,
                "reward": s.reward,
                "group_kept": g.kept,
            });
            if let (Err(e), Some(obj)) = (&verdicts[i], v.as_object_mut()) {
                obj.insert("judge_error".into(), Value::String(e.clone()));
            }
            out[i] = v;
        }
    }
    out
}
