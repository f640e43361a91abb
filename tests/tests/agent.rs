//! End-to-end: `memtrace agent` started first, Go programs after it. It
//! finds them, serves metrics and profiles on loopback, labels processes in
//! kubelet-shaped cgroups, snapshots the one that leaks, survives process
//! churn without leaking probes or memory, and exits cleanly on SIGTERM. It
//! runs with only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_SYS_ADMIN, as
//! deploy/daemonset.yaml grants.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use memtrace_tests::agent::*;
use memtrace_tests::prometheus::{self, Prometheus};
use memtrace_tests::*;

/// Every pod's stacks: only the agent's user may read what it wrote (a
/// last window's directory, and a snapshot's).
fn assert_private(last: &Path, snapshot: &Path) {
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(last), 0o700);
    assert_eq!(mode(&last.join("rss.svg")), 0o600);
    assert_eq!(mode(&snapshot.join("summary.json")), 0o600);
}

/// The agent listens on loopback only, and no request path reaches the
/// filesystem (`lp`: a traced pid).
fn assert_loopback_only_and_no_path_escapes(agent: &Agent, lp: u32) {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_hex = format!(":{:04X}", agent.port);
    let listening: Vec<&str> = tcp
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port_hex) && f[3] == "0A"
        })
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert!(listening[0]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .starts_with("0100007F"));
    for bad in [
        "/etc/passwd".to_string(),
        "/profiles/../../../../etc/passwd".into(),
        format!("/profiles/{lp}/../../../etc/passwd"),
        format!("/profiles/{lp}/rss.svg/../../../etc/passwd"),
        format!("/profiles/{lp}/..%2f..%2f..%2fetc%2fpasswd"),
        format!("/profiles/{lp}/heap.svg"),
        format!("/profiles/{lp}/rss.exe"),
        "/profiles/-1/rss.svg".into(),
        "/profiles/999999999/rss.svg".into(),
        "/profiles/%00/rss.svg".into(),
    ] {
        let (status, body) = agent.get(&bad);
        assert_eq!(status, 404, "{bad}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{bad}");
    }
}

#[test]
fn agent_finds_serves_and_snapshots() {
    let v = go_versions().pop().unwrap();
    // A stale last window from an earlier run: replaced at shutdown.
    let out = out_dir("agent-main");
    std::fs::create_dir_all(out.join("last-window/1")).unwrap();
    let agent = Agent::start_in(
        out,
        &[
            "--window",
            "2",
            "--exe",
            "rss",
            "--snapshot-growth-mib",
            "24",
            "--snapshot-period",
            "3",
        ],
    );
    // Two Go programs started after the agent.
    let rss = fixture(&v, "rss");
    let mut leak = Bg::spawn(&rss, &["-mode", "leak"]);
    let mut steady = Bg::spawn(&rss, &["-mode", "steady"]);
    let (lp, sp) = (leak.pid(), steady.pid());
    let found = wait_until(Duration::from_secs(15), || {
        let m = agent.metrics();
        series(&m, "memtrace_process_rss_bytes", lp).is_some()
            && series(&m, "memtrace_process_rss_bytes", sp).is_some()
            && agent.get(&format!("/profiles/{lp}/rss.svg")).0 == 200
    });
    assert!(found, "agent did not find both programs: {}", agent.log());
    // Let a few windows and the snapshot period pass.
    std::thread::sleep(Duration::from_secs(5));

    let m = agent.metrics();
    assert!(value(series(&m, "memtrace_process_rss_bytes", lp).unwrap()) > 0.0);
    let rank1 = format!("pid=\"{lp}\"");
    assert!(
        m.lines()
            .any(|l| l.starts_with("memtrace_process_top_growth_bytes{")
                && l.contains(&rank1)
                && l.contains("rank=\"1\",function=\"main.cacheSession\"")),
        "{m}"
    );
    assert!(m.contains("memtrace_agent_rss_bytes "), "{m}");
    assert!(m.contains("memtrace_ringbuf_drops_total "), "{m}");

    let (status, svg) = agent.get(&format!("/profiles/{lp}/rss.svg"));
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&svg).contains("main.cacheSession"));
    // The whole window as one page.
    let (status, page) = agent.get(&format!("/profiles/{lp}/index.html"));
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page:.200}");
    assert!(page.contains("main.cacheSession"), "no leak in the page");
    assert!(page.contains(&format!("pid {lp}")));
    let (_, folded) = agent.get(&format!("/profiles/{lp}/rss.folded"));
    assert_eq!(
        top_leaf(&String::from_utf8_lossy(&folded)),
        "main.cacheSession"
    );
    let (status, list) = agent.get("/profiles");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pid"].as_u64() == Some(u64::from(sp))));
    assert!(list.as_array().unwrap().iter().any(|p| {
        p["pid"].as_u64() == Some(u64::from(lp))
            && p["page"].as_str() == Some(&format!("/profiles/{lp}/index.html"))
    }));

    // The leak was snapshotted (at the end of the window it triggered in),
    // the steady program was not.
    let snapshots = || -> Vec<String> {
        std::fs::read_dir(agent.out.join("snapshots"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(15), || {
        snapshots().iter().any(|d| d.starts_with(&format!("{lp}-")))
    });
    let snaps = snapshots();
    let m = agent.metrics();
    let leak_snap = snaps
        .iter()
        .find(|d| d.starts_with(&format!("{lp}-")))
        .unwrap_or_else(|| panic!("no snapshot of the leak in {snaps:?}: {}", agent.log()));
    assert!(
        !snaps.iter().any(|d| d.starts_with(&format!("{sp}-"))),
        "steady program snapshotted: {snaps:?}"
    );
    let snap_dir = agent.out.join("snapshots").join(leak_snap);
    let snap_folded = std::fs::read_to_string(snap_dir.join("rss.folded")).unwrap();
    assert_eq!(top_leaf(&snap_folded), "main.cacheSession");
    assert!(snap_dir.join("summary.json").exists());
    assert!(value(series(&m, "memtrace_process_snapshots_total", lp).unwrap()) >= 1.0);
    assert_eq!(
        value(series(&m, "memtrace_process_snapshots_total", sp).unwrap()),
        0.0
    );

    assert_loopback_only_and_no_path_escapes(&agent, lp);

    // SIGTERM: the window is finished and written, exit 0.
    let (code, out, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let last = out.join("last-window").join(lp.to_string());
    let last_svg = std::fs::read_to_string(last.join("rss.svg")).unwrap_or_default();
    assert!(last_svg.contains("main.cacheSession"), "{log}");
    assert!(!out.join("last-window/1").exists(), "a stale window kept");
    assert_private(&last, &snap_dir);
    assert!(leak.alive() && steady.alive(), "a traced program died");
    assert_no_memtrace_programs();
}

/// The cgroup hierarchies to build test pods in: the unified one on a pure
/// v2 host; on a hybrid host the v1 memory hierarchy and the v2 one.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf(), base.to_path_buf()];
    }
    let roots: Vec<PathBuf> = ["memory", "unified"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    assert!(!roots.is_empty(), "no writable cgroup hierarchy");
    roots
}

struct Cgroup(PathBuf, PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Remove from the leaf up to (and including) the test's top dir.
        let mut d = self.0.clone();
        while d.starts_with(&self.1) {
            let _ = std::fs::remove_dir(&d);
            if !d.pop() {
                break;
            }
        }
    }
}

/// Runs `bin` in each cgroup of `shapes` (a path relative to one of
/// `roots`, its pod UID and container ID), joined before exec as a
/// container runtime does; the cgroups are removed when dropped.
fn run_in_cgroups(
    bin: &Path,
    roots: &[PathBuf],
    shapes: &[(String, &str, &str)],
) -> (Vec<(Bg, String, String)>, Vec<Cgroup>) {
    let mut procs = Vec::new();
    let mut groups = Vec::new();
    for (i, (rel, uid, id)) in shapes.iter().enumerate() {
        let root = &roots[i.min(roots.len() - 1)];
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        groups.push(Cgroup(
            dir.clone(),
            root.join(rel.split('/').next().unwrap()),
        ));
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} -objects 1000 -maps 1 -loop",
            dir.display(),
            bin.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        procs.push((Bg(child), uid.to_string(), id.to_string()));
    }
    (procs, groups)
}

#[test]
fn pods_and_containers_are_labelled() {
    let v = go_versions().pop().unwrap();
    let uid_a = "0f1e2d3c-4b5a-4697-8877-665544332211";
    let id_a = "a".repeat(64);
    let uid_b = "99887766-5544-4332-a110-ffeeddccbbaa";
    let id_b = "b1".repeat(32);
    // Pod names from a stand-in API server, this node's pods only, with a
    // service-account token that rotates during the test.
    let api = memtrace_tests::kube::ApiServer::start("node-7", "token-1");
    let pod = |uid: &str, ns: &str, name: &str, id: &str| {
        (
            uid.to_string(),
            ns.to_string(),
            name.to_string(),
            id.to_string(),
        )
    };
    api.set_pods(&[pod(uid_a, "shop", "cart-7d9", &id_a)]);
    let token = out_dir("agent-cgroups-sa").join("token");
    std::fs::write(&token, "token-1\n").unwrap();
    let agent = Agent::start(
        "agent-cgroups",
        &[
            "--window",
            "2",
            "--exe",
            "allocs",
            "--kube-api",
            &api.url(),
            "--node-name",
            "node-7",
            "--kube-token-file",
            token.to_str().unwrap(),
        ],
    );
    let me = std::process::id();
    let roots = cgroup_roots();
    let shapes = [
        // systemd driver, containerd
        (
            format!(
                "memtrace-e2e-{me}.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id_a}.scope",
                uid_a.replace('-', "_")
            ),
            uid_a,
            id_a.as_str(),
        ),
        // cgroupfs driver
        (
            format!("memtrace-e2e-{me}/kubepods/burstable/pod{uid_b}/{id_b}"),
            uid_b,
            id_b.as_str(),
        ),
    ];
    let (procs, groups) = run_in_cgroups(&fixture(&v, "allocs"), &roots, &shapes);
    for (i, (p, uid, id)) in procs.iter().enumerate() {
        // The API server knows the first pod only.
        let want = if i == 0 {
            format!("container_id=\"{id}\",pod_uid=\"{uid}\",pod_namespace=\"shop\",pod_name=\"cart-7d9\"")
        } else {
            format!("container_id=\"{id}\",pod_uid=\"{uid}\"}}")
        };
        let ok = wait_until(Duration::from_secs(15), || {
            series(&agent.metrics(), "memtrace_process_rss_bytes", p.pid())
                .is_some_and(|l| l.contains(&want))
        });
        assert!(
            ok,
            "pid {} not labelled {want}: {}\n{}",
            p.pid(),
            agent.metrics(),
            agent.log()
        );
    }
    // Every request asked for this node's pods only, with the token.
    let asked = api.requests();
    assert!(!asked.is_empty());
    for (target, auth) in &asked {
        assert_eq!(target, &api.expected_target());
        assert_eq!(auth, "Bearer token-1");
    }
    // The token rotates (the server accepts only the new one) and the
    // second pod becomes known: the agent reads the new token and names it.
    std::fs::write(&token, "token-2\n").unwrap();
    api.set_token("token-2");
    api.set_pods(&[
        pod(uid_a, "shop", "cart-7d9", &id_a),
        pod(uid_b, "ops", "batch-1", &id_b),
    ]);
    let want = format!("pod_uid=\"{uid_b}\",pod_namespace=\"ops\",pod_name=\"batch-1\"");
    let named = wait_until(Duration::from_secs(20), || {
        series(
            &agent.metrics(),
            "memtrace_process_rss_bytes",
            procs[1].0.pid(),
        )
        .is_some_and(|l| l.contains(&want))
    });
    assert!(named, "not named after the token rotated: {}", agent.log());
    // The labels reach PromQL: a real Prometheus scrapes the agent.
    let prom = Prometheus::start(&agent.out, &prometheus::config(agent.port, None), "");
    let q = "memtrace_process_rss_bytes{pod_namespace=\"shop\",pod_name=\"cart-7d9\"}";
    let found = wait_until(Duration::from_secs(20), || !prom.query(q).is_empty());
    let r = prom.query(q);
    assert!(found, "{q}: nothing; {}", prom.log());
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0["pid"], procs[0].0.pid().to_string(), "{r:?}");
    assert_eq!(r[0].0["container_id"], procs[0].2, "{r:?}");
    assert!(r[0].1 > 0.0);
    let q = format!("memtrace_process_rss_bytes{{pod_uid=\"{uid_b}\",pod_name=\"batch-1\"}}");
    wait_until(Duration::from_secs(20), || !prom.query(&q).is_empty());
    let by_uid = prom.query(&q);
    assert_eq!(by_uid.len(), 1, "{by_uid:?}");
    assert_eq!(by_uid[0].0["pid"], procs[1].0.pid().to_string());
    drop(prom);
    drop(procs);
    std::thread::sleep(Duration::from_millis(300));
    drop(groups);
}

fn bpftool_count(args: &[&str]) -> usize {
    let out = output_ok(Command::new("bpftool").arg("-j").args(args));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array().map_or(0, Vec::len)
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// 100 short-lived Go processes over a minute: each is found, and when they
/// are gone the agent holds no probe, no target entry and no extra memory.
#[test]
fn process_churn_leaks_nothing() {
    let v = go_versions().pop().unwrap();
    let agent = Agent::start("agent-churn", &["--window", "2", "--exe", "allocs"]);
    std::thread::sleep(Duration::from_secs(2));
    let links_before = bpftool_count(&["link", "show"]);
    let targets_before = bpftool_count(&["map", "dump", "name", "TARGETS"]);
    let rss_before = vm_rss_kib(agent.child.id());

    let bin = fixture(&v, "allocs");
    let mut running: Vec<Child> = Vec::new();
    for _ in 0..100 {
        running.push(
            Command::new(&bin)
                .args(["-objects", "2000", "-maps", "1", "-linger", "1500ms"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(600));
        running.retain_mut(|c| c.try_wait().unwrap().is_none());
    }
    for mut c in running {
        c.wait().unwrap();
    }
    let settled = wait_until(Duration::from_secs(10), || {
        value(
            agent
                .metrics()
                .lines()
                .find(|l| l.starts_with("memtrace_processes "))
                .unwrap(),
        ) == 0.0
    });
    let m = agent.metrics();
    assert!(settled, "processes still listed: {m}");
    let discovered = value(
        m.lines()
            .find(|l| l.starts_with("memtrace_processes_discovered_total "))
            .unwrap(),
    );
    assert_eq!(discovered, 100.0, "{}", agent.log());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        bpftool_count(&["link", "show"]),
        links_before,
        "links leaked"
    );
    assert_eq!(
        bpftool_count(&["map", "dump", "name", "TARGETS"]),
        targets_before,
        "TARGETS entries leaked"
    );
    let rss_after = vm_rss_kib(agent.child.id());
    eprintln!("agent VmRSS {rss_before} KiB before, {rss_after} KiB after 100 processes");
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn agent_under_load_answers_every_scrape() {
    let v = go_versions().pop().unwrap();
    let agent = Agent::start("agent-load", &["--window", "1", "--exe", "service"]);
    let svc = fixture(&v, "service");
    let services: Vec<Bg> = (0..30)
        .map(|_| Bg::spawn(&svc, &["-rate", "20", "-keep", "64"]))
        .collect();
    let all = wait_until(Duration::from_secs(30), || {
        scalar(&agent.metrics(), "memtrace_processes") == Some(30.0)
    });
    assert!(all, "{}", agent.metrics());
    // Clients that never finish their headers hold connections...
    let mut idle: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // ...and one sends a head far over the limit.
    let mut big = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        big,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "an oversized head got: {head:.80}"
    );
    // Meanwhile every scrape is answered within a second, windows rendering.
    let windows = scalar(&agent.metrics(), "memtrace_windows_total").unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..400 {
        let t = std::time::Instant::now();
        let (status, body) = agent.get("/metrics");
        let took = t.elapsed();
        slowest = slowest.max(took);
        assert_eq!(status, 200, "scrape {i}");
        assert!(took < Duration::from_secs(1), "scrape {i} took {took:?}");
        assert!(String::from_utf8_lossy(&body).contains("memtrace_process_rss_bytes{"));
        // Spread over several windows (a scrape alone takes milliseconds).
        std::thread::sleep(Duration::from_millis(10));
    }
    let rendered = scalar(&agent.metrics(), "memtrace_windows_total").unwrap() - windows;
    assert!(rendered >= 2.0, "no window rendered during the scrapes");
    eprintln!("400 scrapes, slowest {slowest:?}, {rendered} windows meanwhile");
    let hwm = vm_hwm_kib(agent.child.id());
    assert!(hwm < 150 * 1024, "agent peak RSS {} MiB", hwm / 1024);
    // The idle clients were cut off after the header deadline.
    for s in idle.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
        let text = String::from_utf8_lossy(&b);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text:.80}"
        );
    }
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    drop(services);
    assert_no_memtrace_programs();
}

/// SIGTERM as soon as the agent answers on HTTP, which it does before it
/// has loaded its probes and attached to every process: it stops cleanly
/// (exit 0, saying so), not by the signal's default action.
#[test]
fn sigterm_during_start_up_stops_cleanly() {
    for round in 0..3 {
        let agent = Agent::start(&format!("agent-early-term-{round}"), &["--window", "1"]);
        let (code, _, log) = agent.stop();
        assert_eq!(code, Some(0), "round {round}: {log}");
        assert!(log.contains("agent: stopping"), "round {round}: {log}");
    }
    assert_no_memtrace_programs();
}
