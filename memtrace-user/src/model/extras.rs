//! Each lens's own figures in `summary.json`, beside its stacks.

use serde::Serialize;

/// A lens's own figures in `summary.json`, beside its stacks: typed, so
/// what reads them back (the terminal, index.html, the agent) names fields,
/// not JSON keys. Serialized flat into the lens's object.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum LensExtras {
    Rss(RssExtras),
    Mmap(MmapExtras),
    AllocExact(AllocExactExtras),
    /// alloc and heap.
    Sampled(SampledExtras),
    Goroutines(GoroutineExtras),
}

impl LensExtras {
    /// The rss lens's figures, if these are they.
    pub fn rss(&self) -> Option<&RssExtras> {
        match self {
            LensExtras::Rss(r) => Some(r),
            _ => None,
        }
    }
}
/// The rss lens's figures in `summary.json` beside its stacks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RssExtras {
    /// Growth less what was resident before the window and released.
    pub net_growth: i64,
    pub released_before_bytes: u64,
    pub released_bytes: u64,
    pub release_requested_bytes: u64,
    pub lazy_free_bytes: u64,
    pub repeat_faults: u64,
    pub run_pages_released: u64,
    pub untracked_bytes: u64,
    /// The transparent huge page mode: `always`, `madvise` or `never`.
    pub thp: String,
    pub vmrss_start: u64,
    pub vmrss_end: u64,
    pub vmrss_growth: i64,
    /// Set when the profile is the whole trace's resident memory (every
    /// window, and what was resident before tracing), not the window's
    /// growth: OOM reports and limit snapshots.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub whole_trace: bool,
}
/// The mmap lens's figures in `summary.json` beside its stacks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MmapExtras {
    pub unmapped_bytes: u64,
}
/// Percentiles of requested sizes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SizePercentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

/// The alloc-exact lens's figures in `summary.json` beside its stacks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct AllocExactExtras {
    /// Requested sizes.
    pub size_percentiles: SizePercentiles,
    /// The bytes requested, before the runtime's rounding (which `total`
    /// includes).
    pub requested_bytes: u64,
    /// Allocations whose type could not be read.
    pub unknown_types: u64,
}
/// The alloc and heap lenses' figures in `summary.json` beside their stacks.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SampledExtras {
    pub sample_rate_bytes: u64,
    pub sampled_since: SampledSince,
    /// heap: the Go heap's live bytes at the end (from the GC controller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_live_bytes: Option<u64>,
    /// heap: the share of those the lens accounts for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_live_coverage: Option<f64>,
}
/// The goroutines lens's figures in `summary.json` beside its stacks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GoroutineExtras {
    pub created: u64,
    pub exited: u64,
    pub unknown_exits: u64,
    pub sites: Vec<Site>,
    pub live_over_time: Vec<LiveOverTime>,
    /// Live goroutines the runtime owns (which `runtime.NumGoroutine`
    /// leaves out).
    pub runtime_goroutines: u64,
}

/// Since when the runtime's memory profile has been sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampledSince {
    /// Since the program started: memtrace set the rate before any user
    /// code ran (launch mode).
    Exec,
    /// Since memtrace attached: the program had sampling off, so what it
    /// allocated before is not in the profile.
    Attach,
    /// The program's own rate, on all along.
    #[default]
    Start,
}
/// One creation site in `summary.json`: goroutines created and exited in
/// the window, and the live ones' stack bytes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Site {
    pub stack: Vec<String>,
    pub created: u64,
    pub exited: u64,
    pub stack_bytes: u64,
}

/// A process's live goroutines every second.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LiveOverTime {
    pub pid: u32,
    pub live: Vec<LivePoint>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LivePoint {
    pub t: f64,
    pub live: usize,
}
