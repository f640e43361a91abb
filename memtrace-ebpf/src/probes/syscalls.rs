//! Tracepoints on the memory syscalls.
//!
//! `mmap`'s, `mremap`'s and `brk`'s results are only known at exit, but the
//! stack is taken at enter, so enter and exit are paired per thread in
//! `INFLIGHT` (a thread is in one syscall at a time).

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use memtrace_common::{Counter, Event, EventKind};

use super::{bump, current_target, emit, event, user_stack_id};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    kind: u32,
    stack_id: i32,
    a: u64,
    b: u64,
    c: u64,
}

#[map]
static INFLIGHT: HashMap<u32, Pending> = HashMap::with_max_entries(16 * 1024, 0);

/// Takes the thread's pending enter of `kind`, if any.
#[inline(always)]
fn take_pending(tid: u32, kind: EventKind) -> Option<Pending> {
    // SAFETY: plain copy out of the map value.
    let p = unsafe { INFLIGHT.get(&tid) }.copied()?;
    let _ = INFLIGHT.remove(&tid);
    (p.kind == kind as u32).then_some(p)
}

#[inline(always)]
fn exit_ret(ctx: &TracePointContext) -> Option<u64> {
    // SAFETY: offset from the sys_exit_* format file.
    let ret = unsafe { ctx.read_at::<i64>(EXIT_RET) }.unwrap_or(-1);
    if (-4095..0).contains(&ret) {
        None
    } else {
        Some(ret as u64)
    }
}

// /sys/kernel/tracing/events/syscalls/sys_enter_mmap/format
//   field:int __syscall_nr;   offset:8;  size:4; signed:1;
//   field:unsigned long addr; offset:16; size:8; signed:0;
//   field:unsigned long len;  offset:24; size:8; signed:0;
//   field:unsigned long prot; offset:32; size:8; signed:0;
//   field:unsigned long flags;offset:40; size:8; signed:0;
//   field:unsigned long fd;   offset:48; size:8; signed:0;
//   field:unsigned long off;  offset:56; size:8; signed:0;
const ENTER_ARG0: usize = 16;
// sys_exit_*: field:long ret; offset:16; size:8; signed:1;
const EXIT_RET: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: offsets come from the tracepoint's format file above.
    unsafe { ctx.read_at::<u64>(ENTER_ARG0 + 8 * n) }.unwrap_or(0)
}

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current_target() else {
        return 0;
    };
    let pending = Pending {
        kind: EventKind::Mmap as u32,
        stack_id: user_stack_id(&ctx),
        a: arg(&ctx, 1),
        b: (arg(&ctx, 2) & 0xffff_ffff) | (arg(&ctx, 3) << 32),
        c: 0,
    };
    let _ = INFLIGHT.insert(&tid, &pending, 0);
    0
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let Some(p) = take_pending(tid, EventKind::Mmap) else {
        bump(Counter::MmapUnpaired);
        return 0;
    };
    let Some(addr) = exit_ret(&ctx) else {
        aya_log_ebpf::debug!(&ctx, "mmap failed in tgid {}", tgid);
        return 0;
    };
    emit(Event {
        addr,
        size: p.a,
        aux: p.b,
        ..event(EventKind::Mmap, tgid, tid, p.stack_id)
    });
    0
}

// /sys/kernel/tracing/events/syscalls/sys_enter_munmap/format
//   field:unsigned long addr; offset:16; size:8; signed:0;
//   field:size_t len;         offset:24; size:8; signed:0;
#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let stack_id = user_stack_id(&ctx);
    emit(Event {
        addr: arg(&ctx, 0),
        size: arg(&ctx, 1),
        ..event(EventKind::Munmap, tgid, tid, stack_id)
    });
    0
}

// /sys/kernel/tracing/events/syscalls/sys_enter_madvise/format
//   field:unsigned long start; offset:16; size:8; signed:0;
//   field:size_t len_in;       offset:24; size:8; signed:0;
//   field:int behavior;        offset:32; size:8; signed:0;
#[tracepoint]
pub fn madvise_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let stack_id = user_stack_id(&ctx);
    emit(Event {
        addr: arg(&ctx, 0),
        size: arg(&ctx, 1),
        aux: arg(&ctx, 2) & 0xffff_ffff,
        ..event(EventKind::Madvise, tgid, tid, stack_id)
    });
    0
}

// /sys/kernel/tracing/events/syscalls/sys_enter_mremap/format
//   field:unsigned long addr;     offset:16; size:8; signed:0;
//   field:unsigned long old_len;  offset:24; size:8; signed:0;
//   field:unsigned long new_len;  offset:32; size:8; signed:0;
//   field:unsigned long flags;    offset:40; size:8; signed:0;
//   field:unsigned long new_addr; offset:48; size:8; signed:0;
#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current_target() else {
        return 0;
    };
    let pending = Pending {
        kind: EventKind::Mremap as u32,
        stack_id: user_stack_id(&ctx),
        a: arg(&ctx, 0),
        b: arg(&ctx, 1),
        c: arg(&ctx, 2),
    };
    let _ = INFLIGHT.insert(&tid, &pending, 0);
    0
}

#[tracepoint]
pub fn mremap_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let Some(p) = take_pending(tid, EventKind::Mremap) else {
        bump(Counter::SyscallUnpaired);
        return 0;
    };
    if let Some(new_addr) = exit_ret(&ctx) {
        emit(Event {
            addr: p.a,
            size: p.b,
            aux: new_addr,
            aux2: p.c,
            ..event(EventKind::Mremap, tgid, tid, p.stack_id)
        });
    }
    0
}

// /sys/kernel/tracing/events/syscalls/sys_enter_brk/format
//   field:unsigned long brk; offset:16; size:8; signed:0;
#[tracepoint]
pub fn brk_enter(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current_target() else {
        return 0;
    };
    let pending = Pending {
        kind: EventKind::Brk as u32,
        stack_id: user_stack_id(&ctx),
        a: arg(&ctx, 0),
        b: 0,
        c: 0,
    };
    let _ = INFLIGHT.insert(&tid, &pending, 0);
    0
}

#[tracepoint]
pub fn brk_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let Some(p) = take_pending(tid, EventKind::Brk) else {
        bump(Counter::SyscallUnpaired);
        return 0;
    };
    if let Some(brk) = exit_ret(&ctx) {
        emit(Event {
            addr: p.a,
            aux: brk,
            ..event(EventKind::Brk, tgid, tid, p.stack_id)
        });
    }
    0
}
