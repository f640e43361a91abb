//! The lenses a user can ask for. Each lens's knowledge sits in its own
//! module: the question it answers and what it costs, the tracepoints and
//! uprobes it needs, its aggregator, and its extras in `summary.json`.

pub mod alloc_exact;
pub mod gc;
pub mod goroutines;
pub mod mmap;
pub mod rss;
pub mod sampled;
pub mod sizeclass;

use std::fmt;
use std::str::FromStr;

use crate::kernel::{Probes, Tracepoint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lens {
    Rss,
    Mmap,
    Alloc,
    AllocExact,
    Heap,
    Goroutines,
}

/// What one lens is and needs.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    /// `bytes` or `goroutines`.
    pub unit: &'static str,
    /// The question it answers, in one line.
    pub question: &'static str,
    /// What its cost scales with.
    pub cost: &'static str,
    pub tracepoints: &'static [Tracepoint],
    /// Uprobe families (besides the GC view's, which every session has).
    pub probes: Probes,
    /// Its samples count objects as well as bytes.
    pub has_objects: bool,
    /// Its stacks end in the allocator, whose entry frames are trimmed.
    pub allocation_stacks: bool,
}

const NO_PROBES: Probes = Probes {
    gc: false,
    allocs: false,
    goroutines: false,
    holds: false,
};

impl Lens {
    pub const ALL: [Lens; 6] = [
        Lens::Rss,
        Lens::Mmap,
        Lens::Alloc,
        Lens::AllocExact,
        Lens::Heap,
        Lens::Goroutines,
    ];

    pub fn spec(self) -> &'static Spec {
        match self {
            Lens::Rss => &Spec {
                name: "rss",
                unit: "bytes",
                question: "which stacks made resident memory grow in the window",
                cost: "per new resident page and memory syscall: ~1.1x on an allocation-heavy loop",
                tracepoints: rss::TRACEPOINTS,
                probes: NO_PROBES,
                has_objects: false,
                allocation_stacks: false,
            },
            Lens::Mmap => &Spec {
                name: "mmap",
                unit: "bytes",
                question: "which stacks mapped address space (mmap minus munmap)",
                cost: "per memory syscall: no measurable slowdown",
                tracepoints: mmap::TRACEPOINTS,
                probes: NO_PROBES,
                has_objects: false,
                allocation_stacks: false,
            },
            Lens::Alloc => &Spec {
                name: "alloc",
                unit: "bytes",
                question: "which stacks allocate the most, sampled by the Go runtime",
                cost: "the runtime's own sampling (one per --memprofile-rate bytes): ~1.1x",
                tracepoints: &[],
                probes: NO_PROBES,
                has_objects: true,
                allocation_stacks: true,
            },
            Lens::AllocExact => &Spec {
                name: "alloc-exact",
                unit: "bytes",
                question: "every Go heap allocation, exactly counted by stack",
                cost: "a uprobe per allocation, on an instruction the kernel emulates (~1.5 us each): ~14-18x on a loop that only allocates",
                tracepoints: &[],
                probes: Probes {
                    allocs: true,
                    ..NO_PROBES
                },
                has_objects: true,
                allocation_stacks: true,
            },
            Lens::Heap => &Spec {
                name: "heap",
                unit: "bytes",
                question: "which stacks hold live Go heap (like pprof's inuse_space)",
                cost: "as alloc: the runtime's own sampling, ~1.1x",
                tracepoints: &[],
                probes: NO_PROBES,
                has_objects: false,
                allocation_stacks: true,
            },
            Lens::Goroutines => &Spec {
                name: "goroutines",
                unit: "goroutines",
                question: "which creation sites hold live goroutines (leaks)",
                cost: "two uprobes per goroutine (~6-7x on pure goroutine churn; nothing between goroutine starts)",
                tracepoints: &[],
                probes: Probes {
                    goroutines: true,
                    ..NO_PROBES
                },
                has_objects: false,
                allocation_stacks: false,
            },
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn unit(self) -> &'static str {
        self.spec().unit
    }

    /// Whether it reads the runtime's memory profile (alloc, heap).
    pub fn sampled(self) -> bool {
        matches!(self, Lens::Alloc | Lens::Heap)
    }
}

/// The lens list for `--help`: each name with its question and cost.
pub fn help_table() -> String {
    Lens::ALL
        .iter()
        .map(|l| {
            let s = l.spec();
            format!("  {:<12} {}; cost: {}", s.name, s.question, s.cost)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for Lens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown lens name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LensError {
    #[error("unknown lens `{0}`: choose from rss, mmap, alloc, alloc-exact, heap, goroutines")]
    Unknown(String),
}

impl FromStr for Lens {
    type Err = LensError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lens::ALL
            .into_iter()
            .find(|l| l.name() == s.trim())
            .ok_or_else(|| LensError::Unknown(s.to_string()))
    }
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
            Err(LensError::Unknown(_))
        ));
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
