//! Per-minute rollups of the accounting records for the last 24 hours, per tenant and target:
//! what `/admin/stats` (and the dashboard behind it) shows for the last hour and day. Latencies go
//! into fixed log-spaced buckets, so percentiles cost no per-request memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::accounting::{UsageRecord, CLIENT_CLOSED_REQUEST};

/// Minutes kept: one day.
const MINUTES: usize = 24 * 60;
/// Upper bounds of the latency buckets, milliseconds (the last one is open-ended).
const BUCKETS_MS: [u64; 16] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 20_000, 30_000, 60_000, 120_000, u64::MAX];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cell {
    requests: u64,
    errors: u64,
    local: u64,
    cost_usd: f64,
    savings_usd: f64,
    latency: [u64; BUCKETS_MS.len()],
    ttft: [u64; BUCKETS_MS.len()],
}

impl Cell {
    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.local += other.local;
        self.cost_usd += other.cost_usd;
        self.savings_usd += other.savings_usd;
        for i in 0..BUCKETS_MS.len() {
            self.latency[i] += other.latency[i];
            self.ttft[i] += other.ttft[i];
        }
    }
}

fn bucket(ms: u64) -> usize {
    BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(BUCKETS_MS.len() - 1)
}

/// The upper bound (ms) of the bucket holding quantile `q`, or `None` without samples.
fn quantile(hist: &[u64; BUCKETS_MS.len()], q: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(BUCKETS_MS[i].min(120_000));
        }
    }
    None
}

#[derive(Debug, Default)]
struct Minute {
    /// Unix minute.
    at: u64,
    cells: BTreeMap<(String, String), Cell>,
}

/// The rollups.
#[derive(Debug, Default)]
pub struct Rollups {
    minutes: Mutex<VecDeque<Minute>>,
}

impl Rollups {
    /// Adds one finished request.
    pub fn add(&self, r: &UsageRecord, savings_usd: f64) {
        let minute = r.ts / 60_000;
        let Ok(mut minutes) = self.minutes.lock() else { return };
        if minutes.back().is_none_or(|m| m.at < minute) {
            minutes.push_back(Minute { at: minute, cells: BTreeMap::new() });
            while minutes.front().is_some_and(|m| m.at + (MINUTES as u64) <= minute) {
                minutes.pop_front();
            }
        }
        // Records finish roughly in order; one a little late joins the newest minute.
        let Some(current) = minutes.back_mut() else { return };
        let target = if r.target.is_empty() { "none".to_owned() } else { r.target.clone() };
        let cell = current.cells.entry((r.tenant.clone(), target)).or_default();
        cell.requests += 1;
        // A client that left before any answer is neither an error nor a latency.
        let client_left = r.status == CLIENT_CLOSED_REQUEST;
        cell.errors += u64::from(r.status >= 400 && !client_left);
        cell.local += u64::from(r.tier == "local");
        cell.cost_usd += r.cost_usd;
        cell.savings_usd += savings_usd.max(0.0);
        if !client_left {
            cell.latency[bucket(r.latency_ms)] += 1;
        }
        if let Some(ttft) = r.ttft_ms {
            cell.ttft[bucket(ttft)] += 1;
        }
    }

    /// Totals over the last `minutes` minutes up to `now_minute`: overall, per tenant, per target.
    pub fn window(&self, now_minute: u64, minutes: u64) -> Value {
        let mut by_tenant: BTreeMap<String, Cell> = BTreeMap::new();
        let mut by_target: BTreeMap<String, Cell> = BTreeMap::new();
        let mut all = Cell::default();
        if let Ok(kept) = self.minutes.lock() {
            for m in kept.iter().filter(|m| m.at + minutes > now_minute) {
                for ((tenant, target), cell) in &m.cells {
                    by_tenant.entry(tenant.clone()).or_default().add(cell);
                    by_target.entry(target.clone()).or_default().add(cell);
                    all.add(cell);
                }
            }
        }
        let describe = |c: &Cell| {
            #[allow(clippy::cast_precision_loss)]
            let share = |n: u64| if c.requests == 0 { 0.0 } else { n as f64 / c.requests as f64 };
            json!({
                "requests": c.requests,
                "errors": c.errors,
                "error_rate": share(c.errors),
                "local_share": share(c.local),
                "cost_usd": c.cost_usd,
                "savings_usd": c.savings_usd,
                "latency_p50_ms": quantile(&c.latency, 0.5),
                "latency_p95_ms": quantile(&c.latency, 0.95),
                "ttft_p50_ms": quantile(&c.ttft, 0.5),
                "ttft_p95_ms": quantile(&c.ttft, 0.95),
            })
        };
        json!({
            "total": describe(&all),
            "tenants": by_tenant.iter().map(|(k, c)| (k.clone(), describe(c))).collect::<serde_json::Map<_, _>>(),
            "targets": by_target.iter().map(|(k, c)| (k.clone(), describe(c))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// One minute's figures as JSON (what a replica publishes for the others), if it has any.
    pub fn minute_json(&self, minute: u64) -> Option<String> {
        let kept = self.minutes.lock().ok()?;
        cells_json(kept.iter().rev().find(|m| m.at == minute)?)
    }

    /// Adds another replica's figures for `minute` (as [`Rollups::minute_json`] wrote them).
    pub fn absorb_json(&self, minute: u64, json: &str) -> bool {
        let Ok(cells) = serde_json::from_str::<Vec<(String, String, Cell)>>(json) else { return false };
        let Ok(mut kept) = self.minutes.lock() else { return false };
        let at = kept.partition_point(|m| m.at < minute);
        if kept.get(at).is_none_or(|m| m.at != minute) {
            kept.insert(at, Minute { at: minute, cells: BTreeMap::new() });
        }
        let target = &mut kept[at];
        for (tenant, name, cell) in cells {
            target.cells.entry((tenant, name)).or_default().add(&cell);
        }
        true
    }

    /// Adds all of `other`'s figures.
    pub fn absorb(&self, other: &Self) {
        let minutes: Vec<(u64, String)> = match other.minutes.lock() {
            Ok(kept) => kept.iter().filter_map(|m| Some((m.at, cells_json(m)?))).collect(),
            Err(_) => return,
        };
        for (at, json) in minutes {
            self.absorb_json(at, &json);
        }
    }

    /// Requests per minute over the last `minutes` minutes (oldest first), for the chart.
    pub fn per_minute(&self, now_minute: u64, minutes: u64) -> Vec<u64> {
        let mut out = vec![0; usize::try_from(minutes).unwrap_or(0)];
        if let Ok(kept) = self.minutes.lock() {
            for m in kept.iter().filter(|m| m.at + minutes > now_minute && m.at <= now_minute) {
                let slot = usize::try_from(minutes - 1 - (now_minute - m.at)).unwrap_or(0);
                out[slot] = m.cells.values().map(|c| c.requests).sum();
            }
        }
        out
    }
}

fn cells_json(m: &Minute) -> Option<String> {
    let cells: Vec<(&String, &String, &Cell)> = m.cells.iter().map(|((tenant, target), c)| (tenant, target, c)).collect();
    serde_json::to_string(&cells).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts_ms: u64, target: &str, status: u16, latency_ms: u64, cost: f64) -> UsageRecord {
        UsageRecord {
            ts: ts_ms,
            request_id: "r".into(),
            tenant: "acme".into(),
            rule: "default".into(),
            target: target.into(),
            tier: if target.starts_with("local/") { "local" } else { "remote" },
            status,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_usd: cost,
            cost_estimated: false,
            latency_ms,
            latency_us: latency_ms * 1000,
            ttft_ms: None,
            cache: "miss",
            redacted: false,
            pii_kinds: vec![],
        }
    }

    #[test]
    fn windows_sum_the_right_minutes() {
        let r = Rollups::default();
        let now = 1_000_000_u64;
        r.add(&record((now - 120) * 60_000, "openai/gpt-4o", 200, 800, 0.01), 0.0);
        r.add(&record(now * 60_000, "local/small", 200, 40, 0.0), 0.02);
        r.add(&record(now * 60_000 + 1, "local/small", 502, 3, 0.0), 0.0);
        let hour = r.window(now, 60);
        assert_eq!(hour["total"]["requests"], 2);
        assert_eq!(hour["targets"]["local/small"]["errors"], 1);
        assert_eq!(hour["total"]["local_share"], 1.0);
        assert_eq!(hour["tenants"]["acme"]["savings_usd"], 0.02);
        // A client that left before any answer counts as a request, not as an error or a latency.
        let latency_before = (hour["targets"]["local/small"]["latency_p50_ms"].clone(), hour["targets"]["local/small"]["latency_p95_ms"].clone());
        r.add(&record(now * 60_000 + 2, "local/small", CLIENT_CLOSED_REQUEST, 50_000, 0.0), 0.0);
        let hour = r.window(now, 60);
        assert_eq!((hour["targets"]["local/small"]["latency_p50_ms"].clone(), hour["targets"]["local/small"]["latency_p95_ms"].clone()), latency_before);
        assert_eq!((hour["total"]["requests"].as_u64(), hour["targets"]["local/small"]["errors"].as_u64()), (Some(3), Some(1)));
        let day = r.window(now, 24 * 60);
        assert_eq!(day["total"]["requests"], 4);
        assert_eq!(day["targets"]["openai/gpt-4o"]["latency_p50_ms"], 1000);
        assert_eq!(r.per_minute(now, 3), vec![0, 0, 3]);
    }

    #[test]
    fn replicas_figures_merge_minute_by_minute() {
        let now = 1_000_000_u64;
        let a = Rollups::default();
        a.add(&record(now * 60_000, "local/small", 200, 40, 0.0), 0.0);
        let b = Rollups::default();
        b.add(&record((now - 1) * 60_000, "openai/gpt-4o", 200, 800, 0.5), 0.0);
        b.add(&record(now * 60_000, "local/small", 500, 40, 0.0), 0.0);
        let merged = Rollups::default();
        merged.absorb(&a);
        assert!(merged.absorb_json(now, &b.minute_json(now).unwrap()));
        assert!(merged.absorb_json(now - 1, &b.minute_json(now - 1).unwrap()));
        let hour = merged.window(now, 60);
        assert_eq!(hour["total"]["requests"], 3);
        assert_eq!(hour["targets"]["local/small"]["requests"], 2);
        assert_eq!(hour["targets"]["local/small"]["errors"], 1);
        assert_eq!(hour["targets"]["openai/gpt-4o"]["cost_usd"], 0.5);
        assert_eq!(merged.per_minute(now, 2), vec![1, 2]);
        assert!(!merged.absorb_json(now, "not json"));
    }

    #[test]
    fn minutes_older_than_a_day_are_dropped() {
        let r = Rollups::default();
        r.add(&record(0, "local/small", 200, 1, 0.0), 0.0);
        r.add(&record((MINUTES as u64 + 5) * 60_000, "local/small", 200, 1, 0.0), 0.0);
        assert_eq!(r.minutes.lock().unwrap().len(), 1);
    }
}
