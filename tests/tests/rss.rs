//! End-to-end tests of the rss lens (the default) against the `rss` fixture.

use std::time::Duration;

use memtrace_tests::*;

const MIB: u64 = 1 << 20;

fn stack_has(frames: &[String], f: &str) -> bool {
    frames.iter().any(|x| x == f)
}

/// Bytes attributed to stacks that contain `func`.
fn bytes_in(s: &serde_json::Value, func: &str) -> u64 {
    top(s, "rss")
        .iter()
        .filter(|(f, _)| stack_has(f, func))
        .map(|(_, v)| v)
        .sum()
}

fn start_fixture(v: &str, args: &[&str]) -> (Bg, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let mut bg = Bg::spawn(&fixture(v, "rss"), args);
    let lines = collect_stdout(&mut bg);
    assert!(
        wait_until(Duration::from_secs(10), || last_heartbeat(&lines) >= 3),
        "go{v}: fixture {args:?} never got going"
    );
    (bg, lines)
}

fn record_pid(
    v: &str,
    name: &str,
    pid: u32,
    secs: &str,
) -> (std::path::PathBuf, serde_json::Value) {
    let r = Record::new(&format!("{name}-{v}"))
        .pid(pid)
        .duration(secs)
        .ok();
    (r.out, r.summary)
}

/// A global map that is never evicted, attached mid-run: its function tops
/// the rss lens, and the lens accounts for the VmRSS growth within 10%.
#[test]
fn leak_in_global_map_is_found_by_pid() {
    for v in go_versions() {
        let (mut bg, _lines) = start_fixture(&v, &["-mode", "leak"]);
        let (out, s) = record_pid(&v, "rss-leak", bg.pid(), "4");
        let rss = &s["lenses"]["rss"];
        let t = top(&s, "rss");
        assert!(
            stack_has(&t[0].0, "main.cacheSession"),
            "go{v}: top rss stack {:?}",
            t[0]
        );
        let total = rss["total"].as_u64().unwrap() as f64;
        let growth = rss["vmrss_growth"].as_i64().unwrap() as f64;
        assert!(
            growth > 20.0 * MIB as f64,
            "go{v}: the fixture should grow; VmRSS grew {growth}"
        );
        let ratio = total / growth;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "go{v}: rss lens {total} vs VmRSS growth {growth} ({ratio:.3})"
        );
        // Per-target VmRSS figures, a timeline, and its chart.
        let target = &s["targets"][0];
        assert_eq!(
            target["vmrss_start"].as_u64().unwrap() as f64 + growth,
            target["vmrss_end"].as_u64().unwrap() as f64
        );
        assert!(
            target["timeline"].as_array().unwrap().len() >= 4,
            "go{v}: {target}"
        );
        let svg = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
        assert!(svg.contains("<polyline") && svg.contains("VmRSS"));
        assert!(std::fs::read_to_string(out.join("rss.svg"))
            .unwrap()
            .contains("main.cacheSession"));
        // The breakdown puts the growth in the Go heap.
        let b = &target["breakdown"];
        assert!(
            b["go_heap"].as_u64().unwrap() > b["off_heap_anon"].as_u64().unwrap(),
            "go{v}: {b}"
        );
        assert!(
            b["go_heap"].as_u64().unwrap() as f64 >= growth * 0.9,
            "go{v}: {b}"
        );
        assert!(bg.alive(), "go{v}: target died");
        assert_no_memtrace_programs();
    }
}

/// syscall.Mmap'd and touched memory: attributed to the mapping function and
/// shown as off-heap in the breakdown.
#[test]
fn off_heap_mmap_is_attributed_and_classified() {
    for v in go_versions() {
        let (mut bg, lines) =
            start_fixture(&v, &["-mode", "offheap", "-rate", "2", "-limit", "48"]);
        let (_, s) = record_pid(&v, "rss-offheap", bg.pid(), "4");
        // Everything mapped during the window: 2 MiB per beat until 48 MiB.
        let mapped_in_window = bytes_in(&s, "main.mapOffHeap");
        let t = top(&s, "rss");
        assert!(
            stack_has(&t[0].0, "main.mapOffHeap"),
            "go{v}: top {:?}",
            t[0]
        );
        assert!(
            mapped_in_window >= 16 * MIB,
            "go{v}: only {mapped_in_window} bytes attributed"
        );
        assert_eq!(mapped_in_window % (4096), 0);
        let b = &s["targets"][0]["breakdown"];
        let off = b["off_heap_anon"].as_u64().unwrap();
        let heap = b["go_heap"].as_u64().unwrap();
        assert!(off >= 48 * MIB, "go{v}: off-heap {off}: {b}");
        assert!(
            heap < 16 * MIB,
            "go{v}: off-heap memory counted as Go heap: {b}"
        );
        assert!(bg.alive() && last_heartbeat(&lines) > 3);
        assert_no_memtrace_programs();
    }
}

/// Memory that is allocated and given back: no growth stack dominates and
/// the released pages are accounted.
#[test]
fn steady_memory_shows_no_growth() {
    for v in go_versions() {
        let (mut bg, _lines) = start_fixture(&v, &["-mode", "steady"]);
        let (_, s) = record_pid(&v, "rss-steady", bg.pid(), "3");
        let rss = &s["lenses"]["rss"];
        let released = rss["released_bytes"].as_u64().unwrap();
        let total = rss["total"].as_u64().unwrap();
        // ~10 cycles of 8 MiB touched and returned in the window.
        assert!(
            released >= 40 * MIB,
            "go{v}: released only {released}: {rss}"
        );
        // At most one cycle in flight when the window closed.
        assert!(
            total <= 9 * MIB,
            "go{v}: {total} bytes still attributed: {rss}"
        );
        assert!(
            bytes_in(&s, "main.churnBuffer") <= 8 * MIB + 64 * 1024,
            "go{v}: {rss}"
        );
        assert!(bg.alive());
    }
}

/// MADV_HUGEPAGE memory: each 2 MiB huge page arrives in one fault and is
/// still counted in full.
#[test]
fn transparent_huge_pages_count_in_full() {
    let v = go_versions().pop().unwrap();
    let out = out_dir("rss-thp");
    let mut bg = Bg::spawn(
        &memtrace(),
        &[
            "record",
            "--duration",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--",
            fixture(&v, "rss").to_str().unwrap(),
            "-mode",
            "thp",
        ],
    );
    let status = bg.0.wait().unwrap();
    assert!(status.success());
    let s = summary(&out);
    let huge = bytes_in(&s, "main.touchHuge");
    assert!(
        huge >= 8 * MIB,
        "only {huge} bytes attributed to main.touchHuge: {}",
        s["lenses"]["rss"]
    );
    // The launched program keeps running after the window: stop it.
    let pid = s["targets"][0]["pid"].as_u64().unwrap() as i32;
    // SAFETY: signalling the fixture memtrace launched for this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// copy() into fresh memory faults in `runtime.memmove`, which has no frame
/// of its own: a frame-pointer walk from there skips the function that
/// copies. Each of two copies on adjacent lines into adjacent buffers is
/// charged to its own line of that function (not both to the first, and
/// not to its caller).
#[test]
fn each_copy_is_charged_to_the_line_that_copies() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/rss/main.go"))
        .unwrap();
    let line_of = |marker: &str| src.lines().position(|l| l.contains(marker)).unwrap() + 1;
    let lines = [line_of("// copy-first"), line_of("// copy-second")];
    for v in go_versions() {
        let (mut bg, _lines) = start_fixture(&v, &["-mode", "copy"]);
        let r = Record::new(&format!("rss-copy-{v}"))
            .pid(bg.pid())
            .duration("2")
            .arg("--frames")
            .arg("line")
            .ok();
        let folded = std::fs::read_to_string(r.out.join("rss.folded")).unwrap();
        let (mut by_line, mut elsewhere) = ([0u64; 2], 0u64);
        for l in folded.lines() {
            let (stack, n) = l.rsplit_once(' ').unwrap();
            let n: u64 = n.parse().unwrap();
            let frames: Vec<&str> = stack.split(';').collect();
            if frames.len() < 2 || !frames[frames.len() - 1].starts_with("runtime.memmove ") {
                continue;
            }
            let caller = frames[frames.len() - 2];
            match lines
                .iter()
                .position(|l| caller == format!("main.copyTwice main.go:{l}"))
            {
                Some(i) => by_line[i] += n,
                None => elsewhere += n,
            }
        }
        let copied = by_line[0] + by_line[1];
        assert!(
            by_line.iter().all(|&b| b >= 8 * MIB),
            "go{v}: memmove's pages by line {lines:?}: {by_line:?}, elsewhere {elsewhere}\n{folded}"
        );
        let ratio = by_line[0] as f64 / by_line[1] as f64;
        assert!(
            (0.7..=1.43).contains(&ratio),
            "go{v}: the two copies are the same size: {by_line:?}"
        );
        assert!(
            elsewhere * 10 < copied,
            "go{v}: memmove's pages under other callers: {elsewhere} of {copied}\n{folded}"
        );
        assert!(bg.alive(), "go{v}: target died");
    }
}

/// The bench's floor (`--fault-probe-floor`, hidden): the fault probes are
/// attached and count nothing, while the same copies count in full without
/// it. If the switch stopped working, the bench's floor row would measure
/// the whole lens and say nothing.
#[test]
fn the_bench_floor_counts_no_fault() {
    let v = go_versions().pop().unwrap();
    let (mut bg, _lines) = start_fixture(&v, &["-mode", "copy"]);
    let floor = Record::new(&format!("rss-floor-{v}"))
        .pid(bg.pid())
        .duration("1")
        .arg("--fault-probe-floor")
        .ok();
    let full = Record::new(&format!("rss-floor-full-{v}"))
        .pid(bg.pid())
        .duration("1")
        .ok();
    let total = |s: &serde_json::Value| s["lenses"]["rss"]["total"].as_u64().unwrap();
    let merged = |s: &serde_json::Value| s["counters"]["faults_merged"].as_u64().unwrap();
    assert_eq!(
        (total(&floor.summary), merged(&floor.summary)),
        (0, 0),
        "go{v}: the floor counted faults"
    );
    assert!(
        total(&full.summary) >= 8 * MIB && merged(&full.summary) > 0,
        "go{v}: the copies did not count without the floor: {} B, {} merged",
        total(&full.summary),
        merged(&full.summary)
    );
    assert!(bg.alive(), "go{v}: target died");
}
