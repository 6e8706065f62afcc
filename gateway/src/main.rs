//! `switchyard`: the hybrid LLM gateway.
#![forbid(unsafe_code)]

mod app;
mod catalog;
mod chat_request;
mod config;
mod dispatch;
mod error;
mod handlers;
mod middleware;
mod serve;
mod state;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::GatewayConfig;

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
        Command::Explain { config, file } => explain_command(&config, &file),
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
    for rule in &config.policy.rules {
        let fallback: Vec<&str> = rule.fallback.iter().map(|f| f.get_ref().as_str()).collect();
        let _ = writeln!(out, "rule     {:<24} -> {}  fallback [{}]", rule.name, rule.route.get_ref(), fallback.join(", "));
    }
    out
}

fn explain_command(path: &Path, file: &str) -> anyhow::Result<()> {
    let config = load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let mut body = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut body).context("reading stdin")?;
    } else {
        body = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    }
    let req = chat_request::parse_chat_request(&body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let catalog = catalog::Catalog::new(config.local.as_ref().map(|l| l.name.as_str()), &config.providers);
    let decision = dispatch::plan_with(&config, &catalog, &req, &axum::http::HeaderMap::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string_pretty(&handlers::route::decision_json(&decision))?);
    Ok(())
}
