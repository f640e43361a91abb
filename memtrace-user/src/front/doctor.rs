//! `memtrace doctor`: why tracing would or would not work here, and what a
//! given binary or process offers each lens.
//!
//! Facts are gathered from /proc and /sys ([`HostFacts::gather`]) and judged
//! by pure functions ([`host_checks`], [`lens_support`]) that the unit tests
//! drive with made-up facts; the CLI adds the one check that no file can
//! answer, loading the eBPF object and attaching a tracepoint and a uprobe.

use std::path::PathBuf;

use crate::binary::goruntime::GoBinary;

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities memtrace needs, with their names. CAP_SYS_ADMIN is in
/// the list because creating uprobes needs it on the kernels tested.
pub const NEEDED_CAPS: &[(u32, &str)] = &[
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
];

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Works, with a caveat worth knowing.
    Warn,
    /// Tracing will not work until this is fixed.
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the host report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about a failure or warning.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn with(name: &'static str, status: Status, detail: impl Into<String>, fix: &str) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.to_string()),
        }
    }
}

/// Where tracefs stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracefs {
    Mounted(PathBuf),
    /// Not mounted, but memtrace mounts it itself (it runs as root).
    Mountable(PathBuf),
    /// Mounted, but this user cannot read it.
    Unreadable(PathBuf),
    Missing(PathBuf),
}

/// What the host says about itself.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel: String,
    pub btf: Option<PathBuf>,
    pub tracefs: Tracefs,
    /// Tracepoints memtrace uses that the kernel lacks (`category:name`).
    pub missing_tracepoints: Vec<String>,
    pub tracepoints_checked: usize,
    /// Whether the kernel has uprobe events (CONFIG_UPROBE_EVENTS).
    pub uprobes: bool,
    /// Effective capabilities of this process.
    pub cap_eff: u64,
    pub perf_event_paranoid: Option<i64>,
    /// `/sys/kernel/security/lockdown`, e.g. `[none] integrity confidentiality`.
    pub lockdown: Option<String>,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub thp: Option<String>,
    /// RLIMIT_MEMLOCK soft limit in bytes (`None`: unlimited).
    pub memlock: Option<u64>,
}

/// `(major, minor)` of a kernel release like `6.18.0-1-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The bracketed choice of a sysfs selector like `always [madvise] never`.
pub fn selected(sysfs: &str) -> Option<&str> {
    let start = sysfs.find('[')? + 1;
    let end = start + sysfs[start..].find(']')?;
    Some(&sysfs[start..end])
}

/// Capability names of `NEEDED_CAPS` missing from `cap_eff`.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The host checks, judged from `f`.
pub fn host_checks(f: &HostFacts) -> Vec<Check> {
    let mut out = kernel_checks(f);
    out.extend(access_checks(f));
    out
}

/// What the kernel offers: its version, BTF, tracefs, the tracepoints and
/// uprobes.
fn kernel_checks(f: &HostFacts) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match kernel_version(&f.kernel) {
        Some(v) if v >= (5, 8) => Check::pass("kernel", format!("{} (5.8 or newer)", f.kernel)),
        Some(_) => Check::with(
            "kernel",
            Status::Fail,
            format!("{} is older than 5.8", f.kernel),
            "memtrace needs BPF ring buffers and BTF, from Linux 5.8: upgrade the kernel",
        ),
        None => Check::with(
            "kernel",
            Status::Warn,
            format!("cannot read the version of {:?}", f.kernel),
            "memtrace needs Linux 5.8 or newer",
        ),
    });
    out.push(match &f.btf {
        Some(p) => Check::pass("BTF", p.display().to_string()),
        None => Check::with(
            "BTF",
            Status::Fail,
            "/sys/kernel/btf/vmlinux is missing",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are)",
        ),
    });
    out.push(match &f.tracefs {
        Tracefs::Mounted(p) => Check::pass("tracefs", format!("mounted at {}", p.display())),
        Tracefs::Mountable(p) => Check::with(
            "tracefs",
            Status::Warn,
            format!("not mounted at {}; memtrace mounts it when it starts", p.display()),
            "or mount it yourself: mount -t tracefs tracefs /sys/kernel/tracing",
        ),
        Tracefs::Unreadable(p) => Check::with(
            "tracefs",
            Status::Fail,
            format!("mounted at {}, but this user cannot read it", p.display()),
            "run memtrace as root",
        ),
        Tracefs::Missing(p) => Check::with(
            "tracefs",
            Status::Fail,
            format!("not mounted at {} and cannot be mounted", p.display()),
            "mount it: mount -t tracefs tracefs /sys/kernel/tracing (in a container, mount the host's)",
        ),
    });
    // What tracefs lists can only be checked once it is mounted and readable.
    if matches!(f.tracefs, Tracefs::Mounted(_)) {
        out.push(if f.missing_tracepoints.is_empty() {
            Check::pass(
                "tracepoints",
                format!(
                    "all {} present (page faults, memory syscalls, process exec/exit)",
                    f.tracepoints_checked
                ),
            )
        } else {
            Check::with(
                "tracepoints",
                Status::Fail,
                format!("missing: {}", f.missing_tracepoints.join(", ")),
                "use a kernel with CONFIG_FTRACE_SYSCALLS=y and CONFIG_TRACEPOINTS=y",
            )
        });
        out.push(if f.uprobes {
            Check::pass("uprobes", "uprobe events available")
        } else {
            Check::with(
                "uprobes",
                Status::Fail,
                "the kernel has no uprobe events",
                "use a kernel with CONFIG_UPROBE_EVENTS=y (the Go lenses need uprobes)",
            )
        });
    }
    out
}

/// What this process may do: capabilities, perf_event_paranoid, lockdown,
/// and the settings that change what it sees (THP, memlock).
fn access_checks(f: &HostFacts) -> Vec<Check> {
    let mut out = Vec::new();
    let missing = missing_caps(f.cap_eff);
    out.push(if missing.is_empty() {
        Check::pass(
            "capabilities",
            "CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_ADMIN",
        )
    } else {
        Check::with(
            "capabilities",
            Status::Fail,
            format!("missing {}", missing.join(", ")),
            "run as root, or grant them: setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_admin+ep memtrace",
        )
    });
    let perfmon =
        f.cap_eff & (1u64 << CAP_PERFMON) != 0 || f.cap_eff & (1u64 << CAP_SYS_ADMIN) != 0;
    out.push(match f.perf_event_paranoid {
        Some(p) if p <= 2 || perfmon => Check::pass(
            "perf_event_paranoid",
            if perfmon {
                format!("{p} (CAP_PERFMON overrides it)")
            } else {
                p.to_string()
            },
        ),
        Some(p) => Check::with(
            "perf_event_paranoid",
            Status::Fail,
            format!("{p}, and no CAP_PERFMON"),
            "grant CAP_PERFMON, or: sysctl kernel.perf_event_paranoid=2",
        ),
        None => Check::pass("perf_event_paranoid", "not present"),
    });
    out.push(match f.lockdown.as_deref().and_then(selected) {
        None | Some("none") => Check::pass("lockdown", "none"),
        Some("integrity") => Check::with(
            "lockdown",
            Status::Warn,
            "integrity",
            "uprobes and tracepoints work; writing to a target (MemProfileRate) may be refused",
        ),
        Some(other) => Check::with(
            "lockdown",
            Status::Fail,
            other.to_string(),
            "lockdown=confidentiality refuses BPF reads of kernel memory: boot with lockdown=integrity or none",
        ),
    });
    out.push(match f.thp.as_deref().and_then(selected) {
        Some("always") => Check::with(
            "THP",
            Status::Warn,
            "always",
            "one fault can make 2 MiB resident; the rss lens counts it whole, as the kernel does",
        ),
        Some(mode) => Check::pass("THP", mode.to_string()),
        None => Check::pass("THP", "not present"),
    });
    let charged = kernel_version(&f.kernel).is_some_and(|v| v >= (5, 11));
    out.push(match f.memlock {
        _ if charged => Check::pass(
            "memlock",
            "not needed: BPF memory is charged to the cgroup (5.11+)",
        ),
        None => Check::pass("memlock", "unlimited"),
        Some(n) if n >= 64 << 20 => Check::pass("memlock", format!("{} MiB", n >> 20)),
        Some(n) => Check::with(
            "memlock",
            Status::Fail,
            format!("{} KiB", n >> 10),
            "raise it: ulimit -l unlimited (maps need ~40 MiB)",
        ),
    });
    out
}

impl HostFacts {
    /// Reads the facts from /proc and /sys; `tracepoints` are the ones the
    /// lenses use (`category/name`).
    pub fn gather(tracepoints: &[String]) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let btf = std::env::var_os("MEMTRACE_BTF")
            .map_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"), PathBuf::from);
        let dir = crate::host::preflight::tracefs_dir();
        let mounted = dir.join("events").is_dir();
        let in_mounts = read("/proc/self/mounts").is_some_and(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[2] == "tracefs" && std::path::Path::new(f[1]) == dir
            })
        });
        let tracefs = if mounted {
            Tracefs::Mounted(dir.clone())
        } else if in_mounts {
            Tracefs::Unreadable(dir.clone())
        } else if dir.is_dir() && read("/proc/filesystems").is_some_and(|f| f.contains("tracefs")) {
            Tracefs::Mountable(dir.clone())
        } else {
            Tracefs::Missing(dir.clone())
        };
        let missing_tracepoints = if mounted {
            tracepoints
                .iter()
                .filter(|t| !dir.join("events").join(t).is_dir())
                .map(|t| t.replace('/', ":"))
                .collect()
        } else {
            Vec::new()
        };
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: rl is a valid out-pointer.
        let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0
            && rl.rlim_cur != libc::RLIM_INFINITY
        {
            Some(rl.rlim_cur)
        } else {
            None
        };
        Self {
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            btf: btf.exists().then_some(btf),
            uprobes: !mounted || dir.join("uprobe_events").exists(),
            tracefs,
            missing_tracepoints,
            tracepoints_checked: tracepoints.len(),
            cap_eff: crate::host::procfs::parse_cap_eff(
                &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
            ),
            perf_event_paranoid: read("/proc/sys/kernel/perf_event_paranoid")
                .and_then(|s| s.parse().ok()),
            lockdown: read("/sys/kernel/security/lockdown"),
            thp: read("/sys/kernel/mm/transparent_hugepage/enabled"),
            memlock,
        }
    }
}

/// Whether the binary links C code: it imports from shared libraries (a
/// pure Go build, PIE or not, imports nothing), or the `runtime/cgo`
/// package is in it.
pub fn uses_cgo(bin: &GoBinary) -> bool {
    bin.imports_c
        || bin
            .table
            .functions()
            .any(|f| f.name.starts_with("runtime/cgo."))
}

pub use crate::lens::support::lens_support;

/// The allocator entry points, named compactly: `runtime.mallocgc` and
/// how many size-specialized ones.
pub fn allocators(bin: &GoBinary) -> String {
    let specialized = bin
        .alloc_points
        .iter()
        .filter(|p| crate::binary::goruntime::is_specialized_allocator(&p.symbol))
        .count();
    let mut names: Vec<&str> = bin
        .alloc_points
        .iter()
        .filter(|p| !crate::binary::goruntime::is_specialized_allocator(&p.symbol))
        .map(|p| p.symbol.as_str())
        .collect();
    names.dedup();
    let mut s = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    if specialized > 0 {
        s.push_str(&format!(
            " and {specialized} size-specialized (runtime.mallocgc*SC*, Go 1.27+)"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            kernel: "6.18.0-1-amd64".into(),
            btf: Some("/sys/kernel/btf/vmlinux".into()),
            tracefs: Tracefs::Mounted("/sys/kernel/tracing".into()),
            missing_tracepoints: vec![],
            tracepoints_checked: 12,
            uprobes: true,
            cap_eff: NEEDED_CAPS.iter().map(|(b, _)| 1u64 << b).sum(),
            perf_event_paranoid: Some(2),
            lockdown: Some("[none] integrity confidentiality".into()),
            thp: Some("always [madvise] never".into()),
            memlock: Some(8 << 20),
        }
    }

    fn status(checks: &[Check], name: &str) -> Status {
        checks.iter().find(|c| c.name == name).unwrap().status
    }

    #[test]
    fn a_good_host_passes() {
        let c = host_checks(&facts());
        assert!(c.iter().all(|c| c.status == Status::Pass), "{c:?}");
        assert_eq!(c.len(), 10);
    }

    #[test]
    fn each_fault_fails_its_own_check_with_a_fix() {
        let mut f = facts();
        f.kernel = "5.4.0".into();
        f.btf = None;
        f.cap_eff = 1 << CAP_SYS_PTRACE;
        f.perf_event_paranoid = Some(3);
        f.lockdown = Some("none integrity [confidentiality]".into());
        f.missing_tracepoints = vec!["exceptions:page_fault_user".into()];
        let c = host_checks(&f);
        for name in [
            "kernel",
            "BTF",
            "capabilities",
            "perf_event_paranoid",
            "lockdown",
            "tracepoints",
            "memlock",
        ] {
            assert_eq!(status(&c, name), Status::Fail, "{name}: {c:?}");
            assert!(c.iter().find(|x| x.name == name).unwrap().fix.is_some());
        }
        let caps = c.iter().find(|x| x.name == "capabilities").unwrap();
        assert_eq!(caps.detail, "missing CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN");
    }

    #[test]
    fn caveats_warn() {
        let mut f = facts();
        f.thp = Some("[always] madvise never".into());
        f.tracefs = Tracefs::Mountable("/sys/kernel/tracing".into());
        f.lockdown = Some("none [integrity] confidentiality".into());
        let c = host_checks(&f);
        assert_eq!(status(&c, "THP"), Status::Warn);
        assert_eq!(status(&c, "tracefs"), Status::Warn);
        assert_eq!(status(&c, "lockdown"), Status::Warn);
        assert!(!c.iter().any(|c| c.name == "tracepoints"));
        for t in [
            Tracefs::Missing("/x".into()),
            Tracefs::Unreadable("/x".into()),
        ] {
            f.tracefs = t;
            let c = host_checks(&f);
            assert_eq!(status(&c, "tracefs"), Status::Fail);
            assert!(!c.iter().any(|c| c.name == "tracepoints"));
        }
    }

    #[test]
    fn parsing() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.10"), Some((5, 10)));
        assert_eq!(kernel_version("x"), None);
        assert_eq!(selected("always [madvise] never"), Some("madvise"));
        assert_eq!(selected("none"), None);
        assert!(missing_caps(u64::MAX).is_empty());
    }
}
