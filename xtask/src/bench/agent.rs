//! The agent bench: a node of Go services traced by one agent, with its
//! CPU, memory, window rendering, discovery and (pushing) delivery.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::bench::{cpu_ticks, median, peak_rss_kib};

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

/// The programs an agent scenario traces; killed when dropped.
struct Fleet {
    children: Vec<Child>,
    /// The scenario's own programs (the first ones), without the one
    /// started to time discovery.
    procs: usize,
}

impl Fleet {
    fn start(fixtures: &Path, sc: &AgentScenario) -> anyhow::Result<Self> {
        let mut fleet = Fleet {
            children: Vec::new(),
            procs: 0,
        };
        let rate = sc.busy_rate.to_string();
        for _ in 0..sc.busy {
            fleet.children.push(
                Command::new(fixtures.join("service"))
                    .args(["-rate", &rate, "-keep", "64"])
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        for _ in 0..sc.idle {
            fleet.spawn_idle(fixtures)?;
        }
        fleet.procs = fleet.children.len();
        Ok(fleet)
    }

    /// A Go program that only wakes every 100 ms.
    fn spawn_idle(&mut self, fixtures: &Path) -> anyhow::Result<()> {
        self.children.push(
            Command::new(fixtures.join("goroutines"))
                .args(["-leak", "0", "-work", "0"])
                .stdout(Stdio::null())
                .spawn()?,
        );
        Ok(())
    }

    /// CPU ticks of the scenario's own programs.
    fn ticks(&self) -> u64 {
        self.children[..self.procs]
            .iter()
            .filter_map(|c| cpu_ticks(c.id()))
            .sum()
    }

    /// Their CPU, in cores, over `d`.
    fn cores_over(&self, d: Duration) -> f64 {
        let (t0, at) = (self.ticks(), Instant::now());
        std::thread::sleep(d);
        (self.ticks() - t0) as f64 / 100.0 / at.elapsed().as_secs_f64()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running agent, its metrics port and its output directory.
struct Agent {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Agent {
    fn start(
        memtrace: &Path,
        out: &Path,
        sc: &AgentScenario,
        receiver: u16,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = out.join("agent");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(memtrace);
        cmd.arg("agent")
            .args(["--window", &sc.window.to_string()])
            .args(["--exe", "service", "--exe", "goroutines"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--out")
            .arg(&dir)
            .stderr(std::fs::File::create(dir.join("agent.log"))?);
        if sc.push {
            cmd.args(["--pyroscope", &format!("http://127.0.0.1:{receiver}")]);
        }
        Ok(Agent {
            child: cmd.spawn()?,
            port,
            dir,
        })
    }

    fn metric(&self, name: &str) -> Option<f64> {
        agent_metric(self.port, name)
    }

    /// Waits up to `limit` for it to trace more than `n` programs, polling
    /// every `poll`; the seconds it took.
    fn traces_more_than(
        &mut self,
        n: usize,
        limit: Duration,
        poll: Duration,
    ) -> anyhow::Result<Option<f64>> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.metric("memtrace_processes").unwrap_or(0.0) > n as f64 {
                return Ok(Some(started.elapsed().as_secs_f64()));
            }
            if self.child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(poll);
        }
        Ok(None)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an agent scenario measured.
struct AgentFigures {
    scanned: f64,
    discovered: f64,
    secs: f64,
    agent_cpu: f64,
    rss_max_kib: u64,
    hwm_kib: u64,
    render: Vec<f64>,
    untraced: f64,
    traced: f64,
    pushes: u64,
    pushed_bytes: u64,
    failures: f64,
    dropped: f64,
    ring: f64,
    stop_secs: f64,
    status: String,
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
    let mut fleet = Fleet::start(fixtures, sc)?;
    let procs = fleet.procs;
    eprintln!(
        "xtask: agent bench ({}): {procs} programs untraced for {:?}",
        sc.name, sc.measure
    );
    std::thread::sleep(Duration::from_secs(5));
    let untraced = fleet.cores_over(sc.measure);

    let (receiver, requests, bytes) = counting_receiver()?;
    let mut agent = Agent::start(memtrace, out, sc, receiver)?;
    let scan = Duration::from_secs(120);
    let Some(scanned) = agent.traces_more_than(procs - 1, scan, Duration::from_millis(200))? else {
        bail!(
            "the agent found {} of {procs} programs in 120 s: see {}",
            agent.metric("memtrace_processes").unwrap_or(0.0),
            agent.dir.join("agent.log").display()
        );
    };
    // A program started now: how soon is it traced?
    fleet.spawn_idle(fixtures)?;
    let discovered = agent
        .traces_more_than(procs, Duration::from_secs(10), Duration::from_millis(10))?
        .unwrap_or(f64::NAN);
    eprintln!(
        "xtask: agent bench: all {procs} traced after {scanned:.1} s; measuring {:?}",
        sc.measure
    );
    // One window to settle, then measure.
    std::thread::sleep(Duration::from_secs(sc.window));
    let pid = agent.child.id();
    let a0 = cpu_ticks(pid).unwrap_or(0);
    let f0 = fleet.ticks();
    let (r0, b0) = (
        requests.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    );
    let m0 = Instant::now();
    let (mut rss_max_kib, mut render) = (0u64, Vec::new());
    while m0.elapsed() < sc.measure {
        std::thread::sleep(Duration::from_secs(1));
        rss_max_kib = rss_max_kib.max(vm_rss_kib(pid).unwrap_or(0));
        if let Some(r) = agent.metric("memtrace_window_render_seconds") {
            if render.last() != Some(&r) {
                render.push(r);
            }
        }
    }
    let secs = m0.elapsed().as_secs_f64();
    let mut figures = AgentFigures {
        scanned,
        discovered,
        secs,
        agent_cpu: (cpu_ticks(pid).unwrap_or(0) - a0) as f64 / 100.0 / secs,
        rss_max_kib,
        hwm_kib: peak_rss_kib(pid).unwrap_or(0),
        render,
        untraced,
        traced: (fleet.ticks() - f0) as f64 / 100.0 / secs,
        pushes: requests.load(Ordering::Relaxed) - r0,
        pushed_bytes: bytes.load(Ordering::Relaxed) - b0,
        failures: agent
            .metric("memtrace_push_failures_total")
            .unwrap_or(f64::NAN),
        dropped: agent
            .metric("memtrace_push_dropped_total")
            .unwrap_or(f64::NAN),
        ring: agent
            .metric("memtrace_ringbuf_drops_total")
            .unwrap_or(f64::NAN),
        stop_secs: 0.0,
        status: String::new(),
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stop = Instant::now();
    figures.status = agent.child.wait()?.to_string();
    figures.stop_secs = stop.elapsed().as_secs_f64();
    drop(fleet);
    print_agent(sc, procs, &figures);
    Ok(())
}

fn print_agent(sc: &AgentScenario, procs: usize, f: &AgentFigures) {
    println!(
        "\nmemtrace agent, {}: {} services at {} requests/s and {} idle Go programs, windows of {} s{}; \
         measured over {:.0} s",
        sc.name,
        sc.busy,
        sc.busy_rate,
        sc.idle,
        sc.window,
        if sc.push { ", pushing every window to a local receiver" } else { "" },
        f.secs
    );
    println!("{:<44} {:>16}", "figure", "value");
    let row = |k: &str, v: String| println!("{k:<44} {v:>16}");
    row(
        "programs found by the start-up scan",
        format!("{:.1} s", f.scanned),
    );
    row(
        "a new program traced after",
        format!("{:.0} ms", f.discovered * 1e3),
    );
    row(
        "agent CPU",
        format!("{:.1}% of a core", f.agent_cpu * 100.0),
    );
    row(
        "agent CPU per program",
        format!("{:.2} ms/s", f.agent_cpu * 1e3 / procs as f64),
    );
    row(
        "agent RSS (max over the run / VmHWM)",
        format!(
            "{:.0} / {:.0} MiB",
            f.rss_max_kib as f64 / 1024.0,
            f.hwm_kib as f64 / 1024.0
        ),
    );
    row(
        "ending a window (every program)",
        format!("{:.2} s (of {} seen)", median(&f.render), f.render.len()),
    );
    row("programs' CPU untraced", format!("{:.3} core", f.untraced));
    row("programs' CPU traced", format!("{:.3} core", f.traced));
    row(
        "programs' slowdown (CPU)",
        format!("{:.2}x", f.traced / f.untraced),
    );
    if sc.push {
        row(
            "pushes delivered",
            format!(
                "{} ({:.1}/window)",
                f.pushes,
                f.pushes as f64 * sc.window as f64 / f.secs
            ),
        );
        row(
            "bytes pushed per program per window",
            format!(
                "{:.1} KiB",
                f.pushed_bytes as f64 / 1024.0 / (f.secs / sc.window as f64) / procs as f64
            ),
        );
        row(
            "push failures / dropped / ring drops",
            format!("{} / {} / {}", f.failures, f.dropped, f.ring),
        );
    } else {
        row("ring drops", format!("{}", f.ring));
    }
    row(
        "SIGTERM to exit",
        format!("{:.1} s ({})", f.stop_secs, f.status),
    );
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
