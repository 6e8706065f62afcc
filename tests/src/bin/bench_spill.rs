//! Spillover under a ramp of local-eligible streaming load: 1 to 32 clients, each sending
//! streamed chat requests (64 completion tokens) back to back, against a gateway whose only rule
//! serves locally and spills to the fake provider (answering at once). Three settings:
//! spill off, the simple "more than N waiting" rule, and the latency prediction with
//! `slo_ttft_ms`. Prints, per level, the local answers' TTFT p95 and per-stream decode rate and
//! the share of requests spilled. Not a test.
//!
//! `bench-spill [--slo-ms 800] [--levels 1,2,4,8,16,24,32] [--per-client 3] [--queue-depths 0,2]`

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_e2e::{local_section, FakeProvider, Gateway, SseReader};

const COMPLETION_TOKENS: u32 = 64;
const PARALLEL: u32 = 8;
const SUBJECTS: [&str; 16] = [
    "a lighthouse keeper", "a lost key", "the first snow", "a busy market", "an old violin", "a desert road",
    "a robot gardener", "a night train", "a paper boat", "a mountain village", "a clockmaker", "a summer storm",
    "a hidden library", "a red bicycle", "a harbour at dawn", "a forgotten letter",
];

struct Run {
    /// When it was sent, since the level began.
    sent: Duration,
    local: bool,
    ttft: Duration,
    /// Completion tokens per second after the first one.
    decode_tok_s: Option<f64>,
}

async fn one(client: &reqwest::Client, base: &str, i: usize, round: usize, level_start: Instant) -> Run {
    let body = json!({
        "model": "auto", "stream": true, "temperature": 0, "max_tokens": COMPLETION_TOKENS,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("Write a long, detailed story about {} (take {round}-{i}).", SUBJECTS[i % SUBJECTS.len()])}]
    });
    let start = Instant::now();
    let response = client.post(format!("{base}/chat/completions")).json(&body).send().await.expect("server answers");
    assert!(response.status().is_success(), "status {}", response.status());
    let local = response.headers().get("x-switchyard-tier").is_some_and(|t| t == "local");
    let mut reader = SseReader::new(response);
    let (mut first, mut last, mut tokens) = (None, None, 0u64);
    while let Some(data) = reader.next_data(Duration::from_mins(10)).await {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).expect("chunk");
        if chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
            first.get_or_insert_with(|| start.elapsed());
            last = Some(start.elapsed());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
    }
    let ttft = first.unwrap_or_else(|| start.elapsed());
    #[allow(clippy::cast_precision_loss)]
    let decode_tok_s = last.and_then(|l| l.checked_sub(ttft)).filter(|d| !d.is_zero() && tokens > 1).map(|d| (tokens - 1) as f64 / d.as_secs_f64());
    Run { sent: start - level_start, local, ttft, decode_tok_s }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `clients` send `per_client` requests each, back to back.
async fn level(base: &str, clients: usize, per_client: usize) -> Vec<Run> {
    let client = reqwest::Client::new();
    let level_start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (client, base) = (client.clone(), base.to_owned());
            tokio::spawn(async move {
                let mut runs = Vec::new();
                for k in 0..per_client {
                    runs.push(one(&client, &base, c * per_client + k, clients, level_start).await);
                }
                runs
            })
        })
        .collect();
    let mut runs = Vec::new();
    for w in workers {
        runs.extend(w.await.expect("worker"));
    }
    runs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = |flag: &str| std::env::args().skip_while(|a| a != flag).nth(1);
    let slo_ms: u32 = arg("--slo-ms").map_or(800, |s| s.parse().expect("--slo-ms N"));
    let per_client: usize = arg("--per-client").map_or(3, |s| s.parse().expect("--per-client N"));
    let levels: Vec<usize> = arg("--levels")
        .map_or_else(|| vec![1, 2, 4, 8, 16, 24, 32], |l| l.split(',').map(|c| c.parse().expect("--levels 1,2,4")).collect());
    let depths: Vec<u64> =
        arg("--queue-depths").map_or_else(|| vec![0, 2], |l| l.split(',').map(|c| c.parse().expect("--queue-depths 0,2")).collect());
    let fake = FakeProvider::start();
    let policy = "[[rule]]\nname = \"local-first\"\nroute = \"local\"\nspill = \"fake/echo\"\n";
    let mut settings: Vec<(String, String)> = vec![("spill off".into(), String::new())];
    settings.extend(depths.iter().map(|d| (format!("queue > {d}"), format!("spill_queue_depth = {d}\n"))));
    settings.push((format!("predicted, SLO {slo_ms} ms"), format!("slo_ttft_ms = {slo_ms}\n")));
    println!(
        "SmolLM2-135M-Instruct Q4_1, 2 threads, parallel = {PARALLEL}; streamed, {COMPLETION_TOKENS} completion tokens; {per_client} requests per client; spill target: fake provider"
    );
    println!("| setting | clients | requests | spilled | local TTFT p50 (ms) | local TTFT p95 (ms) | local decode tok/s per stream (p50) | within SLO |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (name, keys) in &settings {
        // Spill off: the rule without `spill` (never leaves), same engine settings.
        let rule = if keys.is_empty() { policy.replace("spill = \"fake/echo\"\n", "") } else { policy.to_owned() };
        let config = format!(
            "[server]\nregion = \"eu-west\"\n\n{}{keys}queue = 256\n\n{}\n[policy]\nfile = \"{{policy}}\"\n",
            local_section(PARALLEL, 8192).replace("queue = 16\n", ""),
            fake.provider_section(None)
        );
        let gateway = Gateway::start(&config, &rule).await;
        // Warm-up: page the weights in and give the prediction its first measured steps.
        level(&gateway.v1(), 2, 2).await;
        let (mut total, mut spilled) = (0usize, 0usize);
        for &clients in &levels {
            let runs = level(&gateway.v1(), clients, per_client).await;
            let mut ttfts: Vec<f64> = runs.iter().filter(|r| r.local).map(|r| r.ttft.as_secs_f64() * 1e3).collect();
            ttfts.sort_by(f64::total_cmp);
            let mut rates: Vec<f64> = runs.iter().filter(|r| r.local).filter_map(|r| r.decode_tok_s).collect();
            rates.sort_by(f64::total_cmp);
            if std::env::args().any(|a| a == "--verbose") {
                for r in runs.iter().filter(|r| r.local) {
                    eprintln!("{name} c={clients}: local request sent at {:?}, TTFT {:?}", r.sent, r.ttft);
                }
            }
            let off = runs.iter().filter(|r| !r.local).count();
            total += runs.len();
            spilled += off;
            let p95 = percentile(&ttfts, 0.95);
            #[allow(clippy::cast_precision_loss)]
            let share = off as f64 / runs.len() as f64 * 100.0;
            println!(
                "| {name} | {clients} | {} | {share:.0} % | {:.0} | {p95:.0} | {:.1} | {} |",
                runs.len(),
                percentile(&ttfts, 0.5),
                percentile(&rates, 0.5),
                if ttfts.is_empty() || p95 <= f64::from(slo_ms) { "yes" } else { "no" }
            );
        }
        #[allow(clippy::cast_precision_loss)]
        let share = spilled as f64 / total as f64 * 100.0;
        println!("| {name} | all | {total} | {share:.1} % | | | | |");
        drop(gateway);
    }
}
