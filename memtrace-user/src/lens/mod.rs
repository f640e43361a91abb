//! The lenses a user can ask for. Each lens's knowledge sits in its own
//! module: the question it answers and what it costs, the tracepoints and
//! uprobes it needs, its aggregator, and its extras in `summary.json`.

pub mod aggregate;
pub mod alloc_exact;
pub mod cell;
pub mod gc;
pub mod goroutines;
pub mod instance;
pub mod mmap;
pub mod rss;
pub mod sampled;
pub mod sizeclass;
pub mod support;

use crate::kernel::{Probes, Tracepoint};
use crate::model::lens::Lens;

/// What one lens is and needs.
#[derive(Debug)]
pub struct Spec {
    /// The question it answers, in one line.
    pub question: &'static str,
    /// What its cost scales with.
    pub cost: &'static str,
    pub tracepoints: &'static [Tracepoint],
    /// Uprobe families (besides the GC view's, which every session has).
    pub probes: Probes,
    /// Its samples count objects as well as bytes.
    pub has_objects: bool,
    /// Its samples also count the bytes requested, before the runtime's
    /// rounding (pprof's `requested_space`).
    pub requested: bool,
    /// Its stacks end in the allocator, whose entry frames are trimmed.
    pub allocation_stacks: bool,
    /// Its stacks are goroutine creation sites, whose `newproc` frames are
    /// trimmed.
    pub creation_stacks: bool,
}

// Each lens's cost: the one text `--help` prints and README.md's lens
// table shows (a unit test holds them equal). The figures come from
// `cargo xtask bench` (docs/BENCHMARKS.md). Every lens also carries the GC
// view, whose probes fire a few times per GC cycle (see `GC_VIEW_COST`).
const RSS_COST: &str =
    "a probe per new resident page, mostly merged in the kernel into runs of contiguous \
faults, and one per memory syscall: 1.03-1.18x on a loop that allocates and keeps \
everything live (0.8 of bpftrace's time with a stack per fault), 0.98-1.05x on a program \
that runs hundreds of GC cycles a second (0.9 of bpftrace's); the same on every Go \
version (kernel tracepoints)";
const MMAP_COST: &str =
    "a probe per memory syscall: no measurable slowdown (0.98x; 1.0x on a GC-heavy program, \
0.9 of bpftrace's time), on every Go version";
const ALLOC_COST: &str =
    "the runtime's own sampling, one sample per --memprofile-rate bytes (default 64 KiB), no \
probe per allocation: ~1.0x on an allocation loop, ~1.05x on a GC-heavy program (the \
sampler's own cost at that rate), on every Go version";
const ALLOC_EXACT_COST: &str =
    "a uprobe per allocation, on an instruction the kernel emulates (~0.5 us of trap and ~0.3 \
us of program a hit): ~13-15x on a loop that only allocates, 2.6x on a GC-heavy program, \
0.05-0.13 of bpftrace's time; Go 1.21 and later are probed at the frame push, Go \
1.19-1.20 at the stack check's jump, at 0.97-1.09x the slowdown of Go 1.27";
const HEAP_COST: &str =
    "as alloc: the runtime's own sampling, ~1.0x on an allocation loop, ~1.05x on a GC-heavy \
program, on every Go version";
const GOROUTINES_COST: &str =
    "two uprobes per goroutine, on instructions the kernel emulates: ~4-7x on pure goroutine \
churn, 0.1-0.2 of bpftrace's time; nothing between goroutine starts; every Go version";
/// The GC view, which every lens carries: three uprobes on instructions the
/// kernel emulates, a few hits per GC cycle.
pub const GC_VIEW_COST: &str =
    "three uprobes, on instructions the kernel emulates, a few hits per GC cycle: 0.3% on a \
program that runs 800 GC cycles a second";

const NO_PROBES: Probes = Probes {
    gc: false,
    allocs: false,
    goroutines: false,
    holds: false,
};

impl Lens {
    pub fn spec(self) -> &'static Spec {
        match self {
            Lens::Rss => &Spec {
                question: "which stacks made resident memory grow in the window",
                cost: RSS_COST,
                tracepoints: rss::TRACEPOINTS,
                probes: NO_PROBES,
                has_objects: false,
                requested: false,
                allocation_stacks: false,
                creation_stacks: false,
            },
            Lens::Mmap => &Spec {
                question: "which stacks mapped address space (mmap minus munmap)",
                cost: MMAP_COST,
                tracepoints: mmap::TRACEPOINTS,
                probes: NO_PROBES,
                has_objects: false,
                requested: false,
                allocation_stacks: false,
                creation_stacks: false,
            },
            Lens::Alloc => &Spec {
                question: "which stacks allocate the most, sampled by the Go runtime",
                cost: ALLOC_COST,
                tracepoints: &[],
                probes: NO_PROBES,
                has_objects: true,
                requested: false,
                allocation_stacks: true,
                creation_stacks: false,
            },
            Lens::AllocExact => &Spec {
                question: "every Go heap allocation, exactly counted by stack",
                cost: ALLOC_EXACT_COST,
                tracepoints: &[],
                probes: Probes {
                    allocs: true,
                    ..NO_PROBES
                },
                has_objects: true,
                requested: true,
                allocation_stacks: true,
                creation_stacks: false,
            },
            Lens::Heap => &Spec {
                question: "which stacks hold live Go heap (like pprof's inuse_space)",
                cost: HEAP_COST,
                tracepoints: &[],
                probes: NO_PROBES,
                has_objects: false,
                requested: false,
                allocation_stacks: true,
                creation_stacks: false,
            },
            Lens::Goroutines => &Spec {
                question: "which creation sites hold live goroutines (leaks)",
                cost: GOROUTINES_COST,
                tracepoints: &[],
                probes: Probes {
                    goroutines: true,
                    ..NO_PROBES
                },
                has_objects: false,
                requested: false,
                allocation_stacks: false,
                creation_stacks: true,
            },
        }
    }
}

/// The lens list for `--help`: each name with its question and cost,
/// wrapped under the name's column.
pub fn help_table() -> String {
    let mut rows: Vec<(&str, String)> = Lens::ALL
        .iter()
        .map(|l| {
            let s = l.spec();
            (l.name(), format!("{}; cost: {}", s.question, s.cost))
        })
        .collect();
    rows.push(("(every lens)", format!("the GC view; cost: {GC_VIEW_COST}")));
    rows.iter()
        .map(|(name, text)| format!("  {name:<12} {}", wrap(text, 86, 15)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` in lines of at most `width` characters, the lines after the
/// first indented by `indent` spaces.
fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ') {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.chars().count();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        for l in Lens::ALL {
            assert_eq!(l.name().parse::<Lens>(), Ok(l));
        }
        assert!(matches!(
            "bogus".parse::<Lens>(),
            Err(crate::model::lens::LensError::Unknown(_))
        ));
    }

    /// README.md's lens table shows the cost `--help` prints, word for word.
    #[test]
    fn the_readme_shows_each_cost_that_help_prints() {
        let readme = include_str!("../../../README.md");
        for l in Lens::ALL {
            let s = l.spec();
            let row = readme
                .lines()
                .find(|r| r.starts_with(&format!("| `{}`", l.name())))
                .unwrap_or_else(|| panic!("README.md has no lens-table row for {}", l.name()));
            let cost = row
                .trim_end()
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap()
                .trim();
            assert_eq!(
                cost,
                s.cost,
                "README.md's cost of {} differs from --help's",
                l.name()
            );
        }
        assert!(
            readme.contains(GC_VIEW_COST),
            "README.md does not give the GC view's cost as --help does"
        );
    }

    #[test]
    fn help_lists_every_lens() {
        let t = help_table();
        for l in Lens::ALL {
            assert!(t.contains(l.name()), "{t}");
        }
        assert!(t.contains("exactly counted"));
    }
}
