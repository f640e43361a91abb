//! The limit trigger: a snapshot when a process's memory cgroup crosses a
//! share of its limit, before the OOM killer takes the evidence with it.
//! Pure; the agent feeds it each process's usage once a second, and every
//! tick (100 ms) for the processes [`LimitTrigger::watch`] says are near
//! their limit: a fast leak crosses the threshold and is killed between two
//! readings a second apart.

use std::collections::HashMap;

/// Usage must fall this many points below the threshold before the
/// trigger fires again for the same process (usage hovering at the
/// threshold would otherwise fire on every wobble).
const REARM_POINTS: f64 = 5.0;

pub struct LimitTrigger {
    /// Percent of the limit that fires (0: off).
    pub pct: f64,
    /// At most one snapshot per process per this many seconds (the growth
    /// trigger's period).
    pub period_secs: f64,
    /// Per process: when it last fired, and whether it is armed.
    state: HashMap<u32, (Option<f64>, bool)>,
    /// Processes read every tick: near the limit, or heading there fast.
    near: std::collections::BTreeSet<u32>,
}

/// Usage (percent of the limit) from which a process is read every tick.
pub const NEAR_PCT: f64 = 50.0;
/// ...or the seconds to its limit at its current slope under which it is.
pub const NEAR_SECS: f64 = 10.0;

impl LimitTrigger {
    pub fn new(pct: f64, period_secs: f64) -> Self {
        Self {
            pct,
            period_secs,
            state: HashMap::new(),
            near: Default::default(),
        }
    }

    /// The once-a-second reading of `pid`: whether it is to be read every
    /// tick from now on.
    pub fn watch(&mut self, pid: u32, used_pct: Option<f64>, seconds_to_limit: Option<f64>) {
        let near = self.pct > 0.0
            && (used_pct.is_some_and(|u| u >= NEAR_PCT)
                || seconds_to_limit.is_some_and(|s| s <= NEAR_SECS));
        if near {
            self.near.insert(pid);
        } else {
            self.near.remove(&pid);
        }
    }

    /// The processes to read every tick.
    pub fn watched(&self) -> Vec<u32> {
        self.near.iter().copied().collect()
    }

    /// One reading of `pid` at `t` seconds: `used_pct` of its limit
    /// (`None`: no limit). True when a snapshot is due now.
    pub fn observe(&mut self, pid: u32, t: f64, used_pct: Option<f64>) -> bool {
        let Some(used) = used_pct.filter(|_| self.pct > 0.0) else {
            return false;
        };
        let (last, armed) = self.state.entry(pid).or_insert((None, true));
        if used < self.pct - REARM_POINTS {
            *armed = true;
            return false;
        }
        if used < self.pct || !*armed {
            return false;
        }
        if last.is_some_and(|l| t - l < self.period_secs) {
            return false;
        }
        *last = Some(t);
        *armed = false;
        true
    }

    /// Forgets an exited process.
    pub fn forget(&mut self, pid: u32) {
        self.state.remove(&pid);
        self.near.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_near_their_limit_or_heading_there_fast_are_watched() {
        let mut t = LimitTrigger::new(90.0, 300.0);
        t.watch(1, Some(20.0), None);
        t.watch(2, Some(60.0), None);
        t.watch(3, Some(30.0), Some(2.5));
        t.watch(4, None, None);
        assert_eq!(t.watched(), [2, 3]);
        // Usage fell back and the slope flattened: read once a second again.
        t.watch(2, Some(40.0), Some(600.0));
        assert_eq!(t.watched(), [3]);
        t.forget(3);
        assert!(t.watched().is_empty());
        // The trigger off: nothing is read faster.
        let mut off = LimitTrigger::new(0.0, 300.0);
        off.watch(1, Some(99.0), Some(0.1));
        assert!(off.watched().is_empty());
    }

    #[test]
    fn fires_once_per_crossing_within_the_period() {
        let mut t = LimitTrigger::new(90.0, 300.0);
        assert!(!t.observe(1, 0.0, Some(50.0)));
        assert!(!t.observe(1, 1.0, Some(89.9)));
        assert!(t.observe(1, 2.0, Some(90.5)), "crossing fires");
        assert!(!t.observe(1, 3.0, Some(95.0)), "once per crossing");
        // Falls back and crosses again within the period: rate-limited.
        assert!(!t.observe(1, 4.0, Some(80.0)));
        assert!(!t.observe(1, 5.0, Some(91.0)));
        // After the period, a new crossing fires.
        assert!(!t.observe(1, 400.0, Some(70.0)));
        assert!(t.observe(1, 401.0, Some(92.0)));
        // Hovering at the threshold does not re-arm.
        assert!(!t.observe(1, 800.0, Some(88.0)));
        assert!(!t.observe(1, 801.0, Some(90.0)));
    }

    #[test]
    fn no_limit_or_off_never_fires() {
        let mut t = LimitTrigger::new(90.0, 300.0);
        assert!(!t.observe(1, 0.0, None));
        let mut off = LimitTrigger::new(0.0, 300.0);
        assert!(!off.observe(1, 0.0, Some(99.0)));
        // Processes are apart.
        assert!(t.observe(2, 0.0, Some(95.0)));
        assert!(t.observe(3, 0.0, Some(95.0)));
        t.forget(2);
        assert!(
            t.observe(2, 1.0, Some(95.0)),
            "a forgotten process starts over"
        );
    }
}
