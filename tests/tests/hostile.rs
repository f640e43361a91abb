//! Tenants' binaries are hostile input. A corpus made from a real Go
//! service (wrapped counts, offsets past the end, a function table out of
//! order, a truncated file, a compressed-DWARF bomb) is refused by
//! `doctor` and `record` in one line, in bounded time and memory, and the
//! agent goes on tracing a well-formed service beside them, as it does when
//! a binary is cut short on disk after its process exits.

use std::process::Command;
use std::time::Duration;

use memtrace_tests::agent::*;
use memtrace_tests::hostile::{corpus, measured, Hostile};
use memtrace_tests::*;
use memtrace_user::binary::goruntime::{GoBinary, Source, G_LAYOUT};

/// The bounds: refused within a second, in at most 64 MiB.
const MAX_SECS: f64 = 1.0;
const MAX_RSS_KIB: u64 = 64 << 10;

fn the_corpus(test: &str) -> (String, Vec<Hostile>) {
    let v = go_versions().last().unwrap().clone();
    let dir = out_dir(test).join("corpus");
    let c = corpus(&fixture(&v, "service"), &dir);
    assert!(
        c.len() >= 7,
        "the fixture has compressed DWARF: {}",
        c.len()
    );
    (v, c)
}

#[test]
fn doctor_refuses_each_hostile_binary_in_one_line_in_bounded_time_and_memory() {
    let (v, corpus) = the_corpus("hostile-doctor");
    let fixture = fixture(&v, "service");
    for h in &corpus {
        let mut cmd = Command::new(memtrace());
        cmd.arg("doctor").arg(&h.path);
        let m = measured(cmd, Duration::from_secs(60));
        let secs = m.elapsed.as_secs_f64();
        assert!(secs <= MAX_SECS, "{}: doctor took {secs:.2} s", h.name);
        assert!(
            m.max_rss_kib <= MAX_RSS_KIB,
            "{}: doctor peaked at {} KiB",
            h.name,
            m.max_rss_kib
        );
        if h.refused {
            assert_one_line_error(&m.out, &h.path.display().to_string());
        } else {
            // Read without the forged part: every lens still works, and the
            // layout of runtime.g comes from the runtime's type descriptor,
            // not from the bombed DWARF (the fixture's own DWARF is read).
            let stdout = String::from_utf8_lossy(&m.out.stdout);
            assert!(m.out.status.success(), "{}: {stdout}", h.name);
            assert!(stdout.contains("goroutines   works"), "{stdout}");
            let source =
                |p: &std::path::Path| GoBinary::open(p).unwrap().found[G_LAYOUT].clone().unwrap();
            assert_eq!(source(&h.path), Source::RuntimeType, "{}", h.name);
            assert_eq!(source(&fixture), Source::Dwarf);
        }
    }
}

#[test]
fn record_refuses_each_hostile_binary_in_one_line_and_leaves_nothing_running() {
    let (_, corpus) = the_corpus("hostile-record");
    for h in corpus.iter().filter(|h| h.refused && h.name != "truncated") {
        let out = out_dir(&format!("hostile-record-{}", h.name));
        let mut cmd = Command::new(memtrace());
        cmd.args(["record", "--duration", "5", "--out"])
            .arg(&out)
            .arg("--")
            .arg(&h.path)
            .args(["-rate", "100", "-duration", "0"]);
        let m = measured(cmd, Duration::from_secs(60));
        assert!(
            m.elapsed.as_secs_f64() <= MAX_SECS,
            "{}: record took {:.2} s",
            h.name,
            m.elapsed.as_secs_f64()
        );
        assert!(
            m.max_rss_kib <= MAX_RSS_KIB,
            "{}: {} KiB",
            h.name,
            m.max_rss_kib
        );
        assert_one_line_error(&m.out, h.name);
        let left = Command::new("pgrep")
            .arg("-f")
            .arg(&h.path)
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "{}: left running: {}",
            h.name,
            String::from_utf8_lossy(&left.stdout)
        );
        assert_no_memtrace_programs();
    }
}

#[test]
fn the_agent_skips_hostile_binaries_and_traces_the_service_beside_them() {
    let (v, corpus) = the_corpus("hostile-agent-corpus");
    let mut args = vec!["--window", "1", "--exe", "service"];
    for h in &corpus {
        args.extend(["--exe", h.name]);
    }
    let agent = Agent::start("hostile-agent", &args);
    // The hostile ones that still run (the Go runtime trusts other copies
    // of what was forged), started first.
    let mut running: Vec<(&Hostile, Bg)> = corpus
        .iter()
        .filter(|h| h.name != "truncated")
        .map(|h| (h, Bg::spawn(&h.path, &["-rate", "100", "-duration", "0"])))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    running.retain_mut(|(_, bg)| bg.alive());
    assert!(
        running.iter().any(|(h, _)| h.name == "wrapped-nfunc"),
        "the issue's binary runs"
    );
    let svc = Bg::spawn(&fixture(&v, "service"), &["-rate", "100", "-duration", "0"]);
    let traced = wait_until(Duration::from_secs(20), || {
        series(&agent.metrics(), "memtrace_process_rss_bytes", svc.pid()).is_some()
    });
    assert!(traced, "the service was not traced: {}", agent.log());
    let log = agent.log();
    for (h, bg) in &running {
        if h.refused {
            assert!(
                log.contains(&format!("skipping {}", h.path.display()))
                    && log.contains(&format!("pid {}", bg.pid())),
                "{}: not skipped by name: {log}",
                h.name
            );
        }
    }
    let (status, body) = agent.get("/healthz");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    drop(running);
    drop(svc);
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// A binary that changes on disk while the agent has it mapped: once its
/// process exits, the kernel lets a tenant cut the file short, and the
/// agent still reads it (the last window's stacks are named at the
/// window's end). The lost pages read as zeros, said once in the log; the
/// agent neither dies of SIGBUS nor stops tracing the service beside it.
#[test]
fn a_binary_cut_short_after_its_process_exits_does_not_stop_the_agent() {
    use std::os::unix::fs::PermissionsExt as _;
    let v = go_versions().last().unwrap().clone();
    let dir = out_dir("hostile-shrinks");
    let path = dir.join("shrinks");
    std::fs::copy(fixture(&v, "service"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start(
        "hostile-shrinks-agent",
        &["--window", "2", "--exe", "shrinks", "--exe", "service"],
    );
    let mut doomed = Bg::spawn(&path, &["-rate", "2000", "-duration", "0"]);
    let pid = doomed.pid();
    let traced = wait_until(Duration::from_secs(20), || {
        agent.get(&format!("/profiles/{pid}/rss.svg")).0 == 200
    });
    assert!(traced, "the doomed copy was not traced: {}", agent.log());
    // Stacks of this window, then the process goes and its file is cut.
    std::thread::sleep(Duration::from_millis(500));
    let _ = doomed.0.kill();
    let _ = doomed.0.wait();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("no process runs it: the kernel lets it be written")
        .set_len(4096)
        .unwrap();
    let svc = Bg::spawn(&fixture(&v, "service"), &["-rate", "100", "-duration", "0"]);
    let said = wait_until(Duration::from_secs(20), || {
        agent.log().contains("shrank on disk while mapped")
    });
    assert!(said, "the agent never read the cut file: {}", agent.log());
    let traced = wait_until(Duration::from_secs(20), || {
        series(&agent.metrics(), "memtrace_process_rss_bytes", svc.pid()).is_some()
    });
    assert!(traced, "the service was not traced: {}", agent.log());
    let (status, _) = agent.get("/healthz");
    assert_eq!(status, 200);
    drop(svc);
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}
