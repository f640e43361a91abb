//! Answers that do not depend on timing: the edges users hit. A program
//! that lives a fraction of a second, a target that exits in the middle of
//! the window, the same command run five times, memory that is released as
//! fast as it is taken. The sampled lenses see a program's whole life
//! because it holds itself for memtrace at start and on its way out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use memtrace_tests::*;

const MIB: f64 = (1 << 20) as f64;

/// A program that lives ~0.13 s untraced, with no waiting anywhere: the alloc
/// lens, at the default sampling rate, within 10% of its own TotalAlloc.
#[test]
fn a_short_program_is_sampled_whole() {
    for v in go_versions() {
        let r = Record::new(&format!("short-{v}"))
            .lens("alloc")
            .launch(
                &fixture(&v, "allocs"),
                &["-objects", "2000000", "-maps", "0", "-inlined", "0"],
            )
            .ok();
        let truth = r.printed("total_alloc_total") as f64;
        let est = r.summary["lenses"]["alloc"]["total"].as_u64().unwrap() as f64;
        let ratio = est / truth;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "go{v}: alloc lens {est} vs TotalAlloc {truth} ({ratio:.3})"
        );
        assert_eq!(
            r.summary["lenses"]["alloc"]["sampled_since"], "exec",
            "go{v}"
        );
        let t = r.top("alloc");
        assert_eq!(
            t[0].0.last().map(String::as_str),
            Some("main.allocateRecords"),
            "go{v}: {:?}",
            t[0]
        );
        assert_eq!(r.summary["targets"][0]["exit"]["code"], 0, "go{v}");
    }
}

/// `--memprofile-rate 1`: every allocation through the runtime's own
/// profiler. On 64-byte objects (no tiny allocations) the object count is
/// within 2% of the program's Mallocs, and five runs agree within 3%.
#[test]
fn rate_one_counts_objects_nearly_exactly() {
    for v in go_versions() {
        let mut counts = Vec::new();
        for run in 0..5 {
            let r = Record::new(&format!("rate1-{v}-{run}"))
                .lens("alloc")
                .arg("--memprofile-rate")
                .arg("1")
                .launch(
                    &fixture(&v, "allocs"),
                    &["-objects", "1000000", "-maps", "0", "-inlined", "0"],
                )
                .ok();
            let mallocs = r.printed("mallocs_total") as f64;
            let objects = r.summary["lenses"]["alloc"]["objects"].as_u64().unwrap() as f64;
            assert!(
                (objects / mallocs - 1.0).abs() <= 0.02,
                "go{v} run {run}: {objects} objects vs Mallocs {mallocs}"
            );
            assert_eq!(r.summary["lenses"]["alloc"]["sample_rate_bytes"], 1);
            counts.push(objects);
        }
        assert_spread(&counts, 0.03, &format!("go{v}: objects of five runs"));
    }
}

/// `max / min - 1` of `v` is at most `tol`.
fn assert_spread(v: &[f64], tol: f64, what: &str) {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    assert!(lo > 0.0 && hi / lo - 1.0 <= tol, "{what}: {v:?}");
}

/// Five runs of one command give rss and alloc totals within 5% of each
/// other. The rate is 4 KiB so the sampling's own noise (one sample per
/// 64 KiB on 64 MiB would scatter by ~3% a run) stays well inside that:
/// what is tested is that no run loses its start or its end.
#[test]
fn the_same_command_gives_the_same_totals() {
    for v in go_versions() {
        let (mut rss, mut alloc) = (Vec::new(), Vec::new());
        for run in 0..5 {
            let r = Record::new(&format!("repeat-{v}-{run}"))
                .lens("rss,alloc")
                .arg("--memprofile-rate")
                .arg("4096")
                .launch(
                    &fixture(&v, "allocs"),
                    &["-objects", "1000000", "-maps", "8", "-inlined", "0"],
                )
                .ok();
            rss.push(r.summary["lenses"]["rss"]["total"].as_u64().unwrap() as f64);
            alloc.push(r.summary["lenses"]["alloc"]["total"].as_u64().unwrap() as f64);
        }
        assert_spread(&rss, 0.05, &format!("go{v}: rss totals"));
        assert_spread(&alloc, 0.05, &format!("go{v}: alloc totals"));
    }
}

/// Attached to a running program that exits (status 3) in the middle of the
/// window: the recording ends then, with the program's final memory profile,
/// resident breakdown and exit code, and the program's parent sees the same
/// exit status as without memtrace.
#[test]
fn an_attached_target_that_exits_mid_window() {
    for v in go_versions() {
        let mut bg = Bg::spawn(
            &fixture(&v, "allocs"),
            &[
                "-objects",
                "1000",
                "-maps",
                "1",
                "-loop",
                "-exit-after",
                "2500ms",
                "-exit-code",
                "3",
            ],
        );
        let lines = collect_stdout(&mut bg);
        assert!(
            wait_until(Duration::from_secs(10), || last_heartbeat(&lines) >= 1),
            "go{v}: fixture never started"
        );
        let r = Record::new(&format!("exits-{v}"))
            .pid(bg.pid())
            .lens("alloc,heap,goroutines,rss")
            .duration("30")
            .ok();
        let status = bg.wait();
        assert_eq!(status.code(), Some(3), "go{v}: the exit status changed");
        let s = &r.summary;
        assert_eq!(s["ended_by"], "every target exited", "go{v}");
        assert!(
            s["duration_secs"].as_f64().unwrap() < 10.0,
            "go{v}: the exit was noticed late: {}",
            s["duration_secs"]
        );
        let t = &s["targets"][0];
        assert_eq!(t["exit"]["code"], 3, "go{v}: {t}");
        assert!(
            t["breakdown"]["go_heap"].as_u64().unwrap_or(0) > 0,
            "go{v}: no breakdown read at exit: {t}"
        );
        let churn: u64 = r
            .top("alloc")
            .iter()
            .filter(|(f, _)| f.last().is_some_and(|l| l == "main.churn"))
            .map(|(_, b)| b)
            .sum();
        // ~64 KB of records every 10 ms for ~2.5 s.
        assert!(
            churn as f64 > 4.0 * MIB,
            "go{v}: the final profile was not read: main.churn {churn}"
        );
        assert!(
            r.stderr.contains("exited with status 3"),
            "go{v}: {}",
            r.stderr
        );
        assert_no_memtrace_programs();
    }
}

/// (fixture mode, extra arguments, heartbeats to wait for, seconds to
/// record, the function that releases memory resident before tracing).
type NetCase<'a> = (&'a str, &'a [&'a str], u64, &'a str, Option<&'a str>);

/// The rss lens's net growth tracks VmRSS growth within 10% (or 8 MiB) for a
/// growing cache, a heap that is freed and returned to the OS, and steady
/// map/unmap churn (where gross growth is 64 MiB and VmRSS is flat), and the
/// rss-net graph names who released what was resident before.
#[test]
fn net_growth_tracks_vmrss() {
    for v in go_versions() {
        let cases: &[NetCase] = &[
            ("leak", &[], 3, "3", None),
            (
                "shrink",
                &["-size", "200", "-after", "1500ms"],
                3,
                "3",
                Some("main.releaseHeap"),
            ),
            ("mapchurn", &[], 20, "3", Some("main.unmapOldest")),
        ];
        for (mode, extra, beats, secs, releaser) in cases {
            let mut args = vec!["-mode", mode];
            args.extend_from_slice(extra);
            let mut bg = Bg::spawn(&fixture(&v, "rss"), &args);
            let lines = collect_stdout(&mut bg);
            assert!(
                wait_until(Duration::from_secs(10), || last_heartbeat(&lines) >= *beats),
                "go{v} {mode}: fixture never got going"
            );
            let r = Record::new(&format!("net-{mode}-{v}"))
                .pid(bg.pid())
                .duration(secs)
                .ok();
            let rss = &r.summary["lenses"]["rss"];
            let net = rss["net_growth"].as_i64().unwrap() as f64;
            let vmrss = rss["vmrss_growth"].as_i64().unwrap() as f64;
            let tol = (0.1 * vmrss.abs()).max(8.0 * MIB);
            assert!(
                (net - vmrss).abs() <= tol,
                "go{v} {mode}: net growth {net} vs VmRSS growth {vmrss}: {rss}"
            );
            // The kernel merged runs of faults (one record per run), and
            // the totals above still hold.
            let merged = r.summary["counters"]["faults_merged"].as_u64().unwrap_or(0);
            assert!(
                *mode != "leak" || merged > 1000,
                "go{v} {mode}: {merged} faults merged"
            );
            match *mode {
                "leak" => assert!(vmrss > 20.0 * MIB, "go{v}: {rss}"),
                "shrink" => assert!(vmrss < -150.0 * MIB, "go{v}: did not shrink: {rss}"),
                _ => assert!(
                    rss["total"].as_u64().unwrap() as f64 > 32.0 * MIB,
                    "go{v}: the churn's gross growth should be large: {rss}"
                ),
            }
            assert!(r.stdout.contains("  net "), "go{v} {mode}: {}", r.stdout);
            if let Some(f) = releaser {
                // A release line: "stack before after" with before > after.
                let folded = std::fs::read_to_string(r.out.join("rss-net.folded")).unwrap();
                let released: u64 = folded
                    .lines()
                    .filter(|l| l.contains(f))
                    .filter_map(|l| {
                        let mut it = l.rsplitn(3, ' ');
                        let after: u64 = it.next()?.parse().ok()?;
                        let before: u64 = it.next()?.parse().ok()?;
                        before.checked_sub(2 * after).map(|_| after)
                    })
                    .sum();
                assert!(
                    released as f64 > 32.0 * MIB,
                    "go{v} {mode}: rss-net.folded does not show {f} releasing memory:\n{folded}"
                );
                let svg = std::fs::read_to_string(r.out.join("rss-net.svg")).unwrap();
                assert!(svg.contains(f), "go{v} {mode}: {f} not in rss-net.svg");
            }
            assert!(bg.alive(), "go{v} {mode}: target died");
        }
    }
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A looping allocs fixture, running and not sampling (its
/// `runtime.MemProfileRate` is 0): (its binary, it, its stdout lines).
fn a_target_that_does_not_sample() -> (PathBuf, Bg, Lines) {
    let v = go_versions().pop().unwrap();
    let bin = fixture(&v, "allocs");
    let mut bg = Bg::spawn(&bin, &["-objects", "1000", "-maps", "1", "-loop"]);
    let lines = collect_stdout(&mut bg);
    assert!(wait_until(Duration::from_secs(10), || last_heartbeat(
        &lines
    ) >= 1));
    assert_eq!(
        mem_profile_rate(&bin, bg.pid()),
        0,
        "the fixture does not sample"
    );
    (bin, bg, lines)
}

/// After `who` was SIGKILLed: the target's rate is back to 0 within 2 s,
/// and it goes on making progress.
fn assert_rate_restored_and_running(bin: &Path, bg: &Bg, lines: &Lines, who: &str) {
    assert!(
        wait_until(Duration::from_secs(2), || mem_profile_rate(bin, bg.pid())
            == 0),
        "runtime.MemProfileRate left at {} after {who} was killed",
        mem_profile_rate(bin, bg.pid())
    );
    let before = last_heartbeat(lines);
    assert!(
        wait_until(Duration::from_secs(5), || last_heartbeat(lines)
            >= before + 2),
        "the target stopped making progress"
    );
}

/// memtrace killed with SIGKILL while it has the target sampling (it wrote
/// runtime.MemProfileRate): the target's rate is back to 0 within a second,
/// and the target runs on.
#[test]
fn a_killed_recorder_leaves_the_target_as_it_was() {
    let (bin, bg, lines) = a_target_that_does_not_sample();
    let out = out_dir("killed");
    let mut memtrace = Bg::spawn(
        &memtrace(),
        &[
            "record",
            "--pid",
            &bg.pid().to_string(),
            "--lens",
            "alloc",
            "--duration",
            "60",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || mem_profile_rate(&bin, bg.pid())
            != 0),
        "memtrace never set the rate"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(memtrace.pid() as i32, libc::SIGKILL) };
    memtrace.wait();
    assert_rate_restored_and_running(&bin, &bg, &lines, "memtrace");
    assert_no_memtrace_programs();
}

/// The agent with `--alloc` SIGKILLed (as the OOM killer or a node drain
/// does) while it has a target sampling: its guardian writes the target's
/// runtime.MemProfileRate back to 0 and the target runs on.
#[test]
fn a_killed_agent_leaves_the_target_as_it_was() {
    let (bin, bg, lines) = a_target_that_does_not_sample();
    let agent = memtrace_tests::agent::Agent::start(
        "killed-agent",
        &["--alloc", "--window", "1", "--exe", "allocs"],
    );
    assert!(
        wait_until(Duration::from_secs(20), || mem_profile_rate(&bin, bg.pid())
            == 64 * 1024),
        "the agent never set the rate: {}",
        agent.log()
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGKILL) };
    assert_rate_restored_and_running(&bin, &bg, &lines, "the agent");
    drop(agent);
    assert_no_memtrace_programs();
}

/// The state letter of `/proc/PID/stat` (None once the process is gone).
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// A target reaches its exit hold while the ring buffer is full (memtrace
/// is stopped and the target's allocations filled it): the hold's event
/// has no place, so the target is not stopped, and it exits. Before, it
/// stopped itself with no event to say so and stayed stopped for good.
#[test]
fn a_target_is_never_held_when_the_ring_buffer_is_full() {
    let v = go_versions().pop().unwrap();
    let bin = fixture(&v, "allocs");
    let out = out_dir("ringbuf-full-hold");
    let mut rec = Bg::spawn(
        &memtrace(),
        &[
            "record",
            "--lens",
            "alloc-exact",
            "--out",
            out.to_str().unwrap(),
            "--",
            bin.to_str().unwrap(),
            "-objects",
            "1000",
            "-maps",
            "1",
            "-loop",
            "-exit-after",
            "6s",
        ],
    );
    // memtrace's child running the fixture (not its guardian, a fork of
    // memtrace with the same command line).
    let target = || -> Option<u32> {
        let o = std::process::Command::new("pgrep")
            .args(["-P", &rec.0.id().to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .find(|p: &u32| std::fs::read_link(format!("/proc/{p}/exe")).ok() == Some(bin.clone()))
    };
    let mut pid = None;
    assert!(wait_until(Duration::from_secs(20), || {
        pid = target();
        pid.is_some_and(|p| proc_state(p).is_some_and(|s| s != 'T'))
    }));
    let pid = pid.unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.pid() as i32, libc::SIGSTOP) };
    // The target runs to its exit (6 s) with nobody reading its events:
    // a zombie (memtrace, stopped, cannot reap it), never stopped.
    let exited = wait_until(Duration::from_secs(30), || proc_state(pid) == Some('Z'));
    let state = proc_state(pid);
    // SAFETY: as above.
    unsafe { libc::kill(rec.pid() as i32, libc::SIGCONT) };
    assert!(exited, "the target is in state {state:?}, not exited");
    let status = rec.wait();
    assert!(status.success(), "{status:?}");
    let s = summary(&out);
    assert!(
        s["dropped_events"].as_u64().unwrap() > 0,
        "the ring buffer never filled: {}",
        s["dropped_events"]
    );
    assert_eq!(
        s["targets"][0]["exit"]["code"].as_i64(),
        Some(0),
        "{}",
        s["targets"][0]
    );
}
