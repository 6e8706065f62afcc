//! Load-aware spillover: before a request is routed, the local engine's live state predicts
//! its time to first token and decode rate; when a latency target (`[local] slo_ttft_ms`,
//! `slo_decode_tok_s`) would be missed, the router sends requests that may leave to their rule's
//! `spill` target. A hysteresis band keeps the decision from flapping around the target.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use local_engine::{EngineConfig, EngineHandle, Load, Prediction};
use router::{LocalOverload, SpillReason};

/// Once spilling, keep spilling until the prediction is back below this share of the TTFT
/// target (and above 1 / this share of the decode floor).
const HYSTERESIS: f64 = 0.8;

/// The targets, from `[local]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Targets {
    /// Predicted TTFT and per-stream decode rate.
    Latency {
        /// ms.
        ttft_ms: Option<f64>,
        /// tokens/s per stream.
        decode_tok_s: Option<f64>,
    },
    /// The simple rule: more than this many requests waiting.
    QueueDepth(u64),
}

impl Targets {
    /// From `[local]`; `None` when no target is set.
    pub fn from_config(config: &EngineConfig) -> Option<Self> {
        if let Some(depth) = config.spill_queue_depth {
            return Some(Self::QueueDepth(depth));
        }
        let ttft_ms = config.slo_ttft_ms.map(f64::from);
        let decode_tok_s = config.slo_decode_tok_s;
        (ttft_ms.is_some() || decode_tok_s.is_some()).then_some(Self::Latency { ttft_ms, decode_tok_s })
    }
}

/// Decides, per request, whether the local engine is overloaded for it. The engine shares its
/// slots fairly among tenants, so each request's wait is predicted from the requests ahead of
/// it in that order (a tenant behind another's backlog is not), and each tenant has its own
/// hysteresis.
pub struct Spillover {
    engine: EngineHandle,
    targets: Targets,
    /// Tenants whose requests count the engine as overloaded now.
    spilling: Mutex<HashSet<String>>,
    /// The engine-wide view (`/admin/stats`), judged on its whole queue.
    overloaded: AtomicBool,
    /// Requests routed to the local engine and not finished, submitted to it or not yet: a
    /// burst's requests are all decided before the first reaches the engine's queue, so the
    /// engine's own counters alone would let the whole burst in.
    local_in_flight: Arc<AtomicU64>,
}

/// Counts a request routed to the local engine until it is dropped (when the request ends).
#[derive(Debug)]
pub struct LocalTicket(Arc<AtomicU64>);

impl Drop for LocalTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl std::fmt::Debug for Spillover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spillover").field("targets", &self.targets).field("spilling", &self.spilling).finish_non_exhaustive()
    }
}

impl Spillover {
    /// Watches `engine` against `targets`.
    pub fn new(engine: EngineHandle, targets: Targets) -> Self {
        Self { engine, targets, spilling: Mutex::default(), overloaded: AtomicBool::new(false), local_in_flight: Arc::new(AtomicU64::new(0)) }
    }

    /// Counts a request the router sent to the local engine, until the ticket is dropped.
    pub fn track_local(&self) -> LocalTicket {
        self.local_in_flight.fetch_add(1, Relaxed);
        LocalTicket(Arc::clone(&self.local_in_flight))
    }

    /// True while the engine as a whole counts as overloaded (a request behind its whole queue
    /// would spill), judged on its load now: a state left by the last request would go stale
    /// once the load is gone.
    pub fn spilling(&self) -> bool {
        let was = self.overloaded.load(Relaxed);
        let (_, now) = judge(&self.load(), 0, self.targets, was);
        self.overloaded.store(now, Relaxed);
        now
    }

    /// The overload a request of `tenant` with `prompt_tokens` would meet on the local engine
    /// now, if any.
    pub fn check(&self, prompt_tokens: u32, tenant: &local_engine::Tenant) -> Option<LocalOverload> {
        let mut load = self.load();
        // Only the waiting requests the engine would serve before this one.
        load.queued = load.queued.min(self.engine.waiting_ahead_of(Some(tenant)));
        let tenant: &str = &tenant.name;
        let mut spilling = self.spilling.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let was = spilling.contains(tenant);
        let (overload, now) = judge(&load, prompt_tokens, self.targets, was);
        if now != was {
            if now {
                spilling.insert(tenant.to_owned());
            } else {
                spilling.remove(tenant);
            }
            tracing::info!(tenant, spilling = now, queued_ahead = load.queued, active = load.active, "local engine spillover state changed");
        }
        overload
    }

    /// The engine's load, with the requests routed to it that have not reached it yet.
    fn load(&self) -> Load {
        let mut load = self.engine.load();
        // Routed here but not in the engine's queue or slots yet: ahead of a new request all the same.
        let routed = self.local_in_flight.load(Relaxed);
        load.pending = routed.saturating_sub(load.active + load.queued);
        load
    }
}

/// The decision on one engine state: the overload (if the request should spill) and whether
/// the engine counts as overloaded from now on. Pure, for testing on synthetic states.
pub fn judge(load: &Load, prompt_tokens: u32, targets: Targets, spilling: bool) -> (Option<LocalOverload>, bool) {
    match targets {
        Targets::QueueDepth(depth) => {
            let waiting = load.queued + load.pending;
            let over = waiting > depth;
            let overload = over.then(|| LocalOverload {
                reason: SpillReason::Queue,
                detail: format!("{waiting} requests waiting > spill_queue_depth {depth}"),
            });
            (overload, over)
        }
        Targets::Latency { ttft_ms, decode_tok_s } => {
            let p: Prediction = load.predict(prompt_tokens);
            if !p.measured {
                return (None, false);
            }
            // Entering needs the target broken; leaving needs a margin inside it.
            let ttft_limit = ttft_ms.map(|t| if spilling { t * HYSTERESIS } else { t });
            let rate_floor = decode_tok_s.map(|r| if spilling { r / HYSTERESIS } else { r });
            if let (Some(limit), Some(slo)) = (ttft_limit, ttft_ms) {
                if p.ttft_ms > limit {
                    let detail = format!("predicted TTFT {:.0} ms > SLO {slo:.0} ms", p.ttft_ms);
                    return (Some(LocalOverload { reason: SpillReason::Ttft, detail }), true);
                }
            }
            if let (Some(floor), Some(slo)) = (rate_floor, decode_tok_s) {
                if p.decode_tok_s < floor {
                    let detail = format!("predicted decode {:.1} tok/s < SLO {slo:.1} tok/s", p.decode_tok_s);
                    return (Some(LocalOverload { reason: SpillReason::DecodeRate, detail }), true);
                }
            }
            (None, false)
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use local_engine::Timings;

    use super::*;

    /// A step of b sequences takes 15 ms + 3 ms·b, a prompt token 1 ms; 30-token prompts and
    /// 64-token answers.
    fn load(active: u64, queued: u64, backlog: u64) -> Load {
        let mut t = Timings::default();
        for b in 1..=8 {
            t.record_step(b, 0, 15_000.0 + 3_000.0 * b as f64);
        }
        t.record_step(0, 100, 100_000.0);
        t.record_finished(30, 64);
        Load { parallel: 8, queued, pending: 0, active, backlog_tokens: backlog, prefill_chunk: 96, timings: t }
    }

    const TTFT_800: Targets = Targets::Latency { ttft_ms: Some(800.0), decode_tok_s: None };

    #[test]
    fn idle_and_lightly_loaded_engines_do_not_spill() {
        assert_eq!(judge(&load(0, 0, 0), 30, TTFT_800, false), (None, false));
        assert_eq!(judge(&load(4, 0, 30), 30, TTFT_800, false), (None, false));
    }

    #[test]
    fn a_queue_behind_full_slots_breaks_the_ttft_target() {
        let (overload, spilling) = judge(&load(8, 4, 120), 30, TTFT_800, false);
        let overload = overload.expect("spills");
        assert_eq!(overload.reason, SpillReason::Ttft);
        assert!(overload.detail.contains("SLO 800 ms"), "{}", overload.detail);
        assert!(spilling);
    }

    #[test]
    fn a_long_prompt_alone_can_break_the_target() {
        let (overload, _) = judge(&load(0, 0, 0), 2_000, TTFT_800, false);
        assert_eq!(overload.map(|o| o.reason), Some(SpillReason::Ttft));
    }

    #[test]
    fn hysteresis_keeps_spilling_until_well_inside_the_target() {
        // Full slots, nothing queued: ≈ 384 ms predicted. Below 800 but: find a state between
        // 640 (0.8 × 800) and 800 ms by backlog.
        let between = load(4, 0, 500);
        let p = between.predict(30).ttft_ms;
        assert!(p > 640.0 && p < 800.0, "pick a state in the band: {p}");
        assert!(!judge(&between, 30, TTFT_800, false).1, "entering needs the target broken");
        assert!(judge(&between, 30, TTFT_800, true).1, "leaving needs a margin");
        assert_eq!(judge(&load(1, 0, 0), 30, TTFT_800, true), (None, false));
    }

    #[test]
    fn decode_floor_spills_when_the_batch_grows_too_big() {
        let floor = Targets::Latency { ttft_ms: None, decode_tok_s: Some(30.0) };
        // One step of 8 sequences: 39 ms → under 26 tok/s.
        let (overload, _) = judge(&load(7, 0, 0), 30, floor, false);
        assert_eq!(overload.map(|o| o.reason), Some(SpillReason::DecodeRate));
        assert_eq!(judge(&load(1, 0, 0), 30, floor, false).0, None);
    }

    #[test]
    fn nothing_measured_never_spills() {
        let fresh = Load { parallel: 8, queued: 100, active: 8, ..Load::default() };
        assert_eq!(judge(&fresh, 30, TTFT_800, true), (None, false));
    }

    #[test]
    fn queue_depth_rule_counts_waiting_requests_only() {
        let rule = Targets::QueueDepth(2);
        assert_eq!(judge(&load(8, 2, 0), 30, rule, false).0, None);
        let (overload, _) = judge(&load(8, 3, 0), 30, rule, false);
        assert_eq!(overload.map(|o| o.reason), Some(SpillReason::Queue));
    }

    #[test]
    fn targets_come_from_the_local_section() {
        let mut config = EngineConfig::with_model("m.gguf");
        assert_eq!(Targets::from_config(&config), None);
        config.slo_ttft_ms = Some(800);
        assert_eq!(Targets::from_config(&config), Some(TTFT_800));
        config.spill_queue_depth = Some(4);
        assert_eq!(Targets::from_config(&config), Some(Targets::QueueDepth(4)));
    }
}
