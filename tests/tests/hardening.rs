//! Targets under probes and ugly endings: a program whose 64 goroutines'
//! stacks grow and move all the time gives the same output and exit code
//! traced (alloc-exact, goroutines, rss and the GC view; and under the
//! agent) as untraced, on every Go version; `record` on a target SIGKILLed
//! mid-window, or one that execs another program, writes what it saw and
//! does not hang.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memtrace_tests::agent::*;
use memtrace_tests::*;

/// (the checksum line, exit code) of an untraced run.
fn untraced(bin: &std::path::Path, args: &[&str]) -> (String, Option<i32>) {
    let o = Command::new(bin).args(args).output().unwrap();
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.starts_with("checksum="))
        .unwrap_or_else(|| panic!("no checksum from {}", bin.display()))
        .to_string();
    (line, o.status.code())
}

#[test]
fn growing_stacks_under_every_probe_change_nothing() {
    let args = ["-exit-code", "3"];
    for v in go_versions() {
        let bin = fixture(&v, "stackgrow");
        let (want, code) = untraced(&bin, &args);
        assert_eq!(code, Some(3));
        let rec = Record::new(&format!("stackgrow-{v}"))
            .lens("alloc-exact,goroutines,rss")
            .launch(&bin, &args)
            .ok();
        assert!(
            rec.stdout.contains(&want),
            "go{v}: want {want} in {}",
            rec.stdout
        );
        assert_eq!(
            rec.summary["targets"][0]["exit"]["code"].as_i64(),
            Some(3),
            "go{v}: {}",
            rec.summary["targets"][0]
        );
        // Every level of every recursion allocated, and each was seen once:
        // goroutine g recurses 400 + g % 7 deep, 16 times; the rest is the
        // runtime's and main's own few hundred.
        let levels: u64 = (0..64u64).map(|g| 401 + g % 7).sum::<u64>() * 16;
        let objects = rec.summary["lenses"]["alloc-exact"]["objects"]
            .as_u64()
            .unwrap();
        assert!(
            (levels..levels + 2000).contains(&objects),
            "go{v}: {objects} objects, want {levels} and a few"
        );
        let top = rec.top("alloc-exact");
        assert!(
            top.iter()
                .any(|(s, _)| s.last().is_some_and(|f| f == "main.recurse")),
            "go{v}: {top:?}"
        );
        assert!(rec.summary["gc"]["cycles"].as_u64().unwrap() > 0, "go{v}");
        assert_eq!(rec.summary["dropped_events"].as_u64(), Some(0), "go{v}");
    }
    assert_no_memtrace_programs();
}

#[test]
fn growing_stacks_under_the_agent_change_nothing() {
    let args = ["-rounds", "1500", "-exit-code", "3"];
    let agent = Agent::start(
        "stackgrow-agent",
        &["--window", "1", "--exe", "stackgrow", "--alloc"],
    );
    for v in go_versions() {
        let bin = fixture(&v, "stackgrow");
        let (want, code) = untraced(&bin, &args);
        let before = scalar(&agent.metrics(), "memtrace_processes_discovered_total").unwrap();
        let o = Command::new(&bin).args(args).output().unwrap();
        let got = String::from_utf8_lossy(&o.stdout);
        assert!(got.contains(&want), "go{v}: want {want}, got {got}");
        assert_eq!(o.status.code(), code, "go{v}");
        let after = scalar(&agent.metrics(), "memtrace_processes_discovered_total").unwrap();
        assert!(
            after > before,
            "go{v}: the agent never traced it: {}",
            agent.log()
        );
    }
    let (status, log) = {
        let (code, _, log) = agent.stop();
        (code, log)
    };
    assert_eq!(status, Some(0), "{log}");
    assert_no_memtrace_programs();
}

/// Starts `record` on `args` in the background.
fn record_bg(out: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(memtrace())
        .arg("record")
        .arg("--out")
        .arg(out)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The child pids of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn finish(child: std::process::Child, within: Duration) -> std::process::Output {
    let start = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if start.elapsed() > within {
            // SAFETY: signalling the recorder we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("record hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap()
}

#[test]
fn a_target_killed_mid_window_still_gets_its_report() {
    let v = go_versions().pop().unwrap();
    let bin = fixture(&v, "rss");
    // Launched, and attached to.
    for attach in [false, true] {
        let out = out_dir(&format!("killed-{attach}"));
        let mut bg = None;
        let (rec, target) = if attach {
            let b = Bg::spawn(&bin, &["-mode", "leak"]);
            let pid = b.pid();
            bg = Some(b);
            let pid_s = pid.to_string();
            (record_bg(&out, &["--pid", &pid_s, "--duration", "60"]), pid)
        } else {
            let rec = record_bg(
                &out,
                &[
                    "--duration",
                    "60",
                    "--",
                    bin.to_str().unwrap(),
                    "-mode",
                    "leak",
                ],
            );
            let mut t = 0;
            wait_until(Duration::from_secs(10), || {
                t = children(rec.id())
                    .into_iter()
                    .find(|&c| {
                        std::fs::read_link(format!("/proc/{c}/exe"))
                            .is_ok_and(|e| e.ends_with("rss"))
                    })
                    .unwrap_or(0);
                t != 0
            });
            assert_ne!(t, 0, "the launched target never ran");
            (rec, t)
        };
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: killing the target we started.
        unsafe { libc::kill(target as i32, libc::SIGKILL) };
        let o = finish(rec, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        let s = summary(&out);
        let t = &s["targets"][0];
        if attach {
            // Not our child: it is gone, how is not ours to know.
            assert!(t["exit"].is_object(), "{t}");
        } else {
            assert_eq!(t["exit"]["signal"].as_i64(), Some(9), "{t}");
        }
        assert_eq!(s["ended_by"], "every target exited");
        let top = memtrace_tests::top(&s, "rss");
        assert_eq!(
            top[0].0.last().map(String::as_str),
            Some("main.cacheSession"),
            "{top:?}"
        );
        assert!(out.join("index.html").exists() && out.join("rss.pb.gz").exists());
        drop(bg);
    }
    assert_no_memtrace_programs();
}

#[test]
fn a_target_that_execs_ends_its_trace_there() {
    let v = go_versions().pop().unwrap();
    let bin = fixture(&v, "rss");
    let out = out_dir("exec");
    let rec = record_bg(
        &out,
        &[
            "--duration",
            "60",
            "--",
            bin.to_str().unwrap(),
            "-mode",
            "leak",
            "-exec-after",
            "1500ms",
        ],
    );
    let o = finish(rec, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("replaced itself with another program (exec)"),
        "{err}"
    );
    let s = summary(&out);
    assert_eq!(s["targets"][0]["exit"]["exec"], true, "{}", s["targets"][0]);
    // What it saw before the exec, named by the Go binary's symbols.
    let top = memtrace_tests::top(&s, "rss");
    assert_eq!(
        top[0].0.last().map(String::as_str),
        Some("main.cacheSession"),
        "{top:?}"
    );
    assert_eq!(s["counters"]["unresolved_go_frames"].as_u64(), Some(0));
    assert_no_memtrace_programs();
}
