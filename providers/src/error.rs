use crate::wire::ErrorBody;

/// Why a provider could not answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    /// The request cannot be served by this provider as sent.
    #[error("{message}")]
    InvalidRequest {
        /// For the client.
        message: String,
        /// The offending field.
        param: Option<String>,
    },
    /// Prompt plus completion exceed the model's context.
    #[error("{message}")]
    ContextLengthExceeded {
        /// For the client, naming both numbers.
        message: String,
    },
    /// The local engine's queue is full.
    #[error("{message}")]
    Overloaded {
        /// For the client.
        message: String,
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// The upstream answered 429.
    #[error("{provider} is rate limiting requests")]
    RateLimited {
        /// Configured provider name.
        provider: String,
        /// Seconds to wait, from the upstream's `retry-after`.
        retry_after_s: Option<u64>,
        /// The upstream's error (`insufficient_quota`, which limit…), passed on when it sent one.
        body: Option<Box<ErrorBody>>,
    },
    /// The upstream rejected the request (4xx other than 429); its error is passed on.
    #[error("{provider} rejected the request with status {status}")]
    Rejected {
        /// Configured provider name.
        provider: String,
        /// The upstream status.
        status: u16,
        /// The upstream's error body.
        body: Box<ErrorBody>,
    },
    /// The upstream failed (5xx, broken connection, unreadable answer).
    #[error("{provider} failed: {message}")]
    Upstream {
        /// Configured provider name.
        provider: String,
        /// The upstream status, if one came.
        status: Option<u16>,
        /// What went wrong, for the log.
        message: String,
    },
    /// The upstream did not answer in time.
    #[error("{provider} did not answer within {timeout_ms} ms")]
    Timeout {
        /// Configured provider name.
        provider: String,
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// A remote provider's circuit is open after repeated failures: calls fail fast until a probe
    /// is due.
    #[error("{provider}: circuit open after repeated failures")]
    CircuitOpen {
        /// Configured provider name.
        provider: String,
        /// Seconds until the circuit lets a probe through.
        retry_after_s: u64,
    },
    /// The provider cannot serve at all now (engine not loaded, stopped).
    #[error("{message}")]
    Unavailable {
        /// For the log and the client.
        message: String,
    },
}

impl ProviderError {
    /// True for a 429 that says the account's quota is spent (`insufficient_quota`): waiting does
    /// not help, another provider may.
    pub fn is_spent_quota(&self) -> bool {
        matches!(self, Self::RateLimited { body: Some(body), .. }
            if body.error.code.as_deref() == Some("insufficient_quota") || body.error.kind == "insufficient_quota")
    }

    /// What failed, without any text the upstream sent (its message may quote the prompt): for
    /// logs written where the gateway cannot mask PII, such as each retry.
    pub fn outline(&self) -> String {
        match self {
            Self::Upstream { provider, status: Some(status), .. } => format!("{provider} failed with status {status}"),
            Self::Upstream { provider, status: None, .. } => format!("{provider} failed without an answer"),
            Self::RateLimited { .. } | Self::Rejected { .. } | Self::Timeout { .. } | Self::CircuitOpen { .. } => self.to_string(),
            Self::InvalidRequest { .. } => "invalid request".to_owned(),
            Self::ContextLengthExceeded { .. } => "context length exceeded".to_owned(),
            Self::Overloaded { .. } => "overloaded".to_owned(),
            Self::Unavailable { .. } => "unavailable".to_owned(),
        }
    }

    /// The same error with control characters in its text written as escapes (`\n`, `\u{1b}`):
    /// a provider's text must not forge log lines or drive a terminal when the error is logged.
    #[must_use]
    pub fn printable(self) -> Self {
        self.map_text(&|text: &mut String| {
            if text.chars().any(char::is_control) {
                let mut escaped = String::with_capacity(text.len() + 8);
                for c in text.chars() {
                    if c.is_control() {
                        escaped.extend(c.escape_default());
                    } else {
                        escaped.push(c);
                    }
                }
                *text = escaped;
            }
        })
    }

    /// The same error with every run of the key in its text replaced by `[redacted]`: a
    /// provider may echo the key it was sent (or most of it) in an error message, which then must
    /// reach neither the client nor the log.
    #[must_use]
    pub(crate) fn without_secret(self, secret: &crate::secret::Secret) -> Self {
        self.map_text(&|text: &mut String| {
            if let Some(clean) = secret.scrub(text) {
                *text = clean;
            }
        })
    }

    /// The same error with `edit` applied to every text a provider may have written.
    fn map_text(mut self, edit: &dyn Fn(&mut String)) -> Self {
        let scrub = |text: &mut String| edit(text);
        match &mut self {
            Self::InvalidRequest { message, param } => {
                scrub(message);
                param.iter_mut().for_each(scrub);
            }
            Self::ContextLengthExceeded { message } | Self::Overloaded { message, .. } | Self::Upstream { message, .. } | Self::Unavailable { message } => {
                scrub(message);
            }
            Self::Rejected { body, .. } | Self::RateLimited { body: Some(body), .. } => {
                scrub(&mut body.error.message);
                scrub(&mut body.error.kind);
                body.error.param.iter_mut().for_each(scrub);
                body.error.code.iter_mut().for_each(scrub);
                body.error.innererror.iter_mut().for_each(|value| each_string(value, edit));
            }
            Self::RateLimited { body: None, .. } | Self::Timeout { .. } | Self::CircuitOpen { .. } => {}
        }
        self
    }
}

/// `edit` applied to every string in `value`, keys included.
pub(crate) fn each_string(value: &mut serde_json::Value, edit: &dyn Fn(&mut String)) {
    use serde_json::Value;
    match value {
        Value::String(text) => edit(text),
        Value::Array(items) => items.iter_mut().for_each(|item| each_string(item, edit)),
        Value::Object(map) => {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(mut key, mut item)| {
                    edit(&mut key);
                    each_string(&mut item, edit);
                    (key, item)
                })
                .collect();
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_text_cannot_forge_log_lines() {
        let err = ProviderError::Upstream { provider: "p".into(), status: Some(500), message: "m1\n2026-01-01 INFO forged\u{1b}[31m".into() };
        let ProviderError::Upstream { message, .. } = err.printable() else { panic!() };
        assert_eq!(message, "m1\\n2026-01-01 INFO forged\\u{1b}[31m");
        let plain = ProviderError::Upstream { provider: "p".into(), status: None, message: "fine".into() };
        assert_eq!(plain.clone().printable(), plain);
    }

    #[test]
    fn a_key_echoed_inside_innererror_is_taken_out() {
        let key = "az-secret-value-0123456789";
        let inner = serde_json::json!({"code": "x", "detail": [format!("key {key}")], key: {"n": 1}});
        let body = crate::wire::ErrorBody {
            error: crate::wire::ErrorDetail { message: "m".into(), kind: "k".into(), param: None, code: None, innererror: Some(inner) },
        };
        let err = ProviderError::Rejected { provider: "p".into(), status: 400, body: Box::new(body) };
        let ProviderError::Rejected { body, .. } = err.without_secret(&crate::secret::Secret::new(key).unwrap()) else { panic!() };
        let text = body.error.innererror.unwrap().to_string();
        assert!(!text.contains("az-secret") && text.contains("\"code\":\"x\""), "{text}");
    }
}
