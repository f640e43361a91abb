//! Memory cgroups and the OOM killer, end to end: a leaking program in a
//! real memory cgroup with a 200 MiB limit that the test creates (this
//! host's v1 memory controller, or v2's where that is the one mounted).
//! cgroup v2's files are also read from recorded trees in the unit tests
//! (`cgroup/memory_tests.rs`).

use std::fs::File;
use std::os::unix::io::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use memtrace_tests::agent::*;
use memtrace_tests::prometheus::{self, Prometheus};
use memtrace_tests::*;

const LIMIT: u64 = 200 << 20;
/// The leak's pace: 1 KiB entries per 100 ms (about 8 MiB/s), so the 90%
/// mark comes a few seconds before the kill.
const RATE: &str = "800";

/// A memory cgroup with a limit, removed (with whatever still runs in it
/// killed) on drop.
struct MemCgroup {
    dir: PathBuf,
    /// The path as /proc/PID/cgroup shows it.
    path: String,
}

impl MemCgroup {
    fn new(name: &str) -> Self {
        let path = format!("/memtrace-test-{name}-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            PathBuf::from(format!("/sys/fs/cgroup{path}"))
        } else {
            PathBuf::from(format!("/sys/fs/cgroup/memory{path}"))
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let limit_file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(limit_file), LIMIT.to_string()).unwrap();
        if v2 {
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        } else {
            // Without swap accounting the file is absent; this host has no swap.
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), LIMIT.to_string());
        }
        Self { dir, path }
    }

    /// Starts `bin` inside the cgroup: the child joins it between fork
    /// and exec, so everything it maps is charged there.
    fn spawn(&self, bin: &Path, args: &[&str]) -> Bg {
        let procs = File::options()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .unwrap();
        let fd = procs.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: only write(2) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // "0": the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        drop(procs);
        Bg(child)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for p in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.dir).is_ok()
        });
    }
}

/// The agent's limit snapshot of `pid` under `out`, if one was written.
fn limit_snapshot(out: &Path, pid: u32) -> Option<serde_json::Value> {
    std::fs::read_dir(out.join("snapshots"))
        .ok()?
        .flatten()
        .map(|e| summary(&e.path()))
        .find(|s| s["trigger"]["kind"] == "limit" && s["targets"][0]["pid"] == pid)
}

/// The function that names the first rss stack (its own code's frame).
fn top_rss_function(s: &serde_json::Value) -> String {
    s["lenses"]["rss"]["top"][0]["own_frame"]["function"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The report's target: in the cgroup, with its limit, and killed.
fn assert_killed_in(s: &serde_json::Value, cg: &MemCgroup, pid: u32, what: &str) {
    assert_eq!(s["ended_by"], "oom_kill", "{what}: {s}");
    let t = &s["targets"][0];
    assert_eq!(t["pid"], pid, "{what}");
    let c = &t["cgroup"];
    assert_eq!(c["path"], cg.path.as_str(), "{what}: {c}");
    assert_eq!(c["limit_bytes"], LIMIT, "{what}: {c}");
    assert!(
        c["usage_bytes"].as_u64().unwrap() > LIMIT / 2,
        "{what}: {c}"
    );
    // (The reading is the kill's own: the kernel counts the kill in
    // oom_kills after choosing the victim, so it may not show yet.)
    let o = &t["oom_kill"];
    assert!(
        o["anon_rss_bytes"].as_u64().unwrap() > LIMIT / 2,
        "{what}: the kill's RSS {o}"
    );
    assert_eq!(
        top_rss_function(s),
        "main.cacheSession",
        "{what}: {}",
        s["lenses"]["rss"]["top"][0]
    );
}

/// `record --pid` on a program that leaks into its limit: the report is
/// written at the kill, names the leak, and record exits 3 naming the kill.
#[test]
fn record_reports_the_limit_and_the_oom_kill() {
    let v = go_versions().pop().unwrap();
    let cg = MemCgroup::new("record");
    let mut leak = cg.spawn(&fixture(&v, "rss"), &["-mode", "leak", "-rate", RATE]);
    let pid = leak.pid();
    let r = Record::new("containers-record").pid(pid);
    let out = r.out().to_path_buf();
    let o = r.run();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "record's exit: {stderr}");
    assert!(!leak.alive(), "the leak survived its limit");
    assert!(
        stderr.contains(&format!("pid {pid} was killed by the OOM killer")),
        "{stderr}"
    );
    assert!(stdout.contains("cgroup limit 200.0 MiB"), "{stdout}");
    let dir = oom_report(&out, pid).unwrap_or_else(|| panic!("no oom/ report: {stderr}"));
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    assert_killed_in(&summary(&dir), &cg, pid, "oom/ report");
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(page.contains("killed by the OOM killer"), "index.html");
    assert!(page.contains("cgroup limit 200.0 MiB"), "index.html");
    // The window's own report ends the same way.
    assert_killed_in(&summary(&out), &cg, pid, "the record's report");
    assert_no_memtrace_programs();
}

/// The agent tracing `rss` with `window`-second windows and a limit
/// snapshot at 90%; the growth trigger out of the way (these tests are the
/// limit's).
fn limit_agent(name: &str, window: &str) -> Agent {
    Agent::start(
        name,
        &[
            "--window",
            window,
            "--exe",
            "rss",
            "--snapshot-limit-pct",
            "90",
            "--snapshot-growth-mib",
            "100000",
        ],
    )
}

/// The agent: a snapshot at 90% of the limit, a report at the kill, the
/// metrics, and the shipped alert for "limit within 15 minutes" firing in
/// a real Prometheus.
#[test]
fn the_agent_snapshots_before_the_limit_and_reports_the_kill() {
    let v = go_versions().pop().unwrap();
    let cg = MemCgroup::new("agent");
    let agent = limit_agent("containers-agent", "2");
    let prom = Prometheus::start(
        &agent.out,
        &prometheus::config(agent.port, None),
        &prometheus::quick_rules(),
    );
    let mut leak = cg.spawn(&fixture(&v, "rss"), &["-mode", "leak", "-rate", RATE]);
    let pid = leak.pid();
    let limit_seen = wait_until(Duration::from_secs(20), || {
        series(&agent.metrics(), "memtrace_process_cgroup_limit_bytes", pid)
            .is_some_and(|l| value(l) == LIMIT as f64)
    });
    assert!(limit_seen, "no limit series: {}", agent.metrics());
    let fired = wait_until(Duration::from_secs(40), || {
        prom.firing()
            .contains(&("MemtraceCgroupLimitSoon".to_string(), pid.to_string()))
    });
    assert!(fired, "the alert did not fire: {:?}", prom.firing());
    let killed = wait_until(Duration::from_secs(60), || {
        !leak.alive() && oom_report(&agent.out, pid).is_some()
    });
    assert!(killed, "no kill, or no oom/ report: {}", agent.log());

    // The limit snapshot: written before the kill, naming the leak.
    let snapshot = limit_snapshot(&agent.out, pid)
        .unwrap_or_else(|| panic!("no limit snapshot: {}", agent.log()));
    let used = snapshot["trigger"]["cgroup"]["used_pct"].as_f64().unwrap();
    assert!((90.0..100.0).contains(&used), "snapshot at {used}%");
    assert_eq!(top_rss_function(&snapshot), "main.cacheSession");
    assert!(snapshot["targets"][0].get("oom_kill").is_none());

    let report = summary(&oom_report(&agent.out, pid).unwrap());
    assert_killed_in(&report, &cg, pid, "the agent's oom/ report");
    // The report holds what filled the limit over the whole trace (the
    // leak ran for many 2 s windows), not only the last window's growth.
    let rss = &report["lenses"]["rss"];
    let anon = report["targets"][0]["oom_kill"]["anon_rss_bytes"]
        .as_u64()
        .unwrap();
    let total = rss["total"].as_u64().unwrap();
    assert_eq!(rss["whole_trace"], true, "{rss}");
    assert!(
        total as f64 >= 0.9 * anon as f64,
        "the report holds {total} bytes of the {anon} anonymous bytes at the kill"
    );
    // One row for the leaking function, whatever runtime paths lie below.
    let f = &rss["top_functions"][0];
    assert_eq!(
        f["function"], "main.cacheSession",
        "{}",
        rss["top_functions"]
    );
    assert!(f["share"].as_f64().unwrap() >= 0.9, "{f}");

    let m = agent.metrics();
    assert_eq!(scalar(&m, "memtrace_oom_kills_total"), Some(1.0), "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("memtrace_trigger_snapshots_total{trigger=\"limit\"}")),
        "{m}"
    );
    // Prometheus saw the kill count too.
    let kills = prom.query("memtrace_oom_kills_total");
    assert!(
        wait_until(Duration::from_secs(5), || prom
            .query("memtrace_oom_kills_total")
            .iter()
            .any(|(_, v)| *v >= 1.0)),
        "{kills:?}"
    );
    drop(prom);
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    drop(cg);
    assert_no_memtrace_programs();
}

/// A leak of about 80 MiB/s crosses 90% of its limit and is killed within
/// a few hundred milliseconds, between two once-a-second readings: the
/// agent reads a cgroup near its limit every tick, so the limit snapshot is
/// written before the kill, naming the leak.
#[test]
fn a_fast_leak_gets_its_limit_snapshot_before_the_kill() {
    let v = go_versions().pop().unwrap();
    let cg = MemCgroup::new("fast");
    let agent = limit_agent("containers-fast", "3");
    let started = std::time::Instant::now();
    let mut leak = cg.spawn(&fixture(&v, "rss"), &["-mode", "leak", "-rate", "8000"]);
    let pid = leak.pid();
    let killed = wait_until(Duration::from_secs(60), || {
        !leak.alive() && oom_report(&agent.out, pid).is_some()
    });
    assert!(killed, "no kill, or no oom/ report: {}", agent.log());
    let secs = started.elapsed().as_secs_f64();
    let snapshot = limit_snapshot(&agent.out, pid).unwrap_or_else(|| {
        panic!(
            "no limit snapshot ({secs:.1} s to the kill): {}",
            agent.log()
        )
    });
    assert!(
        snapshot["targets"][0].get("oom_kill").is_none(),
        "written before the kill"
    );
    assert_eq!(top_rss_function(&snapshot), "main.cacheSession");
    assert_eq!(snapshot["lenses"]["rss"]["whole_trace"], true);
    eprintln!("the fast leak filled {} MiB in {secs:.1} s", LIMIT >> 20);
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    drop(cg);
    assert_no_memtrace_programs();
}
