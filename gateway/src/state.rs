//! `AppState`: everything the handlers share, built once at start-up.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use local_engine::EngineHandle;
use providers::{Guarded, LocalProvider, OpenAiCompatible, Provider, ProviderKind};

use crate::catalog::Catalog;
use crate::config::GatewayConfig;
use crate::accounting::{Ledger, Pricer};
use crate::admission::Limiter;
use crate::audit::AuditLog;
use crate::cache::ResponseCache;
use crate::cluster::Cluster;
use crate::in_flight::InFlight;
use crate::handlers::embeddings::LocalEmbeddings;
use crate::response_store::ResponseStore;
use crate::shadow::{Shadow, ShadowConfig};
use crate::spill::{Spillover, Targets};
use crate::store::RedisStore;
use crate::metrics::Metrics;
use crate::tenants::Tenants;

/// The part of the configuration a reload replaces: `[[tenants]]` and the policy file (with the
/// `[classifier]` model it names). The models' prices are reloaded too, beside it
/// (`AppState::prices`); everything else needs a restart.
pub struct Live {
    /// Policy, targets and complexity scorer.
    pub router: router::Router,
    /// Virtual keys → tenants.
    pub tenants: Tenants,
    /// Tenants with `shadow = false`.
    pub shadow_excluded: HashSet<String>,
    /// A rule of the policy can spill (`spill = …`).
    pub spills: bool,
    /// Tenants' `local_weight`s other than 1.
    local_weights: HashMap<String, u32>,
}

impl Live {
    fn new(config: &GatewayConfig) -> Self {
        let router = config.router();
        let spills = router.policy().rules.iter().any(|r| r.spill.is_some());
        Self {
            router,
            tenants: Tenants::new(&config.tenants),
            shadow_excluded: config.tenants.iter().filter(|t| !t.shadow).map(|t| t.name.clone()).collect(),
            spills,
            local_weights: config.tenants.iter().filter(|t| t.local_weight != 1).map(|t| (t.name.clone(), t.local_weight)).collect(),
        }
    }

    /// `tenant`'s `local_weight`.
    pub fn local_weight(&self, tenant: &str) -> u32 {
        self.local_weights.get(tenant).copied().unwrap_or(1)
    }

    /// `tenant` as the local engine sees it: its name and `local_weight`.
    pub fn engine_tenant(&self, tenant: &str) -> local_engine::Tenant {
        local_engine::Tenant { name: Arc::from(tenant), weight: self.local_weight(tenant) }
    }
}

/// What [`AppState::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The new tenants and policy serve every request from now on.
    Applied {
        /// Tenants configured now.
        tenants: usize,
        /// Rules in the policy now.
        rules: usize,
        /// What `check` would warn about in the new configuration.
        warnings: Vec<String>,
    },
    /// Nothing changed: the file has problems, or changes a part only a restart applies.
    Refused {
        /// Each problem, naming file, line and key where known.
        problems: Vec<String>,
    },
}

/// A remote provider.
pub struct Remote {
    /// Answers requests (behind its circuit breakers, one per model).
    pub provider: Arc<Guarded>,
}

/// How long a dashboard login lasts (the cookie's `Max-Age` too).
pub const ADMIN_SESSION_TTL: std::time::Duration = std::time::Duration::from_hours(12);
/// Dashboard sessions kept at most.
pub const ADMIN_SESSIONS_MAX: u64 = 10_000;

/// Shared by every handler.
pub struct AppState {
    /// The checked configuration.
    pub config: GatewayConfig,
    /// Model names and targets.
    pub catalog: Catalog,
    /// The tenants and the policy, which a reload replaces ([`AppState::reload`]): read it once
    /// per request (`state.live.load()`), so one request sees one configuration.
    pub live: ArcSwap<Live>,
    /// Where the configuration was read from, for reloads (`None`: it cannot be reloaded).
    pub config_file: Option<std::path::PathBuf>,
    /// Held while a reload runs: two at once could apply the older file last.
    reloading: std::sync::Mutex<()>,
    /// Where every request's accounting record goes.
    pub ledger: Arc<Ledger>,
    /// Prices usage on a target.
    pub pricer: Pricer,
    /// The remote models' prices the pricer reads (a reload replaces them).
    prices: Prices,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The admin key (`[server].admin_key_env`), if the admin pages are guarded.
    pub admin_key: Option<String>,
    /// Rate limits and budgets (in-process or in Redis).
    pub limiter: Arc<Limiter>,
    /// The response cache, if `[cache]` is on.
    pub cache: Option<Arc<ResponseCache>>,
    /// The cluster view (figures of every replica), with `[redis]`.
    pub cluster: Option<Cluster>,
    /// Chat requests in flight per tenant.
    pub in_flight: Arc<InFlight>,
    /// Dashboard session tokens handed out by `POST /dashboard/login`: each lasts
    /// [`ADMIN_SESSION_TTL`]; the oldest go first beyond [`ADMIN_SESSIONS_MAX`].
    pub admin_sessions: moka::sync::Cache<String, ()>,
    /// Wrong admin keys per client address (429 after too many).
    pub admin_throttle: crate::admin_throttle::AdminThrottle,
    /// The embedded engine, if configured.
    pub local: Option<LocalProvider>,
    /// Watches the engine against `[local]`'s latency targets, when they are set; consulted only
    /// while the live policy has a rule that can spill ([`AppState::spillover`]).
    spillover: Option<Spillover>,
    /// Shadow evaluation of local answers, with `[shadow]`.
    pub shadow: Option<Arc<Shadow>>,
    /// Stored Responses-API responses (`[responses]`; in Redis too with `[redis]`).
    pub responses: ResponseStore,
    /// The in-process embedding model (`[local_embeddings]`).
    pub embeddings: Option<LocalEmbeddings>,
    /// Remote providers by name.
    pub remotes: HashMap<String, Remote>,
    /// Unix seconds at start-up (the `created` of `/v1/models`).
    pub started_unix: u64,
    /// Set on SIGTERM/SIGINT: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Set to `true` when the drain's deadline (or a second stop signal) cuts the requests still
    /// running: each gets its last answer (`middleware::cut_at_shutdown`).
    pub cut: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Reads the secrets, builds the providers and starts the engine (its model loads in the
    /// background): a missing secret stops the start before any model is loaded. `config_file`:
    /// where `config` was read from, which [`AppState::reload`] reads again.
    pub fn build(config: GatewayConfig, config_file: Option<std::path::PathBuf>) -> anyhow::Result<Arc<Self>> {
        let admin_key = match &config.server.admin_key_env {
            // The variable's name may be logged; its value never is.
            // An empty key would open the admin pages to an empty password.
            Some(var) => Some(secret_from_env(var, &format!("server.admin_key_env: environment variable {var}"))?),
            None => None,
        };
        // Before the engine loads its model (minutes for a large one): an unset `url_env` stops
        // the start at once.
        let redis = match &config.redis {
            Some(redis) => Some(Arc::new(RedisStore::new(redis).context("configuring Redis")?)),
            None => None,
        };
        // Keep-alive connection pools per host: TLS via rustls with the system's roots for
        // https upstreams, a bare hyper pool for plain http ones (providers::HttpClient).
        // Providers are called at their configured URLs only: no redirect is followed (it would
        // carry the provider key elsewhere), and no Referer is sent.
        let client = providers::HttpClient::new(std::time::Duration::from_secs(90)).context("building the HTTP client")?;
        let mut remotes = HashMap::new();
        for p in &config.providers {
            let api_key = match &p.api_key_env {
                // The variable's name may be logged; its value never is.
                // An empty key would go out as `Bearer ` and read as the provider's fault.
                Some(var) => Some(secret_from_env(var, &format!("provider {:?}: environment variable {var} (api_key_env)", p.name))?),
                None => None,
            };
            let provider: Arc<dyn Provider> = match p.kind {
                ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure | ProviderKind::Anthropic => {
                    Arc::new(OpenAiCompatible::new(p, api_key.as_deref(), client.clone()))
                }
            };
            let provider = Arc::new(Guarded::new(&p.name, provider, p.breaker_config()));
            remotes.insert(p.name.clone(), Remote { provider });
        }
        let local = match &config.local {
            Some(engine) => Some(LocalProvider::new(EngineHandle::start(engine.clone()).context("starting the local engine")?)),
            None => None,
        };
        let catalog = Catalog::new(config.local.as_ref().map(|l| l.name.as_str()), &config.providers);
        let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let live = Live::new(&config);
        // Built whenever `[local]` sets a latency target, so that a reloaded policy may spill.
        let spillover = local
            .as_ref()
            .zip(config.local.as_ref().and_then(Targets::from_config))
            .map(|(local, targets)| Spillover::new(local.engine().clone(), targets));
        // Compile the PII patterns now rather than on the first request.
        let _ = router::pii_scanner();
        let model_prices: Prices = Arc::new(ArcSwap::from_pointee(prices_of(&config)));
        let pricer = pricer(&config, Arc::clone(&model_prices));
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        let audit = match &config.audit {
            Some(audit) => Some(
                AuditLog::start(audit, metrics.audit_dropped.clone())
                    .with_context(|| format!("opening the audit log {}", audit.path.display()))?,
            ),
            None => None,
        };
        let baseline = config.metrics.as_ref().and_then(|m| m.baseline_model.clone());
        let limiter = Arc::new(Limiter::new(&config.tenants, redis.clone().zip(config.redis.as_ref()), Arc::clone(&metrics)));
        let cache = config.cache.as_ref().map(|c| Arc::new(ResponseCache::new(c, redis.clone())));
        let cluster = redis.clone().map(Cluster::new);
        let responses = ResponseStore::new(&config.responses, redis.clone());
        let embeddings = match &config.local_embeddings {
            Some(section) => {
                let embedder = local_engine::Embedder::load(&section.engine_config())
                    .with_context(|| format!("loading the embedding model {}", section.model.display()))?;
                Some(LocalEmbeddings { config: section.clone(), embedder: Arc::new(embedder) })
            }
            None => None,
        };
        let in_flight = InFlight::new(config.server.max_in_flight_per_tenant);
        let shadow = match &config.shadow {
            Some(shadow) => Some(Arc::new(build_shadow(shadow, &remotes, &pricer, &metrics)?)),
            None => None,
        };
        let ledger = Arc::new(Ledger::new(Arc::clone(&metrics), audit, baseline));
        Ok(Arc::new(Self {
            config,
            catalog,
            live: ArcSwap::from_pointee(live),
            config_file,
            reloading: std::sync::Mutex::new(()),
            ledger,
            metrics,
            admin_key,
            limiter,
            cache,
            in_flight,
            cluster,
            admin_sessions: moka::sync::Cache::builder().max_capacity(ADMIN_SESSIONS_MAX).time_to_live(ADMIN_SESSION_TTL).build(),
            admin_throttle: crate::admin_throttle::AdminThrottle::default(),
            pricer,
            prices: model_prices,
            local,
            spillover,
            shadow,
            responses,
            embeddings,
            remotes,
            started_unix,
            draining: AtomicBool::new(false),
            cut: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// The spillover watch, when `[local]` sets a latency target and `live`'s policy can spill.
    pub fn spillover<'a>(&'a self, live: &Live) -> Option<&'a Spillover> {
        self.spillover.as_ref().filter(|_| live.spills)
    }

    /// Applies `loaded` (the configuration file read again, or why it could not be) if it
    /// changes nothing but `[[tenants]]`, the policy and the providers' model prices: from the next
    /// request on, keys, tenants' residency, tags, models, rate limits and budgets, rules and the
    /// complexity scorer are the new ones, and usage is priced at the new prices (a request
    /// running across the reload is billed at the prices when it ends; otherwise requests already
    /// running finish under the configuration they started with). Otherwise nothing changes.
    pub fn reload(&self, loaded: Result<GatewayConfig, crate::config::ConfigErrors>) -> Reloaded {
        let config = match loaded {
            Ok(config) => config,
            Err(errors) => return Reloaded::Refused { problems: errors.problems },
        };
        let restart_only = self.config.restart_only_changes(&config);
        if !restart_only.is_empty() {
            return Reloaded::Refused {
                problems: restart_only
                    .into_iter()
                    .map(|section| format!("{section} changed: only [[tenants]], the policy and the models' prices are reloaded; restart to apply it (SIGTERM drains first)"))
                    .collect(),
            };
        }
        let live = Live::new(&config);
        if live.tenants.is_open() && !self.live.load().tenants.is_open() {
            return Reloaded::Refused {
                problems: vec![
                    "no tenant has a key left: every request would be served without one, with no tenant's limits; keep a key, or restart to run without keys".to_owned(),
                ],
            };
        }
        let prices = prices_of(&config);
        let applied = Reloaded::Applied { tenants: config.tenants.len(), rules: live.router.policy().rules.len(), warnings: config.warnings };
        // Limits first: a request authenticated under a new key finds its tenant's limits.
        self.limiter.set_tenants(&config.tenants);
        self.prices.store(Arc::new(prices));
        self.live.store(Arc::new(live));
        applied
    }

    /// What SIGHUP and `POST /admin/reload` do: [`AppState::reload_from_file`] off the runtime's
    /// threads (it reads files), then, if it applied, the budget gauges of budgets it added or
    /// changed are read at once.
    pub async fn reload_config(self: &Arc<Self>) -> Reloaded {
        let reloading = Arc::clone(self);
        let reloaded = tokio::task::spawn_blocking(move || reloading.reload_from_file())
            .await
            .unwrap_or_else(|_| Reloaded::Refused { problems: vec!["the reload stopped before it finished".to_owned()] });
        if matches!(reloaded, Reloaded::Applied { .. }) {
            self.limiter.refresh().await;
        }
        reloaded
    }

    /// Reads the configuration file again and [reloads](AppState::reload) it, one reload at a
    /// time; logs and counts the result. Blocking (it reads files): call it off the runtime.
    fn reload_from_file(&self) -> Reloaded {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let reloaded = match &self.config_file {
            Some(path) => self.reload(GatewayConfig::load_with_env(path)),
            None => Reloaded::Refused { problems: vec!["this gateway was not started from a configuration file".to_owned()] },
        };
        match &reloaded {
            Reloaded::Applied { tenants, rules, warnings } => {
                for warning in warnings {
                    tracing::warn!("{warning}");
                }
                tracing::info!(tenants, rules, "configuration reloaded: tenants, policy and prices applied");
                self.metrics.config_reloads.with_label_values(&["applied"]).inc();
                self.metrics.config_last_reload_successful.set(1);
            }
            Reloaded::Refused { problems } => {
                tracing::error!(problems = %problems.join("; "), "configuration not reloaded; still serving the one loaded before");
                self.metrics.config_reloads.with_label_values(&["refused"]).inc();
                self.metrics.config_last_reload_successful.set(0);
            }
        }
        reloaded
    }

    /// `[server].body_timeout_ms`.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.server.body_timeout_ms)
    }

    /// True when `target`'s provider speaks the Responses API (`responses_api`), so Responses
    /// requests routed there are passed through.
    pub fn speaks_responses(&self, target: &str) -> bool {
        let Some((provider, _)) = target.split_once('/') else { return false };
        self.config.providers.iter().any(|p| p.name == provider && p.speaks_responses())
    }

    /// True when any provider speaks the Responses API.
    pub fn any_speaks_responses(&self) -> bool {
        self.config.providers.iter().any(providers::ProviderConfig::speaks_responses)
    }

    /// Targets whose circuit (per provider and model) is open: the router skips them.
    pub fn open_circuits(&self) -> Vec<String> {
        self.remotes
            .iter()
            .flat_map(|(name, r)| r.provider.open_models().into_iter().map(move |model| format!("{name}/{model}")))
            .collect()
    }

    /// True once the model is loaded (or no engine is configured) and not draining.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::Relaxed)
            && self.local.as_ref().is_none_or(|l| l.engine().stats().loaded)
    }
}

/// The shadow evaluator, asking the configured remote and judge models through their providers.
fn build_shadow(config: &ShadowConfig, remotes: &HashMap<String, Remote>, pricer: &Pricer, metrics: &Arc<Metrics>) -> anyhow::Result<Shadow> {
    let resolve = |target: &str| -> anyhow::Result<(Arc<dyn Provider>, String)> {
        let (provider, model) = target.split_once('/').context("shadow targets are provider/model")?;
        let remote = remotes.get(provider).with_context(|| format!("shadow target {target:?}: no provider {provider:?}"))?;
        Ok((Arc::clone(&remote.provider) as Arc<dyn Provider>, model.to_owned()))
    };
    let (on_result, on_drop) = (Arc::clone(metrics), Arc::clone(metrics));
    Ok(Shadow::new(
        config.clone(),
        resolve(config.remote_target())?,
        resolve(&config.judge)?,
        Arc::clone(pricer),
        Arc::new(move |record| on_result.shadow_recorded(record)),
        Arc::new(move |why| on_drop.shadow_dropped.with_label_values(&[why.as_str()]).inc()),
    ))
}

/// Each remote `provider/model`'s prices; a reload may replace them.
type Prices = Arc<ArcSwap<HashMap<String, providers::ModelPrice>>>;

fn prices_of(config: &GatewayConfig) -> HashMap<String, providers::ModelPrice> {
    config.providers.iter().flat_map(|p| p.models.iter().map(move |m| (format!("{}/{}", p.name, m.name), m.clone()))).collect()
}

/// Prices usage per target: the local engine at `[local].cost_per_mtok` for all tokens, remote
/// models from their model entry in `prices` (cached prompt tokens at the cached price), as they
/// stand when the usage is priced; unpriced: 0.
fn pricer(config: &GatewayConfig, prices: Prices) -> Pricer {
    let local = config.local.as_ref().map(|l| (format!("local/{}", l.name), l.cost_per_mtok));
    let embeddings = config.local_embeddings.as_ref().map(|e| (e.target(), e.cost_per_mtok));
    let price = move |target: &str, usage: &providers::wire::Usage| {
        if let Some((local_target, per_mtok)) = &local {
            if target == local_target {
                #[allow(clippy::cast_precision_loss)]
                return usage.total_tokens as f64 * per_mtok / 1e6;
            }
        }
        if let Some((embed_target, per_mtok)) = &embeddings {
            if target == embed_target {
                #[allow(clippy::cast_precision_loss)]
                return usage.total_tokens as f64 * per_mtok / 1e6;
            }
        }
        prices.load().get(target).map_or(0.0, |price| price.cost_of(usage))
    };
    // 1.7e-6, not 1.7000000000000002e-6, in headers, records and metrics.
    Arc::new(move |target: &str, usage: &providers::wire::Usage| crate::budgets::without_float_noise(price(target, usage)))
}

/// [`crate::config::secret_from_env`], its refusal naming `what`.
fn secret_from_env(var: &str, what: &str) -> anyhow::Result<String> {
    crate::config::secret_from_env(var).map_err(|why| anyhow::anyhow!("{what} {why}"))
}
