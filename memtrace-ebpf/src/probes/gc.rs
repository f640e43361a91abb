//! The GC view: a uprobe at `runtime.gcMarkTermination`'s entry counts
//! cycles and reads the heap size and goal from `runtime.gcController` (at
//! addresses user space puts in the target's config), and uprobes on
//! `runtime.stopTheWorldWithSema` / `startTheWorldWithSema` time the
//! stop-the-world pauses. All fire a few times per GC cycle, hundreds of
//! times a second on a GC-heavy program, so user space puts them on an
//! instruction the kernel emulates (the frame's `PUSHQ BP`, or the stack
//! check's `JBE`, where the entry that goes to `morestack` is skipped: see
//! [`AT_STACK_CHECK`]).

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::uprobe,
    programs::ProbeContext,
    EbpfContext as _,
};
use memtrace_common::{Event, EventKind, AT_STACK_CHECK};

use super::{current_target, emit, go_abi, TARGETS};

/// Whether this hit is an entry that goes to `morestack` and starts again
/// (a probe on the stack check's `JBE`): it is not counted.
#[inline(always)]
fn restarts(ctx: &ProbeContext) -> bool {
    // SAFETY: helper without preconditions beyond a valid context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    cookie & AT_STACK_CHECK != 0 && go_abi::below_or_equal(ctx)
}

#[inline(always)]
fn read(addr: u64) -> u64 {
    if addr == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_user tolerates any address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

#[uprobe]
pub fn go_gc_cycle(ctx: ProbeContext) -> u32 {
    if restarts(&ctx) {
        return 0;
    }
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: plain copy of the map value.
    let Some(cfg) = (unsafe { TARGETS.get(tgid) }).copied() else {
        return 0;
    };
    super::label_capture::gc_epoch_bump(tgid);
    emit(Event::gc_cycle(
        tgid,
        tid,
        read(cfg.heap_live),
        read(cfg.heap_goal),
        read(cfg.heap_marked),
    ));
    0
}

#[inline(always)]
fn stw(kind: EventKind) {
    if let Some((tgid, tid)) = current_target() {
        emit(Event::new(kind, tgid, tid));
    }
}

#[uprobe]
pub fn go_stw_stop(ctx: ProbeContext) -> u32 {
    if restarts(&ctx) {
        return 0;
    }
    stw(EventKind::StwStop);
    0
}

#[uprobe]
pub fn go_stw_start(ctx: ProbeContext) -> u32 {
    if restarts(&ctx) {
        return 0;
    }
    stw(EventKind::StwStart);
    0
}
