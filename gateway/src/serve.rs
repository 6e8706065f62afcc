//! `switchyard serve`: bind, serve, drain on SIGTERM/SIGINT.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt as _;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{GatewayConfig, ServerConfig};
use crate::stalled_writes::StalledWrites;
use crate::state::AppState;

/// How long in-flight requests may take to finish after a stop signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long connections accepted just before a stop signal have to send their request.
const ACCEPTED_GRACE: Duration = Duration::from_millis(200);
/// How long the requests cut at the drain's end have to write their last answer.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// How long the finished requests' settlements may take to reach the store after the drain.
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);
/// How often the budget gauges and the routing signal are read back from the store, and this
/// replica's figures published for the cluster view.
const BUDGET_REFRESH: Duration = Duration::from_secs(5);

/// Serves until SIGTERM/SIGINT, then stops accepting, lets in-flight requests finish (at most
/// [`DRAIN_DEADLINE`], or until a second SIGTERM/SIGINT) and returns.
pub async fn serve(config: GatewayConfig, config_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let listen = config.listen;
    for warning in &config.warnings {
        warn!("{warning}");
    }
    crate::open_files::raise_for(config.server.max_connections);
    // Bound first: a port in use stops the start before any model is loaded.
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let state = AppState::build(config, config_file)?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    info!(addr = %listener.local_addr()?, "listening");
    let app = crate::app::build(Arc::clone(&state));
    // Budget figures follow every replica's spend, also for tenants this one has not served
    // lately; with Redis, this replica's figures are published for the others' dashboards.
    let refresher = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BUDGET_REFRESH);
            loop {
                tick.tick().await;
                state.limiter.refresh().await;
                if let Some(cluster) = &state.cluster {
                    if let Err(err) = cluster.publish(&state.ledger.rollups, crate::accounting::unix_ms()).await {
                        tracing::debug!(error = %err, "could not publish this replica's figures");
                    }
                }
            }
        })
    };
    // SIGHUP reloads the tenants, the policy and the prices (also without it, it must not end the process,
    // as its default action would, without a drain).
    #[cfg(unix)]
    let hangups = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                while hup.recv().await.is_some() {
                    info!("SIGHUP: reloading the configuration");
                    state.reload_config().await;
                }
            }
        })
    };
    // A request that outlives a lease keeps its reservation while this replica runs it.
    let renewer = {
        let limiter = Arc::clone(&state.limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(limiter.lease_renewal_interval());
            loop {
                tick.tick().await;
                limiter.renew_leases().await;
            }
        })
    };
    let stopping = Arc::new(Notify::new());
    // A second stop signal during the drain: stop now, as at the drain's deadline.
    let hurry = Arc::new(Notify::new());
    // A local engine that cannot start would leave the gateway never ready: it stops instead, with
    // the reason, so that a supervisor sees the failure rather than a replica stuck "loading".
    let engine_failure = Arc::new(std::sync::OnceLock::new());
    tokio::spawn(watch_for_stop(Arc::clone(&state), Arc::clone(&stopping), Arc::clone(&hurry), Arc::clone(&engine_failure)));
    let (graceful, listener, mut connections) = accept_loop(listener, app, &state.config.server, &stopping).await;
    // The port stays open while the drain runs: probes get /readyz 503 and new requests 503
    // `shutting_down`, rather than a refused connection.
    let late = tokio::spawn(answer_while_draining(listener, crate::app::draining(Arc::clone(&state)), state.config.server.header_timeout_ms));
    // A connection accepted just before the signal whose request has not been read yet counts as
    // idle, and the graceful close would drop it unanswered: give such requests a moment to arrive
    // (they are answered as draining) before the close.
    tokio::time::sleep(ACCEPTED_GRACE).await;
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    let cut = tokio::select! {
        () = &mut drained => false,
        () = tokio::time::sleep(DRAIN_DEADLINE) => {
            warn!(deadline_s = DRAIN_DEADLINE.as_secs(), "drain deadline passed; closing remaining connections");
            true
        }
        () = hurry.notified() => {
            warn!("second stop signal during the drain; closing remaining connections now");
            true
        }
    };
    if cut {
        // Requests cut now are the server's doing (503 in their records), not their clients'.
        state.ledger.cut_remaining();
        // Each gets its last word (a 503, or a stream's error event); the connections that have
        // not written it within the grace (a client not reading) are closed as they are.
        state.cut.send_replace(true);
        if tokio::time::timeout(CUT_GRACE, &mut drained).await.is_err() {
            connections.abort_all();
        }
    }
    // Every connection task ends here, so the requests cut at the deadline leave their records
    // (audit line, metrics) and settle their reservations before the settlements are awaited and
    // the audit log is closed below.
    while connections.join_next().await.is_some() {}
    late.abort();
    // The requests' settlements (spend, released reservations) reach the store before the
    // process goes: a restart must not lose spend.
    let unsettled = state.limiter.finish_settlements(SETTLE_DEADLINE).await;
    if unsettled > 0 {
        warn!(unsettled, deadline_s = SETTLE_DEADLINE.as_secs(), "stopping with settlements the limits store has not taken; their reservations lapse with their leases");
    }
    renewer.abort();
    refresher.abort();
    publish_last_figures(&state).await;
    #[cfg(unix)]
    hangups.abort();
    if let Some(local) = &state.local {
        // Before the process exits, so llama.cpp is never torn down under a running decode.
        local.engine().shutdown();
    }
    // The audit writer gets what is queued onto the disk.
    state.ledger.close();
    info!("stopped");
    match engine_failure.get() {
        Some(reason) => Err(anyhow::anyhow!("the local engine could not start: {reason}")),
        None => Ok(()),
    }
}

/// Starts the drain (`stopping`) at a stop signal or when the local engine fails to start (its
/// reason in `engine_failure`), and cuts it short (`hurry`) at a second stop signal.
async fn watch_for_stop(state: Arc<AppState>, stopping: Arc<Notify>, hurry: Arc<Notify>, engine_failure: Arc<std::sync::OnceLock<String>>) {
    let engine_failed = async {
        match &state.local {
            Some(local) => local.engine().started().await.err(),
            None => None,
        }
    };
    tokio::select! {
        () = stop_signal() => info!("stop signal received; draining in-flight requests"),
        Some(reason) = engine_failed => {
            tracing::error!(error = %reason, "the local engine could not start; stopping");
            let _ = engine_failure.set(reason);
        }
    }
    state.draining.store(true, Relaxed);
    stopping.notify_one();
    stop_signal().await;
    hurry.notify_one();
}

/// The last seconds' figures (the drain's requests among them) reach the cluster view before
/// the process goes: the refresher publishes every few seconds, and a restarted replica has a
/// new id, so nothing would publish these again.
async fn publish_last_figures(state: &AppState) {
    let Some(cluster) = &state.cluster else { return };
    match tokio::time::timeout(SETTLE_DEADLINE, cluster.publish(&state.ledger.rollups, crate::accounting::unix_ms())).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "could not publish this replica's last figures; the cluster view misses its last seconds"),
        Err(_) => warn!(deadline_s = SETTLE_DEADLINE.as_secs(), "publishing this replica's last figures timed out; the cluster view misses its last seconds"),
    }
}

/// Serves `app` (the draining answers) on connections accepted after the stop signal, one
/// request each, until aborted when the drain ends.
async fn answer_while_draining(listener: tokio::net::TcpListener, app: axum::Router, header_timeout_ms: u64) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(header_timeout_ms)).keep_alive(false);
    while let Ok((tcp, _)) = listener.accept().await {
        let connection = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// Each connection's socket send buffer (the kernel doubles it for its bookkeeping).
const SEND_BUFFER_BYTES: usize = 256 * 1024;

/// The largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Accepts connections until `stopping` is notified, at most `max_connections` at once (more
/// wait in the listen backlog), each served by hyper's HTTP/1 with the header timeout, ~64 KiB
/// heads, a 256 KB send buffer and the send timeout. Returns the watcher of the connections
/// still open, for the drain, the listener, and the connections' tasks (to cut those the drain
/// deadline leaves, and to wait for them to end).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    server: &ServerConfig,
    stopping: &Notify,
) -> (GracefulShutdown, tokio::net::TcpListener, JoinSet<()>) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(server.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(server.header_timeout_ms));
    // A request head over 64 KiB is refused (431) rather than buffered: hyper's default (~400 KB)
    // let every connection still sending its head hold that much, up to `max_connections` of them.
    http.max_buf_size(MAX_HEAD_BYTES);
    let stop = stopping.notified();
    tokio::pin!(stop);
    loop {
        // Ended connections leave the set (it would otherwise keep one entry per connection ever
        // served).
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = &mut stop => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    () = &mut stop => break,
                    accepted = listener.accept() => accepted.map(|(tcp, peer)| (tcp, peer, permit)),
                },
                Err(_) => break,
            },
        };
        let (tcp, peer, permit) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: log, and let the condition pass.
                warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm meeting the
        // client's delayed ACK holds events back for ~40 ms.
        if let Err(err) = tcp.set_nodelay(true) {
            warn!(error = %err, "could not set TCP_NODELAY on a connection");
        }
        // A send buffer the kernel may not grow to megabytes: Linux wakes a blocked writer only
        // once a third of it has drained, so with an autotuned 4 MB buffer a client reading a
        // long stream steadily at 32 KB/s made no visible progress for 40 s and met
        // `send_timeout_ms`. Answers are small; 256 KB still fills a 100 Mbit/s, 20 ms path.
        if let Err(err) = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER_BYTES) {
            warn!(error = %err, "could not set SO_SNDBUF on a connection");
        }
        // The client's address, for handlers that count per address (wrong admin keys).
        let service = TowerToHyperService::new(app.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        }));
        let tcp = StalledWrites::new(tcp, Duration::from_millis(server.send_timeout_ms));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        connections.spawn(async move {
            // Errors here are the client's (reset, header timeout, malformed request).
            let _ = connection.await;
            drop(permit);
        });
    }
    (graceful, listener, connections)
}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
