//! Text helpers shared by the protocol and the rewards, with the official code's Python
//! semantics: `str.strip()` and the `<tool_call>` `findall`.

use regex::Regex;
use std::sync::OnceLock;

/// Python's `str.isspace()` for one character (Unicode White_Space plus the ASCII separators
/// U+001C–U+001F that Python also counts).
fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
///
/// ```
/// assert_eq!(visionthink_core::reward::py_strip("\u{1f} a b \n"), "a b");
/// ```
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

fn tool_call_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?s)<tool_call>(.*?)</tool_call>").expect("static regex"))
}

/// The contents of every `<tool_call>…</tool_call>` in a turn (official `findall`).
///
/// ```
/// let t = "<tool_call>{\"a\": 1}</tool_call> and <tool_call>x</tool_call>";
/// assert_eq!(visionthink_core::protocol::tool_call_contents(t), ["{\"a\": 1}", "x"]);
/// ```
pub fn tool_call_contents(turn: &str) -> Vec<&str> {
    tool_call_re()
        .captures_iter(turn)
        .filter_map(|c| c.get(1).map(|m| m.as_str()))
        .collect()
}
