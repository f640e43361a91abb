//! Finding Go processes, one way for `top`, the agent and `record --pid`:
//! one scan of `/proc`; each process's executable reached through
//! `/proc/PID/exe`, which works in any mount namespace and after the file
//! was deleted; and each executable parsed once per file (device, inode).
//! What to do with a process found (filters, vetting) is the caller's.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BinaryId, TargetSpec};
use crate::binary::goruntime::GoBinary;
use crate::host::procfs;
use crate::model::error::TargetError;

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
            binary: (meta.dev(), meta.ino()),
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

/// Go binaries, parsed once per file. A file that is not Go, or could not
/// be parsed or probed, is remembered as such until forgotten.
#[derive(Default)]
pub struct Binaries {
    parsed: HashMap<BinaryId, Option<Arc<GoBinary>>>,
}

impl Binaries {
    /// The Go binary `p` runs, parsed the first time its file is seen.
    /// `Ok(None)`: not Go, or refused before. An error is returned the
    /// first time only.
    pub fn of(&mut self, p: &Process) -> Result<Option<Arc<GoBinary>>, TargetError> {
        if let Some(known) = self.parsed.get(&p.binary) {
            return Ok(known.clone());
        }
        let parsed = p.go_binary().map(Arc::new);
        self.parsed.insert(p.binary, parsed.as_ref().ok().cloned());
        match parsed {
            Ok(b) => Ok(Some(b)),
            Err(TargetError::NotGo(_)) => Ok(None),
            Err(e) => Err(e),
        }
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
        assert!(matches!(bins.of(&me), Ok(None)), "this test binary is Rust");
        assert!(bins.parsed.contains_key(&me.binary), "parsed once");
        bins.forget(me.binary);
        assert!(bins.parsed.is_empty());
        assert!(matches!(
            Process::open(u32::MAX - 1),
            Err(TargetError::NoSuchPid(_))
        ));
    }
}
