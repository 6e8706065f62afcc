use serde::Deserialize;

/// `kind` of a `[[providers]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// `OpenAI`'s API.
    Openai,
    /// Azure `OpenAI`.
    Azure,
    /// Anthropic's Messages API.
    Anthropic,
    /// Any server speaking `OpenAI`'s chat-completions API (vLLM, llama-server, Ollama…).
    OpenaiCompatible,
}

/// A model a provider serves, with its prices.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// The model's name at the provider.
    pub name: String,
    /// USD per million prompt tokens.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// USD per million completion tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// USD per million cached prompt tokens.
    pub cached_input_per_mtok: Option<f64>,
    /// Azure deployment name (defaults to the model name).
    pub deployment: Option<String>,
    /// Default `max_tokens` for APIs that require one.
    pub max_output_tokens: Option<u32>,
    /// An embedding model (also assumed of a name with `embed` in it): listed for
    /// `/v1/embeddings`, never one of the `frontier` chat models.
    #[serde(default)]
    pub embeddings: bool,
}

impl ModelPrice {
    /// True for an embedding model: marked so, or named so (`text-embedding-3-small`,
    /// `embed-english-v3.0`).
    pub fn is_embedding(&self) -> bool {
        self.embeddings || self.name.to_ascii_lowercase().contains("embed")
    }

    /// Cost in USD of a request with these token counts (no cached prompt tokens).
    #[allow(clippy::cast_precision_loss)]
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok + completion_tokens as f64 * self.output_per_mtok) / 1e6
    }

    /// Cost in USD of `usage`: cached prompt tokens at `cached_input_per_mtok` (the input price
    /// when none is configured), the other prompt tokens at `input_per_mtok`, completion tokens
    /// at `output_per_mtok`.
    #[allow(clippy::cast_precision_loss)]
    pub fn cost_of(&self, usage: &crate::wire::Usage) -> f64 {
        let cached = usage.cached_prompt_tokens().min(usage.prompt_tokens);
        let cached_price = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        ((usage.prompt_tokens - cached) as f64 * self.input_per_mtok
            + cached as f64 * cached_price
            + usage.completion_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// One `[[providers]]` entry of `config/gateway.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Targets are `<name>/<model>`.
    pub name: String,
    /// Which API it speaks.
    pub kind: ProviderKind,
    /// API base URL (…/v1 for OpenAI-style APIs).
    pub base_url: Option<String>,
    /// openai-compatible only: several base URLs, load-balanced.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Where the provider runs (for residency rules).
    #[serde(default)]
    pub region: Option<String>,
    /// May it see unredacted privacy-tagged data?
    #[serde(default)]
    pub trusted: bool,
    /// Per attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after the first attempt.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Upper bound of the first retry's backoff; doubled for each further retry (full jitter).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// The longest wait before a retry; an upstream `Retry-After` beyond it is not waited for.
    #[serde(default = "default_retry_max_wait_ms")]
    pub retry_max_wait_ms: u64,
    /// Consecutive failed calls (after retries) that open the provider's circuit.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit fails fast before one probe is let through.
    #[serde(default = "default_circuit_open_ms")]
    pub circuit_open_ms: u64,
    /// Azure only.
    pub api_version: Option<String>,
    /// Speaks the Responses API (`POST {base}/responses`): Responses requests routed here are
    /// passed through rather than translated to chat. Default: true for `kind = "openai"`.
    #[serde(default)]
    pub responses_api: Option<bool>,
    /// Models served, with prices.
    #[serde(default)]
    pub models: Vec<ModelPrice>,
}

const fn default_timeout_ms() -> u64 {
    60_000
}

/// The most retries one request may make after its first attempt.
pub const MAX_RETRIES: u32 = 10;

const fn default_max_retries() -> u32 {
    2
}

const fn default_retry_base_ms() -> u64 {
    250
}

const fn default_retry_max_wait_ms() -> u64 {
    10_000
}

const fn default_circuit_failures() -> u32 {
    5
}

const fn default_circuit_open_ms() -> u64 {
    30_000
}

impl ProviderConfig {
    /// True when Responses requests are passed through to this provider.
    pub fn speaks_responses(&self) -> bool {
        self.responses_api.unwrap_or(self.kind == ProviderKind::Openai) && self.kind != ProviderKind::Anthropic
    }

    /// Retry settings.
    pub fn retry_policy(&self) -> crate::RetryPolicy {
        crate::RetryPolicy {
            max_retries: self.max_retries,
            base: std::time::Duration::from_millis(self.retry_base_ms),
            max_wait: std::time::Duration::from_millis(self.retry_max_wait_ms),
        }
    }

    /// Circuit-breaker settings.
    pub fn breaker_config(&self) -> crate::BreakerConfig {
        crate::BreakerConfig {
            failures: self.circuit_failures.max(1),
            open_for: std::time::Duration::from_millis(self.circuit_open_ms),
        }
    }

    /// The model entry called `name`.
    pub fn model(&self, name: &str) -> Option<&ModelPrice> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Static checks; one message per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let who = format!("provider {:?}", self.name);
        if self.name.is_empty() || self.name.contains('/') || self.name == "local" || self.name == "auto" {
            problems.push(format!("{who}: name must be non-empty, contain no '/', and not be \"local\" or \"auto\""));
        }
        if self.kind == ProviderKind::Azure && self.api_version.is_none() {
            problems.push(format!("{who}: kind \"azure\" needs api_version (e.g. \"2024-10-21\")"));
        }
        if !self.endpoints.is_empty() && self.kind != ProviderKind::OpenaiCompatible {
            problems.push(format!("{who}: endpoints is for kind \"openai-compatible\" only"));
        }
        if self.api_version.is_some() && self.kind != ProviderKind::Azure {
            problems.push(format!("{who}: api_version is for kind \"azure\" only"));
        }
        if self.base_url.is_none() && self.endpoints.is_empty() && self.kind != ProviderKind::Anthropic {
            problems.push(format!("{who}: base_url is required"));
        }
        if self.models.is_empty() {
            problems.push(format!("{who}: models must list at least one model"));
        }
        if self.timeout_ms == 0 {
            problems.push(format!("{who}: timeout_ms must be positive"));
        }
        // Each retry is another upstream call for one client request: more than a few is a flood.
        if self.max_retries > MAX_RETRIES {
            problems.push(format!("{who}: max_retries must be at most {MAX_RETRIES} (each retry is another call to the provider)"));
        }
        if self.circuit_failures == 0 {
            problems.push(format!("{who}: circuit_failures must be at least 1"));
        }
        if self.api_key_env.as_deref().is_some_and(|var| var.trim().is_empty() || var.contains(['=', '\0'])) {
            problems.push(format!("{who}: api_key_env must name an environment variable (leave it out for a provider that takes no key)"));
        }
        for (key, url) in self.base_url.iter().map(|u| ("base_url", u)).chain(self.endpoints.iter().map(|u| ("endpoints", u))) {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<http::Uri>().is_err() {
                problems.push(format!("{who}: {key} {url:?} is not an http:// or https:// URL"));
            } else if url.contains(['?', '#']) {
                // The API's path is appended to it; not echoed, as a query may carry a key.
                problems.push(format!("{who}: {key} must have no query or fragment (each API path is appended to it; a key goes in api_key_env)"));
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|earlier| earlier.name == m.name) {
                problems.push(format!("{who}: models {:?} is listed twice (which price would apply?)", m.name));
            }
            let prices = [("input_per_mtok", Some(m.input_per_mtok)), ("output_per_mtok", Some(m.output_per_mtok)), ("cached_input_per_mtok", m.cached_input_per_mtok)];
            for (key, price) in prices {
                if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                    problems.push(format!("{who}: models {:?}: {key} must be a price of 0 or more", m.name));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_interface_example() {
        let cfg: ProviderConfig = toml::from_str(
            r#"
name = "openai"
kind = "openai"
base_url = "https://example.invalid/v1"
api_key_env = "OPENAI_API_KEY"
region = "us-east"
models = [{ name = "gpt-4o", input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }]
"#,
        )
        .unwrap();
        assert_eq!(cfg.kind, ProviderKind::Openai);
        assert_eq!(cfg.timeout_ms, 60_000);
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        let cost = cfg.model("gpt-4o").unwrap().cost_usd(1_000_000, 100_000);
        let mut usage = crate::wire::Usage::new(1_000_000, 100_000);
        usage.extra.insert("prompt_tokens_details".into(), serde_json::json!({"cached_tokens": 400_000}));
        let m = cfg.model("gpt-4o").unwrap();
        let expected = (600_000.0 * m.input_per_mtok + 400_000.0 * m.cached_input_per_mtok.unwrap_or(m.input_per_mtok) + 100_000.0 * m.output_per_mtok) / 1e6;
        assert!((m.cost_of(&usage) - expected).abs() < 1e-12);
        assert!((cost - 3.5).abs() < 1e-12);
    }

    #[test]
    fn rejects_unknown_kind_and_key() {
        assert!(toml::from_str::<ProviderConfig>("name=\"x\"\nkind=\"bedrock\"\n").is_err());
        let err = toml::from_str::<ProviderConfig>("name=\"x\"\nkind=\"openai\"\nbase_urll=\"y\"\n").unwrap_err();
        assert!(err.to_string().contains("base_urll"));
    }

    #[test]
    fn retries_and_the_circuit_threshold_are_bounded() {
        let with = |extra: &str| toml::from_str::<ProviderConfig>(&format!("name=\"x\"\nkind=\"openai\"\nbase_url=\"http://h/v1\"\nmodels=[{{name=\"m\"}}]\n{extra}")).unwrap().problems();
        assert!(with("max_retries = 10").is_empty());
        assert!(with("max_retries = 4000000000")[0].contains("max_retries must be at most 10"));
        assert!(with("circuit_failures = 0")[0].contains("circuit_failures must be at least 1"));
    }

    #[test]
    fn an_empty_key_variable_name_is_refused() {
        let with = |var: &str| toml::from_str::<ProviderConfig>(&format!("name=\"x\"\nkind=\"openai\"\nbase_url=\"http://h/v1\"\napi_key_env=\"{var}\"\nmodels=[{{name=\"m\"}}]\n")).unwrap().problems();
        for bad in ["", " ", "A=B"] {
            assert!(with(bad).iter().any(|p| p.contains("api_key_env must name an environment variable")), "{bad:?}");
        }
        assert!(with("OPENAI_API_KEY").is_empty());
    }

    #[test]
    fn a_base_url_with_a_query_is_refused_without_echoing_it() {
        let problems = |url: &str| {
            toml::from_str::<ProviderConfig>(&format!("name=\"x\"\nkind=\"openai\"\nbase_url=\"{url}\"\nmodels=[{{name=\"m\"}}]\n")).unwrap().problems()
        };
        let refused = problems("https://h.example/v1?key=QUERYSECRET");
        assert!(refused[0].contains("base_url must have no query or fragment"), "{refused:?}");
        assert!(!refused[0].contains("QUERYSECRET"), "{refused:?}");
        assert!(problems("https://h.example/v1#frag")[0].contains("no query or fragment"));
        assert!(problems("https://h.example/v1").is_empty());
    }
}
