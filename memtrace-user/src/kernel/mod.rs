//! The kernel, behind a small trait: attach and detach one binary's
//! probes, add and remove target processes, read the kernel-side counters,
//! and hand over the ring buffer's records. [`ebpf::Ebpf`] is the real one
//! (aya); the engine's lifecycle is unit-tested against a fake.
//!
//! Nothing here interprets records: that is `decode`'s job.

pub mod decode;
pub mod ebpf;
#[cfg(test)]
pub mod fake;
pub mod format;
mod runs;

use std::os::fd::OwnedFd;
use std::path::Path;

use memtrace_common::{Counter, TargetConfig, COUNTER_COUNT};

use crate::binary::goruntime::GoBinary;

/// A tracepoint program and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tracepoint {
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
}

impl Tracepoint {
    pub const fn new(program: &'static str, category: &'static str, name: &'static str) -> Self {
        Self {
            program,
            category,
            name,
        }
    }

    /// `category/name`, as under tracefs `events/`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.category, self.name)
    }
}

/// Load-time switches of the probes, as in `Default` outside of
/// measurements: `cargo xtask bench` flips each to show what the exact
/// default costs, or what observing faults costs by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTuning {
    /// Remember walked stacks by a fingerprint of their top (off: walk
    /// every stack).
    pub stack_cache: bool,
    /// Every fault merged into a run reads its frame's caller again (off:
    /// only a run's first page does, and a function called again from
    /// another line at the same depth may count under the first call).
    pub recheck_runs: bool,
    /// The fault probes check their target and count nothing (on: the
    /// probe point's own cost, the floor of any fault-based lens).
    pub fault_floor: bool,
    /// Attach the GC view's probes (off: for measuring what they cost).
    pub gc_view: bool,
    /// Read each event's pprof labels where the target can set them (off:
    /// for measuring what reading them costs).
    pub labels: bool,
    /// The eBPF programs log their rare paths (why a stack walk failed, a
    /// hold not taken, an unreadable label set, an unknown cookie). Off:
    /// the log statements are dead code the verifier drops.
    pub ebpf_log: bool,
    /// Non-zero: every stack walk fails with this errno, for tests of how
    /// a failed walk is counted, shown and logged.
    pub stack_walk_errno: u32,
}

impl Default for ProbeTuning {
    fn default() -> Self {
        Self {
            stack_cache: true,
            recheck_runs: true,
            fault_floor: false,
            gc_view: true,
            labels: true,
            ebpf_log: false,
            stack_walk_errno: 0,
        }
    }
}

/// Which uprobe families to attach to one binary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Probes {
    /// The GC view (mark termination, stop/start the world).
    pub gc: bool,
    /// Every allocator entry point (`alloc-exact`).
    pub allocs: bool,
    /// Goroutine creation and exit.
    pub goroutines: bool,
    /// The points where a target holds itself (start and exit).
    pub holds: bool,
}

/// Which processes a binary's uprobes fire in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// One process: others running the same file never trap.
    Process(u32),
    /// Every process running the file (the agent: one set for all of them,
    /// filtered by the TARGETS pid set).
    AllProcesses,
}

/// The kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ringbuf_drops: u64,
    pub stack_errors: u64,
    pub stack_reuses: u64,
    pub alloc_hits: u64,
    pub hold_failures: u64,
    pub fingerprint_collisions: u64,
    pub faults_merged: u64,
    /// Label sets the probes could not copy.
    pub label_capture_failures: u64,
    /// Runs of memtrace's programs the kernel skipped because a BPF program
    /// was already running on that CPU (`bpf_prog_info.recursion_misses`):
    /// events lost before any of memtrace's code ran.
    pub kernel_misses: u64,
    /// The same for `fault_kernel`, whose nested runs are faults its own
    /// reads of user memory take (not events of the target).
    pub nested_fault_misses: u64,
}

impl KernelCounters {
    /// From the per-counter sums of the `COUNTERS` map.
    pub fn from_slots(v: &[u64; COUNTER_COUNT as usize]) -> Self {
        Self {
            ringbuf_drops: v[Counter::RingbufDrops as usize],
            stack_errors: v[Counter::StackErrors as usize],
            stack_reuses: v[Counter::StackReuses as usize],
            alloc_hits: v[Counter::AllocHits as usize],
            hold_failures: v[Counter::HoldFailures as usize],
            fingerprint_collisions: v[Counter::FingerprintCollisions as usize],
            faults_merged: v[Counter::FaultsMerged as usize],
            label_capture_failures: v[Counter::LabelCaptureFailed as usize],
            kernel_misses: 0,
            nested_fault_misses: 0,
        }
    }
}

/// Failures while loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel refused the object.
    #[error("cannot load memtrace's eBPF programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A map or program the object must have is missing (build mismatch).
    #[error("the eBPF object has no {0}: rebuild memtrace")]
    Missing(&'static str),
    /// The eBPF programs' log could not be read (`--ebpf-log`).
    #[error("cannot read the eBPF programs' log: {0}")]
    Log(#[source] Box<aya_log::Error>),
    /// Program load/attach failed.
    #[error("cannot attach {what}: {source}")]
    Program {
        what: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The kernel refused to create a uprobe: not enough privilege.
    #[error(
        "missing privileges: the kernel refused the uprobe on {what} (permission denied); \
         uprobes need CAP_SYS_ADMIN on this kernel besides CAP_BPF, CAP_PERFMON and \
         CAP_SYS_PTRACE: run memtrace as root or add CAP_SYS_ADMIN"
    )]
    UprobeDenied { what: String },
    /// A map operation failed.
    #[error("BPF map {what}: {source}")]
    Map {
        what: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A binary lacks what a requested probe family needs.
    #[error("{0}")]
    Unsupported(String),
    /// The tracepoint layout of this kernel is not what the probes read.
    #[error(transparent)]
    Format(#[from] format::FormatError),
}

/// What the engine needs from the kernel.
pub trait Kernel {
    /// A binary's attached uprobes, to detach as one.
    type Links;

    /// Attaches `probes` to the file at `path` (the path the kernel
    /// resolves to the inode; `bin` says where the probe points are).
    fn attach(
        &mut self,
        bin: &GoBinary,
        path: &Path,
        probes: Probes,
        scope: Scope,
    ) -> Result<Self::Links, KernelError>;

    /// Detaches what [`Kernel::attach`] made.
    fn detach(&mut self, links: Self::Links);

    /// Makes `pid` a target: from now on the probes report it.
    fn add_target(&mut self, pid: u32, config: TargetConfig) -> Result<(), KernelError>;

    /// Replaces a target's configuration (its runtime addresses became
    /// known), leaving when it became a target as it was.
    fn update_target(&mut self, pid: u32, config: TargetConfig) -> Result<(), KernelError>;

    /// Stops reporting `pid`.
    fn remove_target(&mut self, pid: u32);

    fn counters(&self) -> KernelCounters;

    /// Uprobes attached now (0 where there are none to count).
    fn uprobes(&self) -> usize {
        0
    }

    /// Hands every record waiting in the ring buffer to `sink`, in order.
    fn poll(&mut self, sink: &mut dyn FnMut(&[u8]));

    /// A descriptor that becomes readable when records wait (a duplicate the
    /// caller owns), if the kernel has one to wait on.
    fn ready_fd(&self) -> Option<OwnedFd>;

    /// Hands each run of merged faults still in progress (see
    /// `memtrace_common::FaultRun`) to `sink` as a `FaultRunSoFar` record.
    /// `retired` (processes just removed from the targets) are read this one
    /// last time; runs of processes not traced are not handed over.
    fn fault_runs(&mut self, retired: &[u32], sink: &mut dyn FnMut(&[u8]));

    /// The targets `go_hold` stopped that user space has not continued
    /// yet: (pid, when, in `CLOCK_MONOTONIC` ns).
    fn held(&self) -> Vec<(u32, u64)> {
        Vec::new()
    }

    /// Forgets `pid`'s stop (it was continued, or it is gone).
    fn unhold(&mut self, _pid: u32) {}

    /// Each program that ran, with its run count and total run time, when
    /// the kernel keeps BPF statistics (`kernel.bpf_stats_enabled`).
    fn probe_costs(&self) -> Vec<crate::model::summary::ProbeCost> {
        Vec::new()
    }
}
