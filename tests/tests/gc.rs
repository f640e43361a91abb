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
