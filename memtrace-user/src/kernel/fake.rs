//! A kernel for unit tests: records what the engine asks of it and plays
//! back the records a test queues.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use memtrace_common::TargetConfig;

use super::{Kernel, KernelCounters, KernelError, Probes, Scope};
use crate::binary::goruntime::GoBinary;

/// What the fake kernel was asked, and what it will answer.
#[derive(Default)]
pub struct FakeKernel {
    pub attached: Vec<(PathBuf, Probes, Scope)>,
    pub detached: Vec<PathBuf>,
    pub targets: BTreeMap<u32, TargetConfig>,
    pub records: VecDeque<Vec<u8>>,
    pub counters: KernelCounters,
    /// Binaries whose attach fails.
    pub refuse: Vec<PathBuf>,
    /// Runs of merged faults in progress: (tgid, record).
    pub runs: Vec<(u32, Vec<u8>)>,
    /// Targets noted stopped by a hold: pid → when (monotonic ns).
    pub held: BTreeMap<u32, u64>,
}

/// The links of one fake attachment: the path, so a detach can be checked.
pub struct FakeLinks(PathBuf);

impl FakeKernel {
    /// Attachments not detached yet.
    pub fn live_links(&self) -> usize {
        self.attached.len() - self.detached.len()
    }
}

impl Kernel for FakeKernel {
    type Links = FakeLinks;

    fn attach(
        &mut self,
        _bin: &GoBinary,
        path: &Path,
        probes: Probes,
        scope: Scope,
    ) -> Result<FakeLinks, KernelError> {
        if self.refuse.iter().any(|p| p == path) {
            return Err(KernelError::Unsupported(format!(
                "{} refused",
                path.display()
            )));
        }
        self.attached.push((path.to_owned(), probes, scope));
        Ok(FakeLinks(path.to_owned()))
    }

    fn detach(&mut self, links: FakeLinks) {
        self.detached.push(links.0);
    }

    fn add_target(&mut self, pid: u32, config: TargetConfig) -> Result<(), KernelError> {
        self.targets.insert(pid, config);
        Ok(())
    }

    fn update_target(&mut self, pid: u32, config: TargetConfig) -> Result<(), KernelError> {
        self.targets.insert(pid, config);
        Ok(())
    }

    fn remove_target(&mut self, pid: u32) {
        self.targets.remove(&pid);
        self.held.remove(&pid);
    }

    fn held(&self) -> Vec<(u32, u64)> {
        self.held.iter().map(|(&p, &t)| (p, t)).collect()
    }

    fn unhold(&mut self, pid: u32) {
        self.held.remove(&pid);
    }

    fn counters(&self) -> KernelCounters {
        self.counters
    }

    fn poll(&mut self, sink: &mut dyn FnMut(&[u8])) {
        while let Some(r) = self.records.pop_front() {
            sink(&r);
        }
    }

    fn ready_fd(&self) -> Option<OwnedFd> {
        None
    }

    fn fault_runs(&mut self, retired: &[u32], sink: &mut dyn FnMut(&[u8])) {
        for (_, r) in &self.runs {
            sink(r);
        }
        self.runs.retain(|(pid, _)| !retired.contains(pid));
    }
}
