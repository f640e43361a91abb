//! What the engine knows about one traced process (the per-process
//! `Instance` to the per-binary [`GoBinary`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::host::Host;
use super::probes::ProbeKey;
use super::Engine;
use crate::binary::goruntime::GoBinary;
use crate::binary::labels::Format;
use crate::binary::symbolize::Image;
use crate::host::breakdown;
use crate::host::procfs::MapEntry;
use crate::kernel::Kernel;
use crate::lens::sampled::RuntimeProfile;
use crate::model::summary::Point;
use crate::model::target::Breakdown;
use crate::model::target::{Exit, MemoryCgroup, OomKill};
use memtrace_common::{SetLayout, TargetConfig};

/// What is read from a target while it can still be read: at the end of
/// the window, or when it holds itself on its way out.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    pub breakdown: Option<Breakdown>,
    /// The Go heap's live bytes (`gcController.heapLive`).
    pub heap_live: Option<u64>,
    /// Stack bytes of each live goroutine (by `*g`).
    pub goroutine_stacks: HashMap<u64, u64>,
}

/// One traced process.
pub struct Target {
    pub pid: u32,
    /// The executable, as the process's maps name it.
    pub exe: PathBuf,
    pub bin: Arc<GoBinary>,
    pub probe_key: ProbeKey,
    pub image: Image,
    /// Started by memtrace (launch mode): its window starts at exec.
    pub launched: bool,
    pub exit: Option<Exit>,
    /// How it said it is exiting, at an exit hold (before it is gone).
    pub exit_hint: Option<Exit>,
    pub vmrss_start: Option<u64>,
    pub timeline: Vec<Point>,
    /// Live goroutines, sampled every second (goroutines lens).
    pub live_goroutines: Vec<(f64, usize)>,
    /// The runtime's memory profile (alloc and heap lenses).
    pub profile: Option<RuntimeProfile>,
    pub final_state: Option<FinalState>,
    /// The memory cgroup, read every second with the timeline (and at an
    /// OOM kill).
    pub cgroup: Option<MemoryCgroup>,
    /// The OOM killer chose it.
    pub oom: Option<OomKill>,
    /// Its usage over the last [`CGROUP_HISTORY`] readings, for the growth
    /// rate: `(window seconds, bytes)`.
    pub cgroup_usage: std::collections::VecDeque<(f64, u64)>,
}

/// Readings the cgroup's growth rate is taken over (one a second).
pub const CGROUP_HISTORY: usize = 30;

impl Target {
    pub fn new(
        pid: u32,
        exe: PathBuf,
        bin: Arc<GoBinary>,
        probe_key: ProbeKey,
        launched: bool,
        host: &dyn Host,
    ) -> Self {
        Self {
            pid,
            image: Image {
                exe: exe.clone(),
                maps: if launched { None } else { host.maps(pid) },
                root: Some(crate::host::procfs::proc_dir(pid).join("root")),
            },
            exe,
            bin,
            probe_key,
            launched,
            exit: None,
            exit_hint: None,
            // A launched program's window starts at exec, with nothing resident.
            vmrss_start: if launched {
                Some(0)
            } else {
                host.status(pid).map(|s| s.vm_rss)
            },
            timeline: Vec::new(),
            live_goroutines: Vec::new(),
            profile: None,
            final_state: None,
            cgroup: None,
            cgroup_usage: std::collections::VecDeque::new(),
            oom: None,
        }
    }

    /// The file name of the executable.
    pub fn name(&self) -> String {
        self.exe
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// The executable's mappings, once the process runs it.
    pub fn exe_maps(&self) -> Vec<MapEntry> {
        self.image
            .maps
            .iter()
            .flatten()
            .filter(|m| m.path.as_deref() == Some(self.exe.as_path()))
            .cloned()
            .collect()
    }

    /// A runtime address of the binary's link-time `vaddr`.
    pub fn runtime_addr(&self, vaddr: u64) -> Option<u64> {
        self.bin.runtime_addr(vaddr, &self.exe_maps())
    }

    /// Reads the maps once the process runs the binary (after exec).
    pub fn refresh_maps(&mut self, host: &dyn Host) {
        if self.image.maps.is_none() && host.exe(self.pid).as_deref() != Some(self.exe.as_path()) {
            return; // not exec'd yet
        }
        if let Some(m) = host.maps(self.pid) {
            self.image.maps = Some(m);
        }
    }

    /// One point of the RSS timeline, and the cgroup's usage.
    pub fn sample(&mut self, host: &dyn Host, t: f64) {
        // A process on its way out shows the root cgroup: its own last
        // reading stands.
        if self.oom.is_none() && self.exit.is_none() {
            if let Some(c) = host.memory_cgroup(self.pid) {
                self.take_cgroup(t, c);
            }
        }
        if let Some(s) = host.status(self.pid).filter(|s| s.vm_rss > 0) {
            self.timeline.push(Point {
                t,
                vm_rss: s.vm_rss,
                rss_anon: s.rss_anon,
                rss_file: s.rss_file,
                rss_shmem: s.rss_shmem,
            });
        }
    }

    /// One cgroup reading at `t`; a process that moved to another cgroup
    /// starts its usage history over.
    pub fn take_cgroup(&mut self, t: f64, c: MemoryCgroup) {
        if self.cgroup.as_ref().is_some_and(|old| old.path != c.path) {
            self.cgroup_usage.clear();
        }
        if self.cgroup_usage.len() == CGROUP_HISTORY {
            self.cgroup_usage.pop_front();
        }
        self.cgroup_usage.push_back((t, c.usage_bytes));
        self.cgroup = Some(c);
    }

    /// Anonymous private writable mappings, for THP `always` accounting.
    pub fn anon_vmas(&self) -> Vec<(u64, u64)> {
        self.image
            .maps
            .iter()
            .flatten()
            .filter(|m| m.path.is_none() && m.perms.starts_with("rw") && m.perms.ends_with('p'))
            .map(|m| (m.start, m.end))
            .collect()
    }

    /// Reads what only a live process can tell: where its resident memory
    /// sits, and the stack size of `live_goroutines`.
    pub fn capture_final(&mut self, host: &dyn Host, live_goroutines: &[u64]) {
        let mem = host.memory(self.pid).ok();
        let stacks_total = self
            .bin
            .allgs
            .and_then(|a| self.runtime_addr(a))
            .zip(mem.as_deref())
            .and_then(|(a, m)| breakdown::goroutine_stack_bytes(m, a).ok())
            .unwrap_or(0);
        let goroutine_stacks = mem
            .as_deref()
            .map(|m| {
                live_goroutines
                    .iter()
                    .filter_map(|&g| Some((g, breakdown::stack_size(m, g)?)))
                    .collect()
            })
            .unwrap_or_default();
        let heap_live = self
            .bin
            .gc
            .as_ref()
            .ok()
            .and_then(|g| g.heap_live)
            .and_then(|a| self.runtime_addr(a))
            .zip(mem.as_deref())
            .and_then(|(a, m)| m.read_u64(a).ok());
        self.final_state = Some(FinalState {
            heap_live,
            breakdown: host
                .smaps(self.pid)
                .map(|s| breakdown::from_smaps(&s, stacks_total)),
            goroutine_stacks,
        });
    }
}

impl<K: Kernel, H: Host> Engine<K, H> {
    /// How `bin`'s pprof label sets are read, if they are: the binary can
    /// set labels, and the GC view is on (the probes and the engine forget
    /// what a set's address named at each GC cycle it reports).
    pub(super) fn reads_labels(&self, bin: &GoBinary) -> Option<crate::binary::labels::Format> {
        let gc_view = self.opts.tuning.gc_view && bin.gc.is_ok();
        bin.labels.filter(|_| self.opts.tuning.labels && gc_view)
    }

    /// What the probes need to know of a target: whether to hold it, and
    /// the runtime addresses of the GC view's heap figures (a PIE binary's
    /// are known once it runs, see [`Engine::refresh_maps`]).
    pub(super) fn target_config(&self, t: &Target) -> TargetConfig {
        let mut config = TargetConfig {
            hold: u64::from(self.opts.holds),
            ..Default::default()
        };
        let labels = self.reads_labels(&t.bin);
        if let (Some(format), Some(g)) = (labels, t.bin.g_layout) {
            config.labels = memtrace_common::LabelOffsets {
                g_labels: g.labels,
                check_at: format.check_at(),
                g_m: g.m,
                m_curg: t.bin.m_curg.unwrap_or(0),
                format: match format {
                    Format::Map => SetLayout::Map,
                    Format::Slice => SetLayout::Slice,
                } as u64,
            };
        }
        if let Ok(points) = &t.bin.gc {
            let at = |a: Option<u64>| a.and_then(|a| t.runtime_addr(a)).unwrap_or(0);
            config.heap_live = at(points.heap_live);
            config.heap_goal = at(points.heap_goal);
            config.heap_marked = at(points.heap_marked);
        }
        config
    }

    /// Reads a target's maps if they are not known yet; when that makes a
    /// PIE binary's load address known, its configuration is completed.
    pub(super) fn refresh_maps(&mut self, pid: u32) {
        let Some(t) = self.targets.get_mut(&pid) else {
            return;
        };
        let unknown = t.image.maps.is_none();
        t.refresh_maps(&self.host);
        if unknown && t.image.maps.is_some() && t.bin.pie {
            let config = self.target_config(&self.targets[&pid]);
            if let Err(e) = self.kernel.update_target(pid, config) {
                log::warn!("pid {pid}: cannot complete its configuration: {e}");
            }
        }
    }
}
