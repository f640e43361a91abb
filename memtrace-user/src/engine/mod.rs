//! The tracing engine: one session of memtrace over a set of processes.
//!
//! It owns the kernel side (probes and targets), the [`Resolver`] and the
//! lenses' aggregators, per-process [`Target`]s and per-binary probe sets
//! (refcounted by device and inode), and turns what it gathered into a
//! [`Report`](crate::model::report::Report) for any set of its processes. `record`, `agent`, `gate` and
//! `top` are policies over it: which processes to add, when a window ends,
//! what to do with its report. [`session::Session`] starts each of them
//! the same way, and [`run::drive_until`] is the loop they share.
//!
//! The kernel and the host's processes sit behind traits ([`Kernel`],
//! [`Host`]), so the lifecycle here is unit-tested without either.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use memtrace_user::engine::session::{Session, Targets};
//! use memtrace_user::engine::Options;
//! use memtrace_user::front::record::RecordPolicy;
//! use memtrace_user::model::lens::Lens;
//! use memtrace_user::model::profile::FrameMode;
//!
//! let opts = Options::new(vec![Lens::Rss]);
//! let mut session = Session::start(opts, Targets::Pids(vec![1234]))?;
//! let secs = std::time::Duration::from_secs(10);
//! let mut policy = RecordPolicy::new(Some(secs), "out".into(), FrameMode::Func);
//! let ended_by = session.run(&mut policy)?;
//! let mut engine = session.finish();
//! let report = engine.report(None, ended_by);
//! # Ok(()) }
//! ```

pub mod discover;
#[cfg(test)]
pub(crate) mod fake;
mod holds;
pub mod host;
pub mod labels;
pub mod probes;
mod read;
pub mod report;
pub mod run;
pub mod session;
pub mod setup;
pub mod target;
#[cfg(test)]
mod tests;
mod tick;
mod window;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::binary::goruntime::GoBinary;
use crate::binary::symbolize::Symbolizer;
use crate::host::clock::monotonic_ns;
use crate::kernel::decode::{Op, Resolved, Resolver};
use crate::kernel::{Kernel, KernelError, ProbeTuning, Probes, Scope, Tracepoint};
use crate::lens::aggregate::Aggregator;
use crate::lens::goroutines;
use crate::lens::rss::Thp;
use crate::lens::sampled::RuntimeProfile;
use crate::model::error::TargetError;
use crate::model::lens::Lens;
use crate::model::reporter::{Reporter, Stderr};
use labels::LabelReader;

pub use host::Host;
pub use probes::{BinaryId, ProbeKey};
pub use target::Target;

/// The OOM killer's choice of victim: every session watches for its targets.
pub const OOM: Tracepoint = Tracepoint::new("oom_victim", "oom", "mark_victim");

/// Process exec and exit, for discovery (the agent).
pub const DISCOVERY: &[Tracepoint] = &[
    Tracepoint::new("proc_exec", "sched", "sched_process_exec"),
    Tracepoint::new("proc_exit", "sched", "sched_process_exit"),
];

/// How a session traces.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sorted, without duplicates.
    pub lenses: Vec<Lens>,
    /// alloc/heap: the sampling rate set when the target's is 0.
    pub memprofile_rate: u64,
    /// One probe set per process (record: other processes running the same
    /// file never trap) or per binary (agent: one set for all of them).
    pub per_binary: bool,
    /// Targets hold themselves at start and exit so memtrace can set and
    /// read their state (record).
    pub holds: bool,
    /// The probes' exactness switches (all on but in measurements).
    pub tuning: ProbeTuning,
    /// At most this many distinct stacks per process (`None`: no cap).
    pub max_stacks_per_process: Option<usize>,
    /// Process exec/exit tracepoints (agent discovery).
    pub discovery: bool,
    pub thp: Thp,
    /// pprof label keys whose values split the flame graphs and folded
    /// stacks (a `[KEY=value]` root frame each).
    pub split_by_label: Vec<String>,
    /// Where progress and warnings go (default: stderr).
    pub reporter: Arc<dyn Reporter>,
}

impl Options {
    pub fn new(mut lenses: Vec<Lens>) -> Self {
        lenses.sort();
        lenses.dedup();
        Self {
            lenses,
            memprofile_rate: 64 * 1024,
            per_binary: false,
            holds: false,
            max_stacks_per_process: None,
            tuning: ProbeTuning::default(),
            discovery: false,
            split_by_label: Vec::new(),
            reporter: Arc::new(Stderr),
            thp: Thp::parse(
                &std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                    .unwrap_or_default(),
            ),
        }
    }

    pub fn has(&self, lens: Lens) -> bool {
        self.lenses.contains(&lens)
    }

    /// Whether the alloc or heap lens is on.
    pub fn sampled(&self) -> bool {
        self.lenses.iter().any(|l| l.sampled())
    }

    /// The tracepoints the session needs, each once.
    pub fn tracepoints(&self) -> Vec<Tracepoint> {
        let mut tps: Vec<Tracepoint> = self
            .lenses
            .iter()
            .flat_map(|l| l.spec().tracepoints.iter().copied())
            .collect();
        if self.discovery {
            tps.extend_from_slice(DISCOVERY);
        }
        tps.push(OOM);
        tps.sort();
        tps.dedup();
        tps
    }
}

/// A process to add, identified and vetted by the caller.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub pid: u32,
    /// The executable, as the process's maps name it.
    pub exe: PathBuf,
    /// The path the kernel resolves to the file for uprobes.
    pub attach_path: PathBuf,
    pub binary: BinaryId,
    pub bin: Arc<GoBinary>,
    /// Started by memtrace and held before exec (launch mode).
    pub launched: bool,
}

/// `r` with its stack split by its goroutine's label set, if it has one;
/// a GC cycle forgets what its process's label pointers named.
fn labeled(
    mut r: Resolved,
    resolver: &mut Resolver,
    labels: &mut LabelReader,
    host: &impl Host,
) -> Resolved {
    if let Op::GcCycle { .. } = r.op {
        labels.gc_cycle(r.key.0);
    }
    if r.labels.0 != 0 {
        if let Some(set) = labels.set_of(r.key.0, r.labels, &|pid| host.memory(pid)) {
            r.key = resolver.stacks.with_labels(r.key, set);
        }
    }
    r
}

/// Why a process could not be added.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("pid {pid}: {what}: {source}")]
    Read {
        pid: u32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A lifecycle event the policy may act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// A process (any, with discovery on) executed a new program.
    Exec(u32),
    /// A target's last thread exited.
    Exit(u32),
    /// The OOM killer chose a target (see [`Target::oom`]); it exits soon.
    OomKill(u32),
}

/// The clock of a session and of its current window.
struct Clock {
    window: Instant,
    /// CLOCK_MONOTONIC at the window's start, the clock of event timestamps.
    window_ns: u64,
    last_second: Instant,
}

impl Clock {
    fn now() -> Self {
        Self {
            window: Instant::now(),
            window_ns: monotonic_ns(),
            last_second: Instant::now(),
        }
    }
}

/// One tracing session; see the module docs.
pub struct Engine<K: Kernel, H: Host> {
    kernel: K,
    host: H,
    opts: Options,
    resolver: Resolver,
    agg: Aggregator,
    /// The targets' pprof label sets.
    labels: LabelReader,
    probes: probes::ProbeSets<K::Links>,
    targets: BTreeMap<u32, Target>,
    sym: Symbolizer,
    clock: Clock,
    /// Warnings already shown (each once).
    warned: HashSet<String>,
    /// Undoes what memtrace wrote into targets if memtrace dies.
    guard: Option<crate::host::guard::Guardian>,
}

impl<K: Kernel, H: Host> Engine<K, H> {
    pub fn new(kernel: K, host: H, opts: Options) -> Self {
        let mut resolver = Resolver::default();
        resolver.stacks.set_cap(opts.max_stacks_per_process);
        Self {
            agg: Aggregator::new(&opts.lenses, opts.thp),
            kernel,
            host,
            opts,
            resolver,
            labels: LabelReader::default(),
            probes: probes::ProbeSets::default(),
            targets: BTreeMap::new(),
            sym: Symbolizer::default(),
            clock: Clock::now(),
            warned: HashSet::new(),
            guard: None,
        }
    }

    /// Has `guard` undo what this session writes into its targets (and
    /// continue them) if memtrace dies.
    pub fn set_guardian(&mut self, guard: crate::host::guard::Guardian) {
        self.guard = Some(guard);
    }

    /// Tells the guardian which targets run and what was written into them.
    fn sync_guard(&mut self, extra_target: Option<u32>) {
        let Some(g) = self.guard.as_mut() else {
            return;
        };
        let mut live: Vec<u32> = self
            .targets
            .values()
            .filter(|t| t.exit.is_none())
            .map(|t| t.pid)
            .collect();
        live.extend(extra_target);
        let writes: Vec<(u32, u64, u64)> = self
            .targets
            .values()
            .filter_map(|t| {
                let (addr, v) = t.profile.as_ref()?.restore_point()?;
                Some((t.pid, addr, v))
            })
            .collect();
        g.sync(&live, &writes);
    }

    /// The session ended cleanly: everything written was restored.
    pub fn release_guardian(&mut self) {
        if let Some(g) = self.guard.take() {
            g.done();
        }
    }

    fn warn_once(&mut self, msg: String) {
        if self.warned.insert(msg.clone()) {
            self.opts.reporter.warn(&msg);
        }
    }

    /// The probe families a binary gets in this session.
    fn probes_for(&mut self, bin: &GoBinary, pid: u32) -> Probes {
        let mut p = Probes::default();
        for l in &self.opts.lenses {
            let s = l.spec().probes;
            p.allocs |= s.allocs;
            p.goroutines |= s.goroutines;
        }
        match &bin.gc {
            Ok(_) => p.gc = self.opts.tuning.gc_view,
            Err(e) => self.warn_once(format!("pid {pid}: no GC view: {e}")),
        }
        if self.opts.holds {
            match &bin.holds {
                Ok(_) => p.holds = true,
                Err(e) => self.warn_once(format!(
                    "pid {pid}: no hold points ({e}); the first and last second of sampled lenses may be missed"
                )),
            }
        }
        p
    }

    /// Starts tracing a process: attaches its binary's probes (once per
    /// binary and scope), makes it a target, and reads what it already has
    /// (goroutines, the memory profile) in attach mode.
    pub fn add(&mut self, spec: TargetSpec) -> Result<(), EngineError> {
        let pid = spec.pid;
        // Before any probe can stop it.
        self.sync_guard(Some(pid));
        let profile = if self.opts.sampled() {
            Some(RuntimeProfile::new(
                pid,
                &spec.bin,
                self.opts.memprofile_rate,
                self.opts.reporter.clone(),
            )?)
        } else {
            None
        };
        let key = ProbeKey {
            binary: spec.binary,
            scope: if self.opts.per_binary {
                Scope::AllProcesses
            } else {
                Scope::Process(pid)
            },
        };
        if !self.probes.join(key, pid) {
            let probes = self.probes_for(&spec.bin, pid);
            let links = self
                .kernel
                .attach(&spec.bin, &spec.attach_path, probes, key.scope)?;
            self.probes.insert(key, links, pid);
        }
        let mut t = Target::new(
            pid,
            spec.exe,
            spec.bin.clone(),
            key,
            spec.launched,
            &self.host,
        );
        t.profile = profile;
        if let Some(format) = self.reads_labels(&spec.bin) {
            self.labels.add(pid, format);
        }
        let config = self.target_config(&t);
        if let Some(a) = self.agg.alloc_exact.as_mut() {
            let rules = crate::lens::sizeclass::Rules::for_version(&spec.bin.go_version);
            a.rules.insert(pid, rules);
        }
        if let Err(e) = self.kernel.add_target(pid, config) {
            if let Some(links) = self.probes.leave(key, pid) {
                self.kernel.detach(links);
            }
            return Err(e.into());
        }
        self.sym.add_go_binary(&t.exe, spec.bin.table.clone());
        if let Ok(real) = std::fs::canonicalize(&t.exe) {
            self.sym.add_go_binary(&real, spec.bin.table.clone());
        }
        if !t.launched {
            self.read_running(&mut t)?;
        }
        self.targets.insert(pid, t);
        self.sync_guard(None);
        Ok(())
    }

    /// The rss lens's starting point for a process that ran before tracing:
    /// the pages resident now (what it releases of them counts against its
    /// growth).
    fn snapshot_resident(&mut self, pid: u32) {
        let Some(rss) = self.agg.rss.as_mut() else {
            return;
        };
        match self.host.resident_pages(pid) {
            Ok(ranges) => rss.set_resident_before(pid, &ranges),
            Err(e) => self.warn_once(format!(
                "pid {pid}: cannot read which pages are resident ({e}); net growth counts no releases of them"
            )),
        }
    }

    /// What a process that ran before tracing already holds: its goroutines
    /// (the probes are in place, so every later one is seen created) and
    /// the memory profile's starting point.
    fn read_running(&mut self, t: &mut Target) -> Result<(), EngineError> {
        let pid = t.pid;
        self.snapshot_resident(pid);
        let read = |what, source| EngineError::Read { pid, what, source };
        if let Some(gs) = self.agg.goroutines.as_mut() {
            if let Some(allgs) = t.bin.allgs.and_then(|a| t.runtime_addr(a)) {
                let mem = self.host.memory(pid).map_err(|e| read("memory", e))?;
                let n = goroutines::add_existing(
                    pid,
                    &t.bin,
                    &*mem,
                    allgs,
                    &mut self.resolver.stacks,
                    gs,
                )
                .map_err(|e| read("listing its goroutines", e))?;
                if t.bin.g_layout.is_none() {
                    self.opts.reporter.warn(&format!("pid {pid}: no DWARF for runtime.g; {n} existing goroutines are counted without their state"));
                }
            }
        }
        self.start_profile(t, false)
            .map_err(|e| read("reading the Go memory profile (alloc/heap lenses)", e))
    }

    fn start_profile(&self, t: &mut Target, from_exec: bool) -> std::io::Result<()> {
        if t.profile.as_ref().is_none_or(|p| p.started()) {
            return Ok(());
        }
        let exe_maps = t.exe_maps();
        if exe_maps.is_empty() {
            return Ok(()); // not running its program yet
        }
        let mem = self.host.memory(t.pid)?;
        let p = t.profile.as_mut().expect("checked above");
        p.start(&*mem, &t.bin, &exe_maps, from_exec)
    }

    /// Stops tracing `pid`: the kernel stops reporting it and its probe set
    /// is detached if no other process uses it. What was gathered stays for
    /// the report.
    pub fn retire(&mut self, pid: u32) {
        let Some(t) = self.targets.get(&pid) else {
            return;
        };
        self.kernel.remove_target(pid);
        if let Some(links) = self.probes.leave(t.probe_key, pid) {
            self.kernel.detach(links);
        }
        self.collect_fault_runs(&[pid]);
    }

    /// Counts the pages of runs of merged faults still in the kernel (see
    /// [`Kernel::fault_runs`]): each second, at each report, and when a
    /// target is retired (whose runs are then dropped from the kernel).
    pub fn collect_fault_runs(&mut self, retired: &[u32]) {
        if self.agg.rss.is_none() {
            return;
        }
        let Engine {
            kernel,
            resolver,
            agg,
            labels,
            host,
            ..
        } = self;
        kernel.fault_runs(retired, &mut |bytes| {
            if let Some(r) = resolver.feed(bytes) {
                agg.apply(&labeled(r, resolver, labels, host));
            }
        });
    }

    /// Retires `pid` and drops everything gathered about it.
    pub fn forget(&mut self, pid: u32) {
        self.retire(pid);
        if self.targets.remove(&pid).is_some() {
            self.agg.forget(pid);
            self.resolver.forget(pid);
            self.labels.forget(pid);
        }
    }

    /// Takes every waiting record: events go to the lenses, holds are
    /// served (the target continues before this returns), and lifecycle
    /// events are handed back to the policy.
    pub fn drain(&mut self) -> Vec<Lifecycle> {
        let mut out = Vec::new();
        let mut special: Vec<Resolved> = Vec::new();
        let Engine {
            kernel,
            resolver,
            agg,
            labels,
            host,
            ..
        } = self;
        kernel.poll(&mut |bytes| {
            if labels.capture(bytes) {
                return;
            }
            if let Some(r) = resolver.feed(bytes) {
                let r = labeled(r, resolver, labels, host);
                match r.op {
                    Op::ProcExec | Op::ProcExit | Op::OomVictim { .. } | Op::Hold { .. } => {
                        special.push(r)
                    }
                    _ => agg.apply(&r),
                }
            }
        });
        for r in special {
            let pid = r.key.0;
            match r.op {
                Op::ProcExec => out.push(Lifecycle::Exec(pid)),
                Op::ProcExit => out.push(Lifecycle::Exit(pid)),
                Op::OomVictim {
                    anon_kb,
                    file_kb,
                    shmem_kb,
                } if self.oom_victim(pid, [anon_kb, file_kb, shmem_kb]) => {
                    out.push(Lifecycle::OomKill(pid));
                }
                Op::Hold {
                    point,
                    code,
                    stopped,
                } => self.serve_hold(pid, point, code, stopped),
                _ => {}
            }
        }
        // A launched target's maps mean something once it runs its program.
        let pending: Vec<u32> = self
            .targets
            .values()
            .filter(|t| t.image.maps.is_none() && t.exit.is_none())
            .map(|t| t.pid)
            .collect();
        for pid in pending {
            self.refresh_maps(pid);
        }
        out
    }

    /// Starts the window's clock now (once set-up is done and the targets
    /// run), without touching what was gathered.
    pub fn begin(&mut self) {
        self.clock = Clock::now();
    }

    /// Starts a new window: per-window aggregates restart (live goroutines
    /// carry over), and so does the window's clock.
    pub fn rotate(&mut self) {
        self.agg.rotate();
        self.clock = Clock::now();
    }
}
