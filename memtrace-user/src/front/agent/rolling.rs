//! Rolling windows, as the agent keeps them: a window ends every `window`
//! seconds, and a process whose RSS grew by `threshold` bytes within
//! `period` seconds is due a snapshot at the end of that window (so the
//! snapshot holds a whole window of attribution, never a just-reset one).

use std::collections::HashMap;

use super::watch::GrowthWatch;

pub struct Rolling {
    /// Seconds per window.
    pub window: f64,
    period: f64,
    threshold: u64,
    watches: HashMap<u32, GrowthWatch>,
    due: HashMap<u32, u64>,
}

impl Rolling {
    pub fn new(window: f64, period: f64, threshold: u64) -> Self {
        Self {
            window,
            period,
            threshold,
            watches: HashMap::new(),
            due: HashMap::new(),
        }
    }

    /// One RSS sample of `pid` at `t` seconds; returns the growth when it
    /// makes a snapshot due now.
    pub fn observe(&mut self, pid: u32, t: f64, rss: u64) -> Option<u64> {
        let g = self
            .watches
            .entry(pid)
            .or_default()
            .sample(t, rss, self.period, self.threshold)?;
        self.due.insert(pid, g);
        Some(g)
    }

    /// Whether a window `elapsed` seconds old is over.
    pub fn window_over(&self, elapsed: f64) -> bool {
        elapsed >= self.window
    }

    /// The snapshots due at the end of this window: (pid, RSS growth).
    pub fn take_due(&mut self) -> Vec<(u32, u64)> {
        let mut d: Vec<_> = self.due.drain().collect();
        d.sort();
        d
    }

    /// Forgets an exited process.
    pub fn forget(&mut self, pid: u32) {
        self.watches.remove(&pid);
        self.due.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_falls_due_and_is_taken_when_the_window_ends() {
        const MIB: u64 = 1 << 20;
        let mut r = Rolling::new(10.0, 5.0, 50 * MIB);
        let mut due_at = None;
        for s in 0..=12u64 {
            let t = s as f64;
            // pid 10 grows 20 MiB/s; pid 11 is steady.
            if r.observe(10, t, 100 * MIB + s * 20 * MIB).is_some() && due_at.is_none() {
                due_at = Some(t);
            }
            assert_eq!(r.observe(11, t, 100 * MIB), None);
            if r.window_over(t) {
                break;
            }
        }
        assert_eq!(due_at, Some(5.0), "due once the period is covered");
        let due = r.take_due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, 10);
        assert!(due[0].1 >= 100 * MIB);
        assert!(r.take_due().is_empty(), "taken once");
    }
}
