//! The audit log (INTERFACE.md §6): one JSON line per finished request, written by its own
//! thread behind a bounded channel so requests never wait on the disk; when the channel is full
//! the line is dropped and counted. Files rotate by size (`audit.jsonl` → `audit.jsonl.1` → …).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;

use prometheus::IntCounter;
use serde::Deserialize;
use serde_json::json;

use crate::accounting::UsageRecord;

/// Lines that may wait for the writer.
const QUEUE: usize = 8192;

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The current file; rotated files get `.1`, `.2`, … appended.
    pub path: PathBuf,
    /// Rotate when the current file would grow past this.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

const fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
const fn default_keep() -> u32 {
    5
}

/// The running audit log.
#[derive(Debug)]
pub struct AuditLog {
    sender: Mutex<Option<SyncSender<String>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dropped: IntCounter,
}

impl AuditLog {
    /// Opens (appends to) the file and starts the writer thread.
    pub fn start(config: &AuditConfig, dropped: IntCounter) -> std::io::Result<Self> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open(&config.path)?;
        let (sender, receiver) = sync_channel(QUEUE);
        let config = config.clone();
        let writer = std::thread::Builder::new().name("audit-log".into()).spawn(move || write_lines(&config, file, &receiver))?;
        Ok(Self { sender: Mutex::new(Some(sender)), writer: Mutex::new(Some(writer)), dropped })
    }

    /// Queues the line for `r`; never blocks.
    pub fn write(&self, r: &UsageRecord) {
        let line = json!({
            "ts": rfc3339_utc(r.ts),
            "request_id": r.request_id,
            "tenant": r.tenant,
            "rule": r.rule,
            "target": r.target,
            "tier": r.tier,
            "status": r.status,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cost_usd": r.cost_usd,
            "cost_estimated": r.cost_estimated,
            "latency_ms": r.latency_ms,
            "ttft_ms": r.ttft_ms,
            "cache": r.cache,
            "redacted": r.redacted,
            "pii_kinds": r.pii_kinds,
        })
        .to_string();
        let sender = self.sender.lock().ok().and_then(|s| s.clone());
        match sender.map(|s| s.try_send(line)) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => self.dropped.inc(),
        }
    }

    /// Stops accepting lines, writes the queued ones and closes the file.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `path` with `.n` appended.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn write_lines(config: &AuditConfig, file: File, lines: &Receiver<String>) {
    let mut size = file.metadata().map_or(0, |m| m.len());
    let mut out = BufWriter::new(file);
    loop {
        // Flush whenever the queue runs dry, so lines reach the disk promptly.
        let line = match lines.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                let _ = out.flush();
                match lines.recv() {
                    Ok(line) => line,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let len = line.len() as u64 + 1;
        if size > 0 && size + len > config.max_bytes {
            let _ = out.flush();
            match rotate(config) {
                Ok(file) => {
                    out = BufWriter::new(file);
                    size = 0;
                }
                Err(err) => tracing::error!(error = %err, "audit log rotation failed; writing on"),
            }
        }
        if writeln!(out, "{line}").is_ok() {
            size += len;
        } else {
            tracing::error!("audit log write failed");
        }
    }
    let _ = out.flush();
}

/// Shifts `path.(k)` to `path.(k+1)` (the oldest beyond `keep` is removed), `path` to `path.1`,
/// and opens a fresh `path`.
fn rotate(config: &AuditConfig) -> std::io::Result<File> {
    let keep = config.keep.max(1);
    let _ = std::fs::remove_file(rotated(&config.path, keep));
    for n in (1..keep).rev() {
        let from = rotated(&config.path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(&config.path, n + 1))?;
        }
    }
    std::fs::rename(&config.path, rotated(&config.path, 1))?;
    open(&config.path)
}

/// `2026-11-30T02:40:07.123Z` for Unix milliseconds.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_796_005_207_123), "2026-11-30T02:20:07.123Z");
    }

    fn record(i: u64) -> UsageRecord {
        UsageRecord {
            ts: 0,
            request_id: format!("req-{i}"),
            tenant: "t".into(),
            rule: "r".into(),
            target: "local/x".into(),
            tier: "local",
            status: 200,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_usd: 0.0,
            cost_estimated: false,
            latency_ms: 1,
            latency_us: 1000,
            ttft_ms: None,
            cache: "miss",
            redacted: false,
            pii_kinds: vec![],
        }
    }

    #[test]
    fn rotation_keeps_every_line_within_keep_files() {
        let dir = std::env::temp_dir().join(format!("switchyard-audit-{}", uuid::Uuid::new_v4()));
        let config = AuditConfig { path: dir.join("audit.jsonl"), max_bytes: 2000, keep: 50 };
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AuditLog::start(&config, dropped.clone()).unwrap();
        for i in 0..200 {
            log.write(&record(i));
        }
        log.close();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(text.len() <= 2000 + 400, "a file stays near max_bytes");
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                ids.push(v["request_id"].as_str().unwrap().to_owned());
            }
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "no line lost across rotations");
        assert_eq!(dropped.get(), 0);
        assert!(std::fs::read_dir(&dir).unwrap().count() > 2, "it did rotate");
    }
}
