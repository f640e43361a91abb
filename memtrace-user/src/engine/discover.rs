//! Finding Go processes, one way for `top`, the agent and `record --pid`:
//! one scan of `/proc`; each process's executable reached through
//! `/proc/PID/exe`, which works in any mount namespace and after the file
//! was deleted; and each executable parsed once per file (device, inode),
//! and once per build: a file with the build ID of one parsed already,
//! byte for byte the same (the same image in another container's overlay
//! is another inode), shares its tables.
//! What to do with a process found (filters, vetting) is the caller's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{BinaryId, TargetSpec};
use crate::binary::goruntime::GoBinary;
use crate::host::procfs;
use crate::model::error::TargetError;

#[path = "background.rs"]
mod background;
use background::Background;
pub use background::ParseFn;

/// Every process's pid but memtrace's own, in order.
pub fn pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect();
    pids.sort_unstable();
    pids
}

/// A running process and its executable.
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    /// The executable's path, as the process sees it.
    pub exe: PathBuf,
    /// `/proc/PID/exe`: the way to that file from here.
    pub via: PathBuf,
    /// The file's device and inode.
    pub binary: BinaryId,
}

impl Process {
    /// `pid`, if it runs and its executable can be read (not a kernel
    /// thread, not gone, ours to read).
    pub fn open(pid: u32) -> Result<Self, TargetError> {
        procfs::check_pid(pid)?;
        let exe = procfs::exe_path(pid)?;
        let via = procfs::proc_dir(pid).join("exe");
        let meta = std::fs::metadata(&via).map_err(|source| TargetError::Exe { pid, source })?;
        Ok(Process {
            pid,
            exe,
            via,
            binary: BinaryId::of(&meta),
        })
    }

    /// The executable's file name ("" when it has none).
    pub fn name(&self) -> String {
        self.exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Its executable, parsed as a Go binary; errors name the path the
    /// user knows, not `/proc/PID/exe`.
    pub fn go_binary(&self) -> Result<GoBinary, TargetError> {
        let mut bin = GoBinary::open(&self.via).map_err(|e| relabel(e, &self.via, &self.exe))?;
        bin.path = self.exe.clone();
        Ok(bin)
    }

    /// What the engine needs to trace it, running `bin`.
    pub fn spec(&self, bin: Arc<GoBinary>) -> TargetSpec {
        TargetSpec {
            pid: self.pid,
            exe: self.exe.clone(),
            attach_path: self.via.clone(),
            binary: self.binary,
            bin,
            launched: false,
        }
    }
}

/// What [`Binaries::of`] knows of a process's executable.
#[derive(Debug)]
pub enum Found {
    Go(Arc<GoBinary>),
    /// Not Go, or refused before.
    NotGo,
    /// Being parsed in the background: the process comes back from
    /// [`Binaries::poll`].
    Pending,
}

/// A parse that finished in the background, with the processes that wait
/// for it.
#[derive(Debug)]
pub struct Parsed {
    pub binary: BinaryId,
    pub waiting: Vec<Process>,
    /// `Ok(None)`: not Go.
    pub result: Result<Option<Arc<GoBinary>>, TargetError>,
}

/// Go binaries, parsed once per file. A file that is not Go, or could not
/// be parsed or probed, is remembered as such until forgotten. Parsing is
/// inline by default; [`Binaries::background`] parses off the caller's
/// thread, one file at a time, each within a time budget.
#[derive(Default)]
pub struct Binaries {
    parsed: HashMap<BinaryId, Option<Arc<GoBinary>>>,
    background: Option<Background>,
    /// Go binaries parsed, by build ID, for another file of the same build.
    by_build: HashMap<String, std::sync::Weak<GoBinary>>,
    /// Files that shared the tables of an identical one.
    pub shared: u64,
}

/// Files compared byte for byte with a parsed one of the same build ID at
/// most this large (a comparison runs on the caller's thread).
const MAX_COMPARED: usize = 512 << 20;

impl Binaries {
    /// Parses on a worker thread, giving up on a file after `budget`.
    pub fn background(budget: Duration) -> Self {
        Self::with_parser(budget, Arc::new(Process::go_binary))
    }

    /// [`Binaries::background`] with another parser (tests).
    pub fn with_parser(budget: Duration, parse: ParseFn) -> Self {
        Self {
            background: Some(Background::new(budget, parse)),
            ..Self::default()
        }
    }

    /// The Go binary `p` runs, parsed the first time its file is seen. An
    /// error is returned the first time only (in the background: from
    /// [`Binaries::poll`]).
    pub fn of(&mut self, p: &Process) -> Result<Found, TargetError> {
        if let Some(known) = self.parsed.get(&p.binary) {
            return Ok(known.clone().map_or(Found::NotGo, Found::Go));
        }
        if let Some(same) = self.same_build(p) {
            self.shared += 1;
            self.parsed.insert(p.binary, Some(same.clone()));
            return Ok(Found::Go(same));
        }
        if let Some(bg) = self.background.as_mut() {
            bg.submit(p.clone());
            return Ok(Found::Pending);
        }
        let parsed = p.go_binary().map(Arc::new);
        self.parsed.insert(p.binary, parsed.as_ref().ok().cloned());
        if let Ok(b) = &parsed {
            self.remember_build(b);
        }
        match parsed {
            Ok(b) => Ok(Found::Go(b)),
            Err(TargetError::NotGo(_)) => Ok(Found::NotGo),
            Err(e) => Err(e),
        }
    }

    /// Parses finished in the background since the last call, each
    /// remembered from now on.
    pub fn poll(&mut self) -> Vec<Parsed> {
        let Some(bg) = self.background.as_mut() else {
            return Vec::new();
        };
        let done = bg.poll();
        for d in &done {
            let bin = d.result.as_ref().ok().cloned().flatten();
            if let Some(b) = &bin {
                self.remember_build(b);
            }
            self.parsed.insert(d.binary, bin);
        }
        done
    }

    fn remember_build(&mut self, b: &Arc<GoBinary>) {
        let id = &b.table.build_id;
        if !id.is_empty() {
            self.by_build.retain(|_, w| w.strong_count() > 0);
            self.by_build.insert(id.clone(), Arc::downgrade(b));
        }
    }

    /// A parsed binary of the same build as `p`'s file, when the two are
    /// byte for byte the same: a build ID is the file's word, so a forged
    /// one must not lend another tenant's tables (and probe offsets).
    fn same_build(&self, p: &Process) -> Option<Arc<GoBinary>> {
        if self.by_build.is_empty() {
            return None;
        }
        let data = crate::binary::file::FileBytes::open(&p.via).ok()?;
        if data.len() > MAX_COMPARED {
            return None;
        }
        let id = crate::binary::gopclntab::build_id(&object::File::parse(&*data).ok()?);
        let known = self.by_build.get(&id)?.upgrade()?;
        let same = !id.is_empty() && known.table.file_bytes() == &data[..];
        data.release();
        known.table.release_pages();
        same.then_some(known)
    }

    /// Remembers that `binary` cannot be traced (its probes failed).
    pub fn refuse(&mut self, binary: BinaryId) {
        self.parsed.insert(binary, None);
    }

    /// Forgets `binary`: its last process is gone, and another file may
    /// reuse its inode.
    pub fn forget(&mut self, binary: BinaryId) {
        self.parsed.remove(&binary);
    }
}

/// Error messages should name the path the user knows, not /proc/PID/exe.
fn relabel(e: TargetError, via: &Path, exe: &Path) -> TargetError {
    let fix = |p: PathBuf| if p == via { exe.to_owned() } else { p };
    match e {
        TargetError::NotGo(p) => TargetError::NotGo(fix(p)),
        TargetError::Stripped {
            path,
            symbol,
            needed_by,
            reason,
        } => TargetError::Stripped {
            path: fix(path),
            symbol,
            needed_by,
            reason,
        },
        TargetError::GoVersion { path, version } => TargetError::GoVersion {
            path: fix(path),
            version,
        },
        TargetError::MissingSymbol { path, symbol } => TargetError::MissingSymbol {
            path: fix(path),
            symbol,
        },
        TargetError::Prologue { path, symbol } => TargetError::Prologue {
            path: fix(path),
            symbol,
        },
        TargetError::Read { path, reason } => TargetError::Read {
            path: fix(path),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_lists_every_process_but_memtrace_in_order() {
        let pids = pids();
        assert!(pids.contains(&1), "{pids:?}");
        assert!(!pids.contains(&std::process::id()));
        assert!(pids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_process_is_found_by_its_executable_and_a_file_that_is_not_go_is_quietly_skipped() {
        let me = Process::open(std::process::id()).unwrap();
        assert_eq!(me.exe, std::env::current_exe().unwrap());
        assert!(!me.name().is_empty());
        let mut bins = Binaries::default();
        assert!(
            matches!(bins.of(&me), Ok(Found::NotGo)),
            "this test binary is Rust"
        );
        assert!(bins.parsed.contains_key(&me.binary), "parsed once");
        bins.forget(me.binary);
        assert!(bins.parsed.is_empty());
        assert!(matches!(
            Process::open(u32::MAX - 1),
            Err(TargetError::NoSuchPid(_))
        ));
    }
}
