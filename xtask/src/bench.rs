//! `cargo xtask bench`: the helpers every benchmark shares (a fixture's
//! timed phase, medians, memtrace's own CPU and peak RSS), and the
//! benchmarks of exactness, symbolization, the gate and the agent. The
//! lens slowdown table is in `bench_lenses`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
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

/// A receiver that takes every HTTP/1.1 POST with 200 and counts
/// (requests, body bytes): Pyroscope stand-in for the agent bench.
fn counting_receiver() -> anyhow::Result<(u16, Arc<AtomicU64>, Arc<AtomicU64>)> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, b) = (requests.clone(), bytes.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (r, b) = (r.clone(), b.clone());
            std::thread::spawn(move || {
                let Ok(mut w) = conn.try_clone() else { return };
                let mut rd = std::io::BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if rd.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if rd.read_exact(&mut body).is_err() {
                        return;
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                    b.fetch_add(len as u64, Ordering::Relaxed);
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, requests, bytes))
}

/// A gauge or counter of the agent's /metrics, by exact name.
fn agent_metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One agent scenario: how many services of each kind, the window, and
/// whether it pushes to a (local) Pyroscope.
pub struct AgentScenario {
    pub name: &'static str,
    /// `service` fixtures answering `busy_rate` requests a second each.
    pub busy: usize,
    pub busy_rate: u32,
    /// Go programs that only wake every 100 ms.
    pub idle: usize,
    pub window: u64,
    pub measure: Duration,
    pub push: bool,
}

/// The agent's cost on a node of Go services: its CPU and memory, the
/// services' CPU untraced and traced, how long a window takes to end, how
/// soon a new process is traced, and (pushing) what reaches the store.
pub fn agent(
    memtrace: &Path,
    fixtures: &Path,
    out: &Path,
    sc: &AgentScenario,
) -> anyhow::Result<()> {
    let svc = fixtures.join("service");
    let idle_bin = fixtures.join("goroutines");
    let mut services = Vec::new();
    let rate = sc.busy_rate.to_string();
    for _ in 0..sc.busy {
        services.push(
            Command::new(&svc)
                .args(["-rate", &rate, "-keep", "64"])
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    for _ in 0..sc.idle {
        services.push(
            Command::new(&idle_bin)
                .args(["-leak", "0", "-work", "0"])
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    let procs = services.len();
    let kill_all = |services: &mut Vec<std::process::Child>| {
        for c in services.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    let fleet_ticks = |services: &[std::process::Child]| -> u64 {
        services.iter().filter_map(|c| cpu_ticks(c.id())).sum()
    };
    eprintln!(
        "xtask: agent bench ({}): {procs} programs untraced for {:?}",
        sc.name, sc.measure
    );
    std::thread::sleep(Duration::from_secs(5));
    let t0 = (fleet_ticks(&services), Instant::now());
    std::thread::sleep(sc.measure);
    let untraced = (fleet_ticks(&services) - t0.0) as f64 / 100.0 / t0.1.elapsed().as_secs_f64();

    let (rport, requests, bytes) = counting_receiver()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = out.join("agent");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let mut cmd = Command::new(memtrace);
    cmd.arg("agent")
        .args(["--window", &sc.window.to_string()])
        .args(["--exe", "service", "--exe", "goroutines"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--out")
        .arg(&dir)
        .stderr(std::fs::File::create(dir.join("agent.log"))?);
    if sc.push {
        cmd.args(["--pyroscope", &format!("http://127.0.0.1:{rport}")]);
    }
    let mut agent = cmd.spawn()?;
    let mut found = 0.0;
    while started.elapsed() < Duration::from_secs(120) {
        found = agent_metric(port, "memtrace_processes").unwrap_or(0.0);
        if found >= procs as f64 || agent.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let scanned = started.elapsed().as_secs_f64();
    if found < procs as f64 {
        let _ = agent.kill();
        kill_all(&mut services);
        bail!(
            "the agent found {found} of {procs} programs in 120 s: see {}",
            dir.join("agent.log").display()
        );
    }
    // A program started now: how soon is it traced?
    let spawned = Instant::now();
    services.push(
        Command::new(&idle_bin)
            .args(["-leak", "0", "-work", "0"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let mut discovered = f64::NAN;
    while spawned.elapsed() < Duration::from_secs(10) {
        if agent_metric(port, "memtrace_processes").unwrap_or(0.0) > procs as f64 {
            discovered = spawned.elapsed().as_secs_f64();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "xtask: agent bench: all {procs} traced after {scanned:.1} s; measuring {:?}",
        sc.measure
    );
    // One window to settle, then measure.
    std::thread::sleep(Duration::from_secs(sc.window));
    let a0 = cpu_ticks(agent.id()).unwrap_or(0);
    let f0 = fleet_ticks(&services[..procs]);
    let (r0, b0) = (
        requests.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    );
    let m0 = Instant::now();
    let (mut rss_max, mut render) = (0u64, Vec::new());
    while m0.elapsed() < sc.measure {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(vm_rss_kib(agent.id()).unwrap_or(0));
        if let Some(r) = agent_metric(port, "memtrace_window_render_seconds") {
            if render.last() != Some(&r) {
                render.push(r);
            }
        }
    }
    let secs = m0.elapsed().as_secs_f64();
    let agent_cpu = (cpu_ticks(agent.id()).unwrap_or(0) - a0) as f64 / 100.0 / secs;
    let traced = (fleet_ticks(&services[..procs]) - f0) as f64 / 100.0 / secs;
    let pushes = requests.load(Ordering::Relaxed) - r0;
    let pushed_bytes = bytes.load(Ordering::Relaxed) - b0;
    let hwm = peak_rss_kib(agent.id()).unwrap_or(0);
    let failures = agent_metric(port, "memtrace_push_failures_total").unwrap_or(f64::NAN);
    let dropped = agent_metric(port, "memtrace_push_dropped_total").unwrap_or(f64::NAN);
    let ring = agent_metric(port, "memtrace_ringbuf_drops_total").unwrap_or(f64::NAN);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let stop = Instant::now();
    let status = agent.wait()?;
    let stop_secs = stop.elapsed().as_secs_f64();
    kill_all(&mut services);
    println!(
        "\nmemtrace agent, {}: {} services at {} requests/s and {} idle Go programs, windows of {} s{}; \
         measured over {secs:.0} s",
        sc.name,
        sc.busy,
        sc.busy_rate,
        sc.idle,
        sc.window,
        if sc.push { ", pushing every window to a local receiver" } else { "" }
    );
    println!("{:<44} {:>16}", "figure", "value");
    let row = |k: &str, v: String| println!("{k:<44} {v:>16}");
    row(
        "programs found by the start-up scan",
        format!("{scanned:.1} s"),
    );
    row(
        "a new program traced after",
        format!("{:.0} ms", discovered * 1e3),
    );
    row("agent CPU", format!("{:.1}% of a core", agent_cpu * 100.0));
    row(
        "agent CPU per program",
        format!("{:.2} ms/s", agent_cpu * 1e3 / procs as f64),
    );
    row(
        "agent RSS (max over the run / VmHWM)",
        format!(
            "{:.0} / {:.0} MiB",
            rss_max as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
    );
    row(
        "ending a window (every program)",
        format!("{:.2} s (of {} seen)", median(&render), render.len()),
    );
    row("programs' CPU untraced", format!("{untraced:.3} core"));
    row("programs' CPU traced", format!("{traced:.3} core"));
    row(
        "programs' slowdown (CPU)",
        format!("{:.2}x", traced / untraced),
    );
    if sc.push {
        row(
            "pushes delivered",
            format!(
                "{pushes} ({:.1}/window)",
                pushes as f64 * sc.window as f64 / secs
            ),
        );
        row(
            "bytes pushed per program per window",
            format!(
                "{:.1} KiB",
                pushed_bytes as f64 / 1024.0 / (secs / sc.window as f64) / procs as f64
            ),
        );
    }
    if sc.push {
        row(
            "push failures / dropped / ring drops",
            format!("{failures} / {dropped} / {ring}"),
        );
    } else {
        row("ring drops", format!("{ring}"));
    }
    row("SIGTERM to exit", format!("{stop_secs:.1} s ({status})"));
    Ok(())
}

/// The agent scenarios of the bench: a busy node pushing to Pyroscope, and
/// a node of mostly idle programs with the default window.
pub fn agent_scenarios(procs: usize) -> [AgentScenario; 2] {
    [
        AgentScenario {
            name: "busy node, pushing",
            busy: procs,
            busy_rate: 20,
            idle: 0,
            window: 10,
            measure: Duration::from_secs(60),
            push: true,
        },
        AgentScenario {
            name: "200 idle and 20 busy",
            busy: 20,
            busy_rate: 100,
            idle: 200,
            window: 60,
            measure: Duration::from_secs(120),
            push: false,
        },
    ]
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
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
