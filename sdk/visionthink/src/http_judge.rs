//! The official LLM-as-judge over any OpenAI-compatible `/v1/chat/completions` endpoint
//! (SPEC §6, §9): official prompts, temperatures 0.0 / 0.2 / 0.4 over up to three attempts, a
//! reply without `0` or `1` retried, correct iff the reply contains `1`. After three failed
//! attempts the judge reports a failure and the trainer drops the sample's group.

use std::time::Duration;
use visionthink_core::judge::{
    judge_messages, parse_judge_reply, Judge, JudgeFailure, JudgeRequest, JUDGE_TEMPERATURES,
};

/// Where and how to reach the judge.
#[derive(Debug, Clone)]
pub struct HttpJudgeConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1` (with or without `/chat/completions`).
    pub url: String,
    /// Model name sent in the request.
    pub model: String,
    /// Bearer token, if the endpoint needs one.
    pub api_key: Option<String>,
    /// Per-request timeout (official: 120 s).
    pub timeout: Duration,
    /// `max_tokens` of the request.
    pub max_tokens: u32,
    /// Pause between failed attempts (official: 1 s).
    pub retry_delay: Duration,
}

/// Which judge decides correctness, built in one place for `visionthink score` and the
/// trainer.
#[derive(Debug, Clone)]
pub enum JudgeChoice {
    /// Exact match after Python's `strip()`.
    Exact,
    /// The rule judge (normalised text, numbers, multiple choice letters).
    Rule,
    /// The official LLM-as-judge over HTTP.
    Http(HttpJudgeConfig),
}

impl JudgeChoice {
    /// The judge.
    ///
    /// ```
    /// use visionthink_core::judge::JudgeRequest;
    /// let judge = visionthink::http_judge::JudgeChoice::Exact.build();
    /// assert!(judge.judge(&JudgeRequest::for_question("q", "a", "a")).unwrap());
    /// ```
    pub fn build(self) -> Box<dyn Judge + Send + Sync> {
        match self {
            JudgeChoice::Exact => Box::new(visionthink_core::judge::ExactJudge),
            JudgeChoice::Rule => Box::new(visionthink_core::judge::RuleJudge),
            JudgeChoice::Http(c) => Box::new(HttpJudge::new(c)),
        }
    }
}

impl HttpJudgeConfig {
    /// Defaults of the official client for a URL and model.
    pub fn new(url: &str, model: &str) -> Self {
        Self {
            url: url.to_string(),
            model: model.to_string(),
            api_key: None,
            timeout: Duration::from_secs(120),
            max_tokens: 1024,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// A blocking HTTP judge.
pub struct HttpJudge {
    cfg: HttpJudgeConfig,
    agent: ureq::Agent,
    endpoint: String,
}

impl std::fmt::Debug for HttpJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpJudge({} / {})", self.endpoint, self.cfg.model)
    }
}

impl HttpJudge {
    /// A judge for an endpoint.
    pub fn new(cfg: HttpJudgeConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let base = cfg.url.trim_end_matches('/');
        let endpoint = if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        };
        Self {
            cfg,
            agent,
            endpoint,
        }
    }

    /// One attempt: the reply text, or why it failed.
    fn attempt(&self, req: &JudgeRequest, temperature: f64) -> Result<String, String> {
        let (system, user) = judge_messages(req);
        let body = serde_json::json!({
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "text", "text": user}]},
            ],
            "temperature": temperature,
            "max_tokens": self.cfg.max_tokens,
        });
        let mut call = self
            .agent
            .post(&self.endpoint)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.cfg.api_key {
            call = call.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = call
            .send(body.to_string())
            .map_err(|e| format!("request to {} failed: {e}", self.endpoint))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| format!("reading the reply failed: {e}"))?;
        reply_content(status.as_u16(), &text)
    }
}

/// The message content of an OpenAI-compatible chat-completion reply (`choices[0].message.content`),
/// or why there is none: an HTTP status other than 2xx (with the start of the body), a body that
/// is not JSON, or JSON without that string.
///
/// ```
/// use visionthink::http_judge::reply_content;
/// assert_eq!(reply_content(200, r#"{"choices":[{"message":{"content":"Score: 1"}}]}"#).unwrap(), "Score: 1");
/// assert!(reply_content(502, "Bad Gateway").unwrap_err().starts_with("HTTP 502"));
/// assert!(reply_content(200, "{}").unwrap_err().contains("choices[0].message.content"));
/// ```
pub fn reply_content(status: u16, body: &str) -> Result<String, String> {
    if !(200..300).contains(&status) {
        let snippet: String = body.chars().take(200).collect();
        return Err(format!("HTTP {status}: {snippet}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("reply is not JSON: {e}"))?;
    v.pointer("/choices/0/message/content")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .ok_or_else(|| "reply has no choices[0].message.content".to_string())
}

impl Judge for HttpJudge {
    fn judge(&self, req: &JudgeRequest) -> Result<bool, JudgeFailure> {
        let mut last = String::new();
        for (i, &t) in JUDGE_TEMPERATURES.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(self.cfg.retry_delay);
            }
            match self.attempt(req, t) {
                Ok(reply) => match parse_judge_reply(&reply) {
                    Some(v) => return Ok(v),
                    None => {
                        last = format!(
                            "no '0' nor '1' in the reply: {}",
                            reply.chars().take(200).collect::<String>()
                        )
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(JudgeFailure(format!(
            "{} attempts failed; last: {last}",
            JUDGE_TEMPERATURES.len()
        )))
    }
}
