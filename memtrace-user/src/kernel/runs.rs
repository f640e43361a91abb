//! Which runs of merged faults, read from the CPUs' tables (see
//! `memtrace_common::FaultRun`), user space takes. The tables are the
//! probe's: user space cannot clear a slot, so a run stays readable until a
//! newer run takes its slot, possibly long after its process was retired
//! or its pid came round again.

use std::collections::HashMap;

use memtrace_common::FaultRun;

/// When each target was added (CLOCK_MONOTONIC, the clock of run starts).
#[derive(Default)]
pub struct TargetTimes {
    added: HashMap<u32, u64>,
    /// Targets removed since runs were last read (read once more, as
    /// `retired`).
    removed: HashMap<u32, u64>,
}

/// Bound on `removed` for sessions that never read runs (no rss lens).
const REMOVED_MAX: usize = 4096;

impl TargetTimes {
    /// `pid` became a target at `now_ns` (a later add of the same target
    /// keeps the first time).
    pub fn add(&mut self, pid: u32, now_ns: u64) {
        self.added.entry(pid).or_insert(now_ns);
    }

    /// `pid` is no longer a target.
    pub fn remove(&mut self, pid: u32) {
        if let Some(t) = self.added.remove(&pid) {
            if self.removed.len() >= REMOVED_MAX {
                self.removed.clear();
            }
            self.removed.insert(pid, t);
        }
    }

    /// Whether `run` is one to take: its process is a target (or one of
    /// `retired`, read this last time) and the run began after it became
    /// one (not an earlier process's with the same pid).
    pub fn live(&self, run: &FaultRun, retired: &[u32]) -> bool {
        let added = self.added.get(&run.tgid).or_else(|| {
            retired
                .contains(&run.tgid)
                .then(|| self.removed.get(&run.tgid))
                .flatten()
        });
        added.is_some_and(|&t| run.start_ns >= t)
    }

    /// `retired` were read the last time.
    pub fn forget(&mut self, retired: &[u32]) {
        for pid in retired {
            self.removed.remove(pid);
        }
    }
}

/// Whether a slot read twice (`a`, then `b`) holds a run in progress that
/// was not being rewritten: the two reads agree, the sequence is even, and
/// the run has merged pages.
pub fn settled(a: &FaultRun, b: &FaultRun) -> bool {
    a == b && a.seq.is_multiple_of(2) && a.stack_ref != 0 && a.count != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tgid: u32, start_ns: u64) -> FaultRun {
        FaultRun {
            tgid,
            tid: tgid,
            start_ns,
            stack_ref: 5,
            count: 2,
            ..FaultRun::default()
        }
    }

    #[test]
    fn runs_of_targets_since_they_were_added_are_taken() {
        let mut t = TargetTimes::default();
        t.add(10, 100);
        t.add(10, 500);
        assert!(t.live(&run(10, 100), &[]) && t.live(&run(10, 300), &[]));
        assert!(
            !t.live(&run(10, 99), &[]),
            "an earlier process with this pid"
        );
        assert!(!t.live(&run(11, 300), &[]), "not a target");
        // Retired: read once more, then not.
        t.remove(10);
        assert!(!t.live(&run(10, 300), &[]));
        assert!(t.live(&run(10, 300), &[10]));
        t.forget(&[10]);
        assert!(!t.live(&run(10, 300), &[10]));
        // The pid comes back as a new target: only its own runs.
        t.add(10, 900);
        assert!(!t.live(&run(10, 300), &[]) && t.live(&run(10, 901), &[]));
    }

    #[test]
    fn a_slot_being_rewritten_waits() {
        let a = run(10, 100);
        assert!(settled(&a, &a));
        let mut odd = a;
        odd.seq = 1;
        assert!(!settled(&odd, &odd));
        let mut moved = a;
        moved.count = 3;
        assert!(!settled(&a, &moved));
        let mut empty = a;
        empty.count = 0;
        assert!(!settled(&empty, &empty), "nothing merged yet");
    }
}
