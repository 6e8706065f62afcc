//! Added latency of the gateway on the remote path: a fake upstream that answers at once, called
//! directly and through the gateway (a pure proxy: no `[local]`, one trusted provider), with 1
//! and 16 requests in flight. Non-streamed: time to the whole answer; streamed: time to the first
//! byte of the body (the first SSE event). Prints p50/p99 per mode and the difference.
//!
//! `bench-remote [--requests N]` (default 2000 per cell). Not a test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use switchyard_e2e::{FakeProvider, Gateway};

const POLICY: &str = "[[rule]]\nname = \"default\"\nroute = \"fake/echo\"\n";

fn percentile(sorted: &[Duration], per_mille: usize) -> f64 {
    sorted[(sorted.len() - 1) * per_mille / 1000].as_secs_f64() * 1e6
}

/// Time of one request: the whole answer, or (streamed) its first body bytes.
async fn one(client: &reqwest::Client, url: &str, stream: bool) -> Duration {
    let body = json!({"model": "echo", "stream": stream, "messages": [{"role": "user", "content": "ping pong ping pong"}]});
    let started = Instant::now();
    let response = client.post(url).json(&body).send().await.expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    if stream {
        let mut bytes = response.bytes_stream();
        let first = bytes.next().await.expect("a first event").expect("readable");
        assert!(!first.is_empty());
        let elapsed = started.elapsed();
        while bytes.next().await.is_some() {}
        elapsed
    } else {
        let _ = response.bytes().await.expect("body");
        started.elapsed()
    }
}

async fn measure(client: &reqwest::Client, url: &str, stream: bool, concurrency: usize, requests: usize) -> Vec<Duration> {
    // Warm the connection pools first.
    for _ in 0..concurrency * 4 {
        one(client, url, stream).await;
    }
    let url = Arc::new(url.to_owned());
    let per_worker = requests / concurrency;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let url = Arc::clone(&url);
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_worker);
                for _ in 0..per_worker {
                    times.push(one(&client, &url, stream).await);
                }
                times
            })
        })
        .collect();
    let mut all = Vec::with_capacity(requests);
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all.sort();
    all
}

#[tokio::main]
async fn main() {
    let mut requests = 2000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--requests" {
            requests = args.next().and_then(|n| n.parse().ok()).expect("--requests N");
        }
    }
    let fake = FakeProvider::start();
    let config = format!(
        "[server]\nregion = \"eu-west\"\n\n{}trusted = true\nmax_retries = 0\n\n[policy]\nfile = \"{{policy}}\"\n",
        fake.provider_section(None)
    );
    let gateway = Gateway::start(&config, POLICY).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    let direct = format!("{}/chat/completions", fake.base_v1);
    let through = format!("{}/chat/completions", gateway.v1());
    println!("| mode | in flight | direct p50 µs | direct p99 µs | gateway p50 µs | gateway p99 µs | added p50 µs | added p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (mode, stream) in [("non-stream (whole answer)", false), ("stream (first byte)", true)] {
        for concurrency in [1, 16] {
            let d = measure(&client, &direct, stream, concurrency, requests).await;
            let g = measure(&client, &through, stream, concurrency, requests).await;
            let (d50, d99, g50, g99) = (percentile(&d, 500), percentile(&d, 990), percentile(&g, 500), percentile(&g, 990));
            println!(
                "| {mode} | {concurrency} | {d50:.0} | {d99:.0} | {g50:.0} | {g99:.0} | {:.0} | {:.0} |",
                g50 - d50,
                g99 - d99
            );
        }
    }
}
