//! Concurrent streaming load: 32 chat prompts, 64 completion tokens each, with 1, 4, 8 and 16 in
//! flight, against the gateway and, when given, any other OpenAI-compatible server (llama.cpp's
//! `llama-server`). Prints aggregate completion tok/s and TTFT p50/p95 per level.
//!
//! Each level sends the prompts with its own "(draft N)" suffix, so no server answers a level
//! from prompts it cached at an earlier one: shared prefixes (the chat template, the request's
//! wording) can be reused, whole prompts cannot.
//!
//! `--repeat-prompts` sends the very same prompts at every level instead (then whole-prompt caches,
//! ours and llama-server's host-RAM one, answer later levels).
//!
//! `bench-concurrency [--other URL] [--levels 1,4,8,16] [--rounds N] [--repeat-prompts]` — URL like
//! `http://127.0.0.1:8081/v1`. With `--other`, both servers run each level back to back (which one
//! goes first alternates by round), and a last table gives each level's medians over the rounds.
//! `BENCH_LOCAL_EXTRA` (environment): more `[local]` keys for the gateway, e.g. `prompt_cache_mib = 0`.
//! Not a test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, Gateway, SseReader, ALL_LOCAL_POLICY};

const PROMPTS: usize = 32;
const COMPLETION_TOKENS: u32 = 64;
const LEVELS: [usize; 4] = [1, 4, 8, 16];
const SUBJECTS: [&str; 32] = [
    "a lighthouse keeper", "a lost key", "the first snow", "a busy market", "an old violin", "a desert road",
    "a robot gardener", "a night train", "a paper boat", "a mountain village", "a clockmaker", "a summer storm",
    "a hidden library", "a red bicycle", "a harbour at dawn", "a forgotten letter", "a city bakery", "a kite festival",
    "a quiet forest", "a ship's cat", "a broken compass", "a winter market", "a young astronomer", "a river ferry",
    "a chess match", "an abandoned mill", "a street musician", "a glass bottle", "a long staircase", "a fox in the snow",
    "a school play", "a midnight picnic",
];

struct Run {
    ttft: Duration,
    completion_tokens: u64,
}

async fn one(client: &reqwest::Client, base: &str, i: usize, round: usize) -> Run {
    let body = json!({
        "model": "auto", "stream": true, "temperature": 0, "max_tokens": COMPLETION_TOKENS,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("Write a long, detailed story about {} (draft {round}).", SUBJECTS[i % SUBJECTS.len()])}]
    });
    let start = Instant::now();
    let response = client.post(format!("{base}/chat/completions")).json(&body).send().await.expect("server answers");
    assert!(response.status().is_success(), "status {}", response.status());
    let mut reader = SseReader::new(response);
    let mut ttft = None;
    let mut pieces = 0u64;
    let mut usage = None;
    while let Some(data) = reader.next_data(Duration::from_mins(10)).await {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).expect("chunk");
        if chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
            ttft.get_or_insert_with(|| start.elapsed());
            pieces += 1;
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            usage = Some(n);
        }
    }
    Run { ttft: ttft.unwrap_or_else(|| start.elapsed()), completion_tokens: usage.unwrap_or(pieces) }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs all prompts with `level` in flight.
async fn level(base: &str, level: usize, round: usize) -> Measured {
    // No pooled connections: llama-server closes idle ones, and a stale one fails the request.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..level)
        .map(|_| {
            let (client, base, next) = (client.clone(), base.to_owned(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut runs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= PROMPTS {
                        return runs;
                    }
                    runs.push(one(&client, &base, i, round).await);
                }
            })
        })
        .collect();
    let mut runs = Vec::new();
    for w in workers {
        runs.extend(w.await.expect("worker"));
    }
    let wall = start.elapsed().as_secs_f64();
    let tokens: u64 = runs.iter().map(|r| r.completion_tokens).sum();
    let mut ttfts: Vec<Duration> = runs.iter().map(|r| r.ttft).collect();
    ttfts.sort();
    #[allow(clippy::cast_precision_loss)]
    let tps = tokens as f64 / wall;
    Measured { tps, p50: percentile(&ttfts, 0.5), p95: percentile(&ttfts, 0.95), tokens }
}

/// The engine's cumulative busy time (µs spent in steps with prompt tokens, and in pure decode
/// steps) and prompt tokens prefilled, from `/readyz`.
async fn engine_busy(gateway: &Gateway) -> [u64; 3] {
    let stats = gateway.engine_stats().await;
    ["prefill_us_total", "decode_us_total", "prompt_tokens_total"].map(|k| stats[k].as_u64().unwrap_or(0))
}

/// One server at one level: aggregate completion tok/s, TTFT percentiles, tokens received.
#[derive(Clone, Copy)]
struct Measured {
    tps: f64,
    p50: Duration,
    p95: Duration,
    tokens: u64,
}

/// Measures one server at level `c` with the prompts of `round`, prints its row, and (for the
/// gateway) returns where the engine's time went.
async fn measure(name: &str, base: &str, c: usize, round: usize, gateway: Option<&Gateway>) -> (Measured, Option<String>) {
    let before = match gateway {
        Some(g) => Some(engine_busy(g).await),
        None => None,
    };
    let started = Instant::now();
    let m = level(base, c, round).await;
    let wall = started.elapsed().as_secs_f64();
    println!("| {name:<14} | {c:>2} | {:>16.1} | {:>13.0} | {:>13.0} | {:>6} |", m.tps, ms(m.p50), ms(m.p95), m.tokens);
    let mut breakdown = None;
    if let (Some(g), Some(before)) = (gateway, before) {
        let after = engine_busy(g).await;
        let [prefill, decode, prompt] = [0, 1, 2].map(|i| after[i] - before[i]);
        #[allow(clippy::cast_precision_loss)]
        let line = format!(
            "c={c}: wall {wall:.2} s; engine in steps with prompt tokens {:.2} s ({prompt} prompt tokens), in decode-only steps {:.2} s, idle {:.2} s",
            prefill as f64 / 1e6,
            decode as f64 / 1e6,
            wall - (prefill + decode) as f64 / 1e6
        );
        breakdown = Some(line);
    }
    (m, breakdown)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
}

/// Warm-up: page in the weights, fill caches.
async fn warm_up(base: &str) {
    one(&reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client"), base, 0, 0).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = |flag: &str| std::env::args().skip_while(|a| a != flag).nth(1);
    let other = arg("--other");
    let levels: Vec<usize> =
        arg("--levels").map_or_else(|| LEVELS.to_vec(), |l| l.split(',').map(|c| c.parse().expect("--levels 1,4,8")).collect());
    let rounds: usize = arg("--rounds").map_or(1, |r| r.parse().expect("--rounds N"));
    let repeat = std::env::args().any(|a| a == "--repeat-prompts");
    // 16 slots, so that 16 in flight decode together (1024 KV cells each).
    let gateway = Gateway::start(&config_with_local(16, 16384, &std::env::var("BENCH_LOCAL_EXTRA").unwrap_or_default()), ALL_LOCAL_POLICY).await;
    let ours = gateway.v1();
    warm_up(&ours).await;
    if let Some(url) = &other {
        warm_up(url).await;
    }
    println!("{PROMPTS} prompts x {COMPLETION_TOKENS} completion tokens, streamed, greedy; SmolLM2-135M-Instruct Q4_1, 2 threads");
    println!("| server         |  c | completion tok/s | TTFT p50 (ms) | TTFT p95 (ms) | tokens |");
    println!("|----------------|----|------------------|---------------|---------------|--------|");
    // Both servers run each level back to back, the first of the two alternating by round, so
    // that a machine whose speed drifts (a shared VM) weighs on both alike.
    let mut results: Vec<(usize, Measured, Option<Measured>)> = Vec::new();
    let mut breakdown = Vec::new();
    for r in 0..rounds {
        for (position, &c) in levels.iter().enumerate() {
            // Each (round, level) gets its own prompts: no whole-prompt cache answers it.
            let earlier = r * levels.iter().filter(|&&l| l == c).count() + levels[..position].iter().filter(|&&l| l == c).count();
            let round = if repeat { 0 } else { c + 100 * earlier };
            let measure_theirs = async || match &other {
                Some(url) => Some(measure("llama-server", url, c, round, None).await.0),
                None => None,
            };
            let theirs_first = r % 2 == 1;
            let theirs_before = if theirs_first { measure_theirs().await } else { None };
            let (m, line) = measure("switchyard", &ours, c, round, Some(&gateway)).await;
            breakdown.extend(line);
            let theirs = if theirs_first { theirs_before } else { measure_theirs().await };
            results.push((c, m, theirs));
        }
    }
    // Where the engine's time went at each level. "Idle" is the engine thread outside decode
    // steps: admitting requests (host-cache saves), sampling, and waiting for the next request.
    for line in breakdown {
        println!("{line}");
    }
    // Prompt tokens prefilled vs reused, host-cache hits, prefill and decode time.
    println!("engine counters after the run: {}", gateway.engine_stats().await);
    drop(gateway);
    summarise(&levels, rounds, &results);
}

/// Per level, the median over rounds of each server's figures and of the ratio of the two, with
/// the ratio's range.
fn summarise(levels: &[usize], rounds: usize, results: &[(usize, Measured, Option<Measured>)]) {
    let mut done = Vec::new();
    println!("median of {rounds} round(s):");
    println!("| c | switchyard tok/s | TTFT p50 / p95 (ms) | llama-server tok/s | TTFT p50 / p95 (ms) | ratio (median, range) |");
    println!("|---|------------------|---------------------|--------------------|---------------------|-----------------------|");
    for &c in levels {
        if done.contains(&c) {
            continue;
        }
        done.push(c);
        let at: Vec<&(usize, Measured, Option<Measured>)> = results.iter().filter(|r| r.0 == c).collect();
        let col = |f: &dyn Fn(&Measured) -> f64, ours: bool| -> Option<f64> {
            let v: Vec<f64> = at.iter().filter_map(|r| if ours { Some(&r.1) } else { r.2.as_ref() }).map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let cell = |ours: bool| match (col(&|m| m.tps, ours), col(&|m| ms(m.p50), ours), col(&|m| ms(m.p95), ours)) {
            (Some(t), Some(a), Some(b)) => (format!("{t:.1}"), format!("{a:.0} / {b:.0}")),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let ratios: Vec<f64> = at.iter().filter_map(|r| r.2.map(|t| r.1.tps / t.tps)).collect();
        let ratio = if ratios.is_empty() {
            "-".to_owned()
        } else {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:.2}x ({lo:.2}-{hi:.2})", median(ratios))
        };
        let ((ot, ol), (tt, tl)) = (cell(true), cell(false));
        println!("| {c} | {ot} | {ol} | {tt} | {tl} | {ratio} |");
    }
}
