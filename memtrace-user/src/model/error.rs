//! Errors a user can act on. Each message is one line naming the cause and the
//! fix; `main` prints it as `memtrace: error: …` and exits non-zero.

use std::path::PathBuf;

/// Why memtrace cannot trace on this host.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The effective capabilities lack what loading BPF and uprobes needs.
    #[error(
        "missing privileges: memtrace needs CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and, \
         for uprobes on most kernels, CAP_SYS_ADMIN; run it as root or grant them with \
         `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_admin+ep memtrace`"
    )]
    Privileges,
    /// tracefs is neither mounted nor mountable.
    #[error(
        "tracefs is not available at {0}: mount it with \
         `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    NoTracefs(PathBuf),
    /// The kernel exposes no BTF.
    #[error(
        "kernel BTF is missing ({0} not found): memtrace needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)"
    )]
    NoBtf(PathBuf),
    /// A tracepoint memtrace relies on is absent.
    #[error("tracepoint {0} is missing: memtrace needs a kernel with CONFIG_FTRACE_SYSCALLS=y")]
    NoTracepoint(String),
}

/// Why a given process or binary cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such process.
    #[error(
        "no process with pid {0}: check the pid with `ps -p {0}` (and that memtrace \
         shares the target's pid namespace)"
    )]
    NoSuchPid(u32),
    /// The process's executable could not be read.
    #[error("cannot read the executable of pid {pid} ({source}): run memtrace as root")]
    Exe {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// The command to launch does not exist.
    #[error("command not found: {0}: give a path to a Go program or put it on PATH")]
    CommandNotFound(String),
    /// Not an ELF file at all, or an ELF without Go's sections.
    #[error(
        "{0} is not a Go binary (no Go build info or pclntab): memtrace traces Go \
         programs only"
    )]
    NotGo(PathBuf),
    /// A stripped Go binary whose code did not give away a variable that a
    /// feature reads.
    #[error(
        "{path} is stripped (built with -ldflags=-s), and the {needed_by} cannot do without {symbol}, \
         which its code did not give away ({reason}): use the rss, mmap or alloc-exact \
         lens, or rebuild without -s"
    )]
    Stripped {
        path: PathBuf,
        symbol: String,
        needed_by: String,
        reason: String,
    },
    /// A Go release memtrace does not support.
    #[error(
        "{path} was built with {version}, which memtrace does not support: rebuild it \
         with Go 1.19 or newer"
    )]
    GoVersion { path: PathBuf, version: String },
    /// A Go binary without an allocator memtrace knows.
    #[error(
        "{path} has no {symbol}: this Go version's allocator is not supported; \
         please report it with `go version {path}`"
    )]
    MissingSymbol { path: PathBuf, symbol: String },
    /// An allocator entry point whose prologue could not be decoded.
    #[error(
        "cannot find the frame setup of {symbol} in {path}: unsupported compiler \
         output; please report it with `go version {path}`"
    )]
    Prologue { path: PathBuf, symbol: String },
    /// The binary could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}
