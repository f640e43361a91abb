//! The numbers behind a gate's verdict.
//!
//! One run's growth is the Theil–Sen slope of its memory series after the
//! warm-up: the median of the slopes between every pair of samples. The Go
//! heap grows in steps (a GC cycle, a new arena, the scavenger giving pages
//! back), and a least-squares line bends towards whichever step falls near
//! an end of the window; the median of pairwise slopes follows the trend and
//! shrugs off steps and outliers (up to ~29% of the points).
//!
//! The runs of each build give a mean and a spread. The candidate's change
//! against the baseline is bounded with Welch's t interval (the two builds
//! need not be equally noisy), at 95% confidence on each side: a regression
//! is declared when even the interval's lower end exceeds the threshold, a
//! pass when even its upper end stays within it, and anything between is
//! too noisy to decide.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF as _, StudentsT};

/// Most points used for a slope (pairs grow with the square).
const MAX_POINTS: usize = 600;

/// The Theil–Sen slope of `points` (x, y): the median slope over all pairs
/// with distinct x. `None` with fewer than two distinct x.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<f64> {
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let p: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    let mut slopes = Vec::with_capacity(p.len() * p.len() / 2);
    for (i, a) in p.iter().enumerate() {
        for b in &p[i + 1..] {
            let dx = b.0 - a.0;
            if dx.abs() > f64::EPSILON {
                slopes.push((b.1 - a.1) / dx);
            }
        }
    }
    median(&mut slopes)
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn variance(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

/// What the gate concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

/// The candidate against the baseline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub baseline_mean: f64,
    pub candidate_mean: f64,
    /// (candidate − baseline) / baseline, in percent.
    pub increase_pct: f64,
    /// Its confidence interval, in percent: [low, high].
    pub interval_pct: [f64; 2],
    /// Each side's confidence (0.95: a one-sided 95% bound each way).
    pub confidence: f64,
    pub verdict: Verdict,
}

/// Why two samples cannot be compared.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error(
        "each build needs at least 2 runs to estimate its noise (got {baseline} and {candidate})"
    )]
    TooFewRuns { baseline: usize, candidate: usize },
}

/// Compares the per-run values of the two builds against `max_increase_pct`.
/// The change is taken relative to the baseline's mean, or to `floor` when
/// that is larger (a baseline that does not grow: any change below
/// `floor × max_increase_pct` is noise).
pub fn compare(
    baseline: &[f64],
    candidate: &[f64],
    max_increase_pct: f64,
    floor: f64,
) -> Result<Comparison, StatsError> {
    let (na, nb) = (baseline.len(), candidate.len());
    if na < 2 || nb < 2 {
        return Err(StatsError::TooFewRuns {
            baseline: na,
            candidate: nb,
        });
    }
    const CONFIDENCE: f64 = 0.95;
    let (ma, mb) = (mean(baseline), mean(candidate));
    let (va, vb) = (
        variance(baseline) / na as f64,
        variance(candidate) / nb as f64,
    );
    let se = (va + vb).sqrt();
    // Welch–Satterthwaite degrees of freedom.
    let df = if se > 0.0 {
        (va + vb).powi(2)
            / (va.powi(2) / (na - 1) as f64 + vb.powi(2) / (nb - 1) as f64).max(f64::MIN_POSITIVE)
    } else {
        (na + nb - 2) as f64
    };
    let t = StudentsT::new(0.0, 1.0, df.max(1.0))
        .map(|d| d.inverse_cdf(CONFIDENCE))
        .unwrap_or(6.314);
    let base = ma.abs().max(floor).max(f64::MIN_POSITIVE);
    let pct = |d: f64| d / base * 100.0;
    let diff = mb - ma;
    let (lo, hi) = (pct(diff - t * se), pct(diff + t * se));
    let verdict = if lo > max_increase_pct {
        Verdict::Fail
    } else if hi <= max_increase_pct {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    Ok(Comparison {
        baseline_mean: ma,
        candidate_mean: mb,
        increase_pct: pct(diff),
        interval_pct: [lo, hi],
        confidence: CONFIDENCE,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_follows_the_trend_through_steps() {
        // 2 units per second, but the series moves in steps of 8 every 4 s
        // (a heap that grows an arena at a time), plus one wild outlier.
        let mut pts: Vec<(f64, f64)> = (0..100)
            .map(|i| {
                let t = i as f64 * 0.1;
                (t, 8.0 * (t / 4.0).floor())
            })
            .collect();
        pts[50].1 = 1e6;
        let s = theil_sen(&pts).unwrap();
        assert!((s - 2.0).abs() < 0.5, "{s}");
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        assert_eq!(theil_sen(&line), Some(3.0));
        assert_eq!(theil_sen(&[(1.0, 2.0)]), None);
        assert_eq!(theil_sen(&[(1.0, 2.0), (1.0, 5.0)]), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }

    #[test]
    fn verdicts() {
        let base = [100.0, 102.0, 98.0, 101.0, 99.0];
        // The same build: within noise, confidently under 8%.
        let same = compare(&base, &[99.0, 101.0, 100.0, 102.0, 98.0], 8.0, 0.0).unwrap();
        assert_eq!(same.verdict, Verdict::Pass, "{same:?}");
        assert!(same.interval_pct[0] < 0.0 && same.interval_pct[1] < 8.0);
        // +25%: confidently over.
        let up = compare(&base, &[125.0, 127.0, 123.0, 126.0, 124.0], 8.0, 0.0).unwrap();
        assert_eq!(up.verdict, Verdict::Fail, "{up:?}");
        assert!((up.increase_pct - 25.0).abs() < 0.01);
        // +2%: under the threshold.
        let small = compare(&base, &[102.0, 104.0, 100.0, 103.0, 101.0], 8.0, 0.0).unwrap();
        assert_eq!(small.verdict, Verdict::Pass, "{small:?}");
        // Noise wider than the threshold: cannot tell.
        let noisy = compare(&base, &[80.0, 130.0, 110.0, 95.0, 125.0], 8.0, 0.0).unwrap();
        assert_eq!(noisy.verdict, Verdict::Inconclusive, "{noisy:?}");
        // A baseline that does not grow: judged against the floor.
        let flat = compare(&[0.0, 1.0, -1.0], &[1.0, 0.0, 2.0], 8.0, 100.0).unwrap();
        assert_eq!(flat.verdict, Verdict::Pass, "{flat:?}");
        assert_eq!(
            compare(&[1.0], &[1.0, 2.0], 8.0, 0.0),
            Err(StatsError::TooFewRuns {
                baseline: 1,
                candidate: 2
            })
        );
    }
}
