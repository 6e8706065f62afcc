use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::fair_share::Places;
use crate::load::Timings;

/// Live counters shared between the engine thread and its handles.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub(crate) loaded: AtomicBool,
    /// Set by `EngineHandle::shutdown`; the scheduler checks it every step.
    pub(crate) stop_requested: AtomicBool,
    pub(crate) queued: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) kv_cells_used: AtomicU64,
    pub(crate) kv_cells_cached: AtomicU64,
    pub(crate) prefix_hits_total: AtomicU64,
    pub(crate) prefix_tokens_reused_total: AtomicU64,
    pub(crate) host_cache_hits_total: AtomicU64,
    pub(crate) host_cache_bytes: AtomicU64,
    pub(crate) cancelled_total: AtomicU64,
    pub(crate) finished_total: AtomicU64,
    pub(crate) prompt_tokens_total: AtomicU64,
    pub(crate) completion_tokens_total: AtomicU64,
    pub(crate) prefill_us_total: AtomicU64,
    pub(crate) decode_us_total: AtomicU64,
    /// Prompt tokens of running sequences not yet prefilled.
    pub(crate) active_backlog_tokens: AtomicU64,
    /// Estimated prompt tokens of the requests waiting for a slot.
    pub(crate) queued_prompt_tokens: AtomicU64,
    /// Each tenant's running sequences and waiting requests (see `fair_share`).
    pub(crate) places: Mutex<Places>,
    pub(crate) displaced_total: AtomicU64,
    /// Step costs measured by the engine thread (one short lock per step and per prediction).
    pub(crate) timings: Mutex<Timings>,
}

/// A copy of [`EngineStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStatsSnapshot {
    /// The model is loaded and the engine is serving.
    pub loaded: bool,
    /// Requests waiting for a sequence slot.
    pub queued: u64,
    /// Sequences being prefilled or decoded.
    pub active: u64,
    /// KV cells held by active sequences.
    pub kv_cells_used: u64,
    /// KV cells kept by finished sequences for prefix reuse (freed on demand).
    pub kv_cells_cached: u64,
    /// Requests that started from a cached or shared prefix.
    pub prefix_hits_total: u64,
    /// Prompt tokens not prefilled thanks to prefix reuse.
    pub prefix_tokens_reused_total: u64,
    /// Requests whose prefix was restored from a state saved in host memory.
    pub host_cache_hits_total: u64,
    /// Host memory held by saved prompt states.
    pub host_cache_bytes: u64,
    /// Generations stopped because their receiver went away.
    pub cancelled_total: u64,
    /// Waiting requests refused (`Displaced`) to give their place in a full queue to a
    /// request of a tenant holding less of the engine.
    pub displaced_total: u64,
    /// Generations that ended normally (stop or length).
    pub finished_total: u64,
    /// Prompt tokens prefilled.
    pub prompt_tokens_total: u64,
    /// Completion tokens sampled.
    pub completion_tokens_total: u64,
    /// Wall time spent in decode calls that carried prompt tokens, microseconds.
    pub prefill_us_total: u64,
    /// Wall time spent in decode calls that carried only generated tokens, microseconds.
    pub decode_us_total: u64,
}

impl EngineStats {
    /// The measured step costs.
    pub(crate) fn timings(&self) -> std::sync::MutexGuard<'_, Timings> {
        self.timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A waiting request leaves the queue: taken by the engine, left by its client, or refused.
    pub(crate) fn leave_queue(&self, tenant: Option<&Arc<str>>, estimate: u64, state: &Arc<AtomicU8>) {
        self.queued.fetch_sub(1, Relaxed);
        self.queued_prompt_tokens.fetch_sub(estimate, Relaxed);
        self.places().leave(tenant, state);
    }

    /// What each tenant holds of the engine.
    pub(crate) fn places(&self) -> std::sync::MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> EngineStatsSnapshot {
        EngineStatsSnapshot {
            loaded: self.loaded.load(Relaxed),
            queued: self.queued.load(Relaxed),
            active: self.active.load(Relaxed),
            kv_cells_used: self.kv_cells_used.load(Relaxed),
            kv_cells_cached: self.kv_cells_cached.load(Relaxed),
            prefix_hits_total: self.prefix_hits_total.load(Relaxed),
            prefix_tokens_reused_total: self.prefix_tokens_reused_total.load(Relaxed),
            host_cache_hits_total: self.host_cache_hits_total.load(Relaxed),
            host_cache_bytes: self.host_cache_bytes.load(Relaxed),
            cancelled_total: self.cancelled_total.load(Relaxed),
            displaced_total: self.displaced_total.load(Relaxed),
            finished_total: self.finished_total.load(Relaxed),
            prompt_tokens_total: self.prompt_tokens_total.load(Relaxed),
            completion_tokens_total: self.completion_tokens_total.load(Relaxed),
            prefill_us_total: self.prefill_us_total.load(Relaxed),
            decode_us_total: self.decode_us_total.load(Relaxed),
        }
    }
}
