//! The thin layer that talks to the kernel: load the eBPF object, attach
//! probes, manage the target set, and read maps. Everything it returns is
//! plain data for the pure modules.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        Program, UProbe,
    },
    Ebpf, EbpfLoader,
};
use memtrace_common::{TargetConfig, COUNTER_COUNT};

use crate::goruntime::GoBinary;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

/// Failures while loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel refused the object.
    #[error("cannot load memtrace's eBPF programs: {0}")]
    Load(#[source] aya::EbpfError),
    /// A map or program the object must have is missing (build mismatch).
    #[error("the eBPF object has no {0}: rebuild memtrace")]
    Missing(&'static str),
    /// Program load/attach failed.
    #[error("cannot attach {what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
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
        source: aya::maps::MapError,
    },
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

/// A loaded eBPF object and what is attached.
pub struct Tracer {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    targets: BpfHashMap<MapData, u32, TargetConfig>,
    counters: PerCpuArray<MapData, u64>,
    tracepoints: HashSet<&'static str>,
    alloc_attached: HashSet<(PathBuf, u32)>,
    /// Number of uprobe attachments made.
    pub uprobes: usize,
    /// Links made since the last [`Tracer::take_links`].
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Uprobe links of one binary, to detach when its last process exits.
pub struct Links(Vec<(&'static str, UProbeLinkId)>);

impl Tracer {
    pub fn load() -> Result<Self, LoadError> {
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(LoadError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("eBPF logger not initialised: {e}");
                None
            }
        };
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(LoadError::Missing(name))
        };
        let targets =
            BpfHashMap::try_from(map(&mut ebpf, "TARGETS")?).map_err(|source| LoadError::Map {
                what: "TARGETS",
                source,
            })?;
        let counters = PerCpuArray::try_from(map(&mut ebpf, "COUNTERS")?).map_err(|source| {
            LoadError::Map {
                what: "COUNTERS",
                source,
            }
        })?;
        Ok(Self {
            ebpf,
            logger,
            targets,
            counters,
            tracepoints: HashSet::new(),
            alloc_attached: HashSet::new(),
            uprobes: 0,
            links: Vec::new(),
        })
    }

    /// The ring buffer, handed to the reader once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let m = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(LoadError::Missing("EVENTS"))?;
        RingBuf::try_from(m).map_err(|source| LoadError::Map {
            what: "EVENTS",
            source,
        })
    }

    /// Makes `pid` a target: from now on the kernel side reports it.
    pub fn add_target(&mut self, pid: u32, config: TargetConfig) -> Result<(), LoadError> {
        self.targets
            .insert(pid, config, 0)
            .map_err(|source| LoadError::Map {
                what: "TARGETS",
                source,
            })
    }

    /// Stops reporting every target (before the final drain).
    /// Stops reporting `pid`.
    pub fn remove_target(&mut self, pid: u32) {
        let _ = self.targets.remove(&pid);
    }

    /// The links made since the last call.
    pub fn take_links(&mut self) -> Links {
        Links(std::mem::take(&mut self.links))
    }

    /// Detaches `links` (a binary none of whose processes is traced any more).
    pub fn detach(&mut self, links: Links) {
        for (name, id) in links.0 {
            if let Some(Ok(prog)) = self.ebpf.program_mut(name).map(<&mut UProbe>::try_from) {
                if let Err(e) = prog.detach(id) {
                    log::warn!("detaching {name}: {e}");
                }
            }
            self.uprobes -= 1;
        }
    }

    pub fn clear_targets(&mut self) {
        let pids: Vec<u32> = self.targets.keys().filter_map(Result::ok).collect();
        for pid in pids {
            let _ = self.targets.remove(&pid);
        }
    }

    /// Attaches the allocation probe to every allocator entry of `bin` for
    /// `pid`. `attach_path` is the path the kernel resolves to the inode.
    pub fn attach_alloc(
        &mut self,
        bin: &GoBinary,
        attach_path: &Path,
        pid: u32,
    ) -> Result<(), LoadError> {
        if !self.alloc_attached.insert((bin.path.clone(), pid)) {
            return Ok(());
        }
        let points: Vec<_> = bin.alloc_points.iter().collect();
        self.attach_uprobes("go_alloc", &points, attach_path, pid)
    }

    /// Attaches uprobes of program `name` at `points` for `pid`.
    fn attach_uprobes(
        &mut self,
        name: &'static str,
        points: &[&crate::goruntime::ProbePoint],
        attach_path: &Path,
        pid: u32,
    ) -> Result<(), LoadError> {
        let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::Missing(name))?
            .try_into()
            .map_err(|source| LoadError::Program {
                what: name.into(),
                source,
            })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| LoadError::Program {
                what: name.into(),
                source,
            })?;
        }
        for p in points {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(p.file_offset),
                cookie: Some(p.size_floor),
            };
            let id = prog.attach(point, attach_path, scope).map_err(|source| {
                let what = format!("{} in {}", p.symbol, attach_path.display());
                if permission_denied(&source) {
                    return LoadError::UprobeDenied { what };
                }
                LoadError::Program {
                    what: format!(
                        "uprobe {}+{:#x} in {}",
                        p.symbol,
                        p.vaddr,
                        attach_path.display()
                    ),
                    source,
                }
            })?;
            self.links.push((name, id));
            self.uprobes += 1;
        }
        Ok(())
    }

    /// Attaches the GC view's probes.
    pub fn attach_gc(
        &mut self,
        points: &crate::goruntime::GcPoints,
        attach_path: &Path,
        pid: u32,
    ) -> Result<(), LoadError> {
        self.attach_uprobes("go_gc_cycle", &[&points.mark_termination], attach_path, pid)?;
        self.attach_uprobes("go_stw_stop", &[&points.stw_stop], attach_path, pid)?;
        self.attach_uprobes("go_stw_start", &[&points.stw_start], attach_path, pid)
    }

    /// Attaches the goroutines lens's probes to `bin` for `pid`.
    pub fn attach_goroutines(
        &mut self,
        points: &crate::goruntime::GoroutinePoints,
        attach_path: &Path,
        pid: u32,
    ) -> Result<(), LoadError> {
        let rets: Vec<_> = points.newproc_rets.iter().collect();
        self.attach_uprobes("go_newproc", &[&points.newproc], attach_path, pid)?;
        self.attach_uprobes("go_newproc_ret", &rets, attach_path, pid)?;
        self.attach_uprobes("go_exit", &[&points.goexit], attach_path, pid)
    }

    /// Attaches tracepoint programs (classic or raw, as the object declares
    /// them), each once; they filter by target. `(program, category, event)`.
    pub fn attach_tracepoints(
        &mut self,
        tps: &[(&'static str, &str, &str)],
    ) -> Result<(), LoadError> {
        for &(prog, category, name) in tps {
            if !self.tracepoints.insert(prog) {
                continue;
            }
            let err = |source| LoadError::Program {
                what: format!("{category}:{name} ({prog})"),
                source,
            };
            match self
                .ebpf
                .program_mut(prog)
                .ok_or(LoadError::Missing(prog))?
            {
                Program::TracePoint(tp) => {
                    tp.load().map_err(err)?;
                    tp.attach(category, name).map_err(err)?;
                }
                Program::RawTracePoint(tp) => {
                    tp.load().map_err(err)?;
                    tp.attach(name).map_err(err)?;
                }
                _ => return Err(LoadError::Missing(prog)),
            }
        }
        Ok(())
    }

    /// The kernel-side counters, summed over CPUs, indexed by [`memtrace_common::Counter`].
    pub fn counters(&self) -> [u64; COUNTER_COUNT as usize] {
        let mut out = [0; COUNTER_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = self.counters.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        out
    }

    /// Forwards pending eBPF log records to the `log` crate.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}
