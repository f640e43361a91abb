//! Delivering profiles to a remote store, without ever holding up tracing.
//!
//! Each window, the agent hands every process's profiles over as one
//! encoded request for a [`Destination`]: Grafana Pyroscope's push API
//! ([`pyroscope`]) or an OTLP profiles endpoint ([`otlp`]). A thread takes
//! it from a bounded queue and writes it to the spool directory first, so
//! nothing waits on the network and an agent restart resumes what was not
//! delivered; then it delivers the spool oldest first. A failed push is
//! retried with exponential backoff (1 s doubling to 60 s) and ±20%
//! jitter. The spool is capped in bytes: past the cap, the oldest profiles
//! are dropped and counted. A full queue drops too, counted.

pub mod otlp;
pub mod pyroscope;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where profiles go.
#[derive(Clone, Debug)]
pub enum Destination {
    Pyroscope(pyroscope::Store),
    Otlp(otlp::Endpoint),
}

impl Destination {
    fn url(&self) -> &str {
        match self {
            Destination::Pyroscope(s) => &s.url,
            Destination::Otlp(e) => &e.url,
        }
    }

    fn send(&self, http: &ureq::Agent, body: &[u8]) -> Result<(), SendError> {
        match self {
            Destination::Pyroscope(s) => s.send(http, body),
            Destination::Otlp(e) => e.send(http, body),
        }
    }
}

/// Where and how to push.
#[derive(Clone, Debug)]
pub struct PushConfig {
    pub dest: Destination,
    pub spool: PathBuf,
    pub spool_max_bytes: u64,
}

/// Delivery so far.
#[derive(Clone, Debug, Default)]
pub struct PushStats {
    pub pushed: u64,
    pub failed: u64,
    pub dropped: u64,
    pub spooled: u64,
    pub spooled_bytes: u64,
    /// Seconds per delivered push, the latest ones.
    pub latencies: Vec<f64>,
}

const QUEUE: usize = 64;
const LATENCIES_KEPT: usize = 1000;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The next wait after a failure: doubled, capped, ±20% jitter.
pub fn next_backoff(prev: Duration, jitter: f64) -> Duration {
    let doubled = (prev * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
    doubled.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// The spool: one file per push request, named so that names sort oldest
/// first.
struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    seq: u64,
}

impl Spool {
    fn files(&self) -> Vec<(PathBuf, u64)> {
        let mut v: Vec<(PathBuf, u64)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pb"))
            .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
            .collect();
        v.sort();
        v
    }

    /// Keeps `body`; drops the oldest files past the cap. Returns how many
    /// were dropped.
    fn put(&mut self, body: &[u8]) -> std::io::Result<u64> {
        self.seq += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{nanos:024}-{:08}.pb", self.seq);
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, self.dir.join(name))?;
        let files = self.files();
        let mut total: u64 = files.iter().map(|(_, n)| n).sum();
        let mut dropped = 0;
        for (path, n) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= n;
                dropped += 1;
            }
        }
        Ok(dropped)
    }
}

/// The agent's end of the pusher. Dropping it spools what is queued and
/// stops the delivery thread; the spool is delivered on the next start.
pub struct Pusher {
    tx: Option<SyncSender<Vec<u8>>>,
    stats: Arc<Mutex<PushStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pusher {
    /// Starts the delivery thread; what the spool holds from a previous
    /// run is delivered first.
    pub fn start(cfg: PushConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&cfg.spool)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Mutex::new(PushStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("memtrace-push".into())
            .spawn(move || deliver(cfg, rx, s, st))?;
        Ok(Self {
            tx: Some(tx),
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Hands an encoded request over; never blocks (a full queue drops it,
    /// counted).
    pub fn push(&self, body: Vec<u8>) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(body) {
            self.stats.lock().expect("push stats").dropped += 1;
        }
    }

    pub fn stats(&self) -> PushStats {
        self.stats.lock().expect("push stats").clone()
    }

    /// A handle on the statistics, for the HTTP thread.
    pub fn stats_handle(&self) -> Arc<Mutex<PushStats>> {
        self.stats.clone()
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a push failed.
#[derive(Debug)]
pub enum SendError {
    /// Worth retrying: the network, the store's availability, auth that
    /// may be fixed.
    Retry(String),
    /// The store refused this body and always will (400, 413, 415, 422).
    Refused(String),
}

/// What a failed request's status means (`Err` from ureq).
fn status_error(e: ureq::Error) -> SendError {
    match e {
        ureq::Error::Status(code @ (400 | 413 | 415 | 422), resp) => {
            let text = resp.into_string().unwrap_or_default();
            SendError::Refused(format!(
                "HTTP {code}: {}",
                text.lines().next().unwrap_or("")
            ))
        }
        e => SendError::Retry(e.to_string()),
    }
}

/// The HTTP client pushes use.
pub fn http_client() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

fn deliver(
    cfg: PushConfig,
    rx: Receiver<Vec<u8>>,
    stats: Arc<Mutex<PushStats>>,
    stop: Arc<AtomicBool>,
) {
    let http = http_client();
    let url = cfg.dest.url().to_string();
    let mut spool = Spool {
        dir: cfg.spool.clone(),
        max_bytes: cfg.spool_max_bytes,
        seq: 0,
    };
    let mut backoff = Duration::ZERO;
    let mut next_try = Instant::now();
    let update = |spool: &Spool, f: &mut dyn FnMut(&mut PushStats)| {
        let files = spool.files();
        let mut s = stats.lock().expect("push stats");
        f(&mut s);
        s.spooled = files.len() as u64;
        s.spooled_bytes = files.iter().map(|(_, n)| n).sum();
    };
    // What a previous run left is counted from the start.
    update(&spool, &mut |_| {});
    loop {
        let wait = next_try.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait.max(Duration::from_millis(50))) {
            Ok(body) => {
                match spool.put(&body) {
                    Ok(dropped) => update(&spool, &mut |s| s.dropped += dropped),
                    Err(e) => {
                        log::warn!("push spool {}: {e}", spool.dir.display());
                        update(&spool, &mut |s| s.dropped += 1);
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() < next_try {
            continue;
        }
        for (path, _) in spool.files() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(body) = std::fs::read(&path) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let started = Instant::now();
            match cfg.dest.send(&http, &body) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                    let took = started.elapsed().as_secs_f64();
                    update(&spool, &mut |s| {
                        s.pushed += 1;
                        s.latencies.push(took);
                        let excess = s.latencies.len().saturating_sub(LATENCIES_KEPT);
                        s.latencies.drain(..excess);
                    });
                    backoff = Duration::ZERO;
                }
                Err(SendError::Refused(e)) => {
                    // Retrying cannot help; keeping it would stall the rest.
                    log::warn!("push to {url} refused ({e}); profile dropped");
                    let _ = std::fs::remove_file(&path);
                    update(&spool, &mut |s| {
                        s.failed += 1;
                        s.dropped += 1;
                    });
                }
                Err(SendError::Retry(e)) => {
                    backoff = next_backoff(backoff, fastrand::f64());
                    next_try = Instant::now() + backoff;
                    log::warn!("push to {url} failed ({e}); retrying in {backoff:?}");
                    update(&spool, &mut |s| s.failed += 1);
                    break;
                }
            }
        }
    }
}

/// The spool directory's default place under the agent's output, one per
/// destination (`push-spool`, `otlp-spool`).
pub fn default_spool(out: &Path, dest: &Destination) -> PathBuf {
    out.join(match dest {
        Destination::Pyroscope(_) => "push-spool",
        Destination::Otlp(_) => "otlp-spool",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            b = next_backoff(b, 0.5);
            seen.push(b.as_secs());
        }
        assert_eq!(&seen[..4], [1, 2, 4, 8]);
        assert_eq!(*seen.last().unwrap(), 60);
        assert!(next_backoff(Duration::from_secs(4), 0.0) >= Duration::from_millis(6400));
        assert!(next_backoff(Duration::from_secs(4), 1.0) <= Duration::from_millis(9600));
    }

    #[test]
    fn the_spool_keeps_order_and_its_cap() {
        let dir = std::env::temp_dir().join(format!("memtrace-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Spool {
            dir: dir.clone(),
            max_bytes: 250,
            seq: 0,
        };
        for i in 0..3u8 {
            assert_eq!(s.put(&[i; 100]).unwrap(), u64::from(i == 2));
        }
        let files = s.files();
        assert_eq!(files.len(), 2, "the oldest went past the cap");
        assert_eq!(std::fs::read(&files[0].0).unwrap(), vec![1; 100]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
