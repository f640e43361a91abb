//! The current goroutine's pprof labels, for the events of a target that
//! can set them: `g.labels` (or, on the system stack, that of the user
//! goroutine the thread runs) and a fingerprint of the set, which user
//! space reads later.
//!
//! The fingerprint takes two more reads. Consecutive events of a CPU
//! mostly share a set (a request's allocations), and a set's address
//! names that set until a GC cycle frees it, so each CPU keeps the last
//! set's fingerprint until the next GC cycle of any target
//! ([`GC_EPOCH`], bumped at `gcMarkTermination`, before the sweep frees
//! anything).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, PerCpuArray},
};
use memtrace_common::{labels_check, LabelOffsets};

/// GC cycles seen (of any target): a CPU's remembered fingerprint is good
/// only within one.
#[map]
pub static GC_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// A CPU's last label set: its address, fingerprint and GC epoch.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastSet {
    ptr: u64,
    check: u64,
    epoch: u64,
}

#[map]
static LAST_SET: PerCpuArray<LastSet> = PerCpuArray::with_max_entries(1, 0);

/// A GC cycle began its mark termination: sets may be freed from now on.
#[inline(always)]
pub fn gc_epoch_bump() {
    if let Some(p) = GC_EPOCH.get_ptr_mut(0) {
        // SAFETY: map value pointer; concurrent bumps may count once, and
        // the epoch still changes.
        unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(1)) };
    }
}

/// The calling task's saved user registers (from a tracepoint, where the
/// context holds the kernel's).
#[inline(always)]
pub fn user_regs() -> Option<pt_regs> {
    // SAFETY: helpers without preconditions; the saved registers are read
    // with a checked kernel read.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        bpf_probe_read_kernel(regs).ok()
    }
}

/// The label set pointer of goroutine `g` (`g.labels` at offset `off`)
/// and the set's first word: (0, 0) when the target carries no labels
/// (`off` 0), the goroutine has none, or they cannot be read. Outside Go
/// code R14 may not hold a g: what it points at then is read as user
/// memory, and user space keeps only label sets that decode.
#[inline(always)]
pub fn labels_of(g: u64, off: LabelOffsets) -> (u64, u64) {
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
    let epoch = match GC_EPOCH.get_ptr(0) {
        // SAFETY: map value pointer; another CPU may bump it concurrently.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => u64::MAX,
    };
    let last = LAST_SET.get_ptr_mut(0);
    if let Some(l) = last {
        // SAFETY: per-CPU map value; a program nested on this CPU may
        // rewrite it, and a torn pair only makes user space re-check.
        let l = unsafe { &*l };
        if l.ptr == ptr && l.epoch == epoch {
            return (ptr, l.check);
        }
    }
    let w1 = read(ptr);
    let w2 = read(w1.wrapping_add(off.check_at));
    let check = labels_check(w1, w2);
    if let Some(l) = last {
        // SAFETY: as above.
        unsafe { *l = LastSet { ptr, check, epoch } };
    }
    (ptr, check)
}
