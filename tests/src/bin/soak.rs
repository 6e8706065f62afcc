//! Soak: the gateway under steady load for many minutes while the upstream misbehaves. Measures
//! the gateway's closed-loop maximum on the soak's own mix first, then sends 70 % of it, open loop
//! (85 % plain, 15 % streamed, `max_tokens` 32, to the fake provider with a local fallback), plus a trickle of
//! local-engine requests; every 20th upstream call fails (500, 1.5 s late, dropped before the
//! first event, cut mid-stream, in turn). Prints per minute: RSS, open fds, answers by outcome,
//! latency, and the engine's host prompt cache (`[local].prompt_cache_mib`: bounded, it fills as
//! fallbacks bring new prompts, so RSS rises by up to its size before it levels off); then the
//! verdict (RSS and fd trend, open fds once every connection has closed, unexpected failures).
//! Not a test.
//!
//! `soak [--minutes 10] [--local-rps 1] [--rate R] [--prompt-cache-mib M]` (`--rate`: remote
//! requests a second instead of 70 % of the measured maximum; `--prompt-cache-mib`: the engine's
//! host prompt cache, default the config default 256)
// A report printer: counts become floats for rates and percentiles, and `main` reads top to bottom.
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use switchyard_e2e::{local_section, FakeProvider, Gateway};

const POLICY: &str = "[[rule]]\nname = \"out\"\nroute = \"fake/echo\"\nfallback = [\"local\"]\n";

/// Outcome counts and latencies of one minute.
#[derive(Default)]
struct Minute {
    outcomes: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
}

#[derive(Default)]
struct Tally {
    minutes: Mutex<Vec<Minute>>,
}

impl Tally {
    fn add(&self, minute: usize, outcome: String, latency: Duration) {
        let mut minutes = self.minutes.lock().expect("lock");
        while minutes.len() <= minute {
            minutes.push(Minute::default());
        }
        *minutes[minute].outcomes.entry(outcome).or_default() += 1;
        minutes[minute].latencies_ms.push(latency.as_secs_f64() * 1e3);
    }
}

/// `transport, <request kind> (<innermost cause>)`: no complete HTTP answer, named by what went wrong.
fn transport(kind: &str, err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    format!("transport, {kind} ({cause})")
}

/// One request; its outcome: `ok`, `stream_error` (an error event in a stream: mapped),
/// `http_<status>_<code>`, or `transport, …` (no complete HTTP answer; see [`transport`]).
async fn one(client: &reqwest::Client, url: &str, body: serde_json::Value) -> String {
    let stream = body["stream"].as_bool() == Some(true);
    let kind = match (body["model"].as_str() == Some("auto"), stream) {
        (true, true) => "remote streamed",
        (true, false) => "remote",
        (false, true) => "local streamed",
        (false, false) => "local",
    };
    let response = match client.post(url).json(&body).send().await {
        Ok(response) => response,
        Err(err) => return transport(kind, &err),
    };
    let status = response.status().as_u16();
    if status != 200 {
        let code = response.json::<serde_json::Value>().await.ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        return format!("http_{status}_{}", code.unwrap_or_else(|| "none".into()));
    }
    if !stream {
        return match response.bytes().await {
            Ok(_) => "ok".into(),
            Err(err) => transport(kind, &err),
        };
    }
    let mut bytes = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(piece) = bytes.next().await {
        match piece {
            Ok(p) => text.extend_from_slice(&p),
            Err(err) => return transport(kind, &err),
        }
    }
    let text = String::from_utf8_lossy(&text);
    if !text.trim_end().ends_with("data: [DONE]") {
        "stream_unterminated".into()
    } else if text.contains("\"error\"") {
        "stream_error".into()
    } else {
        "ok".into()
    }
}

fn proc_figures(pid: u32) -> (u64, usize) {
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss_kb, fds)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|rest| rest.split('/').next()?.parse().ok()).expect("a URL with a port")
}

/// The process's connected TCP sockets by kind, from its fds' inodes and `/proc/net/tcp`: clients
/// (local port = the gateway's), upstream (remote port = the fake provider's), other.
fn sockets(pid: u32, gateway_port: u16, fake_port: u16) -> (u32, u32, u32) {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|link| link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let (mut clients, mut upstream, mut other) = (0, 0, 0);
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default()
        + &std::fs::read_to_string(format!("/proc/{pid}/net/tcp6")).unwrap_or_default();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Column 3 is the state; 0A is the listening socket.
        if cols.len() < 10 || cols[3] == "0A" || !inodes.contains(cols[9]) {
            continue;
        }
        let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
        if port(cols[1]) == gateway_port {
            clients += 1;
        } else if port(cols[2]) == fake_port {
            upstream += 1;
        } else {
            other += 1;
        }
    }
    (clients, upstream, other)
}

/// The engine's host prompt cache in MiB, from `/readyz` (0 when it cannot be read).
async fn host_cache_mib(gateway: &Gateway) -> f64 {
    gateway.engine_stats().await["host_cache_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)
}

fn remote_body(i: u64) -> serde_json::Value {
    if i % 100 < 15 {
        json!({"model": "auto", "stream": true, "max_tokens": 32, "messages": [{"role": "user", "content": format!("soak stream {i}")}]})
    } else {
        json!({"model": "auto", "max_tokens": 32, "messages": [{"role": "user", "content": format!("soak {i}")}]})
    }
}

/// Closed-loop maximum of the soak's own mix (streamed share, misbehaving upstream, fallbacks to
/// the local engine): `workers` clients back to back for `secs`, every finished request counted.
/// (Measured on plain answers from a healthy upstream instead, 70 % of it was more than this
/// 2-core box could serve once the fallbacks kept the engine busy: an overload, not a soak.)
async fn max_rps(client: &reqwest::Client, url: &str, workers: usize, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, url, done) = (client.clone(), url.to_owned(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut i = w as u64 * 1_000_000;
                while Instant::now() < until {
                    let _ = one(&client, &url, remote_body(i)).await;
                    done.fetch_add(1, Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    #[allow(clippy::cast_precision_loss)]
    let rps = done.load(Relaxed) as f64 / secs as f64;
    rps
}

#[tokio::main]
async fn main() {
    let (mut minutes, mut local_rps, mut fixed_rate, mut prompt_cache_mib) = (10_u64, 1_u64, None::<f64>, None::<u64>);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => minutes = args.next().and_then(|n| n.parse().ok()).expect("--minutes N"),
            "--local-rps" => local_rps = args.next().and_then(|n| n.parse().ok()).expect("--local-rps N"),
            "--rate" => fixed_rate = Some(args.next().and_then(|n| n.parse().ok()).expect("--rate R")),
            "--prompt-cache-mib" => {
                prompt_cache_mib = Some(args.next().and_then(|n| n.parse().ok()).expect("--prompt-cache-mib M"));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let fake = FakeProvider::start();
    let config = format!(
        "[server]\nregion = \"eu-west\"\nmax_in_flight_per_tenant = 100000\n\n{}\n{}max_retries = 2\nretry_base_ms = 5\n\n[policy]\nfile = \"{{policy}}\"\n",
        local_section(4, 4096) + &prompt_cache_mib.map(|m| format!("prompt_cache_mib = {m}\n")).unwrap_or_default(),
        fake.provider_section(None)
    );
    let gateway = Gateway::start_with_env(&config, POLICY, &[("SWITCHYARD_LOG", "warn,gateway::serve=info")]).await;
    let pid = gateway.process.pid();
    let fds_at_start = proc_figures(pid).1;
    // Idle connections are given up before the gateway closes them (`header_timeout_ms`, 10 s),
    // as the OpenAI Python SDK does (5 s): otherwise a request written just as the server closes
    // its idle connection meets a reset (the keep-alive race every HTTP/1.1 server has).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(5))
        .timeout(Duration::from_mins(2))
        .build()
        .expect("client");
    let url = format!("{}/chat/completions", gateway.v1());
    let fake_base = fake.base_v1.trim_end_matches("/v1").to_owned();
    client.post(format!("{fake_base}/control/chaos")).json(&json!({"every": 20, "forget": true})).send().await.expect("chaos");
    // Enough clients that the late answers (1.5 s) do not hold the loop back.
    let max = if fixed_rate.is_some() { 0.0 } else { max_rps(&client, &url, 256, 15).await };
    let rate = fixed_rate.unwrap_or((max * 0.7).max(1.0));
    println!("closed-loop maximum {max:.0} req/s; soaking at {rate:.0} req/s remote + {local_rps} req/s local for {minutes} min");
    let tally = Arc::new(Tally::default());
    let in_flight = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let total = Duration::from_secs(minutes * 60);
    let mut figures = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut sent_local) = (0_u64, 0_u64);
    let mut next_minute = 0;
    while started.elapsed() < total {
        tick.tick().await;
        let elapsed = started.elapsed();
        let minute = usize::try_from(elapsed.as_secs() / 60).unwrap_or(usize::MAX);
        if minute >= next_minute {
            figures.push((proc_figures(pid), host_cache_mib(&gateway).await));
            next_minute = minute + 1;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = (elapsed.as_secs_f64() * rate) as u64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due_local = (elapsed.as_secs_f64() * local_rps as f64) as u64;
        let mut jobs = Vec::new();
        while sent < due {
            jobs.push(remote_body(sent));
            sent += 1;
        }
        while sent_local < due_local {
            jobs.push(json!({"model": "local-small", "max_tokens": 8, "stream": sent_local % 2 == 0,
                             "messages": [{"role": "user", "content": "Say hi"}]}));
            sent_local += 1;
        }
        for body in jobs {
            if in_flight.load(Relaxed) >= 2048 {
                skipped.fetch_add(1, Relaxed);
                continue;
            }
            in_flight.fetch_add(1, Relaxed);
            let (client, url, tally, in_flight) = (client.clone(), url.clone(), Arc::clone(&tally), Arc::clone(&in_flight));
            tokio::spawn(async move {
                let t = Instant::now();
                let outcome = one(&client, &url, body).await;
                tally.add(minute, outcome, t.elapsed());
                in_flight.fetch_sub(1, Relaxed);
            });
        }
    }
    while in_flight.load(Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    figures.push((proc_figures(pid), host_cache_mib(&gateway).await));
    // Open fds rise and fall with connections in use; a leak shows once they are all gone: the
    // client's are closed by dropping it, the gateway's idle upstream connections expire after
    // 90 s (the provider pool's keep-alive). Sockets are told apart by port.
    drop(client);
    let (gateway_port, fake_port) = (port_of(&gateway.base), port_of(&fake.base_v1));
    let before = sockets(pid, gateway_port, fake_port);
    // The pool looks for expired connections once per keep-alive period, so one idle since just
    // after a check goes within 180 s.
    let drained = Instant::now();
    let mut after = before;
    while after.0 + after.1 > 0 && drained.elapsed() < Duration::from_secs(200) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        after = sockets(pid, gateway_port, fake_port);
    }
    let settle_s = drained.elapsed().as_secs();
    let fds_settled = proc_figures(pid).1;
    let minutes_seen = tally.minutes.lock().expect("lock");
    println!("| minute | RSS MiB | host prompt cache MiB | open fds | answers | ok | stream error events | other outcomes | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    let mut unexpected = 0;
    for (i, m) in minutes_seen.iter().enumerate() {
        let ((rss, fds), cache) = figures.get(i).copied().unwrap_or_default();
        let mut lat = m.latencies_ms.clone();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat.get(((lat.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(0.0);
        let answers: u64 = m.outcomes.values().sum();
        let other: Vec<String> = m
            .outcomes
            .iter()
            .filter(|(k, _)| *k != "ok" && *k != "stream_error")
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        // Mapped failures: OpenAI-style 502/504 from the upstream, 429 from an engine queue;
        // anything else (500, no answer, a stream without [DONE]) is unexpected.
        unexpected += m
            .outcomes
            .iter()
            .filter(|(k, _)| {
                k.starts_with("transport") || k.as_str() == "stream_unterminated" || k.starts_with("http_500") || k.ends_with("_none")
            })
            .map(|(_, v)| v)
            .sum::<u64>();
        println!(
            "| {} | {:.1} | {cache:.1} | {fds} | {answers} | {} | {} | {} | {:.1} | {:.1} |",
            i + 1,
            rss as f64 / 1024.0,
            m.outcomes.get("ok").copied().unwrap_or(0),
            m.outcomes.get("stream_error").copied().unwrap_or(0),
            if other.is_empty() { "–".into() } else { other.join(", ") },
            pct(0.5),
            pct(0.99)
        );
    }
    // Least-squares slope from minute 2 on (minute 1 includes start-up and the first fills).
    let steady: Vec<(f64, f64, f64)> = figures
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, ((rss, fds), cache))| (i as f64, *rss as f64 / 1024.0 - cache, *fds as f64))
        .collect();
    let slope = |value: fn(&(f64, f64, f64)) -> f64| {
        let n = steady.len() as f64;
        let (mx, my) = (steady.iter().map(|p| p.0).sum::<f64>() / n, steady.iter().map(value).sum::<f64>() / n);
        let (num, den) = steady.iter().fold((0.0, 0.0), |(num, den), p| (num + (p.0 - mx) * (value(p) - my), den + (p.0 - mx).powi(2)));
        if den == 0.0 { 0.0 } else { num / den }
    };
    println!(
        "Trend from minute 2 on (least squares): RSS less the host prompt cache {:+.2} MiB/minute; open fds {:+.1}/minute",
        slope(|p| p.1),
        slope(|p| p.2)
    );
    let (((first_rss, first_fds), first_cache), ((last_rss, last_fds), last_cache)) =
        (figures.get(1).copied().unwrap_or_default(), figures.last().copied().unwrap_or_default());
    println!();
    println!(
        "RSS minute 2 → end: {:.1} → {:.1} MiB (host prompt cache {first_cache:.1} → {last_cache:.1} MiB); open fds {first_fds} → {last_fds}; open fds at start {fds_at_start}, {settle_s} s after the last answer {fds_settled}; gateway sockets (client, upstream, other) at the last answer {before:?}, then {after:?}; requests not sent because 2048 were in flight: {}; unexpected failures: {unexpected}",
        first_rss as f64 / 1024.0,
        last_rss as f64 / 1024.0,
        skipped.load(Relaxed)
    );
}
