//! `summary.json`: the machine-readable result of a recording.

use crate::model::profile::is_plumbing;
use std::collections::BTreeMap;

use serde::Serialize;

use super::profile::{FrameMode, Profile};

/// Lens-specific fields of a lens's summary entry.

#[derive(Debug, Serialize)]
pub struct TargetSummary {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    /// The main module's path, from the build info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Go build ID (or GNU build ID) of the executable.
    pub build_id: String,
    /// Built with `-ldflags=-s` (frames still resolve, from pclntab).
    pub stripped: bool,
    /// Position-independent executable.
    pub pie: bool,
    /// Where each runtime variable and structure layout memtrace reads came
    /// from: `symbols`, `code`, `dwarf`, `runtime_type`, `version_table`,
    /// or `missing: why`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub found: BTreeMap<String, String>,
    /// `/proc/PID/status` at the window's start and end (launch mode: the
    /// window starts at exec, with nothing resident).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmrss_start: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmrss_end: Option<u64>,
    /// VmRSS, RssAnon, RssFile, RssShmem sampled every second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Point>,
    /// Where resident memory sits at the end (or when the target exited,
    /// if it held itself on the way out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<crate::model::target::Breakdown>,
    /// How the target ended, if it did during the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<crate::model::target::Exit>,
    /// The OOM killer chose it: when, its RSS at the kill, and what could
    /// not be read from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<crate::model::target::OomKill>,
    /// Its memory cgroup: the limit, usage, growth and when it would reach
    /// the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<crate::model::target::CgroupSummary>,
    /// Where it runs (the agent: cgroup, pod and container).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<serde_json::Value>,
}

/// One frame of a top stack, with its source position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameEntry {
    pub function: String,
    /// Empty when unknown.
    pub file: String,
    /// 0 when unknown.
    pub line: u32,
    /// Inlined into the frame before it.
    pub inlined: bool,
}

impl FrameEntry {
    /// A frame that is not inlined.
    pub fn at(function: &str, file: &str, line: u32) -> Self {
        Self {
            function: function.into(),
            file: file.into(),
            line,
            inlined: false,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TopEntry {
    /// Function names, root first.
    pub stack: Vec<String>,
    /// The same frames with file and line (of the largest of the sites
    /// merged into this stack when several lines of a function are).
    pub frames: Vec<FrameEntry>,
    /// What names the stack: its innermost frame of the program's own
    /// code, outside the Go runtime and syscall plumbing (the leaf when
    /// every frame is plumbing). `top`, the terminal and index.html show
    /// it with its file:line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_frame: Option<FrameEntry>,
    pub value: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    /// alloc-exact: the bytes requested (`value` is what the runtime
    /// accounts for them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<u64>,
}

/// One function of [`LensSummary::top_functions`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionEntry {
    pub function: String,
    /// File and line of its largest site.
    pub file: String,
    pub line: u32,
    pub value: u64,
    /// `value` as a fraction of the lens's total.
    pub share: f64,
    /// How many stacks it adds up.
    pub stacks: usize,
}

/// Groups `entries` (every stack of a profile) by own frame, largest
/// first, the `n` first.
pub fn top_functions(entries: &[TopEntry], total: u64, n: usize) -> Vec<FunctionEntry> {
    let mut by: Vec<FunctionEntry> = Vec::new();
    let mut index: std::collections::HashMap<&str, (usize, u64)> = Default::default();
    for e in entries {
        let Some(own) = &e.own_frame else { continue };
        match index.get_mut(own.function.as_str()) {
            Some((i, biggest)) => {
                let f = &mut by[*i];
                f.value += e.value;
                f.stacks += 1;
                if e.value > *biggest {
                    *biggest = e.value;
                    (f.file, f.line) = (own.file.clone(), own.line);
                }
            }
            None => {
                index.insert(&own.function, (by.len(), e.value));
                by.push(FunctionEntry {
                    function: own.function.clone(),
                    file: own.file.clone(),
                    line: own.line,
                    value: e.value,
                    share: 0.0,
                    stacks: 1,
                });
            }
        }
    }
    by.sort_by(|a, b| {
        b.value
            .cmp(&a.value)
            .then_with(|| a.function.cmp(&b.function))
    });
    by.truncate(n);
    for f in &mut by {
        f.share = if total > 0 {
            f.value as f64 / total as f64
        } else {
            0.0
        };
    }
    by
}

impl TopEntry {
    /// A top entry, named by its own frame (see [`TopEntry::own_frame`]).
    pub fn new(stack: Vec<String>, frames: Vec<FrameEntry>, value: u64) -> Self {
        let own_frame = frames
            .iter()
            .rev()
            .find(|f| !is_plumbing(&f.function))
            .or(frames.last())
            .cloned();
        Self {
            stack,
            frames,
            own_frame,
            value,
            objects: None,
            requested: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LensSummary {
    pub unit: &'static str,
    pub total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    pub stacks: usize,
    pub top: Vec<TopEntry>,
    /// The same totals grouped by each stack's own frame (the program's
    /// innermost function, as [`TopEntry::own_frame`] is chosen), largest
    /// first: one row for a leaking function however many runtime paths
    /// lie below it.
    pub top_functions: Vec<FunctionEntry>,
    /// The lens's own figures (e.g. size percentiles, unmapped bytes),
    /// beside its stacks.
    #[serde(flatten)]
    pub extra: Option<crate::model::extras::LensExtras>,
    /// The total by pprof label: key → value → total (`[no labels]` for
    /// what carried none of that key). Absent when nothing had labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_label: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Serialize, Default)]
pub struct Counters {
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Probe runs the kernel skipped (another BPF program was running on
    /// that CPU): events lost before memtrace's program ran.
    pub kernel_misses: u64,
    /// Nested runs of the kernel-mode fault probe the kernel skipped:
    /// faults its own reads of user memory took (not the target's; not
    /// counted as drops).
    pub nested_fault_misses: u64,
    /// Events whose stack could not be captured (kept under "[stack unavailable]").
    pub stack_errors: u64,
    /// Stack walks the kernel skipped because the thread's stack top matched.
    pub stack_reuses: u64,
    /// Stack fingerprints found to stand for more than one stack (by a
    /// verifying walk); those stacks are walked every time from then on.
    pub fingerprint_collisions: u64,
    /// Page faults the kernel merged into runs (one record per run of
    /// contiguous faults from one frame, instead of one per fault).
    pub faults_merged: u64,
    /// "Same stack" events whose earlier stack was lost (kept, named).
    pub lost_stacks: u64,
    /// Distinct stacks seen.
    pub distinct_stacks: u64,
    /// New stacks turned away by the per-process cap (kept under a named
    /// frame; the agent's memory bound).
    pub capped_stacks: u64,
    /// mmap/mremap/brk exits without their enter.
    pub syscall_unpaired: u64,
    /// Allocation probe hits (before the size filter).
    pub alloc_probe_hits: u64,
    /// Frames no symbol could be found for.
    pub unresolved_frames: u64,
    /// Of those, frames in Go code (the rest are C code without symbols,
    /// e.g. the dynamic loader's entry).
    pub unresolved_go_frames: u64,
    /// Stacks cut where the frame-pointer walk left the stack (junk past
    /// the last real frame, e.g. on a thread that was just cloned).
    pub truncated_stacks: u64,
    /// Records user space failed to decode.
    pub decode_errors: u64,
    /// Holds whose stop signal could not be sent (the target's state was
    /// read while it ran on).
    pub hold_failures: u64,
    /// Events delivered to user space.
    pub events: u64,
    /// Of the events received, those whose stack walk failed, by the
    /// errno the kernel gave (absent when none did).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack_error_reasons: Vec<StackErrorReason>,
}

/// Events whose stack walk failed with one errno.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct StackErrorReason {
    pub errno: u32,
    /// What the errno means for a stack walk (as the graphs name it).
    pub reason: &'static str,
    pub events: u64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub targets: Vec<TargetSummary>,
    pub lenses: BTreeMap<String, LensSummary>,
    pub dropped_events: u64,
    pub duration_secs: f64,
    pub counters: Counters,
    pub ended_by: crate::model::ended::EndedBy,
    /// GC cycles and stop-the-world pauses (see `lens::gc::summary`).
    pub gc: crate::model::gc::GcSummary,
    /// What made the agent write this report (null for `record`).
    pub trigger: Option<serde_json::Value>,
    /// What each eBPF program cost while it ran, from the kernel's BPF
    /// statistics: only when they are on (`sysctl kernel.bpf_stats_enabled=1`,
    /// which `cargo xtask bench` sets for one measured run per lens).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probe_costs: Vec<ProbeCost>,
    /// pprof label sets seen, and what their bounds folded (absent when
    /// no target set labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<crate::model::labels::LabelStats>,
}

/// One eBPF program's runs and the time they took, summed.
#[derive(Debug, Serialize, Default, Clone, PartialEq, Eq)]
pub struct ProbeCost {
    pub program: String,
    pub runs: u64,
    pub ns: u64,
}

/// How many stacks `top` lists.
pub const TOP_N: usize = 20;

pub fn lens_summary(p: &Profile, extra: Option<crate::model::extras::LensExtras>) -> LensSummary {
    let entries: Vec<TopEntry> = p
        .named(FrameMode::Func)
        .into_iter()
        .map(|s| {
            let frames = s
                .frames
                .iter()
                .map(|f| FrameEntry {
                    function: f.function.to_string(),
                    file: f.file.to_string(),
                    line: f.line,
                    inlined: f.inlined,
                })
                .collect();
            TopEntry {
                objects: p.has_objects.then_some(s.objects),
                requested: p.has_requested.then_some(s.requested),
                ..TopEntry::new(s.names, frames, s.value)
            }
        })
        .collect();
    let total = p.total();
    LensSummary {
        unit: p.unit,
        total,
        objects: p.has_objects.then(|| p.objects()),
        stacks: p.samples.len(),
        top_functions: top_functions(&entries, total, TOP_N),
        top: entries.into_iter().take(TOP_N).collect(),
        extra,
        by_label: p.by_label(),
    }
}

/// One `/proc/PID/status` sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Point {
    /// Seconds since the window started.
    pub t: f64,
    pub vm_rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::profile;

    #[test]
    fn top_functions_add_up_each_functions_stacks_below_it() {
        let p = profile(
            crate::model::lens::Lens::Rss,
            &[
                (
                    &["main.main", "main.store", "runtime.mallocgc", "runtime.a"],
                    300,
                    1,
                ),
                (
                    &["main.main", "main.store", "runtime.mallocgc", "runtime.b"],
                    250,
                    1,
                ),
                (&["main.main", "main.other"], 400, 1),
                (&["main.main", "main.store", "runtime.growslice"], 50, 1),
            ],
        );
        let s = lens_summary(&p, None);
        let f = &s.top_functions;
        assert_eq!(f[0].function, "main.store");
        assert_eq!((f[0].value, f[0].stacks), (600, 3));
        assert!((f[0].share - 0.6).abs() < 1e-9);
        assert_eq!((f[1].function.as_str(), f[1].value), ("main.other", 400));
        assert_eq!(f.len(), 2);
        // The stacks themselves stay apart in `top`.
        assert_eq!(s.top[0].value, 400);
    }

    #[test]
    fn json_shape() {
        let p = profile(
            crate::model::lens::Lens::AllocExact,
            &[(&["main.main", "main.leak"], 640, 10)],
        );
        let mut lenses = BTreeMap::new();
        lenses.insert(
            "alloc-exact".to_string(),
            lens_summary(
                &p,
                Some(crate::model::extras::LensExtras::Mmap(
                    crate::model::extras::MmapExtras { unmapped_bytes: 1 },
                )),
            ),
        );
        let s = Summary {
            targets: vec![TargetSummary {
                pid: 1,
                exe: "/a".into(),
                go_version: "go1.21.13".into(),
                module: None,
                build_id: "abc".into(),
                stripped: false,
                pie: false,
                found: BTreeMap::new(),
                vmrss_start: Some(1),
                vmrss_end: None,
                timeline: vec![],
                breakdown: None,
                cgroup: None,
                oom_kill: None,
                exit: None,
                labels: None,
            }],
            lenses,
            dropped_events: 0,
            duration_secs: 1.5,
            counters: Counters::default(),
            ended_by: crate::model::ended::EndedBy::Duration,
            gc: crate::lens::gc::summary(&Default::default(), 0),
            trigger: None,
            probe_costs: vec![],
            labels: None,
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["lenses"]["alloc-exact"]["total"], 640);
        assert_eq!(v["lenses"]["alloc-exact"]["objects"], 10);
        assert_eq!(
            v["lenses"]["alloc-exact"]["top"][0]["stack"][1],
            "main.leak"
        );
        assert_eq!(
            v["lenses"]["alloc-exact"]["unmapped_bytes"], 1,
            "extras flat"
        );
        assert_eq!(
            v["lenses"]["alloc-exact"]["top"][0]["frames"][1]["function"],
            "main.leak"
        );
        assert_eq!(v["targets"][0]["go_version"], "go1.21.13");
        assert_eq!(v["targets"][0]["vmrss_start"], 1);
        assert!(v["targets"][0].get("breakdown").is_none());
        assert!(v["trigger"].is_null(), "always present, null for record");
    }
}
