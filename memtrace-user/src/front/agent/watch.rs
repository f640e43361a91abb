//! When to take an automatic snapshot: a process's RSS grew by at least
//! `threshold` bytes over the last `period`, and no snapshot of it was taken
//! within a period.

use std::collections::VecDeque;

/// RSS samples of one process, in seconds since the agent started.
#[derive(Debug, Default)]
pub struct GrowthWatch {
    samples: VecDeque<(f64, u64)>,
    last_snapshot: Option<f64>,
}

impl GrowthWatch {
    /// Adds a sample; returns the growth over the period if a snapshot is due.
    pub fn sample(&mut self, t: f64, rss: u64, period: f64, threshold: u64) -> Option<u64> {
        self.samples.push_back((t, rss));
        // Keep one sample at or before the period's start.
        while self.samples.len() > 2 && self.samples[1].0 <= t - period {
            self.samples.pop_front();
        }
        let &(t0, rss0) = self.samples.front()?;
        if t - t0 < period {
            return None;
        }
        let growth = rss.saturating_sub(rss0);
        let quiet = self.last_snapshot.is_none_or(|s| t - s >= period);
        if growth >= threshold && quiet {
            self.last_snapshot = Some(t);
            Some(growth)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn triggers_on_growth_over_the_period_only() {
        let mut w = GrowthWatch::default();
        // 10 MiB/s for 10 s: fires once the period is covered.
        let fired: Vec<f64> = (0..=30)
            .filter_map(|s| {
                let t = f64::from(s);
                w.sample(t, 100 * MIB + s as u64 * 10 * MIB, 10.0, 50 * MIB)
                    .map(|_| t)
            })
            .collect();
        assert_eq!(fired, vec![10.0, 20.0, 30.0]);
    }

    #[test]
    fn steady_or_slow_growth_never_triggers() {
        let mut w = GrowthWatch::default();
        for s in 0..100 {
            let noise = if s % 2 == 0 { MIB } else { 0 };
            assert_eq!(
                w.sample(f64::from(s), 200 * MIB + noise, 10.0, 50 * MIB),
                None
            );
        }
        let mut slow = GrowthWatch::default();
        for s in 0..100u64 {
            assert_eq!(slow.sample(s as f64, s * MIB, 10.0, 50 * MIB), None);
        }
    }
}
