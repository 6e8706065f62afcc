//! What tenant limits cost per request: the same remote request (a fake upstream that answers at
//! once) through three gateways — open mode (no key, no limits), a keyed tenant with rpm, tpm and
//! a budget in the in-process store, and the same tenant with `[redis]` (a private
//! `redis-server` on a free port). The difference to open mode is auth + admission (rate limits
//! and the budget reservation) + settlement. Also counts Redis round trips per request from
//! Redis's own command statistics. Prints a table.
//!
//! `bench-admission [--requests N]` (default 3000 per cell). Not a test.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_e2e::{FakeProvider, Gateway};

const POLICY: &str = "[[rule]]\nname = \"default\"\nroute = \"fake/echo\"\n";
const KEY: &str = "sy-bench-admission-key";
/// sha256("sy-bench-admission-key").
fn key_hash() -> String {
    use std::fmt::Write as _;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(KEY.as_bytes());
    digest.iter().fold(String::from("sha256:"), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn percentile(sorted: &[Duration], per_mille: usize) -> f64 {
    sorted[(sorted.len() - 1) * per_mille / 1000].as_secs_f64() * 1e6
}

async fn one(client: &reqwest::Client, url: &str, keyed: bool) -> Duration {
    let body = json!({"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "ping pong ping pong"}]});
    let started = Instant::now();
    let mut request = client.post(url).json(&body);
    if keyed {
        request = request.bearer_auth(KEY);
    }
    let response = request.send().await.expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    let _ = response.bytes().await.expect("body");
    started.elapsed()
}

async fn measure(client: &reqwest::Client, url: &str, keyed: bool, concurrency: usize, requests: usize) -> Vec<Duration> {
    for _ in 0..concurrency * 4 {
        one(client, url, keyed).await;
    }
    let url = Arc::new(url.to_owned());
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), Arc::clone(&url));
            tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..requests / concurrency {
                    times.push(one(&client, &url, keyed).await);
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all.sort();
    all
}

/// A private `redis-server`, killed on drop.
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("Ready to accept connections")));
        std::thread::spawn(move || lines.for_each(drop));
        Self(child, port)
    }

    /// Script calls so far (`EVALSHA` + `EVAL`), from `INFO commandstats`.
    fn script_calls(&self) -> u64 {
        let out = Command::new("redis-cli").args(["-p", &self.1.to_string(), "INFO", "commandstats"]).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let mut requests = 3000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--requests" {
            requests = args.next().and_then(|n| n.parse().ok()).expect("--requests N");
        }
    }
    let fake = FakeProvider::start();
    let redis = Redis::start();
    let base = format!("[server]\nregion = \"eu-west\"\n\n{}trusted = true\nmax_retries = 0\n", fake.provider_section(None));
    let tenant = format!(
        "[[tenants]]\nname = \"bench\"\nkeys = [\"{}\"]\nrate_limit = {{ rpm = 100000000, tpm = 1000000000 }}\nbudget = {{ daily_usd = 1000000.0, monthly_usd = 10000000.0 }}\n",
        key_hash()
    );
    let policy = "\n[policy]\nfile = \"{policy}\"\n";
    let open = Gateway::start(&format!("{base}{policy}"), POLICY).await;
    let memory = Gateway::start(&format!("{base}\n{tenant}{policy}"), POLICY).await;
    let shared = Gateway::start(&format!("{base}\n{tenant}\n[redis]\nurl = \"redis://127.0.0.1:{}\"\n{policy}", redis.1), POLICY).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    println!("| store | in flight | p50 µs | p99 µs | added to open mode p50 µs | p99 µs | Redis round trips / request |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for concurrency in [1, 16] {
        let url = |g: &Gateway| format!("{}/chat/completions", g.v1());
        let o = measure(&client, &url(&open), false, concurrency, requests).await;
        let (o50, o99) = (percentile(&o, 500), percentile(&o, 990));
        println!("| none (open mode) | {concurrency} | {o50:.0} | {o99:.0} | – | – | 0 |");
        let m = measure(&client, &url(&memory), true, concurrency, requests).await;
        let (m50, m99) = (percentile(&m, 500), percentile(&m, 990));
        println!("| in-process | {concurrency} | {m50:.0} | {m99:.0} | {:.0} | {:.0} | 0 |", m50 - o50, m99 - o99);
        let before = redis.script_calls();
        let r = measure(&client, &url(&shared), true, concurrency, requests).await;
        // Settlements run after the answer: let them land before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        #[allow(clippy::cast_precision_loss)]
        let trips = (redis.script_calls() - before) as f64 / (requests / concurrency * concurrency + concurrency * 4) as f64;
        let (r50, r99) = (percentile(&r, 500), percentile(&r, 990));
        println!("| Redis | {concurrency} | {r50:.0} | {r99:.0} | {:.0} | {:.0} | {trips:.2} |", r50 - o50, r99 - o99);
    }
}
