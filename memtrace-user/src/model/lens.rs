//! The lenses by name: what `--lens` takes and every report names. What
//! each lens asks of the kernel and how it aggregates sit in the lens layer (`lens/`).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lens {
    Rss,
    Mmap,
    Alloc,
    AllocExact,
    Heap,
    Goroutines,
}

impl Lens {
    pub const ALL: [Lens; 6] = [
        Lens::Rss,
        Lens::Mmap,
        Lens::Alloc,
        Lens::AllocExact,
        Lens::Heap,
        Lens::Goroutines,
    ];

    /// What `--lens` takes and every report says.
    pub fn name(self) -> &'static str {
        match self {
            Lens::Rss => "rss",
            Lens::Mmap => "mmap",
            Lens::Alloc => "alloc",
            Lens::AllocExact => "alloc-exact",
            Lens::Heap => "heap",
            Lens::Goroutines => "goroutines",
        }
    }

    /// What a sample's value counts.
    pub fn unit(self) -> &'static str {
        match self {
            Lens::Goroutines => "goroutines",
            _ => "bytes",
        }
    }

    /// Whether it reads the runtime's memory profile (alloc, heap).
    pub fn sampled(self) -> bool {
        matches!(self, Lens::Alloc | Lens::Heap)
    }

    /// Whether its profile is the state at the window's end (live heap,
    /// live goroutines: cumulative) rather than what the window added
    /// (growth, allocations: a delta).
    pub fn is_state(self) -> bool {
        matches!(self, Lens::Heap | Lens::Goroutines)
    }
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
