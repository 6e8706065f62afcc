//! The audit log (INTERFACE.md §6): one JSON line per finished request, written by its own
//! thread behind a bounded channel so requests never wait on the disk; when the channel is full,
//! or the disk refuses a write, the line is dropped and counted. Files rotate by size
//! (`audit.jsonl` → `audit.jsonl.1` → …); a file moved or deleted from outside (logrotate) is
//! followed by a fresh one at the path.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
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
        let lost = dropped.clone();
        let writer = std::thread::Builder::new().name("audit-log".into()).spawn(move || write_lines(&config, file, &receiver, lost))?;
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

/// Bytes gathered before a write even while the queue still holds lines.
const BATCH_BYTES: usize = 64 * 1024;

fn write_lines(config: &AuditConfig, file: File, lines: &Receiver<String>, dropped: IntCounter) {
    let mut writer = Writer::new(config, file, dropped);
    loop {
        // Write whenever the queue runs dry, so lines reach the disk promptly.
        let line = match lines.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                writer.flush();
                match lines.recv() {
                    Ok(line) => line,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        writer.add(&line);
    }
    writer.flush();
}

/// The audit file as the writer thread holds it, with the lines gathered for its next write.
struct Writer<'c> {
    config: &'c AuditConfig,
    file: File,
    /// Bytes in `file`.
    size: u64,
    batch: Vec<u8>,
    batch_lines: u64,
    dropped: IntCounter,
    /// The last write failed (logged once until one succeeds again).
    failing: bool,
    /// The path could not be opened again after a move (logged once until it can).
    unfollowed: bool,
}

impl<'c> Writer<'c> {
    fn new(config: &'c AuditConfig, file: File, dropped: IntCounter) -> Self {
        let size = file.metadata().map_or(0, |m| m.len());
        Self { config, file, size, batch: Vec::new(), batch_lines: 0, dropped, failing: false, unfollowed: false }
    }

    fn add(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        let pending = self.size + self.batch.len() as u64;
        if pending > 0 && pending + len > self.config.max_bytes {
            self.flush();
            self.rotate();
        }
        self.batch.extend_from_slice(line.as_bytes());
        self.batch.push(b'\n');
        self.batch_lines += 1;
        if self.batch.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Writes the gathered lines to the file at `path` (reopened first if it was moved or
    /// deleted); lines that cannot be written are counted as dropped.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.follow_path();
        match self.file.write_all(&self.batch) {
            Ok(()) => {
                self.size += self.batch.len() as u64;
                if std::mem::take(&mut self.failing) {
                    tracing::info!("audit log writes again");
                }
            }
            Err(err) => {
                // A write the disk cut short would leave half a line, and glue the next line
                // to it: what was written of the batch is taken back.
                let _ = self.file.set_len(self.size);
                self.dropped.inc_by(self.batch_lines);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(error = %err, lines = self.batch_lines, "audit log write failed; lines are lost until it succeeds, counted in switchyard_audit_dropped_total");
                }
            }
        }
        self.batch.clear();
        self.batch_lines = 0;
    }

    /// After the file was moved or deleted under the gateway (logrotate without
    /// `copytruncate`, an operator archiving it), lines go to a new file at `path`, not on into
    /// the moved one.
    fn follow_path(&mut self) {
        if self.holds_path() {
            return;
        }
        match open(&self.config.path) {
            Ok(file) => {
                self.size = file.metadata().map_or(0, |m| m.len());
                self.file = file;
            }
            Err(err) => {
                // Once per outage, not at every write.
                if !std::mem::replace(&mut self.unfollowed, true) {
                    tracing::error!(error = %err, "audit log file was moved and cannot be created again; writing on to the moved file");
                }
                return;
            }
        }
        self.unfollowed = false;
    }

    /// Whether `path` is still the file being written.
    fn holds_path(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            match (std::fs::metadata(&self.config.path), self.file.metadata()) {
                (Ok(at_path), Ok(held)) => at_path.dev() == held.dev() && at_path.ino() == held.ino(),
                _ => false,
            }
        }
        #[cfg(not(unix))]
        {
            self.config.path.exists()
        }
    }

    /// Shifts `path.(k)` to `path.(k+1)` (the oldest beyond `keep` is removed), `path` to
    /// `path.1`, and opens a fresh `path` — only while `path` is the file being written:
    /// otherwise somebody else moved it, and a fresh file is all it takes. A rotation that fails
    /// is tried again only after another `max_bytes`, so a failure repeated line after line
    /// cannot shift (and delete) the rotated files each time.
    fn rotate(&mut self) {
        if !self.holds_path() {
            self.follow_path();
            return;
        }
        match rotate_files(self.config) {
            Ok(file) => {
                self.file = file;
                self.size = 0;
            }
            Err(err) => {
                tracing::error!(error = %err, "audit log rotation failed; writing on, to try again after another max_bytes");
                self.size = 0;
            }
        }
    }
}

fn rotate_files(config: &AuditConfig) -> std::io::Result<File> {
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

    fn line(i: u64) -> String {
        format!("{{\"request_id\":\"req-{i:04}\",\"pad\":\"{}\"}}", "x".repeat(60))
    }

    fn ids_in(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn writer_in(dir: &Path, max_bytes: u64, keep: u32) -> (AuditConfig, IntCounter) {
        std::fs::create_dir_all(dir).unwrap();
        (AuditConfig { path: dir.join("audit.jsonl"), max_bytes, keep }, IntCounter::new("d", "d").unwrap())
    }

    #[test]
    fn a_file_moved_away_is_followed_by_a_fresh_one_and_the_rotated_ones_stay() {
        let dir = std::env::temp_dir().join(format!("switchyard-audit-{}", uuid::Uuid::new_v4()));
        let (config, dropped) = writer_in(&dir, 1000, 3);
        let mut writer = Writer::new(&config, open(&config.path).unwrap(), dropped.clone());
        for i in 0..40 {
            writer.add(&line(i));
        }
        writer.flush();
        let rotated_before: Vec<Vec<String>> = (1..=3).map(|n| ids_in(&rotated(&config.path, n))).collect();
        assert!(rotated_before.iter().all(|ids| !ids.is_empty()), "three rotated files to keep");
        let archived = dir.join("archived.jsonl");
        std::fs::rename(&config.path, &archived).unwrap();
        let archived_ids = ids_in(&archived);
        for i in 40..50 {
            writer.add(&line(i));
            writer.flush();
        }
        assert_eq!(ids_in(&config.path), (40..50).map(|i| format!("req-{i:04}")).collect::<Vec<_>>(), "a fresh file holds the new lines");
        assert_eq!(ids_in(&archived), archived_ids, "nothing more goes into the moved file");
        let rotated_after: Vec<Vec<String>> = (1..=3).map(|n| ids_in(&rotated(&config.path, n))).collect();
        assert_eq!(rotated_after, rotated_before, "no rotated file was shifted or deleted");
        // Deleted rather than moved: the same.
        std::fs::remove_file(&config.path).unwrap();
        writer.add(&line(50));
        writer.flush();
        assert_eq!(ids_in(&config.path), vec!["req-0050".to_owned()]);
        assert_eq!(dropped.get(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lines_the_disk_refuses_are_counted_as_dropped() {
        let dir = std::env::temp_dir().join(format!("switchyard-audit-{}", uuid::Uuid::new_v4()));
        let (config, dropped) = writer_in(&dir, 1 << 20, 3);
        // /dev/full answers every write with ENOSPC, as a full disk does.
        std::os::unix::fs::symlink("/dev/full", &config.path).unwrap();
        let mut writer = Writer::new(&config, open(&config.path).unwrap(), dropped.clone());
        for i in 0..30 {
            writer.add(&line(i));
            if i % 7 == 0 {
                writer.flush();
            }
        }
        writer.flush();
        assert_eq!(dropped.get(), 30);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
