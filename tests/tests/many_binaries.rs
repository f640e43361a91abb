//! A node of many distinct large Go binaries: twenty copies of Debian's
//! prometheus (50 MB each, each with its own build ID) run at once, and
//! the agent traces every one within 150 MiB of peak resident memory
//! (its DaemonSet limit is 512 MiB). Executables are mapped, not read,
//! and the pages parsing and symbolization read are given back.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use memtrace_tests::agent::*;
use memtrace_tests::*;

const COPIES: usize = 20;
const MAX_PEAK_KIB: u64 = 150 << 10;

/// `VmHWM` of `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn the_agent_traces_twenty_distinct_50_mb_binaries_within_150_mib() {
    let dir = out_dir("many-binaries");
    let orig = std::fs::read("/usr/bin/prometheus").expect("the bootstrap installs prometheus");
    // The Go build ID's note (12 bytes of header, "Go\0\0", the ID): one
    // byte of the ID changed per copy makes twenty builds, not one file
    // twenty times.
    let at = {
        use object::{Object as _, ObjectSection as _};
        let f = object::File::parse(&*orig).unwrap();
        let s = f
            .section_by_name(".note.go.buildid")
            .expect("a Go build ID");
        s.file_range().unwrap().0 as usize + 16 + 10
    };
    std::fs::write(dir.join("prom.yml"), "global:\n  scrape_interval: 15s\n").unwrap();
    let mut names = Vec::new();
    let mut procs = Vec::new();
    for i in 0..COPIES {
        let name = format!("prom{i}");
        let path = dir.join(&name);
        let mut d = orig.clone();
        d[at] = b'a' + i as u8;
        std::fs::write(&path, &d).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child = Command::new(&path)
            .arg(format!("--config.file={}", dir.join("prom.yml").display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join(format!("d{i}")).display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.push(Bg(child));
        names.push(name);
    }
    let mut args = vec!["--window".to_string(), "3".into()];
    for n in &names {
        args.extend(["--exe".to_string(), n.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start("many-binaries-agent", &args);
    let all = wait_until(Duration::from_secs(120), || {
        let m = agent.metrics();
        procs
            .iter()
            .all(|p| series(&m, "memtrace_process_rss_bytes", p.pid()).is_some())
    });
    assert!(all, "not every copy was traced: {}", agent.log());
    // Two windows more: every process symbolized and rendered twice.
    std::thread::sleep(Duration::from_secs(7));
    for p in &mut procs {
        assert!(p.alive(), "a prometheus died under tracing");
    }
    let peak = peak_kib(agent.child.id());
    assert!(
        peak <= MAX_PEAK_KIB,
        "the agent peaked at {} MiB with {COPIES} binaries",
        peak >> 10
    );
    eprintln!(
        "agent peak with {COPIES} distinct binaries: {} MiB",
        peak >> 10
    );
    drop(procs);
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// The same build in several files (one image's binary in several
/// containers' overlays is one file per container): parsed once, its
/// tables shared; a file of the same build ID that differs in one byte
/// (a forged ID) is parsed on its own.
#[test]
fn one_build_in_three_files_is_parsed_once_and_a_forged_id_is_not_trusted() {
    use memtrace_user::engine::discover::{Binaries, Found, Process};
    let dir = out_dir("same-build");
    let orig = std::fs::read("/usr/bin/prometheus").expect("the bootstrap installs prometheus");
    let process = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        Process {
            pid: 1,
            exe: path.clone(),
            via: path,
            binary: memtrace_user::engine::BinaryId::of(&m),
        }
    };
    let go = |found| match found {
        Found::Go(b) => b,
        other => panic!("{other:?}"),
    };
    let mut bins = Binaries::default();
    let first = go(bins.of(&process("a", &orig)).unwrap());
    let second = go(bins.of(&process("b", &orig)).unwrap());
    let third = go(bins.of(&process("c", &orig)).unwrap());
    assert!(std::sync::Arc::ptr_eq(&first, &second) && std::sync::Arc::ptr_eq(&first, &third));
    assert_eq!(bins.shared, 2);
    // The last byte changed: same build ID, not the same file.
    let mut forged = orig.clone();
    *forged.last_mut().unwrap() ^= 1;
    let other = go(bins.of(&process("d", &forged)).unwrap());
    assert!(!std::sync::Arc::ptr_eq(&first, &other));
    assert_eq!(other.table.build_id, first.table.build_id);
    assert_eq!(bins.shared, 2);
}
