//! `memtrace gate`: block a release whose memory growth per unit of load
//! regresses. Exit 0 pass, 1 regression (or a result too noisy to decide,
//! unless `--inconclusive pass`), 2 error.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::front::gate::series::{Metric, Requests};
use crate::front::gate::stats::Verdict;
use crate::front::gate::{self, pct, Config};
use crate::render::report::human_bytes;

/// What an inconclusive result counts as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Inconclusive {
    Pass,
    #[default]
    Fail,
}

#[derive(Debug, clap::Args)]
pub struct GateArgs {
    /// The current build's command, e.g. './svc-v1 -port 8080'.
    #[arg(long, value_name = "CMD ARGS")]
    pub baseline: String,
    /// The build under test, same form.
    #[arg(long, value_name = "CMD ARGS")]
    pub candidate: String,
    /// A load command (run with sh -c) started once each build listens on
    /// a TCP port; the build is stopped when it ends. Without it, each
    /// command is its own load.
    #[arg(long, value_name = "CMD ARGS")]
    pub load: Option<String>,
    /// Runs of each build (they alternate: baseline, candidate, ...).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds per run (default: until the program or the load ends).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Seconds at the start of each run left out of the growth slope
    /// (default: a quarter of the run, at least one second).
    #[arg(long, value_name = "SECS")]
    pub warmup: Option<f64>,
    /// Largest increase of growth per unit that passes, in percent.
    #[arg(long, value_name = "PCT", default_value_t = 8.0)]
    pub max_increase: f64,
    /// rss (resident memory), heap (live Go heap after each GC) or alloc
    /// (bytes allocated).
    #[arg(long, value_enum, default_value_t = Metric::Rss)]
    pub metric: Metric,
    /// Count requests: a pattern whose first group is the count in the
    /// program's output (e.g. 'requests (\d+)'), or a Prometheus counter,
    /// URL#name (e.g. http://127.0.0.1:8080/metrics#requests_total).
    /// Without it, growth is per second.
    #[arg(long, value_name = "REGEX|URL")]
    pub per_request: Option<String>,
    /// What a result too noisy to decide counts as.
    #[arg(long, value_enum, default_value_t = Inconclusive::Fail)]
    pub inconclusive: Inconclusive,
    /// Growth per unit (bytes) below which a baseline counts as flat:
    /// changes smaller than --max-increase of it are noise.
    #[arg(long, value_name = "BYTES", default_value_t = 0.0)]
    pub noise_floor: f64,
    /// heap and alloc metrics: the sampling rate memtrace sets (finer than
    /// record's default: a gate compares a few percent).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub memprofile_rate: u64,
    /// A pprof label key: report each of its values' growth per unit in
    /// both builds and name the value that grew most (with `--metric rss`,
    /// whose page faults carry labels).
    #[arg(long, value_name = "KEY", value_parser = super::label_key)]
    pub per_label: Option<String>,
    /// Where gate.json, summary.md, gate.svg and each run's report go.
    #[arg(long, default_value = "./memtrace-gate")]
    pub out: PathBuf,
}

fn split(what: &str, s: &str) -> anyhow::Result<Vec<String>> {
    let argv = shlex::split(s).with_context(|| format!("--{what} {s:?}: unbalanced quotes"))?;
    if argv.is_empty() {
        bail!("--{what} is empty: give the command and its arguments");
    }
    // The program must exist and be a Go binary before anything runs.
    let path = crate::host::launch::resolve(&argv[0])?;
    crate::binary::goruntime::GoBinary::open(&path)?;
    Ok(argv)
}

/// Runs the gate; the exit code says the verdict.
pub fn run(args: GateArgs) -> anyhow::Result<u8> {
    if args.runs < 2 {
        bail!("--runs must be at least 2: the noise of each build is estimated from its runs");
    }
    if args.per_label.is_some() && args.metric != Metric::Rss {
        bail!("--per-label needs --metric rss: only resident growth is recorded with its goroutine's labels");
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            bail!("--duration must be a positive number of seconds, got {d}");
        }
    }
    let baseline = split("baseline", &args.baseline)?;
    let candidate = split("candidate", &args.candidate)?;
    let requests = args
        .per_request
        .as_deref()
        .map(Requests::parse)
        .transpose()?;
    if args.duration.is_none() && args.load.is_none() {
        eprintln!("memtrace: gate: no --duration: each run lasts until its program exits");
    }
    let warmup = args
        .warmup
        .unwrap_or_else(|| args.duration.map_or(1.0, |d| (d / 4.0).max(1.0)));
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create output directory {}: choose another with --out",
            args.out.display()
        )
    })?;
    let cfg = Config {
        baseline,
        candidate,
        load: args.load,
        runs: args.runs,
        duration: args.duration,
        warmup,
        max_increase_pct: args.max_increase,
        metric: args.metric,
        requests,
        memprofile_rate: args.memprofile_rate,
        noise_floor: args.noise_floor,
        per_label: args.per_label.clone(),
        out: args.out.clone(),
    };
    let total = 2 * cfg.runs;
    let mut done = 0;
    let result = gate::gate(&cfg, &mut |r| {
        done += 1;
        eprintln!(
            "memtrace: gate: run {} ({}, {done}/{total}): {} per {} ({}/s over {:.1} s)",
            r.label,
            r.build,
            human_bytes(r.value.value.max(0.0) as u64),
            if r.value.request_rate.is_some() {
                "request"
            } else {
                "second"
            },
            human_bytes(r.value.per_second.max(0.0) as u64),
            r.value.measured[1] - r.value.measured[0],
        );
    })?;
    let verdict = match result.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL: memory growth per unit regressed",
        Verdict::Inconclusive => "inconclusive: too noisy to decide",
    };
    println!(
        "gate: {verdict}: {} {} (95% bounds {} … {}, threshold {}); baseline {} per unit, candidate {}",
        result.metric.describe(),
        pct(result.increase_pct),
        pct(result.interval_pct[0]),
        pct(result.interval_pct[1]),
        pct(result.max_increase_pct),
        human_bytes(result.baseline.mean.max(0.0) as u64),
        human_bytes(result.candidate.mean.max(0.0) as u64),
    );
    for (function, change) in result.grew_most.iter().take(3) {
        println!(
            "  grew most: {function} +{} per unit",
            human_bytes(*change as u64)
        );
    }
    if let Some(l) = &result.per_label {
        for g in l.values.iter().take(5) {
            println!(
                "  by label {}={}: {} -> {} per unit ({}{}){}",
                l.key,
                g.value,
                human_bytes(g.baseline.max(0.0) as u64),
                human_bytes(g.candidate.max(0.0) as u64),
                if g.change() >= 0.0 { "+" } else { "-" },
                human_bytes(g.change().abs() as u64),
                if l.grew_most.as_ref() == Some(&g.value) {
                    ": grew most"
                } else {
                    ""
                }
            );
        }
    }
    println!(
        "wrote {}, {}, {}",
        args.out.join("gate.json").display(),
        args.out.join("summary.md").display(),
        args.out.join("gate.svg").display()
    );
    Ok(match (result.verdict, args.inconclusive) {
        (Verdict::Pass, _) | (Verdict::Inconclusive, Inconclusive::Pass) => 0,
        _ => 1,
    })
}
