//! What reading pprof labels costs: the bench's allocation loop under
//! alloc-exact and its goroutine churn under the goroutines lens, as the
//! lens table runs them (no labels in the program) and built to run under
//! a pprof label (`-tags labels`); and a server that makes a label set
//! per request (`pprof.Do` at full speed, four workers), under rss and
//! goroutines, where every new set is copied in the kernel. Each is
//! traced with labels read and with `--no-labels`. Rounds interleave the
//! three runs of each shape; the goal is checked on paired ratios (labels
//! / no labels, each pair from one round).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::bench::{alloc_ns, median, record_command};

const ROUNDS: usize = 9;
/// Paired ratios at or below this count as "nothing measurable".
const GOAL: f64 = 1.03;

struct Shape {
    name: &'static str,
    /// The program runs under a label (else it links none, and the goal
    /// is that the feature costs nothing).
    labeled: bool,
    fixture: &'static str,
    lens: &'static str,
    args: &'static [&'static str],
    /// The fixture's own measure of its work, in ns, from its output.
    measure: fn(&str) -> anyhow::Result<f64>,
}

/// The request server's run: 300 000 requests under a new label set each
/// (`route` and one of 50 `user` values), at full speed.
const SERVER: &[&str] = &[
    "-requests",
    "300000",
    "-pace",
    "0",
    "-users",
    "50",
    "-keep",
    "1",
    "-linger",
    "0s",
];

/// ns per request, from the server's `rate=` (requests a second).
fn per_request_ns(stdout: &str) -> anyhow::Result<f64> {
    let rate: f64 = stdout
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("rate="))
        .and_then(|v| v.parse().ok())
        .context("the server printed no rate=")?;
    Ok(1e9 / rate)
}

const SHAPES: [Shape; 6] = [
    Shape {
        name: "allocation loop, alloc-exact",
        labeled: false,
        fixture: "allocs",
        lens: "alloc-exact",
        args: &["-objects", "100000", "-maps", "0", "-inlined", "0"],
        measure: alloc_ns,
    },
    Shape {
        name: "goroutine churn, goroutines",
        labeled: false,
        fixture: "goroutines",
        lens: "goroutines",
        args: &["-spawn", "100000"],
        measure: alloc_ns,
    },
    Shape {
        name: "... under a label, alloc-exact",
        labeled: true,
        fixture: "allocs-labels",
        lens: "alloc-exact",
        args: &["-objects", "100000", "-maps", "0", "-inlined", "0"],
        measure: alloc_ns,
    },
    Shape {
        name: "... under a label, goroutines",
        labeled: true,
        fixture: "goroutines-labels",
        lens: "goroutines",
        args: &["-spawn", "100000"],
        measure: alloc_ns,
    },
    Shape {
        name: "a set per request, rss",
        labeled: true,
        fixture: "labels",
        lens: "rss",
        args: SERVER,
        measure: per_request_ns,
    },
    Shape {
        name: "a set per request, goroutines",
        labeled: true,
        fixture: "labels",
        lens: "goroutines",
        args: SERVER,
        measure: per_request_ns,
    },
];

/// One timed run: the fixture's own measure of its work.
fn timed(mut cmd: Command, measure: fn(&str) -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let o = cmd.output()?;
    if !o.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&o.stderr));
    }
    measure(&String::from_utf8_lossy(&o.stdout))
}

pub fn run(memtrace: &Path, fixtures: &Path, out: &Path) -> anyhow::Result<()> {
    println!(
        "\npprof labels: what reading them costs ({ROUNDS} rounds; the loop runs under a label)"
    );
    println!(
        "{:<32} {:>10} {:>12} {:>12} {:>22}",
        "shape", "untraced", "no labels", "labels", "labels / no labels"
    );
    for s in &SHAPES {
        let bin = fixtures.join(s.fixture);
        let args: Vec<String> = s.args.iter().map(|a| a.to_string()).collect();
        let dir = out.join(format!("labels-{}-{}", s.fixture, s.lens));
        let dir_off = out.join(format!("no-labels-{}-{}", s.fixture, s.lens));
        let (mut plain, mut off, mut on) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Start one later each round, so drift hits every run alike.
            for i in 0..3 {
                match (round + i) % 3 {
                    0 => plain.push(timed(
                        {
                            let mut c = Command::new(&bin);
                            c.args(&args);
                            c
                        },
                        s.measure,
                    )?),
                    1 => off.push(timed(
                        record_command(memtrace, s.lens, &["--no-labels"], &dir_off, &bin, &args),
                        s.measure,
                    )?),
                    _ => on.push(timed(
                        record_command(memtrace, s.lens, &[], &dir, &bin, &args),
                        s.measure,
                    )?),
                }
            }
        }
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
        let sets = summary["labels"]["sets"].as_u64().unwrap_or(0);
        if s.labeled != (sets > 0) {
            bail!("{}: the traced runs read {sets} label sets", s.name);
        }
        let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        let m = median(&ratios);
        println!(
            "{:<32} {:>9.1}µs {:>10.2}x {:>10.2}x {:>9.3} ({lo:.2}-{hi:.2}) {}",
            s.name,
            median(&plain) / 1e3,
            median(&off) / median(&plain),
            median(&on) / median(&plain),
            m,
            if m <= GOAL { "met" } else { "MISSED" }
        );
    }
    println!("(goal: labels / no labels <= {GOAL}, paired per round; under a label an event reads one word of the target and looks its set up in a kernel map; the first event under a set in a GC cycle copies the set; the server's time is per request)");
    Ok(())
}
