//! The real kernel: memtrace's eBPF object loaded with aya. Loading reads
//! the tracepoint layout from tracefs and hands it to the object, attaches
//! the session's tracepoints once, and keeps the maps user space reads.

use std::num::NonZeroU32;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use aya_log::EbpfLogger;

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        Program, UProbe,
    },
    EbpfLoader,
};
use memtrace_common::{Event, EventKind, FaultRuns, TargetConfig, COUNTER_COUNT};

use super::runs::{self, TargetTimes};
use super::{format, Kernel, KernelCounters, KernelError, ProbeTuning, Probes, Scope, Tracepoint};
use crate::binary::goruntime::{GoBinary, ProbePoint};
use crate::model::reporter::{Kind, Limited, Reporter, Stderr};

/// aya-log's level for warnings (`Level::Warn`): every record memtrace's
/// programs write is one.
const LOG_WARN: u8 = 2;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

/// The names of every program in the built eBPF object (what the kernel
/// lists them as), read from the object itself.
pub fn program_names() -> Vec<String> {
    let mut names: Vec<String> = aya_obj::Object::parse(EBPF_OBJECT)
        .map(|o| o.programs.into_keys().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether an attach error comes down to EACCES or EPERM from the kernel.
fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map {
        what,
        source: Box::new(source),
    }
}

fn program_err(what: String) -> impl FnOnce(aya::programs::ProgramError) -> KernelError {
    move |source| KernelError::Program {
        what,
        source: Box::new(source),
    }
}

/// The loaded object, its tracepoints attached.
pub struct Ebpf {
    ebpf: aya::Ebpf,
    targets: BpfHashMap<MapData, u32, TargetConfig>,
    /// Targets stopped at a hold and not continued yet (pid → ktime ns).
    held: BpfHashMap<MapData, u32, u64>,
    counters: PerCpuArray<MapData, u64>,
    ring: RingBuf<MapData>,
    fault_runs: PerCpuArray<MapData, FaultRuns>,
    /// Bumped after each change to `targets` (see `current_target_cached`
    /// in the eBPF object).
    targets_epoch: Array<MapData, u64>,
    epoch: u64,
    /// When each target was added: which runs in the CPUs' tables to take.
    times: TargetTimes,
    /// Uprobe attachments alive.
    pub uprobes: usize,
    /// The programs' log, when asked for (`ProbeTuning::ebpf_log`).
    log: Option<EbpfLogger<EbpfLog>>,
}

/// The eBPF programs' log records, as the session's reporter's messages,
/// at most [`EBPF_LOG_PER_SECOND`] a second (the rest counted).
#[derive(Debug)]
struct EbpfLog(Limited<Arc<dyn Reporter>>);

/// How many eBPF log lines a second reach the reporter.
const EBPF_LOG_PER_SECOND: u32 = 50;

impl log::Log for EbpfLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0.report(Kind::Ebpf, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// One binary's uprobe links.
pub struct Links(Vec<(&'static str, UProbeLinkId)>);

impl Ebpf {
    /// Loads the object with this kernel's tracepoint layout (from the
    /// format files under `tracefs`) and attaches `tracepoints`.
    pub fn load(tracepoints: &[Tracepoint], tracefs: &Path) -> Result<Self, KernelError> {
        Self::load_with(
            tracepoints,
            tracefs,
            ProbeTuning::default(),
            Arc::new(Stderr),
        )
    }

    /// [`Ebpf::load`] with the probes' switches (`tuning`); the programs'
    /// log, if asked for, goes to `reporter`.
    pub fn load_with(
        tracepoints: &[Tracepoint],
        tracefs: &Path,
        tuning: ProbeTuning,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Self, KernelError> {
        let offsets = format::read_offsets(tracefs)?;
        let cache = u32::from(tuning.stack_cache);
        let recheck = u32::from(tuning.recheck_runs);
        let floor = u32::from(tuning.fault_floor);
        let log_level = if tuning.ebpf_log { LOG_WARN } else { 0u8 };
        let mut ebpf = EbpfLoader::new()
            .override_global("TP_OFFSETS", &offsets, true)
            .override_global("STACK_CACHE", &cache, true)
            .override_global("RECHECK_RUNS", &recheck, true)
            .override_global("FAULT_FLOOR", &floor, true)
            .override_global("STACK_WALK_ERRNO", &tuning.stack_walk_errno, true)
            .override_global(aya_log::LEVEL, &log_level, true)
            .load(EBPF_OBJECT)
            .map_err(|e| KernelError::Load(Box::new(e)))?;
        let log = if tuning.ebpf_log {
            let l = EbpfLogger::init_with_logger(
                &mut ebpf,
                EbpfLog(Limited::new(reporter, EBPF_LOG_PER_SECOND)),
            )
            .map_err(|e| KernelError::Log(Box::new(e)))?;
            Some(l)
        } else {
            None
        };
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(KernelError::Missing(name));
        let targets = BpfHashMap::try_from(take("TARGETS")?).map_err(map_err("TARGETS"))?;
        let held = BpfHashMap::try_from(take("HELD")?).map_err(map_err("HELD"))?;
        let counters = PerCpuArray::try_from(take("COUNTERS")?).map_err(map_err("COUNTERS"))?;
        let ring = RingBuf::try_from(take("EVENTS")?).map_err(map_err("EVENTS"))?;
        let fault_runs =
            PerCpuArray::try_from(take("FAULT_RUNS")?).map_err(map_err("FAULT_RUNS"))?;
        let targets_epoch =
            Array::try_from(take("TARGETS_EPOCH")?).map_err(map_err("TARGETS_EPOCH"))?;
        let mut k = Self {
            ebpf,
            targets,
            held,
            counters,
            ring,
            fault_runs,
            targets_epoch,
            epoch: 0,
            times: TargetTimes::default(),
            uprobes: 0,
            log,
        };
        let mut tps = tracepoints.to_vec();
        tps.sort();
        tps.dedup();
        for tp in &tps {
            k.attach_tracepoint(tp)?;
        }
        Ok(k)
    }

    /// The size in bytes of `program` as the kernel runs it, after the
    /// verifier dropped what can never run (a switch's branch not taken,
    /// the log when it is off); `None` if it is not loaded.
    pub fn translated_bytes(&self, program: &str) -> Option<u32> {
        self.ebpf.program(program)?.info().ok()?.size_translated()
    }

    /// Tells the probes that remember whether a thread is traced (per CPU)
    /// that `targets` changed.
    fn bump_epoch(&mut self) -> Result<(), KernelError> {
        self.epoch += 1;
        self.targets_epoch
            .set(0, self.epoch, 0)
            .map_err(map_err("TARGETS_EPOCH"))
    }

    /// Attaches and detaches one uprobe at `file_offset` of `path`, firing
    /// in this process only: proof that the host lets memtrace create
    /// uprobes (`memtrace doctor`). Pick an instruction this process never
    /// runs again, such as its executable's entry point.
    pub fn try_uprobe(&mut self, path: &Path, file_offset: u64) -> Result<(), KernelError> {
        let point = ProbePoint {
            symbol: "entry point".into(),
            vaddr: 0,
            file_offset,
            cookie: 0,
        };
        let mut links = Vec::new();
        let me = Scope::Process(std::process::id());
        self.attach_uprobes("go_gc_cycle", &[&point], path, me, &mut links)?;
        self.detach(Links(links));
        Ok(())
    }

    /// Attaches a tracepoint program (classic, raw or BTF-typed, as the
    /// object declares it).
    fn attach_tracepoint(&mut self, tp: &Tracepoint) -> Result<(), KernelError> {
        let what = || format!("{}:{} ({})", tp.category, tp.name, tp.program);
        match self
            .ebpf
            .program_mut(tp.program)
            .ok_or(KernelError::Missing(tp.program))?
        {
            Program::TracePoint(p) => {
                p.load().map_err(program_err(what()))?;
                p.attach(tp.category, tp.name)
                    .map_err(program_err(what()))?;
            }
            Program::RawTracePoint(p) => {
                p.load().map_err(program_err(what()))?;
                p.attach(tp.name).map_err(program_err(what()))?;
            }
            Program::BtfTracePoint(p) => {
                let path = std::env::var_os("MEMTRACE_BTF").map_or_else(
                    || "/sys/kernel/btf/vmlinux".into(),
                    std::path::PathBuf::from,
                );
                let btf = aya::Btf::parse_file(&path, aya::Endianness::default()).map_err(|e| {
                    KernelError::Unsupported(format!(
                        "{}: cannot read this kernel's BTF ({}): {e}",
                        what(),
                        path.display()
                    ))
                })?;
                p.load(tp.name, &btf).map_err(program_err(what()))?;
                p.attach().map_err(program_err(what()))?;
            }
            _ => return Err(KernelError::Missing(tp.program)),
        }
        Ok(())
    }

    /// Attaches uprobes of program `name` at `points`, recording the links.
    fn attach_uprobes(
        &mut self,
        name: &'static str,
        points: &[&ProbePoint],
        path: &Path,
        scope: Scope,
        links: &mut Vec<(&'static str, UProbeLinkId)>,
    ) -> Result<(), KernelError> {
        let scope = match scope {
            Scope::Process(pid) => {
                NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess)
            }
            Scope::AllProcesses => UProbeScope::AllProcesses,
        };
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing(name))?
            .try_into()
            .map_err(program_err(name.into()))?;
        if prog.fd().is_err() {
            prog.load().map_err(program_err(name.into()))?;
        }
        for p in points {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(p.file_offset),
                cookie: Some(p.cookie),
            };
            let id = prog.attach(point, path, scope).map_err(|source| {
                let what = format!("{} in {}", p.symbol, path.display());
                if permission_denied(&source) {
                    return KernelError::UprobeDenied { what };
                }
                KernelError::Program {
                    what: format!("uprobe {}+{:#x} in {}", p.symbol, p.vaddr, path.display()),
                    source: Box::new(source),
                }
            })?;
            links.push((name, id));
            self.uprobes += 1;
        }
        Ok(())
    }

    fn attach_families(
        &mut self,
        bin: &GoBinary,
        path: &Path,
        probes: Probes,
        scope: Scope,
        links: &mut Vec<(&'static str, UProbeLinkId)>,
    ) -> Result<(), KernelError> {
        let unsupported = |e: &String| KernelError::Unsupported(e.clone());
        if probes.gc {
            let g = bin.gc.as_ref().map_err(unsupported)?;
            self.attach_uprobes("go_gc_cycle", &[&g.mark_termination], path, scope, links)?;
            self.attach_uprobes("go_stw_stop", &[&g.stw_stop], path, scope, links)?;
            self.attach_uprobes("go_stw_start", &[&g.stw_start], path, scope, links)?;
        }
        if probes.allocs {
            let points: Vec<_> = bin.alloc_points.iter().collect();
            self.attach_uprobes("go_alloc", &points, path, scope, links)?;
        }
        if probes.goroutines {
            let g = bin.goroutines.as_ref().map_err(unsupported)?;
            match &g.spawned {
                Some(spawned) => {
                    self.attach_uprobes("go_spawned", &[spawned], path, scope, links)?;
                }
                None => {
                    let rets: Vec<_> = g.newproc_rets.iter().collect();
                    self.attach_uprobes("go_newproc", &[&g.newproc], path, scope, links)?;
                    self.attach_uprobes("go_newproc_ret", &rets, path, scope, links)?;
                }
            }
            self.attach_uprobes("go_exit", &[&g.goexit], path, scope, links)?;
        }
        if probes.holds {
            let h = bin.holds.as_ref().map_err(unsupported)?;
            let points: Vec<_> = h.points().collect();
            self.attach_uprobes("go_hold", &points, path, scope, links)?;
        }
        Ok(())
    }
}

impl Kernel for Ebpf {
    type Links = Links;

    fn attach(
        &mut self,
        bin: &GoBinary,
        path: &Path,
        probes: Probes,
        scope: Scope,
    ) -> Result<Links, KernelError> {
        let mut links = Vec::new();
        match self.attach_families(bin, path, probes, scope, &mut links) {
            Ok(()) => Ok(Links(links)),
            Err(e) => {
                self.detach(Links(links));
                Err(e)
            }
        }
    }

    fn detach(&mut self, links: Links) {
        for (name, id) in links.0 {
            if let Some(Ok(prog)) = self.ebpf.program_mut(name).map(<&mut UProbe>::try_from) {
                if let Err(e) = prog.detach(id) {
                    log::warn!("detaching {name}: {e}");
                }
            }
            self.uprobes -= 1;
        }
    }

    fn add_target(&mut self, pid: u32, config: TargetConfig) -> Result<(), KernelError> {
        self.targets
            .insert(pid, config, 0)
            .map_err(map_err("TARGETS"))?;
        self.times.add(pid, crate::host::clock::monotonic_ns());
        self.bump_epoch()
    }

    fn update_target(&mut self, pid: u32, config: TargetConfig) -> Result<(), KernelError> {
        self.targets
            .insert(pid, config, 0)
            .map_err(map_err("TARGETS"))
    }

    fn remove_target(&mut self, pid: u32) {
        let _ = self.targets.remove(&pid);
        let _ = self.held.remove(&pid);
        let _ = self.bump_epoch();
        self.times.remove(pid);
    }

    fn held(&self) -> Vec<(u32, u64)> {
        self.held.iter().filter_map(Result::ok).collect()
    }

    fn unhold(&mut self, pid: u32) {
        let _ = self.held.remove(&pid);
    }

    fn uprobes(&self) -> usize {
        self.uprobes
    }

    fn counters(&self) -> KernelCounters {
        let mut slots = [0; COUNTER_COUNT as usize];
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Ok(v) = self.counters.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        let mut k = KernelCounters::from_slots(&slots);
        for (name, p) in self.ebpf.programs() {
            let Some(n) = p.fd().ok().and_then(|fd| recursion_misses(fd.as_fd())) else {
                continue;
            };
            // fault_kernel runs inside the kernel's fault handler; a user
            // address that one of its own reads finds not resident faults
            // again, in kernel mode, and the kernel skips that nested run:
            // memtrace's own read, not the target's fault.
            if name == "fault_kernel" {
                k.nested_fault_misses += n;
            } else {
                k.kernel_misses += n;
            }
        }
        k
    }

    fn poll(&mut self, sink: &mut dyn FnMut(&[u8])) {
        while let Some(item) = self.ring.next() {
            sink(&item);
        }
        if let Some(l) = self.log.as_mut() {
            l.flush();
        }
    }

    fn ready_fd(&self) -> Option<OwnedFd> {
        self.ring.as_fd().try_clone_to_owned().ok()
    }

    fn probe_costs(&self) -> Vec<crate::model::summary::ProbeCost> {
        let mut out: Vec<_> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                (info.run_count() > 0).then(|| crate::model::summary::ProbeCost {
                    program: name.to_string(),
                    runs: info.run_count(),
                    ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect();
        out.sort_by(|a, b| a.program.cmp(&b.program));
        out
    }

    fn fault_runs(&mut self, retired: &[u32], sink: &mut dyn FnMut(&[u8])) {
        // Read twice: a run read while its CPU rewrites it (odd sequence,
        // or two reads that differ) waits for the next read.
        let (Ok(a), Ok(b)) = (self.fault_runs.get(&0, 0), self.fault_runs.get(&0, 0)) else {
            return;
        };
        for (ca, cb) in a.iter().zip(b.iter()) {
            for (ra, rb) in ca.runs.iter().zip(&cb.runs) {
                if runs::settled(ra, rb) && self.times.live(ra, retired) {
                    let ev = Event::fault_run(EventKind::FaultRunSoFar, ra);
                    sink(&crate::kernel::decode::encode(&ev, &[]));
                }
            }
        }
        // A retired target's runs stay in the CPUs' tables until newer runs
        // take their slots; they are not read again.
        self.times.forget(retired);
    }
}

/// Runs of the program behind `fd` that the kernel skipped because
/// another BPF program was running on the CPU (`recursion_misses` of
/// `bpf_prog_info`, Linux 5.12+; aya does not expose it). `None` when the
/// kernel does not say.
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
    use std::os::fd::AsRawFd as _;
    // SAFETY: plain C structs, valid when zeroed.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = std::ptr::addr_of_mut!(info) as u64;
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes to
    // `info`, which lives until the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    (r == 0).then_some(info.recursion_misses)
}
