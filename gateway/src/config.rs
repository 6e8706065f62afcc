//! `config/gateway.toml`: each crate owns its section's type; this module composes them, reads
//! the policy file it names, and runs every static check.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use local_engine::EngineConfig;
use providers::{ProviderConfig, ProviderKind};
use router::{Policy, Topology};
use serde::Deserialize;

use crate::audit::AuditConfig;
use crate::cache::CacheConfig;
use crate::handlers::embeddings::LocalEmbeddingsConfig;
use crate::response_store::ResponsesConfig;
use crate::shadow::ShadowConfig;
use crate::store::RedisConfig;
use crate::tenants::TenantConfig;

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; `SWITCHYARD_LISTEN` overrides it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where this gateway and its local engine run.
    #[serde(default = "default_region")]
    pub region: String,
    /// Largest request body accepted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Environment variable holding the admin key that guards `/admin/*` and `/dashboard`.
    #[serde(default)]
    pub admin_key_env: Option<String>,
    /// A connection must deliver a request's headers within this (slow or idle clients are
    /// closed).
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this (408 `request_timeout` otherwise).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// A connection whose client takes no bytes of an answer for this long is closed (the
    /// request ends as cut by its client).
    #[serde(default = "default_send_timeout_ms")]
    pub send_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Chat requests of one tenant in flight at once; more get 429 `rate_limit_exceeded`.
    #[serde(default = "default_max_in_flight_per_tenant")]
    pub max_in_flight_per_tenant: usize,
    /// Threads of the async runtime; 0 means one per core this process may run on. With one,
    /// the runtime is single-threaded (no work stealing: measured ~30 % more requests/s on one
    /// core than the multi-threaded scheduler with one worker).
    #[serde(default)]
    pub worker_threads: usize,
    /// Web origins (`https://app.example.com`) whose pages may call `/v1/*` from a browser
    /// (CORS), or `["*"]` for any; empty (the default): no CORS headers, browsers refuse.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_region() -> String {
    "local".into()
}
const fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
const fn default_header_timeout_ms() -> u64 {
    10_000
}
const fn default_body_timeout_ms() -> u64 {
    30_000
}
const fn default_send_timeout_ms() -> u64 {
    30_000
}
const fn default_max_connections() -> usize {
    8192
}
const fn default_max_in_flight_per_tenant() -> usize {
    512
}

/// More runtime threads than this is a typo, not a tuning.
const MAX_WORKER_THREADS: usize = 1024;

impl ServerConfig {
    /// What is wrong with it.
    pub fn problems(&self) -> Vec<String> {
        let positive = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_connections", self.max_connections as u64),
            ("max_in_flight_per_tenant", self.max_in_flight_per_tenant as u64),
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("send_timeout_ms", self.send_timeout_ms),
        ];
        let mut problems: Vec<String> = positive.iter().filter(|(_, v)| *v == 0).map(|(key, _)| format!("server.{key} must be positive")).collect();
        if self.worker_threads > MAX_WORKER_THREADS {
            problems.push(format!("server.worker_threads must be at most {MAX_WORKER_THREADS} (0: one per core)"));
        }
        problems.extend(self.cors_allowed_origins.iter().filter_map(|origin| cors_origin_problem(origin, self.cors_allowed_origins.len())));
        problems
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            region: default_region(),
            max_body_bytes: default_max_body_bytes(),
            admin_key_env: None,
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            send_timeout_ms: default_send_timeout_ms(),
            max_connections: default_max_connections(),
            max_in_flight_per_tenant: default_max_in_flight_per_tenant(),
            worker_threads: 0,
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// What is wrong with `origin` as an entry of `cors_allowed_origins` (of `count` entries): a
/// browser sends `scheme://host[:port]`, nothing more, and compares it byte for byte.
fn cors_origin_problem(origin: &str, count: usize) -> Option<String> {
    if origin == "*" {
        return (count > 1).then(|| "server.cors_allowed_origins: \"*\" allows every origin; list it alone".to_owned());
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return Some(format!("server.cors_allowed_origins: {origin:?} is not an origin (scheme://host[:port], as a browser sends it)"));
    };
    let readable = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if !matches!(scheme, "http" | "https") || host.is_empty() || !host.chars().all(readable) || host.ends_with(':') {
        return Some(format!("server.cors_allowed_origins: {origin:?} is not an origin (scheme://host[:port], no path or trailing slash, as a browser sends it)"));
    }
    (origin != origin.to_ascii_lowercase()).then(|| format!("server.cors_allowed_origins: {origin:?}: browsers send origins in lower case"))
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Policy file, relative to the working directory.
    #[serde(default = "default_policy_file")]
    pub file: PathBuf,
}

fn default_policy_file() -> PathBuf {
    PathBuf::from("policies/default.toml")
}

impl Default for PolicySection {
    fn default() -> Self {
        Self { file: default_policy_file() }
    }
}

/// The whole file as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    local: Option<EngineConfig>,
    #[serde(default)]
    providers: Vec<ProviderConfig>,
    #[serde(default)]
    tenants: Vec<TenantConfig>,
    #[serde(default)]
    policy: PolicySection,
    metrics: Option<MetricsSection>,
    audit: Option<AuditConfig>,
    redis: Option<RedisConfig>,
    cache: Option<CacheConfig>,
    shadow: Option<ShadowConfig>,
    #[serde(default)]
    responses: ResponsesConfig,
    local_embeddings: Option<LocalEmbeddingsConfig>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Savings are what requests would have cost on this `provider/model`, minus what they cost.
    pub baseline_model: Option<String>,
}

/// A configuration that passed every static check.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `[server]`, with `SWITCHYARD_LISTEN` applied.
    pub server: ServerConfig,
    /// The address to bind.
    pub listen: SocketAddr,
    /// `[local]`, if the embedded engine runs.
    pub local: Option<EngineConfig>,
    /// `[[providers]]`.
    pub providers: Vec<ProviderConfig>,
    /// The policy file's path.
    pub policy_file: PathBuf,
    /// The parsed policy.
    pub policy: Policy,
    /// `[[tenants]]`.
    pub tenants: Vec<TenantConfig>,
    /// Things `check` warns about (rules relying on the per-request privacy guard).
    pub warnings: Vec<String>,
    /// `[metrics]`.
    pub metrics: Option<MetricsSection>,
    /// `[audit]`: where the audit log goes, if anywhere.
    pub audit: Option<AuditConfig>,
    /// `[redis]`: limits, budgets (and the cache, if shared) for several replicas.
    pub redis: Option<RedisConfig>,
    /// `[cache]`: the response cache, if on.
    pub cache: Option<CacheConfig>,
    /// `[shadow]`: shadow evaluation of local answers, if on.
    pub shadow: Option<ShadowConfig>,
    /// `[responses]`: how long stored Responses-API responses are kept.
    pub responses: ResponsesConfig,
    /// `[local_embeddings]`: the in-process embedding model, if any.
    pub local_embeddings: Option<LocalEmbeddingsConfig>,
    /// The learned complexity scorer named by the policy's `[classifier] model`, if any.
    pub scorer: Option<std::sync::Arc<router::learned::LearnedScorer>>,
}

/// Everything wrong with a configuration, each naming file, line and key where known.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigErrors {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// What is wrong with `[redis]` and `[cache]`.
/// A key must name one tenant, else the last one silently wins: the keys of `tenants[i]` that an
/// earlier tenant (or the same one) lists too. Never echoes the hash.
fn shared_key_problems(tenants: &[TenantConfig], i: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let keys = &tenants[i].keys;
    for (k, key) in keys.iter().enumerate() {
        let same = |other: &String| other.eq_ignore_ascii_case(key);
        if let Some(first) = tenants[..i].iter().find(|u| u.keys.iter().any(same)) {
            problems.push(format!("keys[{k}] is also a key of tenant {:?}", first.name));
        }
        if keys[..k].iter().any(same) {
            problems.push(format!("keys[{k}] is listed twice"));
        }
    }
    problems
}

/// `providers` with every model's prices zeroed, to compare what a reload cannot change.
fn without_prices(providers: &[ProviderConfig]) -> Vec<ProviderConfig> {
    let mut out = providers.to_vec();
    for model in out.iter_mut().flat_map(|p| p.models.iter_mut()) {
        model.input_per_mtok = 0.0;
        model.output_per_mtok = 0.0;
        model.cached_input_per_mtok = None;
    }
    out
}

/// A tenant's `models` entry that names no configured target: a typo would otherwise leave the
/// tenant without the model it was meant to have (or with none but `auto`'s fallbacks).
fn tenant_model_problems(raw: &RawConfig, topology: &Topology) -> Vec<String> {
    let embeddings = raw.local_embeddings.as_ref().map(LocalEmbeddingsConfig::target);
    let mut problems = Vec::new();
    for (i, tenant) in raw.tenants.iter().enumerate() {
        for (j, pattern) in tenant.models.iter().enumerate() {
            let mut targets = topology.target_names().chain(embeddings.as_deref());
            if !targets.any(|target| router::model_pattern_matches(pattern, target)) {
                problems.push(format!(
                    "tenants[{i}]: models[{j}] = {pattern:?} matches no configured target (name a provider/model as [[providers]] lists it, a glob such as \"openai/*\", or \"local\" for the in-process models)"
                ));
            }
        }
    }
    problems
}

fn store_problems(raw: &RawConfig) -> Vec<String> {
    let mut problems = raw.redis.as_ref().map(RedisConfig::problems).unwrap_or_default();
    if let Some(cache) = &raw.cache {
        problems.extend(cache.problems(raw.redis.is_some()));
    }
    if let Some(shadow) = &raw.shadow {
        let local = raw.local.as_ref().map(|l| format!("local/{}", l.name));
        let is_remote = |t: &str| Some(t) != local.as_deref() && target_exists(&raw.providers, None, t);
        problems.extend(shadow.problems(&is_remote));
    }
    problems.extend(raw.responses.problems());
    problems.extend(raw.audit.as_ref().and_then(|a| audit_path_problem(&a.path)));
    if raw.audit.as_ref().is_some_and(|a| a.keep == 0) {
        problems.push("audit.keep must be at least 1 (rotated files kept)".to_owned());
    }
    if let Some(embeddings) = &raw.local_embeddings {
        problems.extend(embeddings.problems());
        if raw.local.as_ref().is_some_and(|l| l.name == embeddings.name) {
            problems.push(format!("local_embeddings.name {:?} is also the chat model's name", embeddings.name));
        }
    }
    problems
}

/// Why the audit log could not be written at `path`, found without creating anything: `serve`
/// would stop at start-up for the same reason.
fn audit_path_problem(path: &Path) -> Option<String> {
    let shown = path.display().to_string();
    if path.is_dir() {
        return Some(format!("audit.path {shown:?} is a directory; name the file to write"));
    }
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .err()
            .map(|e| format!("audit.path {shown:?} cannot be opened for appending: {e}"));
    }
    // The nearest existing folder above it must be a folder: `serve` creates the ones missing.
    let above = path.ancestors().skip(1).find(|a| !a.as_os_str().is_empty() && a.exists())?;
    (!above.is_dir()).then(|| format!("audit.path {shown:?} is under {:?}, which is not a directory", above.display().to_string()))
}

/// What `check` and `serve` warn about: rules relying on the privacy guard, tenants never shadowed.
fn warnings(policy: &Policy, policy_name: &str, file: &str, raw: &RawConfig, topology: &Topology) -> Vec<String> {
    let guard = policy.guard_warnings(topology).into_iter().map(|w| format!("{policy_name}: {w}"));
    let shadow = shadow_residency_warnings(raw.shadow.as_ref(), &raw.tenants, topology).into_iter().map(|w| format!("{file}: {w}"));
    let embeddings = raw.local_embeddings.iter().flat_map(|e| {
        let region = raw.server.region.as_str();
        raw.tenants.iter().filter(|t| !router::region_allowed(&t.residency, Some(region))).map(move |t| {
            format!(
                "{file}: local_embeddings {:?} runs in this gateway's region {region}, outside tenant {:?}'s residency [{}]: its embeddings requests to it are refused",
                e.name,
                t.name,
                t.residency.join(", ")
            )
        })
    });
    // Tenant names are matched exactly: a rule naming no configured tenant never applies.
    let known = |name: &String| name == crate::tenants::DEFAULT_TENANT || raw.tenants.iter().any(|t| &t.name == name);
    let unknown_tenants = policy.rules.iter().flat_map(|rule| {
        rule.when.tenant.iter().filter(|name| !known(name)).map(move |name| {
            format!("{policy_name}: rule {:?}: when.tenant names {name:?}, which is not a configured tenant (names match exactly): the rule never applies to it", rule.name)
        })
    });
    let engine = raw.local.iter().flat_map(local_engine::EngineConfig::warnings).map(|w| format!("{file}: {w}"));
    // Hosted APIs refuse a request without a key; a self-hosted server may take one without.
    let hosted = |kind: &ProviderKind| match kind {
        ProviderKind::Openai => Some("openai"),
        ProviderKind::Azure => Some("azure"),
        ProviderKind::Anthropic => Some("anthropic"),
        ProviderKind::OpenaiCompatible => None,
    };
    let keyless = raw.providers.iter().filter(|p| p.api_key_env.is_none()).filter_map(move |p| {
        hosted(&p.kind).map(|kind| format!("{file}: provider {:?} (kind {kind}) has no api_key_env: it is called without a key, which the hosted API refuses", p.name))
    });
    guard.chain(shadow).chain(embeddings).chain(unknown_tenants).chain(engine).chain(keyless).chain(open_mode_warning(raw, file)).chain(open_admin_warning(raw, file)).chain(unreachable_rules(policy, policy_name)).collect()
}

/// Keys guard the API but no admin key guards the dashboard: any caller that can reach the
/// gateway reads every tenant's traffic, spend and recent request ids there.
fn open_admin_warning(raw: &RawConfig, file: &str) -> Option<String> {
    (raw.server.admin_key_env.is_none() && raw.tenants.iter().any(|t| !t.keys.is_empty())).then(|| {
        format!("{file}: tenants need keys but server.admin_key_env is not set: /dashboard and /admin/stats are open to anyone who can reach the gateway, with every tenant's figures (set admin_key_env to guard them)")
    })
}

/// Tenants configured but none with a key: every request is served without one, as tenant
/// `default`, and the others' limits, budgets and residency never apply (removing the last key
/// is not a way to lock the gateway).
fn open_mode_warning(raw: &RawConfig, file: &str) -> Option<String> {
    let named: Vec<&str> = raw.tenants.iter().map(|t| t.name.as_str()).filter(|n| *n != crate::tenants::DEFAULT_TENANT).collect();
    (!named.is_empty() && raw.tenants.iter().all(|t| t.keys.is_empty())).then(|| {
        format!(
            "{file}: no tenant has keys, so requests need no key and are all served as tenant \"default\": the rate limits, budgets, residency and tags of {} never apply (give a tenant a key to require keys)",
            named.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Rules after one with no condition never match (only those naming a model are still reached
/// by requests that name one).
fn unreachable_rules<'a>(policy: &'a Policy, policy_name: &'a str) -> impl Iterator<Item = String> + 'a {
    let catch_all = policy.rules.iter().position(|r| r.when.matches_everything());
    policy.rules.iter().skip(catch_all.map_or(usize::MAX, |i| i + 1)).filter(|r| r.when.requested_model.is_none()).map(move |rule| {
        let before = catch_all.map_or("", |i| policy.rules[i].name.as_str());
        format!("{policy_name}: rule {:?} is never reached: rule {before:?} before it has no condition and takes every request", rule.name)
    })
}

/// Tenants the shadow evaluation never samples because its remote or judge runs outside their
/// residency (the comparison would send their prompts there).
fn shadow_residency_warnings(shadow: Option<&crate::shadow::ShadowConfig>, tenants: &[TenantConfig], topology: &Topology) -> Vec<String> {
    let Some(shadow) = shadow else { return Vec::new() };
    let mut out = Vec::new();
    for tenant in tenants.iter().filter(|t| !t.residency.is_empty()) {
        for (key, target) in [("remote", shadow.remote_target()), ("judge", shadow.judge.as_str())] {
            let region = topology.get(target).and_then(|t| t.region.as_deref());
            if !router::region_allowed(&tenant.residency, region) {
                out.push(format!(
                    "shadow.{key} {target:?} runs in region {} outside tenant {:?}'s residency [{}]: that tenant is never shadowed",
                    region.unwrap_or("(none)"),
                    tenant.name,
                    tenant.residency.join(", ")
                ));
                break;
            }
        }
    }
    out
}

/// The learned scorer the policy's `[classifier] model` names, or a problem.
fn load_scorer(policy: &Policy, policy_name: &str, problems: &mut Vec<String>) -> Option<std::sync::Arc<router::learned::LearnedScorer>> {
    let path = policy.classifier.model.as_ref()?;
    let loaded = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| router::learned::LearnedScorer::from_json(&text).map_err(|e| e.to_string()));
    let model = match loaded {
        Ok(model) => model,
        Err(e) => {
            problems.push(format!("{policy_name}: classifier.model {path:?}: {e} (`switchyard train-router` writes one)"));
            return None;
        }
    };
    // A weight out of [0, 1] is the policy's own problem, reported with its line.
    let weight = policy.classifier.baseline_weight;
    match model.with_baseline_weight(if (0.0..=1.0).contains(&weight) { weight } else { 0.0 }) {
        Ok(model) => Some(std::sync::Arc::new(model)),
        Err(e) => {
            problems.push(format!("{policy_name}: classifier.model {path:?}: {e}"));
            None
        }
    }
}

/// Where the file's byte `offset` is, as `line`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `message` with the key written on `line` of `text` (`key = value` lines) when the message does
/// not name it: the parser's type errors ("invalid type: string \"big\", expected usize") do not.
fn naming_the_key(text: &str, line: usize, message: &str) -> String {
    let key = text.lines().nth(line.saturating_sub(1)).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim()).filter(|k| !k.is_empty());
    match key {
        Some(key) if !message.contains(key) => format!("{key}: {message}"),
        _ => message.to_owned(),
    }
}

/// Points `file`'s problems (`"{file}: …"`) at the line of the key they name, as its parse
/// errors are.
fn with_lines(problems: &mut [String], file: &str, text: &str) {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else { return };
    let prefix = format!("{file}: ");
    for problem in problems {
        let Some(rest) = problem.strip_prefix(&prefix) else { continue };
        if let Some(line) = line_of_problem(&doc, text, rest) {
            *problem = format!("{file}:{line}: {rest}");
        }
    }
}

/// The line of `text` where the deepest key that `problem` names is written: each word of the
/// message that names a key under the one found so far moves there (`local.parallel = 0 …`,
/// `providers[1]: name … is used twice`, `tenants[0]: tenant …: budget.daily_usd …`). `None` when no word names a key
/// written in the file (a default was wrong, or the problem spans several keys).
fn line_of_problem(doc: &toml_edit::ImDocument<&str>, text: &str, problem: &str) -> Option<usize> {
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut found = None;
    let words = problem.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']')));
    for word in words.map(|w| w.trim_end_matches('.')).filter(|w| !w.is_empty()) {
        if let Some((next, at)) = resolve_key(table, word) {
            found = Some(at);
            match next {
                Some(next) => table = next,
                // A value: nothing lies under it.
                None => break,
            }
        }
    }
    found.map(|at| line_of(text, at))
}

/// The policy's static problems (targets, residency), each naming its line where known.
fn policy_problems(policy: &Policy, text: &str, name: &str, raw: &RawConfig, topology: &Topology) -> Vec<String> {
    let is_target = |t: &str| target_exists(&raw.providers, raw.local.as_ref(), t);
    let profiles: Vec<router::TenantProfile> = raw.tenants.iter().map(TenantConfig::profile).collect();
    let doc = toml_edit::ImDocument::parse(text).ok();
    policy
        .problems(text, &is_target)
        .into_iter()
        .chain(policy.residency_problems(text, topology, &profiles))
        .map(|p| match p.line.or_else(|| doc.as_ref().and_then(|doc| leading_key_line(doc, text, &p.message))) {
            Some(line) => format!("{name}:{line}: {}", p.message),
            None => format!("{name}: {}", p.message),
        })
        .collect()
}

/// The line of the dotted key a policy problem starts with (`classifier.complexity_threshold = …`):
/// only a leading dotted path is trusted, as a policy's messages name rules by their `name`.
fn leading_key_line(doc: &toml_edit::ImDocument<&str>, text: &str, message: &str) -> Option<usize> {
    let path = message.split([' ', ':']).next().filter(|p| p.contains('.'))?;
    resolve_key(doc.as_table(), path).map(|(_, at)| line_of(text, at))
}

/// The table (if it is one) at dotted `path` (segments `name` or `name[i]`) under `table`, and
/// where it is written.
fn resolve_key<'a>(table: &'a dyn toml_edit::TableLike, path: &str) -> Option<(Option<&'a dyn toml_edit::TableLike>, usize)> {
    let mut node = Some(table);
    let mut at = None;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        let (key, item) = node?.get_key_value(name)?;
        at = key.span().map(|s| s.start).or(at);
        node = match index {
            None => item.as_table_like(),
            Some(i) => {
                if let Some(tables) = item.as_array_of_tables() {
                    let t = tables.get(i)?;
                    at = t.span().map(|s| s.start).or(at);
                    Some(t as &dyn toml_edit::TableLike)
                } else {
                    let v = item.as_array()?.get(i)?;
                    at = v.span().map(|s| s.start).or(at);
                    v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike)
                }
            }
        };
    }
    Some((node, at?))
}

/// A key read from the environment variable `var` (nothing but the variable's name ever appears
/// in a message). Surrounding whitespace is dropped: the newline a secrets file or `echo` leaves
/// would otherwise make the key one no header can carry (sent without credentials) or one no
/// client can present. Otherwise, why it cannot be used: unset, empty, or holding characters a
/// header cannot carry.
pub fn secret_from_env(var: &str) -> Result<String, &'static str> {
    let value = std::env::var(var).map_err(|_| "is not set")?;
    let key = value.trim();
    if key.is_empty() {
        return Err("is empty");
    }
    if axum::http::HeaderValue::from_str(key).is_err() {
        return Err("holds characters an HTTP header cannot carry");
    }
    Ok(key.to_owned())
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors { problems: vec![format!("{}: cannot read: {e}", path.display())] })
}

/// `server.listen`: an IP address and port, or `localhost:<port>` (the IPv4 loopback, without a
/// name lookup: `check` and `serve` do no DNS).
fn parse_listen(text: &str) -> Result<SocketAddr, std::net::AddrParseError> {
    match text.strip_prefix("localhost:") {
        Some(port) if port.parse::<u16>().is_ok() => format!("127.0.0.1:{port}").parse(),
        _ => text.parse(),
    }
}

impl GatewayConfig {
    /// The secrets this configuration names that `serve` could not use in this environment
    /// (unset, empty where an empty value would be a hole, or not a value a header or a Redis URL
    /// can be): `check` warns about them, as it may run where the secrets are not.
    pub fn missing_secrets(&self) -> Vec<String> {
        let refused = "`serve` would refuse to start";
        let mut out: Vec<String> = self
            .providers
            .iter()
            .filter_map(|p| Some((p, p.api_key_env.as_deref()?)))
            .filter_map(|(p, var)| secret_from_env(var).err().map(|why| (p, var, why)))
            .map(|(p, var, why)| format!("provider {:?}: environment variable {var} (api_key_env) {why} here; {refused}", p.name))
            .collect();
        if let Some(var) = self.redis.as_ref().and_then(|r| r.url_env.as_ref()) {
            match std::env::var(var) {
                Err(_) => out.push(format!("redis.url_env: environment variable {var} is not set here; {refused}")),
                Ok(url) if redis::Client::open(url.as_str()).is_err() => {
                    out.push(format!("redis.url_env: environment variable {var} is not a redis:// URL here; {refused}"));
                }
                Ok(_) => {}
            }
        }
        if let Some(var) = self.server.admin_key_env.as_ref() {
            if let Err(why) = secret_from_env(var) {
                out.push(format!("server.admin_key_env: environment variable {var} {why} here; {refused}"));
            }
        }
        out
    }

    /// Reads and checks `path` and the policy it names. `listen_override` is `SWITCHYARD_LISTEN`.
    pub fn load(path: &Path, listen_override: Option<&str>) -> Result<Self, ConfigErrors> {
        let text = read(path)?;
        Self::from_text(&text, &path.display().to_string(), listen_override, &read)
    }

    /// [`GatewayConfig::load`] on the file's `text` (named `file` in messages); the policy file
    /// is read with `read_policy`.
    pub fn from_text(
        text: &str,
        file: &str,
        listen_override: Option<&str>,
        read_policy: &dyn Fn(&Path) -> Result<String, ConfigErrors>,
    ) -> Result<Self, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            ConfigErrors { problems: vec![format!("{file}:{line}: {}", naming_the_key(text, line, e.message()))] }
        })?;
        let mut problems = Vec::new();
        let listen_text = listen_override.unwrap_or(&raw.server.listen).to_owned();
        let listen = parse_listen(&listen_text).map_err(|e| {
            let source = if listen_override.is_some() { "SWITCHYARD_LISTEN".to_owned() } else { format!("{file}: server.listen") };
            format!("{source}: {listen_text:?} is not a socket address ({e}): give an IP address and a port, e.g. 0.0.0.0:8080, [::]:8080 or localhost:8080")
        });
        if let Err(p) = &listen {
            problems.push(p.clone());
        }
        problems.extend(raw.server.problems().into_iter().map(|p| format!("{file}: {p}")));
        if let Some(local) = &raw.local {
            problems.extend(local.problems().into_iter().map(|p| format!("{file}: {p}")));
        }
        for (i, p) in raw.providers.iter().enumerate() {
            problems.extend(p.problems().into_iter().map(|m| format!("{file}: providers[{i}]: {m}")));
            if raw.providers[..i].iter().any(|q| q.name == p.name) {
                problems.push(format!("{file}: providers[{i}]: name {:?} is used twice", p.name));
            }
        }
        for (i, t) in raw.tenants.iter().enumerate() {
            problems.extend(t.problems().into_iter().map(|m| format!("{file}: tenants[{i}]: {m}")));
            if raw.tenants[..i].iter().any(|u| u.name == t.name) {
                problems.push(format!("{file}: tenants[{i}]: name {:?} is used twice", t.name));
            }
            problems.extend(shared_key_problems(&raw.tenants, i).into_iter().map(|m| format!("{file}: tenants[{i}]: {m}")));
        }
        problems.extend(store_problems(&raw).into_iter().map(|p| format!("{file}: {p}")));
        let topology = topology_of(&raw.server, raw.local.as_ref(), &raw.providers);
        problems.extend(tenant_model_problems(&raw, &topology).into_iter().map(|p| format!("{file}: {p}")));
        if let Some(baseline) = raw.metrics.as_ref().and_then(|m| m.baseline_model.as_ref()) {
            if baseline == "local" || baseline.starts_with("local/") {
                // Savings are what a paid model would have cost minus what was paid: against the
                // local engine they are always 0.
                problems.push(format!("{file}: metrics.baseline_model: {baseline:?} is the local engine; name the paid model savings are measured against (e.g. \"openai/gpt-4o\")"));
            } else if !target_exists(&raw.providers, raw.local.as_ref(), baseline) {
                problems.push(format!("{file}: metrics.baseline_model: target {baseline:?} is not configured"));
            }
        }
        let policy_text = read_policy(&raw.policy.file).map_err(|e| {
            let mut problems = problems.clone();
            problems.extend(e.problems);
            ConfigErrors { problems }
        })?;
        let policy_name = raw.policy.file.display().to_string();
        let policy = match Policy::parse(&policy_text) {
            Ok(policy) => {
                if raw.local.is_none() {
                    for rule in &policy.rules {
                        let local = rule.targets().map(|(_, t)| t).find(|t| {
                            t.get_ref() == router::LOCAL_ALIAS || (t.get_ref() == router::FRONTIER_ALIAS && topology.expand(t.get_ref()).is_empty())
                        });
                        if let Some(target) = local {
                            problems.push(format!(
                                "{policy_name}:{}: rule {:?} routes to \"local\" but {file} has no [local] section",
                                line_of(&policy_text, target.span().start),
                                rule.name
                            ));
                        }
                    }
                }
                problems.extend(policy_problems(&policy, &policy_text, &policy_name, &raw, &topology));
                Some(policy)
            }
            Err(e) => {
                problems.push(format!("{policy_name}:{}: {}", e.line, naming_the_key(&policy_text, e.line, &e.message)));
                None
            }
        };
        with_lines(&mut problems, file, text);
        let scorer = policy.as_ref().and_then(|p| load_scorer(p, &policy_name, &mut problems));
        match (problems.is_empty(), listen, policy) {
            (true, Ok(listen), Some(policy)) => Ok(Self {
                warnings: warnings(&policy, &policy_name, file, &raw, &topology),
                server: raw.server,
                listen,
                local: raw.local,
                providers: raw.providers,
                policy_file: raw.policy.file,
                policy,
                tenants: raw.tenants,
                metrics: raw.metrics,
                audit: raw.audit,
                redis: raw.redis,
                cache: raw.cache,
                shadow: raw.shadow,
                responses: raw.responses,
                local_embeddings: raw.local_embeddings,
                scorer,
            }),
            _ => Err(ConfigErrors { problems }),
        }
    }
}

impl GatewayConfig {
    /// [`GatewayConfig::load`] with `SWITCHYARD_LISTEN` (set but empty, as a compose or
    /// Kubernetes env block may leave it, means unset).
    pub fn load_with_env(path: &Path) -> Result<Self, ConfigErrors> {
        let listen = std::env::var("SWITCHYARD_LISTEN").ok().filter(|v| !v.trim().is_empty());
        Self::load(path, listen.as_deref())
    }

    /// The sections `new` changes that a running gateway cannot take without a restart: all but
    /// `[[tenants]]`, the policy (file, rules, classifier) and the models' prices in
    /// `[[providers]]`, which [`crate::state::AppState::reload`] replaces. Compared as parsed, so comments and layout do not count.
    pub fn restart_only_changes(&self, new: &Self) -> Vec<&'static str> {
        let sections = [
            // `listen` as the address it names: `localhost:8080` is `127.0.0.1:8080`.
            ("[server]", self.listen != new.listen || ServerConfig { listen: self.server.listen.clone(), ..new.server.clone() } != self.server),
            ("[local]", self.local != new.local),
            // Prices apart: a reload takes them.
            ("[[providers]]", without_prices(&self.providers) != without_prices(&new.providers)),
            ("[metrics]", self.metrics != new.metrics),
            ("[audit]", self.audit != new.audit),
            ("[redis]", self.redis != new.redis),
            ("[cache]", self.cache != new.cache),
            ("[shadow]", self.shadow != new.shadow),
            ("[responses]", self.responses != new.responses),
            ("[local_embeddings]", self.local_embeddings != new.local_embeddings),
        ];
        sections.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect()
    }

    /// The router for this configuration.
    pub fn router(&self) -> router::Router {
        let router = router::Router::new(self.policy.clone(), self.topology());
        match &self.scorer {
            Some(scorer) => router.with_scorer(Box::new(std::sync::Arc::clone(scorer))),
            None => router,
        }
    }

    /// Every target with its tier, region and trust, for the router.
    pub fn topology(&self) -> Topology {
        topology_of(&self.server, self.local.as_ref(), &self.providers)
    }
}

fn topology_of(server: &ServerConfig, local: Option<&EngineConfig>, providers: &[ProviderConfig]) -> Topology {
    let mut topology = Topology::new();
    if let Some(local) = local {
        topology = topology.with_local(&format!("local/{}", local.name), &server.region);
    }
    for p in providers {
        // Proprietary APIs are the frontier tier; self-hosted servers (openai-compatible) are not.
        let frontier = matches!(p.kind, ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Anthropic);
        for m in &p.models {
            let target = format!("{}/{}", p.name, m.name);
            // An embedding model answers no chat: `frontier` (a chat route) never expands to it.
            topology = if frontier && !m.is_embedding() {
                topology.with_frontier(&target, p.region.as_deref(), p.trusted)
            } else {
                topology.with_remote(&target, p.region.as_deref(), p.trusted)
            };
        }
    }
    topology
}

/// True when `target` names the local engine or a configured `provider/model`.
fn target_exists(providers: &[ProviderConfig], local: Option<&EngineConfig>, target: &str) -> bool {
    if let Some(local) = local {
        if target == format!("local/{}", local.name) {
            return true;
        }
    }
    target.split_once('/').is_some_and(|(p, m)| providers.iter().any(|c| c.name == p && c.model(m).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchyard-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn policy(dir: &Path, route: &str) -> String {
        let p = write(dir, "policy.toml", &format!("[[rule]]\nname = \"all\"\nroute = \"{route}\"\n"));
        p.display().to_string()
    }

    #[test]
    fn a_rule_routing_to_local_without_a_local_section_names_its_line() {
        let dir = tempdir();
        let p = policy(&dir, "local");
        let err = GatewayConfig::load(&write(&dir, "g.toml", &format!("[policy]\nfile = \"{p}\"\n")), None).unwrap_err().to_string();
        assert!(err.contains(&format!("{p}:3: rule \"all\" routes to \"local\" but")), "{err}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let dir = tempdir();
        let cfg = write(&dir, "g.toml", "[server]\nlisten = \"127.0.0.1:1\"\nlissen = 3\n");
        let err = GatewayConfig::load(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("g.toml:3:"), "{err}");
        assert!(err.contains("lissen"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_line() {
        let dir = tempdir();
        let cfg = write(&dir, "g.toml", "[server]\n\nmax_body_bytes = \"big\"\n");
        let err = GatewayConfig::load(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("g.toml:3:"), "{err}");
    }

    #[test]
    fn frontier_never_expands_to_an_embedding_model() {
        let dir = tempdir();
        let p = policy(&dir, "frontier");
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [{{ name = \"text-embedding-3-small\" }}, {{ name = \"gpt-4o\" }}, {{ name = \"vectors\", embeddings = true }}]\n"
        );
        let config = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap();
        assert_eq!(config.topology().expand("frontier"), ["openai/gpt-4o"]);
    }

    #[test]
    fn listen_override_wins_and_is_checked() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\" }}]\n"
        );
        let cfg = write(&dir, "g.toml", &text);
        let ok = GatewayConfig::load(&cfg, Some("127.0.0.1:4321")).unwrap();
        assert_eq!(ok.listen.port(), 4321);
        let ok = GatewayConfig::load(&cfg, Some("localhost:4322")).unwrap();
        assert_eq!(ok.listen.to_string(), "127.0.0.1:4322");
        let err = GatewayConfig::load(&cfg, Some("nonsense")).unwrap_err().to_string();
        assert!(err.contains("SWITCHYARD_LISTEN"), "{err}");
    }

    #[test]
    fn the_local_engine_is_no_savings_baseline() {
        let dir = tempdir();
        let p = policy(&dir, "local");
        for baseline in ["local", "local/local-small"] {
            let text = format!("[policy]\nfile = \"{p}\"\n[local]\nmodel = \"m.gguf\"\n[metrics]\nbaseline_model = \"{baseline}\"\n");
            let err = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap_err().to_string();
            assert!(err.contains("metrics.baseline_model") && err.contains("is the local engine"), "{err}");
        }
    }

    #[test]
    fn unconfigured_policy_target_is_reported_with_policy_line() {
        let dir = tempdir();
        let p = policy(&dir, "acme/x");
        let cfg = write(&dir, "g.toml", &format!("[policy]\nfile = \"{p}\"\n"));
        let err = GatewayConfig::load(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("policy.toml:3:"), "{err}");
        assert!(err.contains("\"acme/x\" is not configured"), "{err}");
    }

    #[test]
    fn a_checked_policy_value_names_its_line() {
        let dir = tempdir();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, "[[rule]]\nname = \"default\"\nroute = \"local\"\n\n[classifier]\ncomplexity_threshold = 1.5\n").unwrap();
        let cfg = write(&dir, "g.toml", &format!("[policy]\nfile = \"{}\"\n[local]\nmodel = \"m.gguf\"\n", policy.display()));
        let err = GatewayConfig::load(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("policy.toml:6: classifier.complexity_threshold = 1.5 must be between 0 and 1"), "{err}");
    }

    #[test]
    fn policy_route_outside_a_tenants_residency_is_refused_at_load() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nregion = \"us-east\"\nmodels = [{{ name = \"gpt-4o\" }}]\n[[tenants]]\nname = \"acme-eu\"\nresidency = [\"eu\"]\n"
        );
        let cfg = write(&dir, "g.toml", &text);
        let err = GatewayConfig::load(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("policy.toml:3:"), "{err}");
        assert!(err.contains("\"all\".route") && err.contains("us-east") && err.contains("acme-eu"), "{err}");
    }

    #[test]
    fn plaintext_key_in_config_is_refused_without_echoing_it() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\" }}]\n[[tenants]]\nname = \"acme\"\nkeys = [\"sy-secretvalue\"]\n"
        );
        let cfg = write(&dir, "g.toml", &text);
        let err = GatewayConfig::load(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("tenants[0]") && !err.contains("secretvalue"), "{err}");
    }

    #[test]
    fn a_type_error_names_its_file_line_and_key() {
        let dir = tempdir();
        let p = policy(&dir, "local");
        let text = format!("[server]\nmax_body_bytes = \"big\"\n[policy]\nfile = \"{p}\"\n");
        let err = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap_err().to_string();
        assert!(err.contains("g.toml:2: max_body_bytes: invalid type"), "{err}");
    }

    #[test]
    fn a_key_in_two_tenants_and_bad_provider_urls_and_prices_are_errors() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let hash = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\", input_per_mtok = -1.0 }}]\n[[tenants]]\nname = \"a\"\nkeys = [\"{hash}\"]\n[[tenants]]\nname = \"b\"\nkeys = [\"{hash}\"]\n"
        );
        let err = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap_err().to_string();
        assert!(err.contains("tenants[1]: keys[0] is also a key of tenant \"a\"") && !err.contains(&"ab".repeat(32)), "{err}");
        assert!(err.contains("base_url \"127.0.0.1:9/v1\" is not an http:// or https:// URL"), "{err}");
        assert!(err.contains("input_per_mtok must be a price of 0 or more"), "{err}");
    }

    #[test]
    fn a_model_listed_twice_and_an_audit_path_that_is_a_directory_are_errors() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\", input_per_mtok = 1.0 }}, {{ name = \"gpt-4o\", input_per_mtok = 500.0 }}]\n[audit]\npath = \"{}\"\n",
            dir.display()
        );
        let err = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap_err().to_string();
        assert!(err.contains("models \"gpt-4o\" is listed twice"), "{err}");
        assert!(err.contains("audit.path") && err.contains("is a directory"), "{err}");
    }

    #[test]
    fn a_rule_naming_an_unconfigured_tenant_is_warned_about() {
        let dir = tempdir();
        let p = write(&dir, "policy.toml", "[[rule]]\nname = \"acme\"\nwhen.tenant = [\"acme\", \"Globex\", \"default\"]\nroute = \"openai/gpt-4o\"\n\n[[rule]]\nname = \"all\"\nroute = \"openai/gpt-4o\"\n");
        let text = format!(
            "[policy]\nfile = \"{}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\" }}]\n[[tenants]]\nname = \"acme\"\n[[tenants]]\nname = \"globex\"\n",
            p.display()
        );
        let config = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap();
        let about_tenants: Vec<&String> = config.warnings.iter().filter(|w| w.contains("when.tenant")).collect();
        assert_eq!(about_tenants.len(), 1, "{:?}", config.warnings);
        assert!(about_tenants[0].contains("rule \"acme\": when.tenant names \"Globex\""), "{about_tenants:?}");
    }

    #[test]
    fn an_audit_path_under_a_file_is_an_error_and_a_missing_folder_is_not() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let config = |audit: &str| {
            format!("[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\" }}]\n[audit]\npath = \"{audit}\"\n")
        };
        // The policy file stands in for a file where a folder is needed.
        let err = GatewayConfig::load(&write(&dir, "g.toml", &config(&format!("{p}/logs/audit.jsonl"))), None).unwrap_err().to_string();
        assert!(err.contains("audit.path") && err.contains("which is not a directory"), "{err}");
        let missing_folder = dir.join("not-yet/logs/audit.jsonl");
        assert!(GatewayConfig::load(&write(&dir, "g.toml", &config(&missing_folder.display().to_string())), None).is_ok());
        assert!(!dir.join("not-yet").exists(), "check creates nothing");
    }

    #[test]
    fn checked_values_point_at_their_lines() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[server]\nmax_body_bytes = 0\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\" }}]\n[[tenants]]\nname = \"a\"\n\nbudget = {{ daily_usd = -1.0 }}\n[[tenants]]\nname = \"a\"\n[cache]\nttl_s = 0\n"
        );
        let err = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap_err().to_string();
        for expected in [
            "g.toml:4: server.max_body_bytes must be positive",
            "g.toml:8: providers[0]: provider \"openai\": base_url",
            "g.toml:13: tenants[0]: tenant \"a\": budget.daily_usd",
            // The duplicate's own name line.
            "g.toml:15: tenants[1]: name \"a\" is used twice",
            "g.toml:17: cache.ttl_s must be positive",
        ] {
            assert!(err.contains(expected), "{expected}\n{err}");
        }
        let listen = format!("[policy]\nfile = \"{p}\"\n[server]\nlisten = \"nowhere\"\n");
        let err = GatewayConfig::load(&write(&dir, "g.toml", &listen), None).unwrap_err().to_string();
        assert!(err.contains("g.toml:4: server.listen: \"nowhere\" is not a socket address") && err.contains("0.0.0.0:8080"), "{err}");
        // Given by SWITCHYARD_LISTEN instead, it is not the file's line.
        let listen = format!("[policy]\nfile = \"{p}\"\n");
        let err = GatewayConfig::load(&write(&dir, "g.toml", &listen), Some("nowhere")).unwrap_err().to_string();
        assert!(err.contains("SWITCHYARD_LISTEN: \"nowhere\" is not a socket address") && !err.contains("g.toml"), "{err}");
    }

    #[test]
    fn budgets_redis_and_cache_are_checked_without_echoing_the_redis_url() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let base = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [{{ name = \"gpt-4o\" }}]\n"
        );
        let good = format!(
            "{base}[[tenants]]\nname = \"acme\"\nbudget = {{ daily_usd = 5.0, on_exceed = \"local\" }}\n[redis]\nurl = \"redis://:pw@127.0.0.1:6379\"\non_outage = \"fail_open\"\n[cache]\nshared = true\n"
        );
        let ok = GatewayConfig::load(&write(&dir, "g.toml", &good), None).unwrap();
        assert_eq!(ok.tenants[0].budget.unwrap().on_exceed, crate::budgets::OnExceed::Local);
        assert_eq!(ok.redis.unwrap().on_outage, crate::store::redis::OnOutage::FailOpen);
        let bad = format!(
            "{base}[[tenants]]\nname = \"acme\"\nbudget = {{ on_exceed = \"reject\" }}\n[redis]\nurl = \"http://secret-host:1\"\n[cache]\nmax_entries = 0\n"
        );
        let err = GatewayConfig::load(&write(&dir, "g.toml", &bad), None).unwrap_err().to_string();
        assert!(err.contains("budget needs daily_usd, monthly_usd or both"), "{err}");
        assert!(err.contains("redis.url is not a redis:// URL") && !err.contains("secret-host"), "{err}");
        assert!(err.contains("cache.max_entries must be positive"), "{err}");
        let orphan_cache = format!("{base}[cache]\nshared = true\n");
        let err = GatewayConfig::load(&write(&dir, "g.toml", &orphan_cache), None).unwrap_err().to_string();
        assert!(err.contains("cache.shared = true needs a [redis] section"), "{err}");
    }

    #[test]
    fn untrusted_route_without_redact_is_a_warning() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        let text = format!(
            "[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"PATH\"\nmodels = [{{ name = \"gpt-4o\" }}]\n"
        );
        let ok = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap();
        assert_eq!(ok.warnings.len(), 1, "{:?}", ok.warnings);
        assert!(ok.warnings[0].contains("privacy guard"));
    }

    #[test]
    fn local_embeddings_outside_a_tenants_residency_are_a_warning() {
        let dir = tempdir();
        let p = policy(&dir, "openai/gpt-4o");
        // The real embedding model (`make model`): the check reads its header.
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2.f16.gguf");
        let text = format!(
            "[server]\nregion = \"eu-west\"\n[policy]\nfile = \"{p}\"\n[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nregion = \"us-east\"\nmodels = [{{ name = \"gpt-4o\" }}]\n[local_embeddings]\nmodel = {:?}\n[[tenants]]\nname = \"us-team\"\nresidency = [\"us\"]\n",
            model.display().to_string()
        );
        let ok = GatewayConfig::load(&write(&dir, "g.toml", &text), None).unwrap();
        let warning = ok.warnings.iter().find(|w| w.contains("local_embeddings")).unwrap_or_else(|| panic!("{:?}", ok.warnings));
        assert!(warning.contains("\"us-team\"") && warning.contains("eu-west"), "{warning}");
    }
}
