//! The GC view, reported with every lens: GC cycles with the heap size and
//! goal at each, and stop-the-world pause durations.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::lens::cell::histogram;
use crate::model::gc::{GcCycleDetail, GcPauses, GcSummary};

/// One GC cycle as seen at mark termination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GcCycle {
    pub pid: u32,
    /// Monotonic nanoseconds (as `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub heap_live: u64,
    pub heap_goal: u64,
    /// Marked live by the previous cycle: the live heap after it.
    pub heap_marked: u64,
}

/// The GC view: cycles and stop-the-world pauses.
pub struct GcAgg {
    pub cycles: Vec<GcCycle>,
    /// Stop-the-world pause durations, nanoseconds.
    pub pauses: Histogram<u64>,
    pub(crate) stopped: HashMap<u32, u64>,
}

impl Default for GcAgg {
    fn default() -> Self {
        Self {
            cycles: Vec::new(),
            pauses: histogram(),
            stopped: HashMap::new(),
        }
    }
}

impl GcAgg {
    /// The cycles of `pids` (pauses are kept for the whole session).
    pub fn clone_for(&self, pids: &[u32]) -> Self {
        Self {
            cycles: self
                .cycles
                .iter()
                .filter(|c| pids.contains(&c.pid))
                .copied()
                .collect(),
            pauses: self.pauses.clone(),
            stopped: HashMap::new(),
        }
    }

    pub fn stw(&mut self, pid: u32, stop: bool, ts: u64) {
        if stop {
            self.stopped.insert(pid, ts);
        } else if let Some(t0) = self.stopped.remove(&pid) {
            self.pauses.saturating_record(ts.saturating_sub(t0).max(1));
        }
    }
}

/// The GC view for summary.json (`start_ns`: the window's start, on the
/// clock of the cycles' timestamps).
pub fn summary(gc: &GcAgg, start_ns: u64) -> GcSummary {
    let h = &gc.pauses;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    GcSummary {
        cycles: gc.cycles.len() as u64,
        pauses: GcPauses {
            count: h.len(),
            p50_ns: q(0.5),
            p99_ns: q(0.99),
            max_ns: if h.is_empty() { 0 } else { h.max() },
        },
        cycle_detail: gc
            .cycles
            .iter()
            .map(|c| GcCycleDetail {
                pid: c.pid,
                t: c.ts_ns.saturating_sub(start_ns) as f64 / 1e9,
                heap_live: c.heap_live,
                heap_goal: c.heap_goal,
                heap_marked: c.heap_marked,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_pauses_pair_per_process() {
        let mut g = GcAgg::default();
        g.stw(1, true, 1_000);
        g.stw(2, true, 1_500);
        g.stw(1, false, 51_000);
        g.stw(2, false, 2_500);
        g.stw(1, false, 9_000_000); // restart without a stop: ignored
        assert_eq!(g.pauses.len(), 2);
        assert!(g.pauses.max() >= 49_990 && g.pauses.min() <= 1_001);
    }
}
