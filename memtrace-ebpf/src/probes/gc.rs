//! The GC view: a uprobe after `runtime.gcMarkTermination`'s prologue counts
//! cycles and reads the heap size and goal from `runtime.gcController` (at
//! addresses user space puts in the target's config), and uprobes on
//! `runtime.stopTheWorldWithSema` / `startTheWorldWithSema` time the
//! stop-the-world pauses. All fire a few times per GC cycle.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::uprobe, programs::ProbeContext};
use memtrace_common::{Event, EventKind};

use super::{current_target, emit, TARGETS};

#[inline(always)]
fn read(addr: u64) -> u64 {
    if addr == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_user tolerates any address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

#[uprobe]
pub fn go_gc_cycle(_ctx: ProbeContext) -> u32 {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: plain copy of the map value.
    let Some(cfg) = (unsafe { TARGETS.get(tgid) }).copied() else {
        return 0;
    };
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
pub fn go_stw_stop(_ctx: ProbeContext) -> u32 {
    stw(EventKind::StwStop);
    0
}

#[uprobe]
pub fn go_stw_start(_ctx: ProbeContext) -> u32 {
    stw(EventKind::StwStart);
    0
}
