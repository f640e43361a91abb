//! `memtrace gate`: does a candidate build's memory grow faster per unit
//! of load than the baseline's? Runs alternate (A B A B …) so that drift on
//! the machine falls on both builds alike; each run is a launch-mode
//! session (`run`), its growth a robust slope (`series`), the verdict a
//! confidence interval on the difference (`stats`). The outputs name the
//! code that grew: a differential flame graph of the metric's lens,
//! candidate against baseline, per unit.

pub mod run;
pub mod series;
pub mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::profile::FrameMode;
use crate::render::report::human_bytes;
use crate::render::{self, diff};
use run::{RunError, RunOutcome, RunSpec};
use series::{Metric, Requests, RunValue, SeriesError};
use stats::{Comparison, StatsError, Verdict};

/// What to compare, and how.
pub struct Config {
    pub baseline: Vec<String>,
    pub candidate: Vec<String>,
    pub load: Option<String>,
    pub runs: usize,
    pub duration: Option<f64>,
    /// Seconds of each run left out of the slope.
    pub warmup: f64,
    pub max_increase_pct: f64,
    pub metric: Metric,
    pub requests: Option<Requests>,
    pub memprofile_rate: u64,
    /// Growth per unit below which a baseline counts as not growing.
    pub noise_floor: f64,
    /// A pprof label key whose values' growth is compared too.
    pub per_label: Option<String>,
    pub out: PathBuf,
}

/// Why a gate could not decide.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("run {label}: {cause}")]
    Series { label: String, cause: SeriesError },
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One run in the report.
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub label: String,
    pub build: &'static str,
    #[serde(flatten)]
    pub value: RunValue,
    pub requests: Option<f64>,
    pub secs: f64,
    pub report: PathBuf,
}

/// What a gate found.
#[derive(Debug, Serialize)]
pub struct GateResult {
    pub verdict: Verdict,
    pub increase_pct: f64,
    pub interval_pct: [f64; 2],
    pub confidence: f64,
    pub max_increase_pct: f64,
    pub metric: Metric,
    /// e.g. `bytes/request`.
    pub unit: String,
    pub baseline: BuildResult,
    pub candidate: BuildResult,
    pub runs: Vec<RunRecord>,
    /// The program's functions whose per-unit growth rose most (the
    /// deepest frame of its own code in each stack): (function, change).
    pub grew_most: Vec<(String, i64)>,
    /// With `--per-label`: each value's growth per unit in both builds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_label: Option<PerLabel>,
}

/// Growth per unit by the values of one pprof label key.
#[derive(Debug, Serialize)]
pub struct PerLabel {
    pub key: String,
    /// Largest increase first.
    pub values: Vec<LabelGrowth>,
    /// The value whose growth per unit rose most, if any rose.
    pub grew_most: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct LabelGrowth {
    pub value: String,
    pub baseline: f64,
    pub candidate: f64,
}

impl LabelGrowth {
    pub fn change(&self) -> f64 {
        self.candidate - self.baseline
    }
}

/// The mean over runs of each value of label `key`'s growth per unit.
fn label_means(key: &str, runs: &[(RunOutcome, f64)]) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (o, units) in runs {
        let Some(p) = o.profile.as_ref() else {
            continue;
        };
        for (value, n) in p.by_label().remove(key).unwrap_or_default() {
            *out.entry(value).or_default() += n as f64 / units / runs.len() as f64;
        }
    }
    out
}

/// Each value of `key` in either build, by how much its growth rose.
fn per_label(key: &str, base: &[(RunOutcome, f64)], cand: &[(RunOutcome, f64)]) -> PerLabel {
    let (b, c) = (label_means(key, base), label_means(key, cand));
    let mut values: Vec<LabelGrowth> = b
        .keys()
        .chain(c.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|v| LabelGrowth {
            value: v.clone(),
            baseline: b.get(v).copied().unwrap_or(0.0),
            candidate: c.get(v).copied().unwrap_or(0.0),
        })
        .collect();
    values.sort_by(|x, y| y.change().total_cmp(&x.change()));
    PerLabel {
        key: key.to_string(),
        grew_most: values
            .first()
            .filter(|g| g.change() > 0.0)
            .map(|g| g.value.clone()),
        values,
    }
}

#[derive(Debug, Serialize)]
pub struct BuildResult {
    pub command: Vec<String>,
    pub values: Vec<f64>,
    pub mean: f64,
}

/// Runs the gate; `progress` hears about each run as it ends.
pub fn gate(cfg: &Config, progress: &mut dyn FnMut(&RunRecord)) -> Result<GateResult, GateError> {
    let mut records = Vec::new();
    let mut by_build: [Vec<(RunOutcome, f64)>; 2] = [Vec::new(), Vec::new()];
    for i in 0..cfg.runs {
        for (b, argv) in [&cfg.baseline, &cfg.candidate].into_iter().enumerate() {
            let label = format!("{}{}", ["A", "B"][b], i + 1);
            let dir = cfg.out.join("runs").join(&label);
            let spec = RunSpec {
                label: label.clone(),
                argv,
                load: cfg.load.as_deref(),
                duration: cfg.duration,
                metric: cfg.metric,
                requests: cfg.requests.as_ref(),
                memprofile_rate: cfg.memprofile_rate,
                dir: dir.clone(),
            };
            let outcome = run::run(&spec)?;
            let value = series::value(
                &outcome.samples,
                cfg.warmup,
                cfg.requests.is_some(),
                cfg.metric,
            )
            .map_err(|cause| GateError::Series {
                label: label.clone(),
                cause,
            })?;
            let record = RunRecord {
                label,
                build: ["baseline", "candidate"][b],
                requests: outcome.requests,
                secs: outcome.secs,
                report: dir,
                value,
            };
            progress(&record);
            // Profiles are normalized by the run's whole units (requests or
            // seconds), as the lens covers the whole run.
            let units = match (cfg.requests.is_some(), outcome.requests) {
                (true, Some(r)) if r > 0.0 => r,
                _ => outcome.secs.max(1e-9),
            };
            by_build[b].push((outcome, units));
            records.push(record);
        }
    }
    let values = |build: &str| -> Vec<f64> {
        records
            .iter()
            .filter(|r| r.build == build)
            .map(|r| r.value.value)
            .collect()
    };
    let (a, b) = (values("baseline"), values("candidate"));
    let cmp = stats::compare(&a, &b, cfg.max_increase_pct, cfg.noise_floor)?;
    let unit = if cfg.requests.is_some() {
        "bytes/request"
    } else {
        "bytes/s"
    };
    let [base_runs, cand_runs] = by_build;
    let by_label = cfg
        .per_label
        .as_deref()
        .map(|k| per_label(k, &base_runs, &cand_runs));
    let (before, after) = (per_unit(&base_runs), per_unit(&cand_runs));
    let deltas = diff::merge(&before, &after).unwrap_or_default();
    // By the program's own code: the deepest frame that is not the
    // runtime's (growth shows up in memclr or the allocator, called from it).
    let mut by_own: BTreeMap<String, i64> = BTreeMap::new();
    for d in &deltas {
        let frames: Vec<&str> = d.stack.split(';').collect();
        let own = frames
            .iter()
            .rev()
            .find(|f| !crate::render::report::is_plumbing(f))
            .or(frames.last())
            .map_or(String::new(), |f| f.to_string());
        *by_own.entry(own).or_default() += d.change() as i64;
    }
    let mut grew: Vec<(String, i64)> = by_own.into_iter().filter(|(_, c)| *c > 0).collect();
    grew.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
    grew.truncate(10);
    let result = GateResult {
        verdict: cmp.verdict,
        increase_pct: cmp.increase_pct,
        interval_pct: cmp.interval_pct,
        confidence: cmp.confidence,
        max_increase_pct: cfg.max_increase_pct,
        metric: cfg.metric,
        unit: unit.to_string(),
        baseline: BuildResult {
            command: cfg.baseline.clone(),
            values: a,
            mean: cmp.baseline_mean,
        },
        candidate: BuildResult {
            command: cfg.candidate.clone(),
            values: b,
            mean: cmp.candidate_mean,
        },
        runs: records,
        grew_most: grew,
        per_label: by_label,
    };
    write_outputs(cfg, &result, &cmp, &deltas)?;
    Ok(result)
}

/// The mean over runs of each stack's value per unit, as folded lines.
fn per_unit(runs: &[(RunOutcome, f64)]) -> String {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for (o, units) in runs {
        let Some(p) = o.profile.as_ref() else {
            continue;
        };
        for s in p.named(FrameMode::Func) {
            *sums.entry(render::folded::stack(&s.names)).or_default() +=
                s.value as f64 / units / runs.len() as f64;
        }
    }
    sums.into_iter()
        .filter(|(_, v)| v.round() > 0.0)
        .map(|(k, v)| format!("{k} {}\n", v.round() as u64))
        .collect()
}

fn write(path: &Path, data: &[u8]) -> Result<(), GateError> {
    std::fs::write(path, data).map_err(|source| GateError::Write {
        path: path.to_owned(),
        source,
    })
}

fn write_outputs(
    cfg: &Config,
    r: &GateResult,
    cmp: &Comparison,
    deltas: &[diff::Delta],
) -> Result<(), GateError> {
    let json = serde_json::to_vec_pretty(r).expect("plain data");
    write(&cfg.out.join("gate.json"), &json)?;
    write(
        &cfg.out.join("summary.md"),
        summary_md(cfg, r, cmp).as_bytes(),
    )?;
    if !deltas.is_empty() {
        let title = format!(
            "memtrace gate: candidate vs baseline, {} per {} (red grew)",
            r.metric.describe(),
            if cfg.requests.is_some() {
                "request"
            } else {
                "second"
            }
        );
        let svg = diff::render(deltas, &title, &r.unit).map_err(|e| GateError::Write {
            path: cfg.out.join("gate.svg"),
            source: std::io::Error::other(e.to_string()),
        })?;
        write(&cfg.out.join("gate.svg"), &svg)?;
    }
    Ok(())
}

/// `+12.3%`.
pub fn pct(v: f64) -> String {
    format!("{v:+.1}%")
}

fn summary_md(cfg: &Config, r: &GateResult, cmp: &Comparison) -> String {
    let mut s = String::new();
    let verdict = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Inconclusive => "INCONCLUSIVE",
    };
    s += &format!(
        "## memtrace gate: {verdict}\n\n{} per unit changed by **{}** (95% bounds {} … {}; threshold {}).\n\n",
        r.metric.describe(),
        pct(r.increase_pct),
        pct(cmp.interval_pct[0]),
        pct(cmp.interval_pct[1]),
        pct(r.max_increase_pct)
    );
    s += &format!(
        "Metric: {}, {} runs of each build, alternating; unit: {}.\n\n",
        r.metric.name(),
        cfg.runs,
        r.unit
    );
    s += "| run | build | growth per unit | growth per second | requests/s |\n|---|---|---|---|---|\n";
    for run in &r.runs {
        s += &format!(
            "| {} | {} | {} | {}/s | {} |\n",
            run.label,
            run.build,
            human_bytes(run.value.value.max(0.0) as u64),
            human_bytes(run.value.per_second.max(0.0) as u64),
            run.value
                .request_rate
                .map_or("-".to_string(), |v| format!("{v:.0}"))
        );
    }
    s += &format!(
        "| **mean** | baseline | {} | | |\n| **mean** | candidate | {} | | |\n\n",
        human_bytes(r.baseline.mean.max(0.0) as u64),
        human_bytes(r.candidate.mean.max(0.0) as u64)
    );
    if !r.grew_most.is_empty() {
        s += "### Code that grew most (candidate vs baseline, per unit)\n\n| change | function |\n|---|---|\n";
        for (function, change) in &r.grew_most {
            s += &format!("| +{} | `{function}` |\n", human_bytes(*change as u64));
        }
        s += "\nThe differential flame graph is `gate.svg`; each run's report is under `runs/`.\n";
    }
    if let Some(l) = &r.per_label {
        s += &format!(
            "\n### By label `{}` (per unit)\n\n| value | baseline | candidate | change |\n|---|---|---|---|\n",
            l.key
        );
        for g in &l.values {
            s += &format!(
                "| `{}` | {} | {} | {}{} |\n",
                g.value,
                human_bytes(g.baseline.max(0.0) as u64),
                human_bytes(g.candidate.max(0.0) as u64),
                if g.change() >= 0.0 { "+" } else { "-" },
                human_bytes(g.change().abs() as u64)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lens::Lens;
    use crate::model::profile::{Locations, Profile, Sample};

    /// A run whose rss grew `a` bytes under route=/a and `b` under /b.
    fn run(a: u64, b: u64, units: f64) -> (RunOutcome, f64) {
        let mut locs = Locations::default();
        let leaf = locs.named("main.handle");
        let sample = |route: &str, value| Sample {
            stack: vec![leaf],
            value,
            labels: vec![("route".into(), route.into())],
            ..Sample::default()
        };
        let p = Profile::new(
            Lens::Rss,
            locs.locations,
            Vec::new(),
            [sample("/a", a), sample("/b", b)],
            1.0,
            "t".into(),
        );
        let outcome = RunOutcome {
            samples: Default::default(),
            profile: Some(p),
            requests: Some(units),
            secs: 1.0,
        };
        (outcome, units)
    }

    #[test]
    fn the_label_value_that_grew_is_named() {
        let base = [run(1000, 1000, 10.0), run(1200, 800, 10.0)];
        let cand = [run(1000, 3000, 10.0), run(1000, 3400, 10.0)];
        let l = per_label("route", &base, &cand);
        assert_eq!(l.grew_most.as_deref(), Some("/b"));
        assert_eq!(l.values[0].value, "/b");
        assert_eq!((l.values[0].baseline, l.values[0].candidate), (90.0, 320.0));
        assert!(l.values[1].change().abs() < 20.0, "{:?}", l.values[1]);
        let none = per_label("tenant", &base, &cand);
        assert!(none.values.is_empty() && none.grew_most.is_none());
    }
}
