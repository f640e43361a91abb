//! End-to-end tests of the alloc and heap lenses, which read the Go runtime's
//! own memory profile from outside the process.

use std::time::Duration;

use memtrace_tests::*;

const MIB: u64 = 1 << 20;

fn bytes_ending_in(s: &serde_json::Value, lens: &str, func: &str) -> u64 {
    top(s, lens)
        .iter()
        .filter(|(f, _)| f.last().is_some_and(|l| l == func))
        .map(|(_, v)| v)
        .sum()
}

/// A leak into a global slice beside heavy churn: the heap lens puts the
/// leak on top and the churn near zero, while the alloc lens shows the churn
/// as the big allocator. Sampling is switched on for the window only.
#[test]
fn heap_lens_finds_the_leak_not_the_churn() {
    for v in go_versions() {
        let bin = fixture(&v, "rss");
        let mut bg = Bg::spawn(&bin, &["-mode", "heap"]);
        let lines = collect_stdout(&mut bg);
        assert!(wait_until(Duration::from_secs(10), || last_heartbeat(
            &lines
        ) >= 3));
        assert_eq!(
            mem_profile_rate(&bin, bg.pid()),
            0,
            "go{v}: fixture should not sample"
        );
        let r = Record::new(&format!("heap-{v}"))
            .pid(bg.pid())
            .lens("alloc,heap")
            .duration("4")
            .ok();
        assert!(
            r.stderr.contains("set runtime.MemProfileRate from 0"),
            "go{v}: the write must be announced: {}",
            r.stderr
        );
        let s = &r.summary;
        let heap_top = top(s, "heap");
        assert_eq!(
            heap_top[0].0.last().map(String::as_str),
            Some("main.leakRecords"),
            "go{v}: heap top {:?}",
            heap_top[0]
        );
        let leak_heap = bytes_ending_in(s, "heap", "main.leakRecords");
        let churn_heap = bytes_ending_in(s, "heap", "main.churnGarbage");
        let churn_alloc = bytes_ending_in(s, "alloc", "main.churnGarbage");
        let leak_alloc = bytes_ending_in(s, "alloc", "main.leakRecords");
        assert!(
            leak_heap >= 2 * MIB,
            "go{v}: leak only {leak_heap} bytes live"
        );
        assert!(
            churn_heap * 20 <= leak_heap,
            "go{v}: churn {churn_heap} live vs leak {leak_heap}"
        );
        assert!(
            churn_alloc >= 5 * leak_alloc,
            "go{v}: alloc lens churn {churn_alloc} vs leak {leak_alloc}"
        );
        assert!(
            churn_heap * 50 <= churn_alloc,
            "go{v}: churn is garbage: {churn_heap} of {churn_alloc}"
        );
        // The target is unharmed and its sampling rate is back to 0.
        assert!(bg.alive(), "go{v}: target died");
        assert_eq!(
            mem_profile_rate(&bin, bg.pid()),
            0,
            "go{v}: MemProfileRate not restored"
        );
        let before = last_heartbeat(&lines);
        assert!(wait_until(Duration::from_secs(5), || last_heartbeat(
            &lines
        ) >= before + 2));
    }
}

/// On a known allocation profile (1 M × 64 B in one function), the sampled
/// alloc lens's estimate is within 10% of the program's own TotalAlloc.
#[test]
fn alloc_lens_estimate_matches_total_alloc() {
    for v in go_versions() {
        // No waiting at start nor lingering at the end: the program holds
        // itself for memtrace before its first init and on its way out.
        let r = Record::new(&format!("alloc-{v}"))
            .lens("alloc")
            .launch(
                &fixture(&v, "allocs"),
                &["-objects", "1000000", "-maps", "0", "-inlined", "0"],
            )
            .ok();
        let truth = r.printed("total_alloc_delta") as f64;
        let s = &r.summary;
        let t = top(s, "alloc");
        assert_eq!(
            t[0].0.last().map(String::as_str),
            Some("main.allocateRecords"),
            "go{v}: {:?}",
            t[0]
        );
        let est = bytes_ending_in(s, "alloc", "main.allocateRecords") as f64;
        let ratio = est / truth;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "go{v}: estimated {est} vs TotalAlloc delta {truth} ({ratio:.3})"
        );
        assert_eq!(s["lenses"]["alloc"]["sample_rate_bytes"], 65536);
    }
}
