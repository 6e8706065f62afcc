//! Harness for the end-to-end suite: starts the real `switchyard` release binary (and the fake
//! provider) on free ports and stops them by pid when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The default model, fetched by `make model`.
pub fn model_path() -> PathBuf {
    let path = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run `make model` (make test does it)", path.display());
    path
}

fn release_binary(name: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| workspace_root().join("target/release").join(name), PathBuf::from);
    assert!(path.is_file(), "{} is missing: run `cargo build --release --workspace` (make test does it)", path.display());
    path
}

/// A running child process, killed (by pid) when dropped.
pub struct Running {
    child: Child,
    /// The child's stderr/stdout lines, for failure messages.
    pub lines: mpsc::Receiver<String>,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, at most `limit`; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            // Polling an exit status: there is no portable blocking wait with a timeout.
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd`, forwards its output lines, and returns the first `key=value` (or `key value`)
/// address it prints, waiting at most `limit`.
fn spawn_and_find_addr(mut cmd: Command, marker: &str, limit: Duration) -> (Running, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawning a child process");
    let (tx, rx) = mpsc::channel();
    let (addr_tx, addr_rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        let addr_tx = addr_tx.clone();
        let marker = marker.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(&marker).nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = addr_tx.send(addr);
                }
                if std::env::var_os("SWITCHYARD_TEST_LOGS").is_some() {
                    eprintln!("[child] {line}");
                }
                let _ = tx.send(line);
            }
        });
    }
    let addr = addr_rx.recv_timeout(limit).unwrap_or_else(|_| {
        let _ = child.kill();
        let out: Vec<String> = rx.try_iter().collect();
        panic!("child never printed {marker:?}; output:\n{}", out.join("\n"));
    });
    (Running { child, lines: rx }, addr)
}

/// A running gateway.
pub struct Gateway {
    /// The process.
    pub process: Running,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Holds the generated config files.
    pub dir: PathBuf,
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchyard-e2e-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch dir");
    dir
}

/// The `[local]` section for the real model.
pub fn local_section(parallel: u32, context: u32) -> String {
    format!(
        "[local]\nmodel = {:?}\nname = \"local-small\"\ncontext = {context}\nthreads = 2\nparallel = {parallel}\nqueue = 16\n",
        model_path().display().to_string()
    )
}

impl Gateway {
    /// Writes `config` (with `{policy}` replaced by the policy file's path) and `policy`, starts
    /// the gateway on a free port and waits for `/readyz` to answer 200.
    pub async fn start(config: &str, policy: &str) -> Self {
        Self::start_with_env(config, policy, &[]).await
    }

    /// [`Gateway::start`] with extra environment variables (provider keys).
    pub async fn start_with_env(config: &str, policy: &str, env: &[(&str, &str)]) -> Self {
        let dir = scratch_dir("gw");
        let policy_path = dir.join("policy.toml");
        std::fs::write(&policy_path, policy).expect("writing the policy");
        let config = config.replace("{policy}", &policy_path.display().to_string());
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config).expect("writing the config");
        let mut cmd = Command::new(release_binary("switchyard", "SWITCHYARD_BIN"));
        cmd.arg("serve").arg("--config").arg(&config_path).env("SWITCHYARD_LISTEN", "127.0.0.1:0");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let (process, addr) = spawn_and_find_addr(cmd, "addr=", Duration::from_secs(30));
        let gateway = Self { process, base: format!("http://{addr}"), dir };
        gateway.wait_ready().await;
        gateway
    }

    /// Polls `/readyz` until it answers 200 (the model is loaded), at most 60 s.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "gateway never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `{base}/v1`.
    pub fn v1(&self) -> String {
        format!("{}/v1", self.base)
    }

    /// The engine counters from `/readyz`.
    pub async fn engine_stats(&self) -> serde_json::Value {
        let body: serde_json::Value = reqwest::get(format!("{}/readyz", self.base))
            .await
            .expect("readyz answers")
            .json()
            .await
            .expect("readyz is JSON");
        body["engine"].clone()
    }
}

/// The fake OpenAI-compatible provider (`src/bin/fake_provider.rs`).
pub struct FakeProvider {
    /// The process.
    pub process: Running,
    /// `http://127.0.0.1:PORT/v1`.
    pub base_v1: String,
}

impl FakeProvider {
    /// Starts it on a free port.
    pub fn start() -> Self {
        let cmd = Command::new(release_binary("fake-provider", "FAKE_PROVIDER_BIN"));
        let (process, addr) = spawn_and_find_addr(cmd, "listening on ", Duration::from_secs(10));
        Self { process, base_v1: format!("http://{addr}/v1") }
    }

    /// A `[[providers]]` section for it, named `fake`, kind `openai-compatible`.
    pub fn provider_section(&self, api_key_env: Option<&str>) -> String {
        let key = api_key_env.map(|k| format!("api_key_env = {k:?}\n")).unwrap_or_default();
        format!(
            "[[providers]]\nname = \"fake\"\nkind = \"openai-compatible\"\nbase_url = {:?}\n{key}timeout_ms = 20000\nmodels = [{{ name = \"echo\", input_per_mtok = 1.0, output_per_mtok = 2.0 }}, {{ name = \"gated\" }}, {{ name = \"fail\" }}, {{ name = \"ratelimit\" }}, {{ name = \"reject\" }}, {{ name = \"drop\" }}]\n",
            self.base_v1
        )
    }
}

/// A gateway configuration with the real model and the policy at `{policy}`; `extra` is appended.
pub fn config_with_local(parallel: u32, context: u32, extra: &str) -> String {
    format!("[server]\nregion = \"eu-west\"\n\n{}\n{extra}\n[policy]\nfile = \"{{policy}}\"\n", local_section(parallel, context))
}

/// A policy that sends every `auto` request to the local engine.
pub const ALL_LOCAL_POLICY: &str = "[[rule]]\nname = \"default\"\nroute = \"local\"\n";

/// Reads SSE `data:` payloads from a streaming response, one at a time.
pub struct SseReader {
    events: std::pin::Pin<Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>>,
}

impl SseReader {
    /// Wraps a streaming response.
    pub fn new(response: reqwest::Response) -> Self {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let events = response.bytes_stream().eventsource().map(|e| e.map_err(|e| e.to_string()));
        Self { events: Box::pin(events) }
    }

    /// The next event's data, waiting at most `limit`; `None` when the stream ended.
    pub async fn next_data(&mut self, limit: Duration) -> Option<String> {
        use futures::StreamExt;
        match tokio::time::timeout(limit, self.events.next()).await {
            Err(elapsed) => panic!("no SSE event within {limit:?}: {elapsed}"),
            Ok(None) => None,
            Ok(Some(Ok(event))) => Some(event.data),
            Ok(Some(Err(e))) => panic!("broken SSE stream: {e}"),
        }
    }
}
