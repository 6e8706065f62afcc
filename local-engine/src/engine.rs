//! The engine's public handle and its thread: the thread loads the model and hands it to the
//! [`Scheduler`], which decodes every active sequence together.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::AtomicU8;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::watch;
use tracing::{error, info, info_span};

use crate::fair_share::{ForTenant, Place, TenantShare};
use crate::scheduler::Scheduler;
use crate::{EngineConfig, EngineError, EngineStats, Load, EngineStatsSnapshot, GenerationEvent, GenerationRequest, GenerationStream, Tenant};

/// A cheap, cloneable handle to the engine thread. When the last handle goes, the thread is
/// waited for (it ends within a step once no handle can send and its streams are gone), so a
/// process never exits with llama.cpp mid-decode.
#[derive(Clone)]
pub struct EngineHandle {
    // Declared before `thread`: the last handle's sender is dropped (closing the channel) before
    // the thread is joined.
    jobs: Sender<Message>,
    thread: Arc<EngineThread>,
    stats: Arc<EngineStats>,
    config: Arc<EngineConfig>,
    startup: watch::Receiver<Startup>,
}

/// How the engine's start went: the model loads in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The model is loading.
    Loading,
    /// The model is loaded and the engine serves.
    Serving,
    /// The engine could not start (the model could not be loaded, has no usable chat template,
    /// or its context could not be made): every request is refused with this reason.
    Failed(String),
}

/// The engine thread, joined when the last handle drops it (unless `shutdown` already did).
struct EngineThread(Mutex<Option<JoinHandle<()>>>);

impl Drop for EngineThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.get_mut().ok().and_then(Option::take) {
            let _ = thread.join();
        }
    }
}

/// What the engine thread receives.
pub(crate) enum Message {
    /// A generation to run.
    Generate(Box<Job>),
    /// Finish: fail what is running or waiting, then exit the thread.
    Stop,
}

pub(crate) struct Job {
    pub(crate) request: GenerationRequest,
    pub(crate) events: UnboundedSender<GenerationEvent>,
    /// Prompt tokens estimated at submission (counted in the queue's backlog until admitted).
    pub(crate) estimate: u64,
    /// Whether the job is still waiting, was taken by the engine, or its client left first.
    pub(crate) place: Arc<AtomicU8>,
}

pub(crate) const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const LEFT: u8 = 2;
/// Refused to give its place to a request of a tenant holding less (see `fair_share`).
pub(crate) const DISPLACED: u8 = 3;

impl Job {
    /// The engine takes the job out of the queue, unless its client left it first: true when
    /// taken (the queue's counters are then the engine's to update).
    pub(crate) fn take(&self) -> bool {
        self.place.compare_exchange(WAITING, TAKEN, Relaxed, Relaxed).is_ok()
    }

    /// Its client left while it waited (the queue's counters were updated then).
    pub(crate) fn left(&self) -> bool {
        self.place.load(Relaxed) == LEFT
    }

    /// Still waiting: not taken, its client has not left, it did not give its place to another
    /// tenant's request (and was not answered then).
    pub(crate) fn waiting(&self) -> bool {
        self.place.load(Relaxed) == WAITING
    }

    /// Answers a job that will not run with `err` and takes it off the queue's counters, unless
    /// its client left first.
    pub(crate) fn refuse(self, stats: &EngineStats, err: &EngineError) {
        if self.take() {
            self.refuse_taken(stats, err);
        }
    }

    /// [`Job::refuse`] for a job already taken.
    pub(crate) fn refuse_taken(self, stats: &EngineStats, err: &EngineError) {
        stats.leave_queue(self.tenant(), self.estimate, &self.place);
        let _ = self.events.send(GenerationEvent::Failed(err.clone()));
    }
}

impl ForTenant for Job {
    fn tenant(&self) -> Option<&Arc<str>> {
        self.request.tenant.as_ref().map(|t| &t.name)
    }

    fn weight(&self) -> u32 {
        self.request.tenant.as_ref().map_or(1, |t| t.weight)
    }
}

/// A request's place in the queue, held by its [`GenerationStream`]: leaving frees it at once.
#[derive(Debug)]
pub(crate) struct QueuePlace {
    place: Arc<AtomicU8>,
    stats: Arc<EngineStats>,
    estimate: u64,
    tenant: Option<Arc<str>>,
}

impl QueuePlace {
    /// Leaves the queue if the engine has not taken the job yet.
    pub(crate) fn leave(&self) {
        if self.place.compare_exchange(WAITING, LEFT, Relaxed, Relaxed).is_ok() {
            self.stats.leave_queue(self.tenant.as_ref(), self.estimate, &self.place);
        }
    }
}

impl EngineHandle {
    /// Starts the engine thread. The model loads in the background; [`EngineStatsSnapshot::loaded`]
    /// turns true once it serves. Jobs submitted before that wait in the queue.
    pub fn start(config: EngineConfig) -> Result<Self, EngineError> {
        // Unbounded: `submit` bounds the jobs waiting by counting them, and the engine moves
        // every job out of the channel at each step (dropping those whose clients left), so
        // jobs that were given up on never take the room of new ones.
        let (jobs, receiver) = std::sync::mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let config = Arc::new(config);
        let thread_stats = Arc::clone(&stats);
        let thread_config = Arc::clone(&config);
        let (started, startup) = watch::channel(Startup::Loading);
        let thread = std::thread::Builder::new()
            .name("local-engine".into())
            .spawn(move || run(&thread_config, &receiver, &thread_stats, &started))
            .map_err(|e| EngineError::Unavailable { reason: format!("cannot spawn the engine thread: {e}") })?;
        Ok(Self { jobs, thread: Arc::new(EngineThread(Mutex::new(Some(thread)))), stats, config, startup })
    }

    /// How the start went so far.
    pub fn startup(&self) -> Startup {
        self.startup.borrow().clone()
    }

    /// Waits until the engine serves (`Ok`) or has failed to start (`Err`, with the reason).
    pub async fn started(&self) -> Result<(), String> {
        let mut startup = self.startup.clone();
        match startup.wait_for(|s| *s != Startup::Loading).await.map(|s| s.clone()) {
            Ok(Startup::Failed(reason)) => Err(reason),
            Ok(_) => Ok(()),
            Err(_) => Err("the engine thread stopped before the model loaded".to_owned()),
        }
    }

    /// Queues a generation. Events arrive on the returned stream; dropping it cancels the job.
    pub fn submit(&self, request: GenerationRequest) -> Result<GenerationStream, EngineError> {
        let (events, stream) = unbounded_channel();
        let estimate = estimate_prompt_tokens(&request);
        let tenant = request.tenant.as_ref().map(|t| Arc::clone(&t.name));
        let weight = request.tenant.as_ref().map_or(1, |t| t.weight);
        let place = Arc::new(AtomicU8::new(WAITING));
        {
            // One lock for the bound and the tenants' places: concurrent submits see each
            // other's displacements, so the queue never holds more than `queue`.
            let mut places = self.stats.places();
            let waiting = self.stats.queued.load(Relaxed) + 1;
            // `queue` bounds the requests waiting for a slot: those a free slot will take at the
            // next step are not waiting for one (they only wait for the step in progress to end).
            let free = u64::from(self.config.parallel).saturating_sub(self.stats.active.load(Relaxed));
            if waiting > (self.config.queue as u64).saturating_add(free) {
                // Full: a tenant holding less than another takes that one's newest place.
                let Some(taken) = places.displace_for(tenant.as_ref(), weight) else {
                    return Err(EngineError::Overloaded { queue: self.config.queue });
                };
                self.stats.queued.fetch_sub(1, Relaxed);
                self.stats.queued_prompt_tokens.fetch_sub(taken.estimate, Relaxed);
                // Counted before it is answered: whoever reads the answer sees the count.
                self.stats.displaced_total.fetch_add(1, Relaxed);
                let _ = taken.events.send(GenerationEvent::Failed(EngineError::Displaced { queue: self.config.queue }));
            }
            self.stats.queued.fetch_add(1, Relaxed);
            self.stats.queued_prompt_tokens.fetch_add(estimate, Relaxed);
            places.join(tenant.as_ref(), weight, Place { state: Arc::clone(&place), events: events.clone(), estimate });
        }
        if self.jobs.send(Message::Generate(Box::new(Job { request, events, estimate, place: Arc::clone(&place) }))).is_err() {
            // The engine thread has stopped (so it will never take the job).
            if place.compare_exchange(WAITING, LEFT, Relaxed, Relaxed).is_ok() {
                self.stats.leave_queue(tenant.as_ref(), estimate, &place);
            }
            return Err(EngineError::Unavailable { reason: "the engine thread has stopped".into() });
        }
        Ok(GenerationStream::new(stream, QueuePlace { place, stats: Arc::clone(&self.stats), estimate, tenant }))
    }

    /// The engine's live counters.
    pub fn stats(&self) -> EngineStatsSnapshot {
        self.stats.snapshot()
    }

    /// How many waiting requests a new request of `tenant` would wait behind, in the order the
    /// engine gives slots (see `fair_share`): at most [`EngineStatsSnapshot::queued`].
    pub fn waiting_ahead_of(&self, tenant: Option<&Tenant>) -> u64 {
        self.stats.places().ahead_of(tenant.map(|t| &t.name), tenant.map_or(1, |t| t.weight))
    }

    /// What each tenant holds of the engine now (running sequences, waiting requests), by name.
    pub fn tenants(&self) -> Vec<TenantShare> {
        self.stats.places().holdings()
    }

    /// Stops the engine and waits for its thread: running and queued generations fail with
    /// `Unavailable`, the model is freed. Call before the process exits, so that llama.cpp is not
    /// torn down under a running decode. Later calls and submits do nothing / fail.
    pub fn shutdown(&self) {
        let Some(thread) = self.thread.0.lock().ok().and_then(|mut t| t.take()) else { return };
        self.stats.stop_requested.store(true, Relaxed);
        let _ = self.jobs.send(Message::Stop);
        let _ = thread.join();
    }

    /// The queue, slots and measured step costs now, for predicting a new request's latency.
    pub fn load(&self) -> Load {
        let s = &self.stats;
        Load {
            parallel: self.config.parallel,
            queued: s.queued.load(Relaxed),
            pending: 0,
            active: s.active.load(Relaxed),
            backlog_tokens: s.active_backlog_tokens.load(Relaxed) + s.queued_prompt_tokens.load(Relaxed),
            prefill_chunk: u32::try_from(crate::scheduler::PREFILL_CHUNK_WHILE_DECODING).unwrap_or(u32::MAX),
            timings: s.timings().clone(),
        }
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}

/// About four characters a token, plus a few tokens of template per message.
fn estimate_prompt_tokens(request: &GenerationRequest) -> u64 {
    request.messages.iter().map(|m| m.content.len().div_ceil(4) as u64 + 4).sum()
}

/// llama.cpp's backend may be initialised once per process: the generation engine and the
/// [`crate::Embedder`] share this one.
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| EngineError::Unavailable { reason: reason.clone() })
}

fn run(config: &EngineConfig, jobs: &Receiver<Message>, stats: &EngineStats, started: &watch::Sender<Startup>) {
    let _span = info_span!("local_engine", model = %config.model.display()).entered();
    let loaded = backend().and_then(|backend| {
        let params = LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers);
        LlamaModel::load_from_file(backend, &config.model, &params)
            .map_err(|e| EngineError::Unavailable { reason: format!("cannot load {}: {e}", config.model.display()) })
            .map(|model| (backend, model))
    });
    let (backend, model) = match loaded {
        Ok(pair) => pair,
        Err(err) => return refuse_all(jobs, stats, &err, started),
    };
    let mut scheduler = match Scheduler::new(config, backend, &model, stats) {
        Ok(s) => s,
        Err(err) => return refuse_all(jobs, stats, &err, started),
    };
    stats.loaded.store(true, Relaxed);
    started.send_replace(Startup::Serving);
    info!(
        name = %config.name,
        context = config.context,
        parallel = config.parallel,
        batched_kernels = crate::batched_kernels(),
        "local engine ready"
    );
    scheduler.serve(jobs);
    stats.loaded.store(false, Relaxed);
    info!("local engine stopped");
}

fn refuse_all(jobs: &Receiver<Message>, stats: &EngineStats, err: &EngineError, started: &watch::Sender<Startup>) {
    error!(error = %err, "local engine could not start");
    started.send_replace(Startup::Failed(err.to_string()));
    // The server's fault, whatever the cause (a model without a chat template, say): not the
    // request's.
    let err = &EngineError::Unavailable { reason: format!("the local engine could not start: {err}") };
    while let Ok(Message::Generate(job)) = jobs.recv() {
        job.refuse(stats, err);
    }
}
