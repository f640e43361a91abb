//! The node agent: its policy over the engine (`session`: discovery,
//! rolling windows, snapshots), the state it serves, Prometheus text, the
//! snapshot trigger, the pod lookup (API server or kubelet) and the HTTP routes.

pub mod http;
pub mod limits;
pub mod metrics;
pub mod pods;
pub mod rolling;
pub mod session;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::cgroup::CgroupLabels;

/// Series of top growth stacks kept per process (bounded cardinality).
pub const TOP_SERIES: usize = 5;
/// Lenses the agent keeps rolling profiles of.
pub const LENSES: &[&str] = &["rss", "goroutines", "alloc"];

/// What the agent knows about one traced process.
#[derive(Clone, Debug, Default)]
pub struct ProcState {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    pub labels: CgroupLabels,
    /// Pod namespace and name, from the API server (or kubelet) when reachable.
    pub pod: Option<pods::PodMeta>,
    /// VmRSS, sampled every second.
    pub vmrss: u64,
    /// Resident growth attributed to stacks in the last complete window.
    pub growth_bytes: u64,
    /// Net resident growth in the last window (less what was resident
    /// before it and released).
    pub net_growth_bytes: i64,
    /// The Go heap's live bytes after the last GC cycle, and its goal.
    pub heap_marked: Option<u64>,
    pub heap_goal: Option<u64>,
    /// (leaf function, bytes) of the largest growth stacks, last window.
    pub top: Vec<(String, u64)>,
    /// (label key, value, bytes) of the pprof label values with the most
    /// resident growth, last window (at most [`TOP_SERIES`]; values are
    /// bounded by `model::labels`).
    pub label_growth: Vec<(String, String, u64)>,
    pub goroutines: u64,
    pub gc_cycles: u64,
    pub snapshots: u64,
    /// The memory cgroup's limit and usage, and when usage would reach
    /// the limit at its current slope.
    pub cgroup_limit: Option<u64>,
    pub cgroup_usage: Option<u64>,
    pub seconds_to_limit: Option<f64>,
    /// Unix time the last window ended.
    pub window_end: Option<u64>,
}

/// One rendered profile.
pub struct Rendered {
    pub svg: Vec<u8>,
    pub folded: String,
    pub pprof: Vec<u8>,
}

/// Agent-wide counters and the latest window's profiles.
#[derive(Default)]
pub struct Shared {
    pub procs: BTreeMap<u32, ProcState>,
    pub profiles: HashMap<(u32, &'static str), Arc<Rendered>>,
    /// The latest window of each process as one HTML page.
    pub pages: HashMap<u32, Arc<String>>,
    pub ring_drops: u64,
    pub stack_errors: u64,
    /// New stacks turned away by the per-process cap.
    pub capped_stacks: u64,
    pub windows: u64,
    /// How long the last window's end took: every process's report,
    /// rendered, published and handed to the pusher.
    pub last_window_secs: f64,
    pub snapshots: u64,
    /// Snapshots by what triggered them: `growth`, `limit`, `oom_kill`.
    pub snapshots_by_trigger: BTreeMap<String, u64>,
    /// Traced processes the OOM killer chose.
    pub oom_kills: u64,
    pub discovered: u64,
}

/// When the engine last completed a loop, for `/healthz`: a stuck engine
/// stops tracing every process on the node while the HTTP thread goes on
/// answering, so liveness must be the engine's, not the server's.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat.
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    /// The engine completed a loop.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last beat was (from start-up, before the first).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_ages_until_the_next_beat() {
        let h = Heartbeat::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(h.age() >= Duration::from_millis(30));
        h.beat();
        assert!(h.age() < Duration::from_millis(30));
    }
}
