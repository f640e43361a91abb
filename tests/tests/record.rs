//! End-to-end: `memtrace record` against real Go programs, as root, with the
//! real kernel. Each test covers every Go version in MEMTRACE_GO_VERSIONS.

use std::process::Command;
use std::time::Duration;

use memtrace_tests::*;

const OBJECTS: u64 = 50_000;
const RECORD_BYTES: u64 = 64;
const MAPS_MIB: u64 = 100;
const POINTS: u64 = 20_000;
const POINT_BYTES: u64 = 32;

fn leaf(frames: &[String]) -> &str {
    frames.last().map_or("", String::as_str)
}

fn pprof_top(go: &std::path::Path, profile: &std::path::Path) -> String {
    let out = output_ok(
        Command::new(go)
            .args(["tool", "pprof", "-top"])
            .arg(profile)
            .env("GOTOOLCHAIN", "local")
            .env("PPROF_TMPDIR", std::env::temp_dir()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Launch mode: probes are in place from the first instruction, so the
/// allocation count matches the program's own MemStats.Mallocs.
#[test]
fn launch_alloc_exact_and_mmap_match_the_program() {
    for v in go_versions() {
        let bin = fixture(&v, "allocs");
        let r = Record::new(&format!("launch-{v}"))
            .lens("alloc-exact,mmap")
            .launch(
                &bin,
                &[
                    "-objects",
                    &OBJECTS.to_string(),
                    "-maps",
                    &MAPS_MIB.to_string(),
                    "-inlined",
                    &POINTS.to_string(),
                ],
            )
            .ok();
        // The program ran to completion with its normal output.
        assert_eq!(r.printed("records"), OBJECTS, "go{v}");
        assert_eq!(r.printed("regions"), MAPS_MIB, "go{v}");
        let mallocs = r.printed("mallocs_total");

        let (out, s) = (&r.out, &r.summary);
        assert_eq!(s["dropped_events"], 0, "go{v}: {s}");
        assert!(
            s["targets"][0]["go_version"]
                .as_str()
                .unwrap()
                .starts_with(&format!("go{v}")),
            "go{v}: {s}"
        );
        assert_eq!(s["ended_by"], "every target exited");

        // alloc-exact: the named function, exactly; total within 1% of Mallocs.
        let objects = s["lenses"]["alloc-exact"]["objects"].as_u64().unwrap();
        let diff = objects.abs_diff(mallocs) as f64 / mallocs as f64;
        assert!(
            diff <= 0.01,
            "go{v}: memtrace counted {objects} objects, MemStats.Mallocs says {mallocs}"
        );
        let top0 = &s["lenses"]["alloc-exact"]["top"][0];
        let frames: Vec<String> = serde_json::from_value(top0["stack"].clone()).unwrap();
        assert_eq!(
            leaf(&frames),
            "main.allocateRecords",
            "go{v}: top stack {frames:?}"
        );
        assert_eq!(top0["objects"].as_u64(), Some(OBJECTS), "go{v}: {top0}");
        assert_eq!(
            top0["value"].as_u64(),
            Some(OBJECTS * RECORD_BYTES),
            "go{v}: {top0}"
        );
        assert!(
            frames.contains(&"main.main".to_string()),
            "go{v}: caller frame lost: {frames:?}"
        );

        // An allocation inside an inlined constructor names it, under its caller.
        let inl = top(s, "alloc-exact")
            .into_iter()
            .find(|(f, _)| leaf(f) == "main.newPoint")
            .unwrap_or_else(|| panic!("go{v}: no stack ends in the inlined main.newPoint: {s}"));
        let n = inl.0.len();
        assert_eq!(inl.0[n - 2], "main.allocateInlined", "go{v}: {:?}", inl.0);
        assert_eq!(inl.1, POINTS * POINT_BYTES, "go{v}: {:?}", inl);

        // mmap: at least N MiB attributed to the mapping function, on top.
        let mmap_top = top(s, "mmap");
        assert!(
            mmap_top[0].0.iter().any(|f| f == "main.mapOffHeap"),
            "go{v}: mmap top {:?}",
            mmap_top[0]
        );
        let mapped: u64 = mmap_top
            .iter()
            .filter(|(f, _)| f.iter().any(|x| x == "main.mapOffHeap"))
            .map(|(_, b)| b)
            .sum();
        assert!(
            mapped >= MAPS_MIB << 20,
            "go{v}: only {mapped} bytes attributed to main.mapOffHeap"
        );

        // The same answer in every output format.
        let svg = std::fs::read_to_string(out.join("alloc-exact.svg")).unwrap();
        assert!(
            svg.contains("main.allocateRecords") && svg.contains("alloc-exact"),
            "go{v}: svg"
        );
        let folded = std::fs::read_to_string(out.join("alloc-exact.folded")).unwrap();
        let first = folded.lines().next().unwrap();
        assert!(
            first.ends_with(&format!(";main.allocateRecords {}", OBJECTS * RECORD_BYTES)),
            "go{v}: {first}"
        );
        let mmap_folded = std::fs::read_to_string(out.join("mmap.folded")).unwrap();
        assert!(
            mmap_folded
                .lines()
                .next()
                .unwrap()
                .contains("main.mapOffHeap"),
            "go{v}"
        );
        let go = env_path("MEMTRACE_GO");
        let pp = pprof_top(&go, &out.join("alloc-exact.pb.gz"));
        assert!(
            pp.contains("main.allocateRecords"),
            "go{v}: pprof -top:\n{pp}"
        );
        let pp = pprof_top(&go, &out.join("mmap.pb.gz"));
        assert!(pp.contains("main.mapOffHeap"), "go{v}: pprof -top:\n{pp}");

        assert_no_memtrace_programs();
    }
}

/// Attach mode: an already-running process is traced for a window, keeps
/// running unharmed, and nothing of memtrace stays in the kernel.
#[test]
fn attach_to_running_process_and_detach_cleanly() {
    for v in go_versions() {
        let mut bg = Bg::spawn(
            &fixture(&v, "allocs"),
            &["-objects", "1000", "-maps", "1", "-loop"],
        );
        let lines = collect_stdout(&mut bg);
        assert!(
            wait_until(Duration::from_secs(10), || last_heartbeat(&lines) >= 1),
            "go{v}: fixture never started"
        );
        let r = Record::new(&format!("attach-{v}"))
            .pid(bg.pid())
            .lens("alloc-exact,mmap")
            .duration("3")
            .ok();
        let s = &r.summary;
        assert_eq!(s["ended_by"], "duration", "go{v}");
        assert_eq!(s["targets"][0]["pid"].as_u64(), Some(u64::from(bg.pid())));
        let t = top(s, "alloc-exact");
        assert_eq!(leaf(&t[0].0), "main.churn", "go{v}: top {:?}", t[0]);
        assert!(t[0].1 >= 64 * 1000, "go{v}: {:?}", t[0]);

        // The target survived and keeps working after memtrace detached.
        assert!(bg.alive(), "go{v}: target died");
        let before = last_heartbeat(&lines);
        assert!(
            wait_until(Duration::from_secs(5), || last_heartbeat(&lines)
                >= before + 2),
            "go{v}: target stopped making progress after detach"
        );
        assert!(bg.alive(), "go{v}: target died after detach");
        assert_no_memtrace_programs();
    }
}

/// SIGINT and SIGTERM end tracing early and still write the report.
#[test]
fn signals_end_tracing_and_write_the_report() {
    let v = go_versions().pop().unwrap();
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let mut bg = Bg::spawn(
            &fixture(&v, "allocs"),
            &["-objects", "10", "-maps", "1", "-loop"],
        );
        let lines = collect_stdout(&mut bg);
        assert!(wait_until(Duration::from_secs(10), || last_heartbeat(
            &lines
        ) >= 1));
        let out = out_dir(&format!("signal-{name}"));
        let child = Command::new(memtrace())
            .args([
                "record",
                "--pid",
                &bg.pid().to_string(),
                "--lens",
                "mmap",
                "--out",
                out.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(summary(&out)["ended_by"], name);
        assert!(out.join("mmap.svg").exists() && out.join("mmap.pb.gz").exists());
        assert!(bg.alive(), "{name}: target died");
        assert_no_memtrace_programs();
    }
}
