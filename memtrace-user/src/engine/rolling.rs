//! Rolling windows, as the agent keeps them: a window ends every `window`
//! seconds, and a process whose RSS grew by `threshold` bytes within
//! `period` seconds is due a snapshot at the end of that window (so the
//! snapshot holds a whole window of attribution, never a just-reset one).

use std::collections::HashMap;

use crate::front::agent::watch::GrowthWatch;

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
