//! `cargo xtask bench`: slowdown of each lens on an allocation-heavy Go
//! fixture, against the untraced run, measured in one go. Runs interleave
//! (untraced, lens A, lens B, …) so machine noise hits every variant alike;
//! the table shows medians. The fixture times its own allocation phase, so
//! memtrace's start-up and report writing are not counted.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

const RUNS: usize = 5;

/// How a variant runs the fixture.
enum Runner {
    Untraced,
    /// `memtrace record --lens LENS -- fixture`.
    Memtrace(&'static str),
    /// `bpftrace -e PROGRAM -c fixture`; `{bin}` stands for the fixture path.
    Bpftrace(&'static str),
}

struct Variant {
    name: &'static str,
    runner: Runner,
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
    const BIG: u64 = 1_000_000;
    // Every-allocation probing costs ~10 µs per hit: a smaller run for it
    // keeps the bench short; ratios are per allocation, so they compare.
    const SMALL: u64 = 100_000;
    let v = |name, runner, objects| Variant {
        name,
        runner,
        objects,
        times: vec![],
    };
    let mut variants = vec![
        v("untraced", Runner::Untraced, BIG),
        v("memtrace rss", Runner::Memtrace("rss"), BIG),
        v(
            "bpftrace page_fault_user+ustack",
            Runner::Bpftrace(
                "tracepoint:exceptions:page_fault_user /pid == cpid/ { @[ustack] = count(); }",
            ),
            BIG,
        ),
        v("memtrace mmap", Runner::Memtrace("mmap"), BIG),
        v("untraced (small)", Runner::Untraced, SMALL),
        v(
            "memtrace alloc-exact (small)",
            Runner::Memtrace("alloc-exact"),
            SMALL,
        ),
        v(
            "bpftrace mallocgc+ustack (small)",
            Runner::Bpftrace(
                "uprobe:{bin}:runtime.mallocgc /pid == cpid/ { @[ustack] = count(); }",
            ),
            SMALL,
        ),
    ];
    for round in 0..RUNS {
        eprintln!("xtask: bench round {}/{RUNS}", round + 1);
        for v in &mut variants {
            let objects = v.objects.to_string();
            let fixture_args = ["-objects", objects.as_str(), "-maps", "0", "-inlined", "0"];
            let output = match v.runner {
                Runner::Untraced => Command::new(fixture).args(fixture_args).output()?,
                Runner::Memtrace(lens) => Command::new(memtrace)
                    .args(["record", "--lens", lens, "--out"])
                    .arg(out.join(lens))
                    .arg("--")
                    .arg(fixture)
                    .args(fixture_args)
                    .output()?,
                Runner::Bpftrace(prog) => Command::new("bpftrace")
                    .arg("-e")
                    .arg(prog.replace("{bin}", &fixture.to_string_lossy()))
                    .arg("-c")
                    .arg(format!("{} {}", fixture.display(), fixture_args.join(" ")))
                    .env("BPFTRACE_MAX_MAP_KEYS", "1000000")
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
    let base = |objects: u64| {
        variants
            .iter()
            .find(|v| matches!(v.runner, Runner::Untraced) && v.objects == objects)
            .map(|v| median(&v.times))
            .expect("an untraced variant per size")
    };
    let (base_big, base_small) = (base(BIG), base(SMALL));
    println!(
        "\nallocation-heavy fixture (64-byte objects kept live), median of {RUNS} interleaved runs"
    );
    println!(
        "{:<34} {:>10} {:>14} {:>10}",
        "variant", "objects", "alloc phase", "slowdown"
    );
    for v in &variants {
        let m = median(&v.times);
        let b = if v.objects == BIG {
            base_big
        } else {
            base_small
        };
        println!(
            "{:<34} {:>10} {:>11.1} ms {:>9.2}x",
            v.name,
            v.objects,
            m / 1e6,
            m / b
        );
    }
    Ok(())
}
