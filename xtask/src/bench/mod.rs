//! `cargo xtask bench`: the helpers every benchmark shares (a fixture's
//! timed phase, medians, memtrace's own CPU and peak RSS), and the
//! benchmarks of exactness, symbolization, the gate and the agent. The
//! lens slowdown table is in `bench::lenses`.

pub mod agent;
pub mod binaries;
pub mod gc_heavy;
pub mod labels;
pub mod lenses;
pub mod service;
pub mod variant;
pub mod versions;

pub(crate) use variant::{base, Runner, Shape, Variant};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Interleaved runs per variant, where a benchmark has no reason for more.
pub(crate) const RUNS: usize = 5;

/// `memtrace record --lens LENS EXTRA --out DIR -- FIXTURE ARGS`.
pub(crate) fn record_command(
    memtrace: &Path,
    lens: &str,
    extra: &[&str],
    dir: &Path,
    fixture: &Path,
    args: &[String],
) -> Command {
    let mut c = Command::new(memtrace);
    c.args(["record", "--lens", lens])
        .args(extra)
        .arg("--out")
        .arg(dir)
        .arg("--")
        .arg(fixture)
        .args(args);
    c
}

pub(crate) fn alloc_ns(stdout: &str) -> anyhow::Result<f64> {
    stdout
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("alloc_ns="))
        .and_then(|v| v.parse::<f64>().ok())
        .context("fixture printed no alloc_ns=")
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Own CPU ticks (utime + stime) of a live process.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Runs memtrace to completion, sampling its own CPU and peak RSS.
pub(crate) fn run_sampled(cmd: &mut Command) -> anyhow::Result<(std::process::Output, f64, u64)> {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    let (mut ticks, mut hwm) = (0, 0);
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut s);
        s
    });
    while child.try_wait()?.is_none() {
        ticks = cpu_ticks(pid).unwrap_or(ticks);
        hwm = peak_rss_kib(pid).unwrap_or(hwm);
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = start.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    let stdout = reader.join().unwrap_or_default();
    // USER_HZ, the unit of /proc/PID/stat times, is 100 on Linux.
    let hz = 100.0;
    let cpu = ticks as f64 / hz / wall;
    Ok((
        std::process::Output {
            stdout: stdout.into_bytes(),
            ..out
        },
        cpu,
        hwm,
    ))
}

/// Per root of the deepstacks fixture: (objects, bytes requested)
/// attributed (56 B and 64 B share a size class, so the accounted bytes
/// cannot tell them apart).
fn roots(summary: &serde_json::Value) -> [(f64, f64); 2] {
    let mut out = [(0.0, 0.0); 2];
    for t in summary["lenses"]["alloc-exact"]["top"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let stack: Vec<&str> = t["stack"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        let i = if stack.contains(&"main.rootA") {
            0
        } else if stack.contains(&"main.rootB") {
            1
        } else {
            continue;
        };
        out[i].0 += t["objects"].as_f64().unwrap_or(0.0);
        out[i].1 += t["requested"].as_f64().unwrap_or(0.0);
    }
    out
}

/// The stack cache's misattribution: the deepstacks fixture's two roots
/// differ only below the fingerprint, and allocate 64 and 56 bytes, so a
/// 56-byte allocation under rootA (or a 64-byte one under rootB) was put on
/// the wrong stack. With the cache, and walking every stack.
pub fn stack_cache(memtrace: &Path, fixtures: &Path, out: &Path) -> anyhow::Result<()> {
    const N: u64 = 100_000;
    let bin = fixtures.join("deepstacks");
    println!(
        "\nstack cache misattribution: the deepstacks fixture, {N} allocations alternating between two \
         roots that differ only below the top ten frames (alloc-exact), {RUNS} runs each"
    );
    println!(
        "{:<28} {:>16} {:>22} {:>14} {:>12}",
        "stacks", "misattributed", "(min … max)", "timed phase", "collisions"
    );
    for (name, extra) in [
        ("cached (default)", &[][..]),
        ("walked every time", &["--no-stack-cache"][..]),
    ] {
        let (mut rates, mut times, mut collisions) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let dir = out.join("stack-cache");
            let _ = std::fs::remove_dir_all(&dir);
            let o = Command::new(memtrace)
                .args(["record", "--lens", "alloc-exact"])
                .args(extra)
                .arg("--out")
                .arg(&dir)
                .arg("--")
                .arg(&bin)
                .args(["-n", &N.to_string()])
                .output()?;
            if !o.status.success() {
                bail!(
                    "deepstacks run failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            times.push(alloc_ns(&String::from_utf8_lossy(&o.stdout))?);
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
            let [(a_obj, a_bytes), (b_obj, b_bytes)] = roots(&summary);
            collisions.push(
                summary["counters"]["fingerprint_collisions"]
                    .as_f64()
                    .unwrap_or(0.0),
            );
            // Under rootA: 64 a + 56 x = bytes, a + x = objects.
            let wrong_in_a = ((64.0 * a_obj - a_bytes) / 8.0).max(0.0);
            let wrong_in_b = ((b_bytes - 56.0 * b_obj) / 8.0).max(0.0);
            let total = a_obj + b_obj;
            if total < N as f64 * 0.99 {
                bail!("deepstacks: only {total} of {N} allocations under the two roots");
            }
            rates.push((wrong_in_a + wrong_in_b) / total * 100.0);
        }
        let lo = rates.iter().copied().fold(f64::MAX, f64::min);
        let hi = rates.iter().copied().fold(f64::MIN, f64::max);
        println!(
            "{:<28} {:>15.2}% {:>22} {:>11.1} ms {:>12}",
            name,
            median(&rates),
            format!("({lo:.2} … {hi:.2})"),
            median(&times) / 1e6,
            median(&collisions)
        );
    }
    Ok(())
}

/// What reading the frame on every merged fault buys (the rss lens's
/// largest cost per page): the rss fixture's `copy` mode fills two fresh,
/// adjacent buffers with `copy()` on two lines of one function, so the
/// second copy's pages continue the first's run in every respect but the
/// line that called. MiB of `runtime.memmove`'s pages under each line,
/// with the read (default) and without it (`--unchecked-fault-runs`).
pub fn run_check(memtrace: &Path, fixtures: &Path, out: &Path) -> anyhow::Result<()> {
    let src = workspace_file("tests/fixtures/rss/main.go")?;
    let line_of = |marker: &str| {
        src.lines()
            .position(|l| l.contains(marker))
            .map(|i| i + 1)
            .with_context(|| format!("no {marker:?} in the rss fixture"))
    };
    let lines = [line_of("// copy-first")?, line_of("// copy-second")?];
    println!(
        "\nper-page frame read: the rss fixture's two copy() lines (main.go:{} and :{}), \
         MiB of memmove's pages under each, 2 s windows, {RUNS} runs each",
        lines[0], lines[1]
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12}",
        "runs", "first line", "second line", "elsewhere"
    );
    for (name, extra) in [
        ("checked (default)", &[][..]),
        ("unchecked", &["--unchecked-fault-runs"][..]),
    ] {
        let mut by = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..RUNS {
            let dir = out.join("run-check");
            let _ = std::fs::remove_dir_all(&dir);
            let mut target = Command::new(fixtures.join("rss"))
                .args(["-mode", "copy"])
                .stdout(Stdio::null())
                .spawn()
                .context("starting the rss fixture")?;
            std::thread::sleep(Duration::from_millis(300));
            let o = Command::new(memtrace)
                .args([
                    "record",
                    "--lens",
                    "rss",
                    "--frames",
                    "line",
                    "--duration",
                    "2",
                ])
                .args(extra)
                .arg("--pid")
                .arg(target.id().to_string())
                .arg("--out")
                .arg(&dir)
                .output();
            let _ = target.kill();
            let _ = target.wait();
            let o = o?;
            if !o.status.success() {
                bail!(
                    "rss copy run failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            let folded = std::fs::read_to_string(dir.join("rss.folded"))?;
            let mib = memmove_by_line(&folded, lines);
            for (v, m) in by.iter_mut().zip(mib) {
                v.push(m);
            }
        }
        println!(
            "{:<28} {:>8.1} MiB {:>8.1} MiB {:>8.1} MiB",
            name,
            median(&by[0]),
            median(&by[1]),
            median(&by[2])
        );
    }
    Ok(())
}

/// MiB of `runtime.memmove`'s pages in `folded` (`--frames line`) under
/// `main.copyTwice` at each of `lines`, and under anything else.
fn memmove_by_line(folded: &str, lines: [usize; 2]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for l in folded.lines() {
        let Some((stack, n)) = l.rsplit_once(' ') else {
            continue;
        };
        let n: f64 = n.parse().unwrap_or(0.0) / (1024.0 * 1024.0);
        let frames: Vec<&str> = stack.split(';').collect();
        let [.., caller, leaf] = frames[..] else {
            continue;
        };
        if !leaf.starts_with("runtime.memmove ") {
            continue;
        }
        let i = lines
            .iter()
            .position(|l| caller == format!("main.copyTwice main.go:{l}"))
            .unwrap_or(2);
        out[i] += n;
    }
    out
}

/// A file of the workspace, as text.
fn workspace_file(rel: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Unique frames a symbolization pass must handle within the goal.
const SYM_FRAMES: &str = "10000";
/// Goal for resolving them from a cold start.
const SYM_GOAL_MS: f64 = 1000.0;

/// Symbolization speed: 10k unique pcs of the stripped fixture through
/// pclntab (cold, then cached), against blazesym on the unstripped build.
pub fn symbolize(bench: &Path, fixtures: &Path) -> anyhow::Result<()> {
    let out = Command::new(bench)
        .arg(fixtures.join("allocs-stripped"))
        .arg(fixtures.join("allocs"))
        .arg(SYM_FRAMES)
        .output()
        .with_context(|| format!("running {}", bench.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bench.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    println!("\nsymbolization ({SYM_FRAMES} unique frames, stripped Go 1.27 fixture)");
    print!("{text}");
    let cold_ms = text
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("symbolize_bench printed no time")?;
    println!(
        "cold pass {cold_ms:.1} ms = {:.3}x of the {SYM_GOAL_MS:.0} ms goal",
        cold_ms / SYM_GOAL_MS
    );
    Ok(())
}

/// One gate case: a candidate keeping `keep` bytes per request against a
/// baseline keeping 6400.
struct GateCase {
    name: &'static str,
    keep: u32,
    verdicts: Vec<String>,
    increases: Vec<f64>,
    walls: Vec<f64>,
}

/// `memtrace gate`'s error rates: `trials` gates each of the same build
/// (false positives), +10% and +25% kept per request (detection), with the
/// default 5 runs a build, on the `service` fixture.
pub fn gate(memtrace: &Path, fixtures: &Path, out: &Path, trials: usize) -> anyhow::Result<()> {
    if trials == 0 {
        return Ok(());
    }
    let svc = fixtures.join("service");
    let mut cases = [
        ("same build", 6400),
        ("+10% kept", 7040),
        ("+25% kept", 8000),
    ]
    .map(|(name, keep)| GateCase {
        name,
        keep,
        verdicts: vec![],
        increases: vec![],
        walls: vec![],
    });
    for trial in 0..trials {
        eprintln!("xtask: gate trial {}/{trials}", trial + 1);
        for c in cases.iter_mut() {
            let dir = out.join(format!("gate-{}", c.keep));
            let _ = std::fs::remove_dir_all(&dir);
            let start = Instant::now();
            let o = Command::new(memtrace)
                .arg("gate")
                .arg("--baseline")
                .arg(format!("{} -keep 6400", svc.display()))
                .arg("--candidate")
                .arg(format!("{} -keep {}", svc.display(), c.keep))
                .args([
                    "--duration",
                    "3",
                    "--per-request",
                    r"requests (\d+)",
                    "--out",
                ])
                .arg(&dir)
                .output()?;
            c.walls.push(start.elapsed().as_secs_f64());
            if o.status.code() == Some(2) {
                bail!("gate failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            let g: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("gate.json"))?)?;
            c.verdicts
                .push(g["verdict"].as_str().unwrap_or("?").to_string());
            c.increases
                .push(g["increase_pct"].as_f64().unwrap_or(f64::NAN));
        }
    }
    println!(
        "\nmemtrace gate on the service fixture (baseline keeps 6400 B/request; 5 runs a build, 3 s each, per request, threshold +8%), {trials} trials each"
    );
    println!(
        "{:<12} {:>6} {:>6} {:>6} {:>13}   {:<28} {:>10}",
        "case",
        "trials",
        "fail",
        "pass",
        "inconclusive",
        "increase: median (min … max)",
        "wall time"
    );
    for c in &cases {
        let n = |v: &str| c.verdicts.iter().filter(|x| *x == v).count();
        let lo = c.increases.iter().copied().fold(f64::MAX, f64::min);
        let hi = c.increases.iter().copied().fold(f64::MIN, f64::max);
        println!(
            "{:<12} {:>6} {:>6} {:>6} {:>13}   {:<28} {:>8.1} s",
            c.name,
            c.verdicts.len(),
            n("fail"),
            n("pass"),
            n("inconclusive"),
            format!("{:+.1}% ({lo:+.1} … {hi:+.1})", median(&c.increases)),
            median(&c.walls)
        );
    }
    println!("(same build: a fail is a false positive; +10% and +25%: a fail is a detection)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memmove_pages_go_to_the_calling_line() {
        let mib = 1024 * 1024;
        let folded = format!(
            "runtime.main;main.copyTwice main.go:165;runtime.memmove x.s:1 {}\n\
             runtime.main;main.copyTwice main.go:166;runtime.memmove x.s:1 {}\n\
             runtime.main;main.other main.go:9;runtime.memmove x.s:1 {}\n\
             runtime.main;main.copyTwice main.go:165 {}\n\
             runtime.memmove x.s:1 {}\n",
            4 * mib,
            2 * mib,
            mib,
            8 * mib,
            16 * mib
        );
        assert_eq!(memmove_by_line(&folded, [165, 166]), [4.0, 2.0, 1.0]);
    }
}
