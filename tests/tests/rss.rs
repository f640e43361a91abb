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
