//! End-to-end test of the GC view (reported with every lens).

use memtrace_tests::*;

/// A program that forces N GC cycles: memtrace counts them (±1), times the
/// stop-the-world pauses, and reads the heap size and goal at each cycle.
#[test]
fn forced_gc_cycles_are_counted_with_pauses() {
    for v in go_versions() {
        let r = Record::new(&format!("gc-{v}"))
            .lens("mmap")
            .launch(&fixture(&v, "gc"), &["-n", "25"])
            .ok();
        let stdout = &r.stdout;
        let numgc = r.printed("numgc");
        assert!(numgc >= 25, "go{v}: the fixture forced only {numgc} cycles");
        let gc = &r.summary["gc"];
        let cycles = gc["cycles"].as_u64().unwrap();
        assert!(
            cycles.abs_diff(numgc) <= 1,
            "go{v}: memtrace saw {cycles} cycles, the program {numgc}"
        );
        let pauses = &gc["pauses"];
        assert!(
            pauses["count"].as_u64().unwrap() >= 2 * numgc,
            "go{v}: {pauses}"
        );
        assert!(pauses["p50_ns"].as_u64().unwrap() > 0, "go{v}: {pauses}");
        assert!(pauses["max_ns"].as_u64().unwrap() >= pauses["p99_ns"].as_u64().unwrap());
        let last = gc["cycle_detail"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        let (live, goal) = (
            last["heap_live"].as_u64().unwrap(),
            last["heap_goal"].as_u64().unwrap(),
        );
        assert!(live > 1 << 20, "go{v}: heap at the last cycle {live}");
        assert!(goal > live / 2, "go{v}: goal {goal} vs live {live}");
        assert!(stdout.contains("GC: "), "go{v}: no GC line on the terminal");
    }
}

/// A GC-heavy program (hundreds of cycles a second, a small live heap),
/// traced by the costliest lens: the GC view's probes sit on instructions
/// the kernel emulates, one of them on the stack check's jump on Go
/// 1.19–1.20, where the entry that goes to `morestack` must not count.
/// Every cycle the runtime reports with `GODEBUG=gctrace=1` is seen once,
/// with the same heap goal (and at most one more, unprinted at exit), and there are two pauses per cycle (plus the
/// fixture's two `ReadMemStats`).
#[test]
fn a_gc_heavy_program_matches_gctrace() {
    for v in go_versions() {
        let r = Record::new(&format!("gc-heavy-{v}"))
            .lens("rss")
            .env("GODEBUG", "gctrace=1")
            .launch(
                &fixture(&v, "allocs"),
                &[
                    "-objects", "0", "-maps", "0", "-inlined", "0", "-churn", "3000",
                ],
            )
            .ok();
        // gctrace: "gc 53 @0.089s 10%: … 3->3->0 MB, 4 MB goal, …"
        let traced: Vec<u64> = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("gc ") && l.contains(" MB goal"))
            .map(|l| {
                let before = l.split(" MB goal").next().unwrap();
                before.rsplit(' ').next().unwrap().parse().unwrap()
            })
            .collect();
        assert!(
            traced.len() >= 20,
            "go{v}: only {} gctrace lines: {}",
            traced.len(),
            r.stderr
        );
        let gc = &r.summary["gc"];
        let goals: Vec<u64> = gc["cycle_detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["heap_goal"].as_u64().unwrap() >> 20)
            .collect();
        let cycles = gc["cycles"].as_u64().unwrap();
        assert_eq!(cycles, goals.len() as u64, "go{v}: cycles and their detail");
        // The runtime counts a cycle (NumGC) in mark termination, where the
        // probe sits, and prints its gctrace line at the end of it: a
        // program that exits in between has one cycle more than lines.
        let unprinted = cycles.checked_sub(traced.len() as u64);
        assert!(
            matches!(unprinted, Some(0 | 1)),
            "go{v}: memtrace saw {cycles} cycles, gctrace printed {}",
            traced.len()
        );
        assert_eq!(
            goals[..traced.len()],
            traced[..],
            "go{v}: the heap goal per cycle (MiB) differs from gctrace's"
        );
        let pauses = gc["pauses"]["count"].as_u64().unwrap();
        let want = 2 * cycles;
        assert!(
            (want - unprinted.unwrap()..=want + 4).contains(&pauses),
            "go{v}: {pauses} pauses for {cycles} cycles"
        );
    }
}
