//! What the front ends may read of a session: its options, targets and
//! figures. The engine's parts stay private behind these.

use super::{Engine, Host, Options, Target};
use crate::kernel::{Kernel, KernelCounters};
use crate::lens::gc::GcCycle;
use crate::model::target::MemoryCgroup;

impl<K: Kernel, H: Host> Engine<K, H> {
    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn target(&self, pid: u32) -> Option<&Target> {
        self.targets.get(&pid)
    }

    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    /// Distinct stacks seen so far (what a report symbolizes).
    pub fn distinct_stacks(&self) -> usize {
        self.resolver.stacks.len()
    }

    /// Targets that have not exited.
    pub fn live_pids(&self) -> Vec<u32> {
        self.targets
            .values()
            .filter(|t| t.exit.is_none())
            .map(|t| t.pid)
            .collect()
    }

    /// Seconds since the current window started.
    pub fn window_secs(&self) -> f64 {
        self.clock.window.elapsed().as_secs_f64()
    }

    /// Events taken from the ring buffer so far.
    pub fn events(&self) -> u64 {
        self.agg.events
    }

    /// The kernel side's counters (drops, stack errors, ...).
    pub fn kernel_counters(&self) -> KernelCounters {
        self.kernel.counters()
    }

    /// Uprobes attached now.
    pub fn uprobes(&self) -> usize {
        self.kernel.uprobes()
    }

    /// New stacks turned away by the per-process cap so far.
    pub fn capped_stacks(&self) -> u64 {
        self.resolver.stacks.capped
    }

    /// The GC cycles seen in this window, every process's.
    pub fn gc_cycles(&self) -> &[GcCycle] {
        &self.agg.gc.cycles
    }

    /// `/proc/PID/status` of a process, through the host.
    pub fn status(&self, pid: u32) -> Option<crate::host::procfs::MemStatus> {
        self.host.status(pid)
    }

    /// A process's memory, through the host (read only by front ends).
    pub fn memory(&self, pid: u32) -> std::io::Result<Box<dyn crate::host::remote::RemoteMemory>> {
        self.host.memory(pid)
    }

    /// A process's memory cgroup, through the host.
    pub fn memory_cgroup(&self, pid: u32) -> Option<MemoryCgroup> {
        self.host.memory_cgroup(pid)
    }
}
