//! What the engine asks of the host about target processes, behind a trait
//! so the engine's lifecycle is unit-tested without real processes:
//! [`Procfs`] reads `/proc` and sends signals; tests use a fake.

use std::path::PathBuf;

use crate::host::cgroup::memory as memcg;
use crate::host::procfs::{self, MapEntry, MemStatus};
use crate::host::remote::{ProcessMemory, RemoteMemory};
use crate::model::target::MemoryCgroup;

pub trait Host {
    /// The target's memory (see [`RemoteMemory`]).
    fn memory(&self, pid: u32) -> std::io::Result<Box<dyn RemoteMemory>>;
    /// Whether `pid` runs (and is not a zombie).
    fn alive(&self, pid: u32) -> bool;
    /// `/proc/PID/maps`, `None` when unreadable or empty (an exiting process).
    fn maps(&self, pid: u32) -> Option<Vec<MapEntry>>;
    /// `/proc/PID/status` memory figures.
    fn status(&self, pid: u32) -> Option<MemStatus>;
    /// `/proc/PID/smaps`.
    fn smaps(&self, pid: u32) -> Option<String>;
    /// The executable `pid` runs, as `/proc/PID/exe` names it.
    fn exe(&self, pid: u32) -> Option<PathBuf>;
    /// The pages of `pid` resident now, as `[start, end)` ranges.
    fn resident_pages(&self, pid: u32) -> std::io::Result<Vec<(u64, u64)>>;
    /// Reaps a child memtrace launched: its exit status once it exited.
    fn reap(&self, pid: u32) -> Option<i32>;
    /// Waits (briefly) until every thread of `pid` is stopped.
    fn wait_stopped(&self, pid: u32) -> bool;
    /// Continues a stopped process (SIGCONT).
    fn resume(&self, pid: u32);
    /// The memory cgroup `pid` lives in: its limit and usage (`None`:
    /// unreadable, or a host without one).
    fn memory_cgroup(&self, _pid: u32) -> Option<MemoryCgroup> {
        None
    }
}

/// The real host.
#[derive(Clone, Copy, Debug, Default)]
pub struct Procfs;

/// How long a hold may take to stop every thread of a target.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Host for Procfs {
    fn memory(&self, pid: u32) -> std::io::Result<Box<dyn RemoteMemory>> {
        Ok(Box::new(ProcessMemory::open(pid)?))
    }

    fn alive(&self, pid: u32) -> bool {
        procfs::is_alive(pid)
    }

    fn maps(&self, pid: u32) -> Option<Vec<MapEntry>> {
        procfs::read_maps(pid)
    }

    fn status(&self, pid: u32) -> Option<MemStatus> {
        procfs::read_status(pid)
    }

    fn smaps(&self, pid: u32) -> Option<String> {
        std::fs::read_to_string(procfs::proc_dir(pid).join("smaps")).ok()
    }

    fn exe(&self, pid: u32) -> Option<PathBuf> {
        procfs::exe_path(pid).ok()
    }

    fn resident_pages(&self, pid: u32) -> std::io::Result<Vec<(u64, u64)>> {
        procfs::read_resident(pid)
    }

    fn reap(&self, pid: u32) -> Option<i32> {
        crate::host::launch::try_wait(pid)
    }

    fn wait_stopped(&self, pid: u32) -> bool {
        let deadline = std::time::Instant::now() + STOP_WAIT;
        loop {
            match procfs::all_threads_stopped(pid) {
                Some(true) => return true,
                None => return false, // gone
                Some(false) if std::time::Instant::now() >= deadline => return false,
                Some(false) => std::thread::sleep(std::time::Duration::from_micros(200)),
            }
        }
    }

    fn resume(&self, pid: u32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }

    fn memory_cgroup(&self, pid: u32) -> Option<MemoryCgroup> {
        let text = std::fs::read_to_string(procfs::proc_dir(pid).join("cgroup")).ok()?;
        if !memcg::outside_view(&text) {
            if let Some(c) = memcg::read(&memcg::SysFs, &text) {
                return Some(c);
            }
        }
        // In a container of memtrace's own: the target's view of its own.
        memcg::ProcessView::of(pid)?.read()
    }
}
