//! What the lens table and its GC-heavy shape share: the shapes a variant
//! runs, how it runs the fixture, and what each run measured. Both import
//! from here; neither from the other's types.

use std::path::Path;

use crate::bench::median;

/// The program shape a variant runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The allocation loop: `objects` 64-byte records kept live.
    Allocs,
    /// `objects` goroutines started and joined.
    Goroutines,
    /// `objects` short-lived 64 KiB lists (the allocs fixture's `-churn`).
    GcHeavy,
}

/// How a variant runs the fixture.
pub(crate) enum Runner {
    Untraced,
    /// The fixture alone with more arguments (e.g. the runtime's own
    /// sampler at memtrace's rate, `-memprofilerate N`).
    UntracedWith(&'static [&'static str]),
    /// `memtrace record --lens LENS [ARGS] -- fixture`.
    Memtrace(&'static str, &'static [&'static str]),
    /// `bpftrace -e PROGRAM -c fixture`; `{bin}` stands for the fixture path.
    Bpftrace(&'static str),
}

pub(crate) struct Variant {
    pub(crate) name: &'static str,
    pub(crate) runner: Runner,
    /// Part of the rss comparison (runs more rounds than the others).
    pub(crate) rss: bool,
    pub(crate) shape: Shape,
    pub(crate) objects: u64,
    pub(crate) times: Vec<f64>,
    /// memtrace's own CPU seconds per second of its run.
    pub(crate) cpu: Vec<f64>,
    pub(crate) peak_rss_kib: Vec<u64>,
    /// (events per second, dropped events, events) from summary.json.
    pub(crate) events: Vec<(f64, u64, f64)>,
}

impl Variant {
    /// The fixture this variant runs, and its arguments.
    pub(crate) fn fixture<'a>(
        &self,
        allocs: &'a Path,
        spawner: &'a Path,
    ) -> (&'a Path, Vec<String>) {
        let n = self.objects.to_string();
        let args: Vec<&str> = match self.shape {
            Shape::Goroutines => return (spawner, vec!["-spawn".into(), n]),
            Shape::Allocs => vec!["-objects", &n, "-maps", "0", "-inlined", "0"],
            Shape::GcHeavy => {
                vec!["-objects", "0", "-maps", "0", "-inlined", "0", "-churn", &n]
            }
        };
        (allocs, args.into_iter().map(String::from).collect())
    }
}

/// The median untraced time of a workload.
pub(crate) fn base(variants: &[Variant], objects: u64, shape: Shape) -> f64 {
    variants
        .iter()
        .find(|v| matches!(v.runner, Runner::Untraced) && v.objects == objects && v.shape == shape)
        .map(|v| median(&v.times))
        .expect("an untraced variant per workload")
}
