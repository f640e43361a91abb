//! `cargo xtask bench`: slowdown of each lens on an allocation-heavy Go
//! fixture, against the untraced run, measured in one go. Runs interleave
//! (untraced, lens A, lens B, …) so machine noise hits every variant alike;
//! the table shows medians. The fixture times its own allocation phase, so
//! memtrace's start-up and report writing are not counted.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

const RUNS: usize = 5;

struct Variant {
    name: &'static str,
    lens: Option<&'static str>,
    objects: u64,
    times: Vec<f64>,
}

fn alloc_ns(stdout: &str) -> anyhow::Result<f64> {
    stdout
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("alloc_ns="))
        .and_then(|v| v.parse::<f64>().ok())
        .context("fixture printed no alloc_ns=")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

pub fn run(memtrace: &Path, fixture: &Path, out: &Path) -> anyhow::Result<()> {
    // Every-allocation probing is ~10 µs per hit: a smaller run for it keeps
    // the bench short; ratios are per allocation so they stay comparable.
    let mut variants = vec![
        Variant {
            name: "untraced",
            lens: None,
            objects: 1_000_000,
            times: vec![],
        },
        Variant {
            name: "mmap",
            lens: Some("mmap"),
            objects: 1_000_000,
            times: vec![],
        },
        Variant {
            name: "untraced (small)",
            lens: None,
            objects: 100_000,
            times: vec![],
        },
        Variant {
            name: "alloc-exact (small)",
            lens: Some("alloc-exact"),
            objects: 100_000,
            times: vec![],
        },
    ];
    for round in 0..RUNS {
        eprintln!("xtask: bench round {}/{RUNS}", round + 1);
        for v in &mut variants {
            let objects = v.objects.to_string();
            let fixture_args = ["-objects", objects.as_str(), "-maps", "0", "-inlined", "0"];
            let output = match v.lens {
                None => Command::new(fixture).args(fixture_args).output()?,
                Some(lens) => Command::new(memtrace)
                    .args(["record", "--lens", lens, "--out"])
                    .arg(out.join(lens))
                    .arg("--")
                    .arg(fixture)
                    .args(fixture_args)
                    .output()?,
            };
            if !output.status.success() {
                bail!(
                    "{} run failed: {}",
                    v.name,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            v.times
                .push(alloc_ns(&String::from_utf8_lossy(&output.stdout))?);
        }
    }
    let base_big = median(&variants[0].times);
    let base_small = median(&variants[2].times);
    println!("\nallocation-heavy fixture (64-byte objects), median of {RUNS} interleaved runs");
    println!(
        "{:<22} {:>10} {:>14} {:>10}",
        "variant", "objects", "alloc phase", "slowdown"
    );
    for v in &variants {
        let m = median(&v.times);
        let base = if v.objects == 1_000_000 {
            base_big
        } else {
            base_small
        };
        println!(
            "{:<22} {:>10} {:>11.1} ms {:>9.2}x",
            v.name,
            v.objects,
            m / 1e6,
            m / base
        );
    }
    Ok(())
}
