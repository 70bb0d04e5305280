//! The server's settings and the bind check.

use std::net::SocketAddr;
use std::time::Duration;
use visionthink_core::image::DecodeLimits;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Name reported in `/v1/models` and replies.
    pub model_name: String,
    /// Answer official judge requests with the rule judge instead of the model.
    pub rule_judge: bool,
    /// Largest `max_tokens` a request may ask for (per turn); more is a 400.
    pub max_tokens_cap: usize,
    /// Largest request body (images are sent inline), bytes; more is a 413.
    pub body_limit: usize,
    /// Limits on each decoded image (side, pixels, decoder memory); more is a 400.
    pub image_limits: DecodeLimits,
    /// Time a request may take, from arrival to its last token (waiting for the model included).
    pub request_timeout: Duration,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Images one request to the raw model may carry; more is a 400.
    pub max_images: usize,
    /// Browser origins allowed to call the server (CORS), e.g. `https://app.example`; `*`
    /// allows any. Empty: no CORS headers (browsers refuse cross-origin calls).
    pub allowed_origins: Vec<String>,
    /// Requests the model works on at once (their decode steps are batched).
    pub max_batch: usize,
    /// Requests that may wait for a place in the batch; one more is a 503 with `Retry-After`.
    pub max_queue: usize,
    /// How long a decode step waits for the other requests' steps (see [`crate::batch`]).
    pub batch_window: Duration,
}

impl ServeConfig {
    /// The second model id, `{model_name}-raw` (`visionthink-raw` by default): chats answered
    /// as a plain OpenAI-compatible VLM server answers them, without the protocol.
    pub fn raw_model_name(&self) -> String {
        format!("{}-raw", self.model_name)
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model_name: "visionthink".into(),
            rule_judge: false,
            max_tokens_cap: 8192,
            body_limit: 64 << 20,
            image_limits: DecodeLimits::default(),
            request_timeout: Duration::from_secs(300),
            api_key: None,
            max_images: 8,
            allowed_origins: Vec::new(),
            max_batch: 16,
            max_queue: 64,
            batch_window: Duration::from_millis(2),
        }
    }
}

/// Refuses to serve without an API key on an address other hosts can reach, unless the caller
/// says so (`insecure`). `addrs` are the addresses the host name resolved to.
///
/// ```
/// use visionthink::serve::{check_bind, ServeConfig};
/// let cfg = ServeConfig::default();
/// assert!(check_bind(&["127.0.0.1:8000".parse().unwrap()], &cfg, false).is_ok());
/// assert!(check_bind(&["0.0.0.0:8000".parse().unwrap()], &cfg, false).is_err());
/// assert!(check_bind(&["0.0.0.0:8000".parse().unwrap()], &cfg, true).is_ok());
/// ```
pub fn check_bind(addrs: &[SocketAddr], cfg: &ServeConfig, insecure: bool) -> Result<(), String> {
    let exposed: Vec<String> = addrs
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if exposed.is_empty() || cfg.api_key.is_some() || insecure {
        return Ok(());
    }
    Err(format!(
        "refusing to serve on {} without an API key: other hosts could use the model; set \
         --api-key (or VISIONTHINK_API_KEY), bind 127.0.0.1, or pass --insecure",
        exposed.join(", ")
    ))
}

/// Roles a chat message may have (anything else would be written into the prompt as template
/// text, where a client could smuggle control tokens).
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_binds_need_a_key_or_insecure() {
        let open: Vec<SocketAddr> = vec!["0.0.0.0:1".parse().unwrap_or_else(|e| panic!("{e}"))];
        let lo: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
            "[::1]:1".parse().unwrap_or_else(|e| panic!("{e}")),
        ];
        let mut cfg = ServeConfig::default();
        assert!(check_bind(&lo, &cfg, false).is_ok());
        let e = check_bind(&open, &cfg, false).expect_err("refused");
        assert!(
            e.contains("0.0.0.0:1") && e.contains("--api-key") && e.contains("--insecure"),
            "{e}"
        );
        assert!(check_bind(&open, &cfg, true).is_ok());
        cfg.api_key = Some("k".into());
        assert!(check_bind(&open, &cfg, false).is_ok());
    }
}
