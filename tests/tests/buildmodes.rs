//! End-to-end: the build modes users ship. For every Go version in
//! MEMTRACE_GO_VERSIONS, the default, stripped (`-ldflags=-s -w`), PIE and
//! cgo (externally linked) builds of one program are traced with alloc-exact and rss; each names the
//! same leaking functions, inlined frames included. Then a process whose
//! binary was deleted, and one whose binary exists only in another mount
//! namespace, are traced by pid.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use memtrace_tests::*;

const OBJECTS: u64 = 50_000;
const POINTS: u64 = 20_000;
const MAPS_MIB: u64 = 32;
const MODES: &[&str] = &["allocs", "allocs-stripped", "allocs-pie", "allocs-cgo"];

fn leaf(frames: &[String]) -> &str {
    frames.last().map_or("", String::as_str)
}

/// Stacks of a folded file holding at least `min` bytes.
fn big_stacks(folded: &std::path::Path, min: u64) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(folded)
        .unwrap_or_else(|e| panic!("reading {}: {e}", folded.display()));
    text.lines()
        .filter_map(|l| {
            let (stack, v) = l.rsplit_once(' ')?;
            let v: u64 = v.parse().ok()?;
            (v >= min).then(|| (stack.to_string(), v))
        })
        .collect()
}

/// Stacks (root first) of a pprof file as `go tool pprof -traces` prints
/// them, with the `(inline)` markers dropped.
fn pprof_traces(profile: &std::path::Path) -> Vec<Vec<String>> {
    let out = output_ok(
        Command::new(env_path("MEMTRACE_GO"))
            .args(["tool", "pprof", "-traces", "-sample_index=alloc_space"])
            .arg(profile)
            .env("GOTOOLCHAIN", "local")
            .env("PPROF_TMPDIR", std::env::temp_dir()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("-----------+")
        .skip(1)
        .map(|block| {
            let mut frames: Vec<String> = block
                .lines()
                .skip(2) // the rule's tail and the "bytes:" line
                .filter_map(|l| {
                    // The first frame follows the sample's value.
                    let name = l.split_whitespace().last()?;
                    let name = if l.trim_end().ends_with("(inline)") {
                        l.split_whitespace().rev().nth(1)?
                    } else {
                        name
                    };
                    Some(name.to_string())
                })
                .collect();
            frames.reverse();
            frames
        })
        .collect()
}

/// `go tool pprof ARGS PROFILE`, stdout and stderr together.
fn pprof(args: &[&str], profile: &std::path::Path) -> String {
    let out = output_ok(
        Command::new(env_path("MEMTRACE_GO"))
            .arg("tool")
            .arg("pprof")
            .args(args)
            .arg(profile)
            .env("GOTOOLCHAIN", "local")
            .env("PPROF_TMPDIR", std::env::temp_dir()),
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `file:line` of `func`'s own frame in Go's heap profile, as `-traces
/// -lines` prints it (the sample whose leaf it is).
fn own_line(own: &std::path::Path, func: &str) -> String {
    let text = pprof(&["-traces", "-lines", "-sample_index=alloc_space"], own);
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            // The leaf line: "VALUE FUNC FILE:LINE [(inline)]".
            let (_value, f, at) = (w.next()?, w.next()?, w.next()?);
            (f == func).then(|| at.rsplit('/').next().unwrap_or(at).to_string())
        })
        .unwrap_or_else(|| panic!("Go's own profile has no {func}:\n{text}"))
}

/// The source lines `-list FUNC` shows a value on.
fn listed_lines(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (flat, cum, line) = (w.next()?, w.next()?, w.next()?);
            let n = line.strip_suffix(':')?;
            (n.parse::<u32>().is_ok() && (flat != "." || cum != ".")).then(|| n.to_string())
        })
        .collect()
}

/// Our pprof file: the allocating lines are Go's own, `-list` and `-lines`
/// show them (the inlined constructor's too), `-raw` addresses fall in the
/// mapping, and pprof finds the binary's name.
fn check_lines(pb: &std::path::Path, own_records: &str, own_point: &str, label: &str) {
    for (func, want) in [
        ("main.allocateRecords", own_records),
        ("main.newPoint", own_point),
    ] {
        let list = pprof(&["-list", &format!("^{func}$")], pb);
        let line = want.rsplit(':').next().unwrap();
        assert_eq!(
            listed_lines(&list),
            vec![line.to_string()],
            "{label}: -list {func} should show its bytes on line {line} only:\n{list}"
        );
    }
    let top = pprof(&["-top", "-lines"], pb);
    let first = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or("");
    assert!(
        first.contains("main.allocateRecords") && first.ends_with(own_records),
        "{label}: -top -lines should lead with main.allocateRecords {own_records}:\n{top}"
    );
    let raw = pprof(&["-raw"], pb);
    assert!(
        !raw.contains("Main binary filename not available"),
        "{label}: {raw}"
    );
    let mapping = raw
        .lines()
        .skip_while(|l| !l.starts_with("Mappings"))
        .nth(1)
        .and_then(|l| {
            let range = l.split_whitespace().nth(1)?;
            let mut it = range.split('/');
            let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
            Some((hex(it.next()?)?, hex(it.next()?)?))
        })
        .unwrap_or_else(|| panic!("{label}: no mapping in -raw:\n{raw}"));
    let addrs: Vec<u64> = raw
        .lines()
        .skip_while(|l| !l.starts_with("Locations"))
        .filter(|l| l.contains(" M=1 "))
        .filter_map(|l| {
            u64::from_str_radix(l.split_whitespace().nth(1)?.trim_start_matches("0x"), 16).ok()
        })
        .collect();
    assert!(
        addrs.len() >= 10,
        "{label}: too few mapped locations:\n{raw}"
    );
    assert!(
        addrs
            .iter()
            .all(|a| *a != 0 && (mapping.0..mapping.1).contains(a)),
        "{label}: addresses outside {mapping:x?}: {addrs:x?}"
    );
}

/// `file:line` of the leaf frame of `lens`'s top stack in a summary, and
/// that frame.
fn top_leaf_position(s: &serde_json::Value, lens: &str) -> (String, serde_json::Value) {
    let leaf = s["lenses"][lens]["top"][0]["frames"]
        .as_array()
        .and_then(|f| f.last())
        .cloned()
        .unwrap_or_default();
    let file = leaf["file"].as_str().unwrap_or("");
    let base = file.rsplit('/').next().unwrap_or("");
    (format!("{base}:{}", leaf["line"]), leaf)
}

#[test]
fn every_build_mode_names_the_same_functions() {
    for v in go_versions() {
        // Go's own heap profile of the same program (a build with
        // -tags memprofile), as `go tool pprof` reads it.
        let own_profile = out_dir(&format!("own-{v}")).join("own.pb.gz");
        output_ok(
            Command::new(fixture(&v, "allocs-memprofile"))
                .args(["-objects", "1000", "-inlined", "1000", "-maps", "0"])
                .arg("-memprofile")
                .arg(&own_profile),
        );
        let own = pprof_traces(&own_profile);
        let own_records = own_line(&own_profile, "main.allocateRecords");
        let own_point = own_line(&own_profile, "main.newPoint");
        let mut stacks_by_mode = Vec::new();
        for mode in MODES {
            let bin = fixture(&v, mode);
            let r = Record::new(&format!("mode-{v}-{mode}"))
                .lens("alloc-exact,rss")
                .launch(
                    &bin,
                    &[
                        "-objects",
                        &OBJECTS.to_string(),
                        "-inlined",
                        &POINTS.to_string(),
                        "-maps",
                        &MAPS_MIB.to_string(),
                    ],
                )
                .ok();
            assert_eq!(r.printed("records"), OBJECTS, "go{v} {mode}");
            let (out, s) = (r.out.clone(), r.summary.clone());
            assert_eq!(s["dropped_events"], 0, "go{v} {mode}: {s}");

            // alloc-exact: the named function on top, with exactly its bytes.
            let t = top(&s, "alloc-exact");
            assert_eq!(leaf(&t[0].0), "main.allocateRecords", "go{v} {mode}: {t:?}");
            assert_eq!(t[0].1, OBJECTS * 64, "go{v} {mode}: {:?}", t[0]);
            // The inlined constructor is its own frame, under its caller.
            let inlined = t
                .iter()
                .find(|(f, _)| leaf(f) == "main.newPoint")
                .unwrap_or_else(|| panic!("go{v} {mode}: no main.newPoint in {t:?}"));
            assert_eq!(
                inlined.0[inlined.0.len() - 2],
                "main.allocateInlined",
                "go{v} {mode}: {inlined:?}"
            );
            assert_eq!(inlined.1, POINTS * 32, "go{v} {mode}: {inlined:?}");
            // Frame names, inlined ones included, are the ones `go tool
            // pprof` shows for the program's own heap profile.
            for want_leaf in ["main.allocateRecords", "main.newPoint"] {
                let theirs = own
                    .iter()
                    .find(|f| f.last().map(String::as_str) == Some(want_leaf))
                    .unwrap_or_else(|| panic!("go{v} {mode}: pprof has no {want_leaf}"));
                let ours = &t.iter().find(|(f, _)| leaf(f) == want_leaf).unwrap().0;
                assert!(
                    ours.ends_with(theirs),
                    "go{v} {mode}: memtrace {ours:?}, pprof {theirs:?}"
                );
            }
            let svg = std::fs::read_to_string(out.join("alloc-exact.svg")).unwrap();
            assert!(svg.contains("main.allocateRecords"), "go{v} {mode}");
            // Lines: in pprof, and in summary.json's frames.
            check_lines(
                &out.join("alloc-exact.pb.gz"),
                &own_records,
                &own_point,
                &format!("go{v} {mode}"),
            );
            let (at, leaf_frame) = top_leaf_position(&s, "alloc-exact");
            assert_eq!(at, own_records, "go{v} {mode}: {leaf_frame}");

            // rss: the off-heap mapping is the largest resident growth.
            let r = top(&s, "rss");
            assert_eq!(leaf(&r[0].0), "main.mapOffHeap", "go{v} {mode}: {r:?}");
            assert!(
                r[0].1 >= MAPS_MIB << 20,
                "go{v} {mode}: {} bytes < {MAPS_MIB} MiB",
                r[0].1
            );
            // Every Go frame is named; so is every frame of a pure Go build
            // (a cgo build starts in the dynamic loader and libc, whose
            // local symbols Debian strips).
            let count = |k: &str| {
                s["counters"][k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("counters.{k}"))
            };
            assert_eq!(count("unresolved_go_frames"), 0, "go{v} {mode}: {s}");
            if *mode != "allocs-cgo" {
                assert_eq!(count("unresolved_frames"), 0, "go{v} {mode}: {s}");
            }
            stacks_by_mode.push((mode, big_stacks(&out.join("alloc-exact.folded"), 100_000)));
        }
        // The other builds' large stacks are those of the default.
        let (_, plain) = &stacks_by_mode[0];
        assert!(plain.len() >= 2, "go{v}: {plain:?}");
        for (mode, stacks) in &stacks_by_mode[1..] {
            assert_eq!(
                plain.keys().collect::<Vec<_>>(),
                stacks.keys().collect::<Vec<_>>(),
                "go{v}: {mode} names other stacks than the default build"
            );
        }
    }
}

/// Starts `cmd` (a looping allocs fixture) and waits for its first heartbeat.
fn start_looping(cmd: Command, v: &str) -> (Bg, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let mut cmd = cmd;
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut bg = Bg(child);
    let lines = collect_stdout(&mut bg);
    assert!(
        wait_until(Duration::from_secs(10), || last_heartbeat(&lines) >= 1),
        "go{v}: fixture never started"
    );
    (bg, lines)
}

/// Attaches alloc-exact to `pids` for 3 s; asserts every frame resolved and
/// returns the top stacks.
fn attach_top(pids: &[u32], name: &str) -> Vec<(Vec<String>, u64)> {
    let r = pids
        .iter()
        .fold(Record::new(name), |r, p| r.pid(*p))
        .lens("alloc-exact")
        .duration("3")
        .ok();
    let s = &r.summary;
    assert_eq!(
        s["counters"]["unresolved_frames"].as_u64(),
        Some(0),
        "{name}: {s}"
    );
    r.top("alloc-exact")
}

/// The binary is unlinked after start: probes attach and frames resolve
/// through /proc/PID/exe.
#[test]
fn deleted_binary_is_traced() {
    for v in go_versions() {
        let dir = out_dir(&format!("deleted-bin-{v}"));
        let copy = dir.join("allocs-deleted");
        std::fs::copy(fixture(&v, "allocs-stripped"), &copy).unwrap();
        let mut cmd = Command::new(&copy);
        cmd.args(["-objects", "1000", "-maps", "1", "-loop"]);
        let (mut bg, _lines) = start_looping(cmd, &v);
        std::fs::remove_file(&copy).unwrap();
        let exe = std::fs::read_link(format!("/proc/{}/exe", bg.pid())).unwrap();
        assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");

        let (frames, bytes) = attach_top(&[bg.pid()], &format!("deleted-{v}")).swap_remove(0);
        assert_eq!(leaf(&frames), "main.churn", "go{v}: {frames:?}");
        assert!(frames.iter().any(|f| f == "main.main"), "go{v}: {frames:?}");
        assert!(bytes >= 64 * 1000, "go{v}: {bytes}");
        assert!(bg.alive(), "go{v}: target died");
    }
}

/// The binary lives on a tmpfs mounted only in the target's own mount
/// namespace, under a path that does not exist on the host.
#[test]
fn binary_in_another_mount_namespace_is_traced() {
    for v in go_versions() {
        let dir = out_dir(&format!("mntns-{v}"));
        let mnt = dir.join("private");
        std::fs::create_dir_all(&mnt).unwrap();
        let src = fixture(&v, "allocs");
        let script = format!(
            "mount -t tmpfs tmpfs {m} && cp {src} {m}/app && exec {m}/app -objects 1000 -maps 1 -loop",
            m = mnt.display(),
            src = src.display()
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let (mut bg, _lines) = start_looping(cmd, &v);
        let inside = mnt.join("app");
        assert!(
            !inside.exists(),
            "{} is visible on the host",
            inside.display()
        );
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/exe", bg.pid())).unwrap(),
            inside
        );

        let (frames, bytes) = attach_top(&[bg.pid()], &format!("mntns-run-{v}")).swap_remove(0);
        assert_eq!(leaf(&frames), "main.churn", "go{v}: {frames:?}");
        assert!(bytes >= 64 * 1000, "go{v}: {bytes}");
        assert!(bg.alive(), "go{v}: target died");
    }
}

/// Two processes of one PIE binary load at different bases; both are
/// traced at once, and each one's frames resolve (one table, one cache).
#[test]
fn two_processes_of_one_pie_binary() {
    for v in go_versions() {
        let start = || {
            let mut cmd = Command::new(fixture(&v, "allocs-pie"));
            cmd.args(["-objects", "1000", "-maps", "1", "-loop"]);
            start_looping(cmd, &v)
        };
        let (mut a, _la) = start();
        let (mut b, _lb) = start();
        let t = attach_top(&[a.pid(), b.pid()], &format!("two-pie-{v}"));
        for pid in [a.pid(), b.pid()] {
            let root = format!("allocs-pie (pid {pid})");
            let churn = t
                .iter()
                .find(|(f, _)| f[0] == root && leaf(f) == "main.churn")
                .unwrap_or_else(|| panic!("go{v}: no main.churn under {root} in {t:?}"));
            assert!(churn.1 >= 64 * 1000, "go{v}: {churn:?}");
        }
        assert!(a.alive() && b.alive(), "go{v}: a target died");
    }
}
