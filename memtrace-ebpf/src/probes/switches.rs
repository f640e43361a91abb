//! The switches user space sets at load (read-only data: the verifier
//! drops the branches a switch does not take) and the log of the stack
//! walk's failures (`--ebpf-log`).

use aya_log_ebpf::warn;
use memtrace_common::TracepointOffsets;

/// Tracepoint field offsets, set by user space at load from the kernel's
/// format files (see [`TracepointOffsets`]).
#[unsafe(no_mangle)]
static TP_OFFSETS: TracepointOffsets = TracepointOffsets::DEFAULT;

/// 0: walk every stack (no fingerprint cache), for measuring what the
/// cache misattributes. Set by user space at load.
#[unsafe(no_mangle)]
static STACK_CACHE: u32 = 1;

/// 1: every fault merged into a run reads its frame's caller again (the
/// run key's last words), so that a function called again from another
/// line at the same depth starts a run of its own. 0: only a run's first
/// page reads it; inexact, for measuring what that read costs. Set by user
/// space at load (read-only data: the verifier drops the branch not taken).
#[unsafe(no_mangle)]
static RECHECK_RUNS: u32 = 1;

/// 1: the fault probes check their target and return, counting nothing:
/// what observing every fault costs before any work, for the bench's
/// floor. Set by user space at load, like `RECHECK_RUNS`.
#[unsafe(no_mangle)]
static FAULT_FLOOR: u32 = 0;

/// Non-zero: every stack walk fails with this errno instead of walking,
/// so that a test can see how a failed walk is counted, shown and logged.
/// Set by user space at load (read-only data: 0 leaves no trace of it).
#[unsafe(no_mangle)]
static STACK_WALK_ERRNO: u32 = 0;

/// The errno every stack walk is to fail with (see `STACK_WALK_ERRNO`).
#[inline(always)]
pub(super) fn injected_walk_errno() -> u32 {
    // SAFETY: a global user space may rewrite before load; read it as such.
    unsafe { core::ptr::read_volatile(&STACK_WALK_ERRNO) }
}

/// Logs a failed stack walk (`--ebpf-log`). Its own BPF function, so that
/// the log record's stack stays out of the probes' frames (the combined
/// stack of a call chain is at most 512 bytes).
#[inline(never)]
pub(super) fn log_walk_failure(tgid: u32, errno: u32, kind: u32) {
    // The event kinds' numbers (`memtrace_common::EventKind`), named.
    let what = match kind {
        1 => "an allocation",
        5 => "a page fault",
        2..=4 | 6..=10 => "a memory syscall",
        11..=13 => "a goroutine",
        _ => "an event",
    };
    warn!(
        (),
        "stack walk failed: pid {} errno {} at {} (event kind {})", tgid, errno, what, kind
    );
}

/// Whether the fault probes stop after the target check (see
/// `FAULT_FLOOR`).
#[inline(always)]
pub fn fault_floor() -> bool {
    // SAFETY: a global user space may rewrite before load; read it as such.
    let on = unsafe { core::ptr::read_volatile(&FAULT_FLOOR) };
    on != 0
}

/// Whether merged faults read their frame's caller again (see
/// `RECHECK_RUNS`).
#[inline(always)]
pub fn recheck_runs() -> bool {
    // SAFETY: a global user space may rewrite before load; read it as such.
    let on = unsafe { core::ptr::read_volatile(&RECHECK_RUNS) };
    on != 0
}

/// The tracepoint offsets in effect.
#[inline(always)]
pub fn tp_offsets() -> TracepointOffsets {
    // SAFETY: a global user space may rewrite before load; read it as such.
    unsafe { core::ptr::read_volatile(&TP_OFFSETS) }
}

/// Whether walked stacks are remembered (0 in `STACK_CACHE`: every stack
/// is walked, for measuring what the cache misattributes).
#[inline(always)]
pub(super) fn stack_cache_on() -> bool {
    // SAFETY: a global user space may rewrite before load; read it as such.
    let on = unsafe { core::ptr::read_volatile(&STACK_CACHE) };
    on != 0
}
