//! `switchyard`: the hybrid LLM gateway's command line (the gateway itself is the `gateway` library).
#![forbid(unsafe_code)]


use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

/// mimalloc: the request path allocates many small short-lived objects; glibc's malloc spent
/// ~15 % of the proxy path's CPU on them (bench/proxy).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

use gateway::config::GatewayConfig;
use gateway::{calibrate, catalog, chat_request, dispatch, handlers, serve, tenants};

/// Switchyard: one OpenAI-compatible endpoint that serves easy and private requests on a local
/// model and escalates hard ones to frontier APIs.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Check the configuration and policy; print a summary or every error.
    Check {
        /// Configuration file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Print the routing decision for a chat request read from FILE or stdin (`-`).
    Explain {
        /// Configuration file.
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The chat request JSON.
        #[arg(default_value = "-")]
        file: String,
        /// Decide as this configured tenant (its residency and tags apply).
        #[arg(long)]
        tenant: Option<String>,
        /// The caller's privacy tags, as in `x-switchyard-tags`.
        #[arg(long)]
        tags: Option<String>,
    },
    /// Pick `complexity_threshold` for a target remote share of your prompts
    /// (`--prompts F --remote-share X`), or for a target answer quality from shadow
    /// comparisons (`--from-shadow F --target-quality Q`); prints the threshold and the split.
    Calibrate {
        /// Configuration file (its policy's complexity scorer scores the prompts).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// JSON Lines: `{"prompt": "…"}` or a chat request body (`{"messages": […]}`) per line.
        #[arg(long, requires = "remote_share", conflicts_with = "from_shadow")]
        prompts: Option<PathBuf>,
        /// Fraction of the prompts to send to the remote tier, 0..=1.
        #[arg(long, conflicts_with = "from_shadow")]
        remote_share: Option<f64>,
        /// The shadow store (`[shadow] store`).
        #[arg(long, requires = "target_quality")]
        from_shadow: Option<PathBuf>,
        /// Share of answers that must be as good as the remote model's, 0..=1.
        #[arg(long, conflicts_with = "prompts")]
        target_quality: Option<f64>,
    },
    /// Train a learned complexity scorer on your own labels and write its model file
    /// (point the policy's `[classifier] model` at it).
    TrainRouter {
        /// JSON Lines: `{"prompt", "label": 0|1}` (1: the remote model's answer is clearly
        /// better) or `{"prompt", "weak_score", "strong_score"}` — a shadow store's lines are
        /// of the second kind.
        #[arg(long)]
        labels: PathBuf,
        /// Where to write the model.
        #[arg(long, default_value = "router-model.json")]
        out: PathBuf,
    },
    /// Virtual keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new virtual key once, and the hash entry to paste into the tenant's `keys`.
    New {
        /// The tenant the key is for.
        #[arg(long)]
        tenant: String,
    },
}

/// Writes a command's output; a closed or full standard output is an error (exit 1), not a panic.
fn to_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing to standard output")
}

/// A line for people on standard error; one that cannot be written is dropped.
fn to_stderr(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = || tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn");
    // Unset is the default; set but unreadable is said once logging works, not passed over.
    let (filter, unreadable) = match tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG") {
        Ok(filter) => (filter, None),
        Err(err) if std::env::var("SWITCHYARD_LOG").is_ok_and(|v| !v.trim().is_empty()) => (default_filter(), Some(err.to_string())),
        Err(_) => (default_filter(), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (the pipe to a log shipper closed) is dropped: the
        // default reports it with `eprintln!`, which panics on that same closed pipe.
        .log_internal_errors(false)
        .init();
    if let Some(error) = unreadable {
        tracing::warn!(%error, "SWITCHYARD_LOG is not a log filter (e.g. \"info\", \"warn,gateway=debug\"); logging at info");
    }
    let result = match cli.command {
        Command::Serve { config } => serve_command(&config),
        Command::Check { config } => return check_command(&config),
        Command::Explain { config, file, tenant, tags } => explain_command(&config, &file, tenant.as_deref(), tags.as_deref()),
        Command::Calibrate { config, prompts, remote_share, from_shadow, target_quality } => {
            calibrate_command(&config, prompts.as_deref(), remote_share, from_shadow.as_deref(), target_quality)
        }
        Command::TrainRouter { labels, out } => train_router_command(&labels, &out),
        Command::Keys { command: KeysCommand::New { tenant } } => keys_new_command(&tenant),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            to_stderr(&format!("switchyard: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

fn serve_command(path: &Path) -> anyhow::Result<()> {
    let config = GatewayConfig::load_with_env(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let (runtime, threads) = runtime(config.server.worker_threads).context("starting the runtime")?;
    tracing::info!(worker_threads = threads, single_threaded = threads == 1, "async runtime");
    runtime.block_on(serve::serve(config, Some(path.to_owned())))
}

/// The async runtime: `worker_threads` threads (0: one per core this process may run on), and
/// a single-threaded one when that is one — on one core, work stealing only costs.
fn runtime(worker_threads: usize) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let threads = match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    Ok((runtime?, threads))
}

fn check_command(path: &Path) -> ExitCode {
    match GatewayConfig::load_with_env(path) {
        Ok(config) => {
            if to_stdout(&summary(&config)).is_err() {
                return ExitCode::FAILURE;
            }
            for warning in config.warnings.iter().chain(&config.missing_secrets()) {
                to_stderr(&format!("warning: {warning}"));
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for problem in &errors.problems {
                to_stderr(&format!("error: {problem}"));
            }
            to_stderr(&format!("{} error(s) in {}", errors.problems.len(), path.display()));
            ExitCode::FAILURE
        }
    }
}

/// The one-screen summary `check` prints.
fn summary(config: &GatewayConfig) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "configuration OK");
    let _ = writeln!(out, "listen   {}  (region {})", config.listen, config.server.region);
    if let Some(local) = &config.local {
        let _ = writeln!(
            out,
            "target   local/{}  region {}  model {}  context {}  parallel {}",
            local.name,
            config.server.region,
            local.model.display(),
            local.context,
            local.parallel
        );
    }
    if let Some(embeddings) = &config.local_embeddings {
        let _ = writeln!(out, "target   {}  region {}  model {}  (embeddings)", embeddings.target(), config.server.region, embeddings.model.display());
    }
    for p in &config.providers {
        for m in &p.models {
            let _ = writeln!(
                out,
                "target   {}/{}  region {}  trusted {}  ${}/${} per Mtok in/out",
                p.name,
                m.name,
                p.region.as_deref().unwrap_or("-"),
                p.trusted,
                m.input_per_mtok,
                m.output_per_mtok
            );
        }
    }
    let _ = writeln!(
        out,
        "policy   {}  (threshold {})",
        config.policy_file.display(),
        config.policy.classifier.complexity_threshold
    );
    let scorer = match (&config.scorer, &config.policy.classifier.model) {
        (Some(model), Some(path)) if model.baseline_weight() > 0.0 => {
            format!("learned {path} (trained on {}), mixed with the baseline at baseline_weight {}", model.trained_on, model.baseline_weight())
        }
        (Some(model), Some(path)) => format!("learned {path} (trained on {})", model.trained_on),
        _ => "baseline (length, code, math, numbers, reasoning words, turns, tools)".to_owned(),
    };
    let _ = writeln!(out, "scorer   {scorer}");
    for t in &config.tenants {
        let _ = writeln!(
            out,
            "tenant   {:<24} keys {}  residency [{}]  tags [{}]{}{}",
            t.name,
            t.keys.len(),
            t.residency.join(", "),
            t.tags.join(", "),
            if t.models.is_empty() { String::new() } else { format!("  models [{}]", t.models.join(", ")) },
            if t.local_weight == 1 { String::new() } else { format!("  local_weight {}", t.local_weight) }
        );
    }
    for rule in &config.policy.rules {
        let fallback: Vec<&str> = rule.fallback.iter().map(|f| f.get_ref().as_str()).collect();
        let spill = rule.spill.as_ref().map(|s| format!("  spill {}", s.get_ref())).unwrap_or_default();
        let _ = writeln!(out, "rule     {:<24} -> {}  fallback [{}]{spill}", rule.name, rule.route.get_ref(), fallback.join(", "));
    }
    out
}

/// A JSON-lines input file's text, without the byte-order mark some editors write first (it
/// would make the first line "not JSON").
fn read_lines_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

fn calibrate_command(
    path: &Path,
    prompts: Option<&Path>,
    remote_share: Option<f64>,
    from_shadow: Option<&Path>,
    target_quality: Option<f64>,
) -> anyhow::Result<()> {
    let in_range = |x: f64, flag: &str| {
        anyhow::ensure!((0.0..=1.0).contains(&x), "{flag} must be between 0 and 1, not {x}");
        Ok(())
    };
    let config = || GatewayConfig::load_with_env(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"));
    if let (Some(file), Some(quality)) = (from_shadow, target_quality) {
        in_range(quality, "--target-quality")?;
        let router = config()?.router();
        let text = read_lines_file(file)?;
        let (samples, bad) = calibrate::shadow_samples(&text, |prompt, turns| calibrate::conversation_complexity(&router, prompt, turns));
        anyhow::ensure!(!samples.is_empty(), "{} holds no shadow comparison", file.display());
        if bad > 0 {
            to_stderr(&format!("warning: skipped {bad} line(s) of {} that are not shadow records", file.display()));
        }
        let scores: Vec<f64> = samples.iter().map(|s| s.0).collect();
        return to_stdout(&calibrate::report(&calibrate::for_quality(&samples, quality), &scores));
    }
    let (Some(file), Some(share)) = (prompts, remote_share) else {
        anyhow::bail!("give --prompts F.jsonl --remote-share X, or --from-shadow F --target-quality Q");
    };
    in_range(share, "--remote-share")?;
    let config = config()?;
    let router = config.router();
    let catalog = catalog::Catalog::new(config.local.as_ref().map(|l| l.name.as_str()), &config.providers);
    let tenant = router::TenantProfile { name: tenants::DEFAULT_TENANT.to_owned(), ..router::TenantProfile::default() };
    let text = read_lines_file(file)?;
    let mut scores = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", file.display(), n + 1))?;
        if value.get("messages").is_none() {
            // A bare prompt is one user message, read exactly as the live router reads it.
            let prompt = value["prompt"].as_str().with_context(|| format!("{}:{}: needs \"prompt\" or \"messages\"", file.display(), n + 1))?;
            value = serde_json::json!({"messages": [{"role": "user", "content": prompt}]});
        }
        // A sample of conversations needs no `model`, and the model one names does not change its
        // complexity: each is routed as `auto` (a name no target serves is then no error).
        if let Some(fields) = value.as_object_mut() {
            fields.insert("model".to_owned(), catalog::AUTO.into());
        }
        let req = chat_request::parse_chat_request(value.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), n + 1))?;
        // Planned as the live router plans it (its tools, its turns, its text as classified).
        let decision = dispatch::plan_with(&router, &catalog, &req, &axum::http::HeaderMap::new(), &tenant, &dispatch::Signals::default())
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), n + 1))?;
        scores.push(decision.complexity);
    }
    anyhow::ensure!(!scores.is_empty(), "{} holds no prompt", file.display());
    let split = calibrate::for_remote_share(&scores, share);
    to_stdout(&calibrate::report(&split, &scores))?;
    if let Some(warning) = calibrate::split_warning(&split, &scores, share) {
        to_stderr(&warning);
    }
    Ok(())
}

fn train_router_command(labels: &Path, out: &Path) -> anyhow::Result<()> {
    let text = read_lines_file(labels)?;
    let mut examples = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", labels.display(), n + 1);
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let prompt = value["prompt"].as_str().with_context(|| format!("{}: needs a \"prompt\" string", at()))?;
        let target = match (value["label"].as_u64(), value["weak_score"].as_f64(), value["strong_score"].as_f64()) {
            (Some(0), _, _) => 0.0,
            (Some(1), _, _) => 1.0,
            (None, Some(weak), Some(strong)) => {
                if strong > weak {
                    1.0
                } else {
                    0.0
                }
            }
            _ => anyhow::bail!("{}: needs \"label\": 0 or 1, or \"weak_score\" and \"strong_score\" numbers", at()),
        };
        #[allow(clippy::cast_possible_truncation)]
        examples.push(router::learned::Example { text: prompt.to_owned(), target: target as f32, weight: 1.0 });
    }
    let positives = examples.iter().filter(|e| e.target > 0.5).count();
    anyhow::ensure!(
        positives > 0 && positives < examples.len(),
        "{} has {} examples, {positives} of them positive: training needs both kinds",
        labels.display(),
        examples.len()
    );
    let trained_on = format!("{} ({} examples, {positives} where the remote answer is better)", labels.display(), examples.len());
    let model = router::learned::train(&examples, router::learned::TrainOptions::default(), &trained_on);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, model.to_json()).with_context(|| format!("writing {}", out.display()))?;
    to_stdout(&format!(
        "trained on {trained_on}\nwrote {} ({} nonzero word weights)\nuse it: in the policy, [classifier] model = {:?} (and baseline_weight = 0.25 to mix in the baseline scorer on traffic unlike these labels); then pick the threshold with `switchyard calibrate`\n",
        out.display(),
        model.sparse.len(),
        out.display().to_string()
    ))
}

fn keys_new_command(tenant: &str) -> anyhow::Result<()> {
    // The configuration refuses an empty tenant name: a key for one could never be used.
    anyhow::ensure!(!tenant.trim().is_empty(), "--tenant must name a tenant");
    anyhow::ensure!(
        !tenants::unreadable_name(tenant),
        "--tenant \"{}\" holds control, format, bidirectional or other invisible characters (or spaces around it), which a tenant name may not (the configuration refuses it)",
        tenant.escape_default()
    );
    let key = tenants::new_key();
    to_stdout(&format!(
        "key (shown once; give it to {tenant}): {key}\nadd to [[tenants]] name = {tenant:?}:  keys = [\"{}\"]\n",
        tenants::key_hash_entry(&key)
    ))
}

fn explain_command(path: &Path, file: &str, tenant: Option<&str>, tags: Option<&str>) -> anyhow::Result<()> {
    let config = GatewayConfig::load_with_env(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let mut body = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut body).context("reading stdin")?;
    } else {
        body = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    }
    let req = chat_request::parse_chat_request(&body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let catalog = catalog::Catalog::new(config.local.as_ref().map(|l| l.name.as_str()), &config.providers);
    let profile = match tenant {
        Some(name) => config
            .tenants
            .iter()
            .find(|t| t.name == name)
            .map(tenants::TenantConfig::profile)
            .with_context(|| format!("no tenant {name:?} in {}", path.display()))?,
        None => router::TenantProfile { name: tenants::DEFAULT_TENANT.to_owned(), ..router::TenantProfile::default() },
    };
    let mut headers = axum::http::HeaderMap::new();
    if let Some(tags) = tags {
        headers.insert(dispatch::TAGS_HEADER, tags.parse().context("--tags")?);
    }
    let decision = dispatch::plan_with(&config.router(), &catalog, &req, &headers, &profile, &dispatch::Signals::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    to_stdout(&format!("{}\n", serde_json::to_string_pretty(&handlers::route::decision_json(&decision))?))
}
