//! `cargo xtask bench`, the lens table: each lens's slowdown on three
//! program shapes, against the untraced run and against bpftrace doing the
//! same probe, measured in one go.
//! - an allocation-heavy loop that keeps its objects live;
//! - goroutine churn;
//! - a GC-heavy program: short-lived lists, hundreds of GC cycles a
//!   second, a small live heap whose pages are swept, reused, scavenged and
//!   faulted in again.
//!
//! Runs interleave (untraced, lens A, lens B, …, starting one later each
//! round) so machine noise hits every variant alike; the table shows
//! medians. The fixture times its own allocation phase, so memtrace's
//! start-up and report writing are not counted. For memtrace rows it also
//! samples memtrace's own CPU time and peak RSS from /proc while it runs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use crate::bench::{alloc_ns, median, record_command, run_sampled, RUNS};
use crate::bench::{base, Runner, Shape, Variant};

/// Rounds for the rss comparison (untraced, memtrace rss with and without
/// its per-page frame read, memtrace and bpftrace with fault probes that
/// count nothing, bpftrace on the fault tracepoint with stacks): its goal
/// (≤ 1.05× untraced) is smaller than the ±10–30% the timed phase moves
/// from run to run on the project VM, so a median of five cannot tell it;
/// the extra rounds interleave those six.
const RSS_ROUNDS: usize = 15;
const BIG: u64 = 1_000_000;
/// Every-allocation probing costs ~10 µs per hit: a smaller run keeps the
/// bench short; ratios are per allocation, so they compare.
const SMALL: u64 = 100_000;
/// Goroutines started and joined by the goroutine-churn fixture.
const SPAWN: u64 = 100_000;

/// The lens table; `gc_heavy_only` runs the GC-heavy shape alone.
pub fn run(
    memtrace: &Path,
    fixtures: &Path,
    out: &Path,
    gc_heavy_only: bool,
) -> anyhow::Result<()> {
    let allocs = fixtures.join("allocs");
    let spawner = fixtures.join("goroutines");
    let bpftrace_alloc = "uprobe:{bin}:runtime.mallocgc, uprobe:{bin}:runtime.mallocgcTinySC*, \
         uprobe:{bin}:runtime.mallocgcSmallNoScanSC*, uprobe:{bin}:runtime.mallocgcSmallScanNoHeaderSC* \
         /pid == cpid/ { @[ustack] = count(); }";
    let v = |name, runner, objects| Variant {
        name,
        runner,
        rss: false,
        shape: Shape::Allocs,
        objects,
        times: vec![],
        cpu: vec![],
        peak_rss_kib: vec![],
        events: vec![],
    };
    let rss = |v: Variant| Variant { rss: true, ..v };
    let mut variants = vec![
        rss(v("untraced", Runner::Untraced, BIG)),
        rss(v("memtrace rss", Runner::Memtrace("rss", &[]), BIG)),
        // The eBPF log on: its statements are in the program but nothing
        // rare happens, so it should cost what the default (off) does.
        rss(v(
            "memtrace rss, --ebpf-log",
            Runner::Memtrace("rss", &["--ebpf-log"]),
            BIG,
        )),
        // What the rss lens would cost without reading each merged fault's
        // frame (inexact: see `run_check`).
        rss(v(
            "memtrace rss, runs unchecked",
            Runner::Memtrace("rss", &["--unchecked-fault-runs"]),
            BIG,
        )),
        // The floor: the fault probes attached, each checking its target
        // and returning (memtrace's BTF tracepoint; bpftrace's classic one,
        // counting faults). What observing every fault costs before any
        // attribution.
        rss(v(
            "memtrace rss, floor (probe only)",
            Runner::Memtrace("rss", &["--fault-probe-floor"]),
            BIG,
        )),
        rss(v(
            "bpftrace page_fault_user, count only",
            Runner::Bpftrace(
                "tracepoint:exceptions:page_fault_user /pid == cpid/ { @ = count(); }",
            ),
            BIG,
        )),
        rss(v(
            "bpftrace page_fault_user+ustack",
            Runner::Bpftrace(
                "tracepoint:exceptions:page_fault_user /pid == cpid/ { @[ustack] = count(); }",
            ),
            BIG,
        )),
        v("memtrace mmap", Runner::Memtrace("mmap", &[]), BIG),
        v("memtrace alloc", Runner::Memtrace("alloc", &[]), BIG),
        v("memtrace heap", Runner::Memtrace("heap", &[]), BIG),
        v("untraced (small)", Runner::Untraced, SMALL),
        v(
            "memtrace alloc-exact (small)",
            Runner::Memtrace("alloc-exact", &[]),
            SMALL,
        ),
        v(
            "memtrace alloc rate=1 (small)",
            Runner::Memtrace("alloc", &["--memprofile-rate", "1"]),
            SMALL,
        ),
        v(
            "bpftrace allocators+ustack (small)",
            Runner::Bpftrace(bpftrace_alloc),
            SMALL,
        ),
    ];
    // Goroutine churn: start and join SPAWN goroutines.
    let bpftrace_go = "uprobe:{bin}:runtime.newproc1 /pid == cpid/ { @[ustack] = count(); } \
         uprobe:{bin}:runtime.goexit0 /pid == cpid/ { @exits = count(); }";
    for (name, runner) in [
        ("untraced (goroutines)", Runner::Untraced),
        ("memtrace goroutines", Runner::Memtrace("goroutines", &[])),
        (
            "bpftrace newproc1+goexit0 (goroutines)",
            Runner::Bpftrace(bpftrace_go),
        ),
    ] {
        variants.push(Variant {
            shape: Shape::Goroutines,
            ..v(name, runner, SPAWN)
        });
    }
    if gc_heavy_only {
        variants.clear();
    }
    variants.extend(crate::bench::gc_heavy::variants(bpftrace_alloc));
    rounds(&mut variants, memtrace, &allocs, &spawner, out)?;
    print_table(&variants);
    crate::bench::gc_heavy::verdicts(&variants);
    probe_costs(memtrace, &allocs, &spawner, out, &variants)
}

/// Runs every variant, interleaved: [`RUNS`] rounds, [`RSS_ROUNDS`] for
/// the variants marked `rss`.
fn rounds(
    variants: &mut [Variant],
    memtrace: &Path,
    allocs: &Path,
    spawner: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    for round in 0..RSS_ROUNDS {
        // Rotate the order every round, so no variant always runs first.
        let order: Vec<usize> = (0..variants.len())
            .filter(|&i| round < RUNS || variants[i].rss)
            .collect();
        eprintln!(
            "xtask: bench round {}/{RSS_ROUNDS}{}",
            round + 1,
            if round < RUNS {
                ""
            } else {
                " (rss comparison)"
            }
        );
        let n = order.len();
        for k in 0..n {
            let i = order[(k + round) % n];
            // Let the previous run's teardown (probe detach, RCU frees) settle.
            std::thread::sleep(Duration::from_millis(700));
            run_variant(&mut variants[i], memtrace, allocs, spawner, out)?;
        }
    }
    Ok(())
}

fn print_table(variants: &[Variant]) {
    println!(
        "\nallocation-heavy fixture (64-byte objects kept live), goroutine churn (rows marked \
         `goroutines`: `objects` is goroutines started and joined) and a GC-heavy program (rows marked \
         `gc-heavy`: `objects` is 64 KiB lists built and dropped); median of {RUNS} interleaved runs, \
         {RSS_ROUNDS} for the rss comparison (the first six rows) and the gc-heavy rows"
    );
    println!(
        "{:<36} {:>9} {:>12} {:>9} {:>15} {:>10} {:>10} {:>11} {:>7} {:>9}",
        "variant",
        "objects",
        "timed phase",
        "slowdown",
        "(min … max)",
        "own CPU",
        "peak RSS",
        "events/s",
        "drops",
        "ns/event"
    );
    for v in variants {
        let m = median(&v.times);
        let b = base(variants, v.objects, v.shape);
        let (cpu, rss) = if v.cpu.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let rss = median(&v.peak_rss_kib.iter().map(|k| *k as f64).collect::<Vec<_>>());
            (
                format!("{:.2} core", median(&v.cpu)),
                format!("{:.0} MiB", rss / 1024.0),
            )
        };
        let (eps, drops, per_event) = if v.events.is_empty() {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            let eps = median(&v.events.iter().map(|e| e.0).collect::<Vec<_>>());
            let events = median(&v.events.iter().map(|e| e.2).collect::<Vec<_>>());
            // What tracing added to the timed phase, per event delivered.
            let per = if events > 0.0 {
                format!("{:.0}", (m - b).max(0.0) / events)
            } else {
                "-".to_string()
            };
            (
                format!("{eps:.0}"),
                v.events.iter().map(|e| e.1).sum::<u64>().to_string(),
                per,
            )
        };
        let lo = v.times.iter().copied().fold(f64::MAX, f64::min) / b;
        let hi = v.times.iter().copied().fold(f64::MIN, f64::max) / b;
        println!(
            "{:<36} {:>9} {:>9.1} ms {:>8.2}x {:>15} {:>10} {:>10} {:>11} {:>7} {:>9}",
            v.name,
            v.objects,
            m / 1e6,
            m / b,
            format!("({lo:.2} … {hi:.2})"),
            cpu,
            rss,
            eps,
            drops,
            per_event
        );
    }
    println!("(own CPU and peak RSS are memtrace's, over its whole run including start-up and the report;");
    println!(
        " min … max: the spread of the slowdown over the row's runs against the untraced median;"
    );
    println!(" ns/event: the timed phase's increase over untraced, per event memtrace received)");
}

/// Runs `v` once, recording its timed phase (and for memtrace, its own CPU,
/// peak RSS and event counts).
fn run_variant(
    v: &mut Variant,
    memtrace: &Path,
    allocs: &Path,
    spawner: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let (fixture, fixture_args) = v.fixture(allocs, spawner);
    let output = match v.runner {
        Runner::Untraced => Command::new(fixture).args(&fixture_args).output()?,
        Runner::UntracedWith(more) => Command::new(fixture)
            .args(&fixture_args)
            .args(more)
            .output()?,
        Runner::Memtrace(lens, extra) => {
            let dir = out.join(v.name.replace(' ', "-"));
            let (o, cpu, hwm) = run_sampled(&mut record_command(
                memtrace,
                lens,
                extra,
                &dir,
                fixture,
                &fixture_args,
            ))?;
            v.cpu.push(cpu);
            v.peak_rss_kib.push(hwm);
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
            let events = summary["counters"]["events"].as_f64().unwrap_or(0.0);
            let secs = summary["duration_secs"].as_f64().unwrap_or(1.0);
            let drops = summary["dropped_events"].as_u64().unwrap_or(0);
            v.events.push((events / secs, drops, events));
            o
        }
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
    Ok(())
}

/// One more run of each memtrace variant with the kernel's BPF statistics
/// on, printing the programs that took the most time: the probes' own cost,
/// free of the wall-clock noise of the timed phases.
fn probe_costs(
    memtrace: &Path,
    allocs: &Path,
    spawner: &Path,
    out: &Path,
    variants: &[Variant],
) -> anyhow::Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1")?;
    println!("\neBPF programs' own time (one more run per lens with kernel.bpf_stats_enabled=1; the three costliest)");
    let result = (|| -> anyhow::Result<()> {
        for v in variants {
            let Runner::Memtrace(lens, extra) = v.runner else {
                continue;
            };
            let (fixture, args) = v.fixture(allocs, spawner);
            let dir = out.join(format!("{}-stats", v.name.replace(' ', "-")));
            let o = record_command(memtrace, lens, extra, &dir, fixture, &args).output()?;
            if !o.status.success() {
                bail!(
                    "{} run failed: {}",
                    v.name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
            let mut costs: Vec<(String, u64, u64)> = summary["probe_costs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c["program"].as_str()?.to_string(),
                        c["runs"].as_u64()?,
                        c["ns"].as_u64()?,
                    ))
                })
                .collect();
            costs.sort_by_key(|c| std::cmp::Reverse(c.2));
            let total: u64 = costs.iter().map(|c| c.2).sum();
            let top: Vec<String> = costs
                .iter()
                .take(3)
                .map(|(p, runs, ns)| format!("{p} {runs} × {} ns", ns / (*runs).max(1)))
                .collect();
            println!(
                "{:<36} {:>8.1} ms in all; {}",
                v.name,
                total as f64 / 1e6,
                top.join(", ")
            );
        }
        Ok(())
    })();
    let _ = std::fs::write(STATS, was.trim());
    result
}
