//! Checks that the host can run memtrace, with actionable errors. Paths can
//! be overridden (`MEMTRACE_TRACEFS`, `MEMTRACE_BTF`) for unusual hosts and
//! for tests of the failure paths.

use std::path::PathBuf;

use crate::host::procfs::parse_cap_eff;
use crate::model::error::EnvError;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";
const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whether effective capabilities `cap_eff` allow loading BPF, opening
/// uprobe perf events and reading other processes' memory maps.
pub fn caps_sufficient(cap_eff: u64) -> bool {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let bpf = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    bpf && has(CAP_SYS_PTRACE)
}

pub fn tracefs_dir() -> PathBuf {
    std::env::var_os("MEMTRACE_TRACEFS").map_or_else(|| DEFAULT_TRACEFS.into(), PathBuf::from)
}

/// Runs every check; mounts tracefs at its default place if needed.
pub fn check(tracepoints: &[&str]) -> Result<(), EnvError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !caps_sufficient(parse_cap_eff(&status)) {
        return Err(EnvError::Privileges);
    }
    let btf = std::env::var_os("MEMTRACE_BTF").map_or_else(|| DEFAULT_BTF.into(), PathBuf::from);
    if !btf.exists() {
        return Err(EnvError::NoBtf(btf));
    }
    let tracefs = tracefs_dir();
    if !tracefs.join("events").is_dir() && tracefs == std::path::Path::new(DEFAULT_TRACEFS) {
        mount_tracefs();
    }
    if !tracefs.join("events").is_dir() {
        return Err(EnvError::NoTracefs(tracefs));
    }
    for tp in tracepoints {
        if !tracefs.join("events").join(tp).is_dir() {
            return Err(EnvError::NoTracepoint(tp.replace('/', ":")));
        }
    }
    Ok(())
}

fn mount_tracefs() {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, fs) = (c("tracefs"), c(DEFAULT_TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        log::info!("mounted tracefs at {DEFAULT_TRACEFS}");
    } else {
        log::debug!(
            "mounting tracefs failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        let bit = |c: u32| 1u64 << c;
        assert!(caps_sufficient(bit(CAP_SYS_ADMIN) | bit(CAP_SYS_PTRACE)));
        assert!(caps_sufficient(
            bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_SYS_PTRACE)
        ));
        assert!(!caps_sufficient(bit(CAP_BPF) | bit(CAP_SYS_PTRACE)));
        assert!(!caps_sufficient(bit(CAP_SYS_ADMIN)));
        assert!(!caps_sufficient(0));
    }
}
