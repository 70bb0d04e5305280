//! Judges that decide whether a prediction matches the ground truth (SPEC §6, §9).
//!
//! The core holds the offline judges and the official LLM-judge prompt/parse logic; the HTTP
//! transport lives in the `visionthink` crate (it is I/O).

use crate::prompt::judge_question_text;
use crate::reward::py_strip;
use crate::strings::{JUDGE_QUERY_TEMPLATE, JUDGE_SYSTEM_PROMPT};

/// What a judge is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeRequest {
    /// The whole formatted user prompt of turn 1 (the official judge's `{question}`).
    pub question: String,
    /// The reference answer.
    pub ground_truth: String,
    /// The extracted prediction ([`crate::reward::extract_prediction`]).
    pub prediction: String,
}

impl JudgeRequest {
    /// A request for a raw question (formatted with the VisionThink user template as the
    /// official judge sees it).
    pub fn for_question(question: &str, ground_truth: &str, prediction: &str) -> Self {
        Self {
            question: judge_question_text(question),
            ground_truth: ground_truth.to_string(),
            prediction: prediction.to_string(),
        }
    }
}

/// A judge failure (after its retries): the official trainer drops the whole group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("judge failed: {0}")]
pub struct JudgeFailure(pub String);

/// Decides correctness.
pub trait Judge {
    /// `Ok(true)` if the prediction is judged correct.
    fn judge(&self, req: &JudgeRequest) -> Result<bool, JudgeFailure>;
}

/// `prediction.strip() == ground_truth.strip()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactJudge;

impl Judge for ExactJudge {
    fn judge(&self, req: &JudgeRequest) -> Result<bool, JudgeFailure> {
        Ok(py_strip(&req.prediction) == py_strip(&req.ground_truth))
    }
}

/// A deterministic rule judge: compares after normalisation (`\boxed{}` unwrapped, case folded,
/// whitespace collapsed, surrounding quotes and trailing punctuation removed), and numbers by
/// value (`1,000` = `1000.0`, `50%` = `50`).
///
/// ```
/// use visionthink_core::judge::{Judge, JudgeRequest, RuleJudge};
/// let j = RuleJudge;
/// let r = |p: &str, g: &str| j.judge(&JudgeRequest::for_question("q", g, p)).unwrap();
/// assert!(r("\\boxed{B}", "b"));
/// assert!(r("The Eiffel  Tower.", "the eiffel tower"));
/// assert!(r("1,000", "1000.0"));
/// assert!(!r("12", "13"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleJudge;

/// The content of the last `\boxed{…}` (balanced braces), if any.
pub fn last_boxed(s: &str) -> Option<&str> {
    let start = s.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in s[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Normalisation of [`RuleJudge`].
pub fn normalize_answer(s: &str) -> String {
    let s = last_boxed(s).unwrap_or(s);
    let lowered = s.to_lowercase();
    let collapsed = lowered.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut t = collapsed.as_str();
    loop {
        let before = t;
        t = t.trim_end_matches(['.', ',', ';', ':', '!', '?']);
        for (open, close) in [('"', '"'), ('\'', '\''), ('`', '`'), ('(', ')'), ('“', '”')] {
            if t.len() >= 2 && t.starts_with(open) && t.ends_with(close) {
                t = &t[open.len_utf8()..t.len() - close.len_utf8()];
            }
        }
        t = t.trim();
        if t == before {
            break;
        }
    }
    t.to_string()
}

fn as_number(s: &str) -> Option<f64> {
    let t = s
        .trim()
        .trim_start_matches('$')
        .trim_end_matches('%')
        .replace(',', "");
    if t.is_empty() || !t.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Judge for RuleJudge {
    fn judge(&self, req: &JudgeRequest) -> Result<bool, JudgeFailure> {
        let p = normalize_answer(&req.prediction);
        let g = normalize_answer(&req.ground_truth);
        if p == g {
            return Ok(true);
        }
        if let (Some(a), Some(b)) = (as_number(&p), as_number(&g)) {
            return Ok((a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0));
        }
        Ok(false)
    }
}

/// The official LLM judge's chat messages: `(system, user)`.
pub fn judge_messages(req: &JudgeRequest) -> (String, String) {
    let user = fill_template(
        JUDGE_QUERY_TEMPLATE,
        &[
            ("question", &req.question),
            ("ground_truth", &req.ground_truth),
            ("prediction", &req.prediction),
        ],
    );
    (JUDGE_SYSTEM_PROMPT.to_string(), user)
}

/// Temperatures of the official judge's attempts (`min(0.2 * attempt, 1.0)`).
pub const JUDGE_TEMPERATURES: [f64; 3] = [0.0, 0.2, 0.4];

/// Official parsing of a judge reply: `None` (retry) when it has neither `0` nor `1`;
/// otherwise correct iff it contains the character `1`.
///
/// ```
/// use visionthink_core::judge::parse_judge_reply;
/// assert_eq!(parse_judge_reply("Score: 1"), Some(true));
/// assert_eq!(parse_judge_reply("Score: 0"), Some(false));
/// assert_eq!(parse_judge_reply("I cannot tell"), None);
/// ```
pub fn parse_judge_reply(reply: &str) -> Option<bool> {
    if reply.contains('1') {
        Some(true)
    } else if reply.contains('0') {
        Some(false)
    } else {
        None
    }
}

/// Fills `{name}` fields in one pass, like Python's `str.format` with keywords: values are
/// inserted verbatim and never re-scanned (a prediction containing `{question}` stays as is).
/// Unknown `{…}` fields are kept as they are.
///
/// ```
/// use visionthink_core::judge::fill_template;
/// assert_eq!(fill_template("{a}-{b}", &[("a", "{b}"), ("b", "2")]), "{b}-2");
/// ```
pub fn fill_template(template: &str, fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = after.find('}').and_then(|close| {
            let name = &after[..close];
            fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (close, *v))
        });
        match hit {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
