//! The current goroutine's pprof labels, for the events of a target that
//! can set them: `g.labels` (or, on the system stack, that of the user
//! goroutine the thread runs) and what tells the set apart from another
//! that later takes its address:
//! - the generation of its copy ([`super::label_capture`]), made by the
//!   first event under it in the target's GC cycle: user space then holds
//!   the set as it was while alive;
//! - else (a set too large to copy) a fingerprint of the set as it stands
//!   now, two more reads, which user space checks when it reads the set.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_task_pt_regs,
    },
};
use memtrace_common::{label_capture::captured_check, labels_check, LabelOffsets};

use super::label_capture::generation;

/// The calling task's saved user registers that the probes read (from a
/// tracepoint, where the context holds the kernel's): four words on the
/// BPF stack rather than all of `pt_regs`, which left no room for the
/// label copy's call.
#[derive(Clone, Copy)]
pub struct UserRegs {
    pub ip: u64,
    pub bp: u64,
    pub sp: u64,
    /// Go's current g, in Go code.
    pub r14: u64,
}

/// Reads the calling task's [`UserRegs`].
#[inline(always)]
pub fn user_regs() -> Option<UserRegs> {
    // SAFETY: helpers without preconditions; the saved registers are read
    // with checked kernel reads of their fields.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        Some(UserRegs {
            ip: bpf_probe_read_kernel(&raw const (*regs).rip).ok()?,
            bp: bpf_probe_read_kernel(&raw const (*regs).rbp).ok()?,
            sp: bpf_probe_read_kernel(&raw const (*regs).rsp).ok()?,
            r14: bpf_probe_read_kernel(&raw const (*regs).r14).ok()?,
        })
    }
}

/// The label set pointer of goroutine `g` (`g.labels` at offset `off`)
/// and its generation or fingerprint (see the module docs): (0, 0) when
/// the target carries no labels (`off` 0), the goroutine has none, or they
/// cannot be read. Outside Go code R14 may not hold a g: what it points at
/// then is read as user memory, and user space keeps only label sets that
/// were captured or that decode.
#[inline(always)]
pub fn labels_of(g: u64, off: LabelOffsets) -> (u64, u64) {
    labels_copied_or_not(g, off, true)
}

/// As [`labels_of`], without copying a set not copied yet (for rare paths
/// of programs whose stack has no room for the copy's call).
#[inline(always)]
pub fn labels_known(g: u64, off: LabelOffsets) -> (u64, u64) {
    labels_copied_or_not(g, off, false)
}

#[inline(always)]
fn labels_copied_or_not(g: u64, off: LabelOffsets, copy: bool) -> (u64, u64) {
    if off.g_labels == 0 || g == 0 {
        return (0, 0);
    }
    let read = |a: u64| {
        // SAFETY: bpf_probe_read_user tolerates any address.
        unsafe { bpf_probe_read_user(a as *const u64) }.unwrap_or(0)
    };
    let mut ptr = read(g.wrapping_add(off.g_labels));
    if ptr == 0 && off.m_curg != 0 {
        // On g0 (the system stack): the user goroutine the thread runs.
        let curg = read(read(g.wrapping_add(off.g_m)).wrapping_add(off.m_curg));
        if curg != 0 && curg != g {
            ptr = read(curg.wrapping_add(off.g_labels));
        }
    }
    if ptr == 0 {
        return (0, 0);
    }
    let id = bpf_get_current_pid_tgid();
    let layout = if copy { off.format } else { 0 };
    if let Some(gen) = generation((id >> 32) as u32, id as u32, ptr, layout) {
        return (ptr, captured_check(gen));
    }
    let w1 = read(ptr);
    let w2 = read(w1.wrapping_add(off.check_at));
    (ptr, labels_check(w1, w2))
}
