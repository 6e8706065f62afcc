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

use gateway::config::{self, GatewayConfig};
use gateway::{catalog, chat_request, dispatch, handlers, serve, tenants};

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

fn load(path: &Path) -> Result<GatewayConfig, config::ConfigErrors> {
    let listen = std::env::var("SWITCHYARD_LISTEN").ok();
    GatewayConfig::load(path, listen.as_deref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve { config } => serve_command(&config),
        Command::Check { config } => return check_command(&config),
        Command::Explain { config, file, tenant, tags } => explain_command(&config, &file, tenant.as_deref(), tags.as_deref()),
        Command::Keys { command: KeysCommand::New { tenant } } => {
            keys_new_command(&tenant);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_command(path: &Path) -> anyhow::Result<()> {
    let config = load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve::serve(config))
}

fn check_command(path: &Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            print!("{}", summary(&config));
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for problem in &errors.problems {
                eprintln!("error: {problem}");
            }
            eprintln!("{} error(s) in {}", errors.problems.len(), path.display());
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
    for t in &config.tenants {
        let _ = writeln!(
            out,
            "tenant   {:<24} keys {}  residency [{}]  tags [{}]",
            t.name,
            t.keys.len(),
            t.residency.join(", "),
            t.tags.join(", ")
        );
    }
    for rule in &config.policy.rules {
        let fallback: Vec<&str> = rule.fallback.iter().map(|f| f.get_ref().as_str()).collect();
        let _ = writeln!(out, "rule     {:<24} -> {}  fallback [{}]", rule.name, rule.route.get_ref(), fallback.join(", "));
    }
    out
}

fn keys_new_command(tenant: &str) {
    let key = tenants::new_key();
    println!("key (shown once; give it to {tenant}): {key}");
    println!("add to [[tenants]] name = {tenant:?}:  keys = [\"{}\"]", tenants::key_hash_entry(&key));
}

fn explain_command(path: &Path, file: &str, tenant: Option<&str>, tags: Option<&str>) -> anyhow::Result<()> {
    let config = load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
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
    let decision = dispatch::plan_with(&config.router(), &catalog, &req, &headers, &profile, &[], dispatch::BudgetSignal::default(), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string_pretty(&handlers::route::decision_json(&decision))?);
    Ok(())
}
