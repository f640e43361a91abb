//! The lens table's GC-heavy shape: short-lived lists, hundreds of GC
//! cycles a second, a small live heap. Every lens runs beside bpftrace
//! attaching what the lens attaches, and its goals are checked on paired
//! ratios (each run against the untraced run of its own round).

use crate::bench::median;
use crate::bench::{Runner, Shape, Variant};

/// 64 KiB lists the GC-heavy shape builds and drops: ~0.3 s untraced,
/// about 240 GC cycles, 640 k allocations.
const LISTS: u64 = 10_000;
/// The same for alloc-exact and its bpftrace equivalent (a probe per
/// allocation: bpftrace's ~10 µs a hit would make the big run take 7 s).
const LISTS_SMALL: u64 = 2_000;

/// The GC-heavy shape: every lens beside bpftrace doing the same probes
/// (alloc and heap read the runtime's own sampler, which bpftrace cannot:
/// beside that sampler at the same rate). All but alloc-exact's run [`RSS_ROUNDS`] times: the goals
/// (at or below bpftrace, the GC view within 2% of untraced, rss within
/// 3% of its floor) are smaller than a median of five can tell.
pub(crate) fn variants(bpftrace_alloc: &'static str) -> Vec<Variant> {
    let v = |name, runner, objects, rss| Variant {
        name,
        runner,
        rss,
        shape: Shape::GcHeavy,
        objects,
        times: vec![],
        cpu: vec![],
        peak_rss_kib: vec![],
        events: vec![],
    };
    // bpftrace's equivalent of a lens attaches what the lens attaches: its
    // own probes, with stacks where it keeps them, and the GC view's.
    let all = |parts: &[&str]| -> &'static str { Box::leak(parts.join(" ").into_boxed_str()) };
    let gc = "uprobe:{bin}:runtime.gcMarkTermination, \
         uprobe:{bin}:runtime.stopTheWorldWithSema, uprobe:{bin}:runtime.startTheWorldWithSema \
         /pid == cpid/ { @gc[probe] = count(); }";
    let faults =
        "tracepoint:exceptions:page_fault_user /pid == cpid/ { @faults[ustack] = count(); }";
    let syscalls = "tracepoint:syscalls:sys_enter_mmap, tracepoint:syscalls:sys_enter_munmap, \
         tracepoint:syscalls:sys_enter_madvise /pid == cpid/ { @syscalls[ustack] = count(); }";
    let goroutines = "uprobe:{bin}:runtime.newproc1 /pid == cpid/ { @spawn[ustack] = count(); } \
         uprobe:{bin}:runtime.goexit0 /pid == cpid/ { @exits = count(); }";
    vec![
        v(GC_UNTRACED, Runner::Untraced, LISTS, true),
        v(GC_RSS, Runner::Memtrace("rss", &[]), LISTS, true),
        v(
            GC_RSS_FLOOR,
            Runner::Memtrace("rss", &["--fault-probe-floor"]),
            LISTS,
            true,
        ),
        v(
            GC_BPF_RSS,
            Runner::Bpftrace(all(&[faults, syscalls, gc])),
            LISTS,
            true,
        ),
        v(GC_MMAP, Runner::Memtrace("mmap", &[]), LISTS, true),
        v(
            GC_BPF_MMAP,
            Runner::Bpftrace(all(&[syscalls, gc])),
            LISTS,
            true,
        ),
        v(GC_ALLOC, Runner::Memtrace("alloc", &[]), LISTS, true),
        v(GC_HEAP, Runner::Memtrace("heap", &[]), LISTS, true),
        // alloc and heap read the runtime's own sampler, which bpftrace
        // cannot: their equivalent is that sampler at memtrace's rate
        // (what pprof's heap profile costs at the same resolution).
        v(
            GC_SAMPLER,
            // Not GODEBUG=memprofilerate: a program that never calls
            // runtime.MemProfile has profiling off at init whatever it says.
            Runner::UntracedWith(&["-memprofilerate", "65536"]),
            LISTS,
            true,
        ),
        v(
            GC_GOROUTINES,
            Runner::Memtrace("goroutines", &[]),
            LISTS,
            true,
        ),
        // The same without the GC view's probes: the pair tells what the
        // GC view adds by itself, apart from what tracing at all costs.
        v(
            GC_NO_GC_VIEW,
            Runner::Memtrace("goroutines", &["--no-gc-view"]),
            LISTS,
            true,
        ),
        v(
            GC_BPF_GOROUTINES,
            Runner::Bpftrace(all(&[goroutines, gc])),
            LISTS,
            true,
        ),
        v(GC_UNTRACED_SMALL, Runner::Untraced, LISTS_SMALL, false),
        v(
            GC_ALLOC_EXACT,
            Runner::Memtrace("alloc-exact", &[]),
            LISTS_SMALL,
            false,
        ),
        v(
            GC_BPF_ALLOC,
            Runner::Bpftrace(all(&[bpftrace_alloc, gc])),
            LISTS_SMALL,
            false,
        ),
    ]
}

const GC_UNTRACED: &str = "untraced (gc-heavy)";
const GC_RSS: &str = "memtrace rss (gc-heavy)";
const GC_RSS_FLOOR: &str = "memtrace rss, floor (gc-heavy)";
const GC_BPF_RSS: &str = "bpftrace faults+syscalls+GC (gc-heavy)";
const GC_MMAP: &str = "memtrace mmap (gc-heavy)";
const GC_BPF_MMAP: &str = "bpftrace syscalls+GC (gc-heavy)";
const GC_ALLOC: &str = "memtrace alloc (gc-heavy)";
const GC_HEAP: &str = "memtrace heap (gc-heavy)";
const GC_SAMPLER: &str = "untraced, memprofilerate=64K (gc-heavy)";
const GC_GOROUTINES: &str = "memtrace goroutines (gc-heavy)";
const GC_NO_GC_VIEW: &str = "memtrace goroutines, no GC view (gc-heavy)";
const GC_BPF_GOROUTINES: &str = "bpftrace newproc1+goexit0+GC (gc-heavy)";
const GC_UNTRACED_SMALL: &str = "untraced (gc-heavy, small)";
const GC_ALLOC_EXACT: &str = "memtrace alloc-exact (gc-heavy, small)";
const GC_BPF_ALLOC: &str = "bpftrace allocators+GC (gc-heavy, small)";

/// The GC-heavy shape's goals, each a line that says met or missed.
/// The GC view alone is read from the `goroutines` lens, whose own probes
/// never fire on this program (it starts no goroutines after the GC's).
pub(crate) fn verdicts(variants: &[Variant]) {
    // The median of per-round ratios: each run against the untraced run of
    // its own round, which cancels the drift that moves whole rounds.
    let slowdown = |name: &str| {
        let v = variants.iter().find(|v| v.name == name)?;
        let b = variants.iter().find(|u| {
            matches!(u.runner, Runner::Untraced) && u.objects == v.objects && u.shape == v.shape
        })?;
        let ratios: Vec<f64> = v.times.iter().zip(&b.times).map(|(t, u)| t / u).collect();
        Some(median(&ratios))
    };
    if slowdown(GC_UNTRACED).is_none() {
        return;
    }
    println!("\ngc-heavy goals (medians of each round's ratio to that round's untraced run):");
    let line = |what: &str, a: Option<f64>, b: Option<f64>, limit: f64| {
        if let (Some(a), Some(b)) = (a, b) {
            let ok = a / b <= limit;
            println!(
                "  {what:<52} {a:.3}x vs {b:.3}x: {} ({:.3}, goal ≤ {limit:.2})",
                if ok { "met" } else { "MISSED" },
                a / b
            );
        }
    };
    line(
        "rss at or below bpftrace's equivalent",
        slowdown(GC_RSS),
        slowdown(GC_BPF_RSS),
        1.0,
    );
    line(
        "rss within 3% of its floor",
        slowdown(GC_RSS),
        slowdown(GC_RSS_FLOOR),
        1.03,
    );
    line(
        "mmap at or below bpftrace's equivalent",
        slowdown(GC_MMAP),
        slowdown(GC_BPF_MMAP),
        1.0,
    );
    line(
        "goroutines at or below bpftrace's equivalent",
        slowdown(GC_GOROUTINES),
        slowdown(GC_BPF_GOROUTINES),
        1.0,
    );
    line(
        "the GC view alone: goroutines with it against without",
        slowdown(GC_GOROUTINES),
        slowdown(GC_NO_GC_VIEW),
        1.02,
    );
    line(
        "alloc at or below the runtime's sampler at its rate",
        slowdown(GC_ALLOC),
        slowdown(GC_SAMPLER),
        1.0,
    );
    line(
        "heap at or below the runtime's sampler at its rate",
        slowdown(GC_HEAP),
        slowdown(GC_SAMPLER),
        1.0,
    );
    line(
        "alloc-exact at or below bpftrace's equivalent",
        slowdown(GC_ALLOC_EXACT),
        slowdown(GC_BPF_ALLOC),
        1.0,
    );
}
