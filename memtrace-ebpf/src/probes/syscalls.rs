//! Tracepoints on the memory syscalls. Enters carry the stack; exits carry
//! the result. User space pairs them per thread (a thread is in one syscall
//! at a time, and its records arrive in order), so nothing is kept here.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use memtrace_common::{Event, EventKind};

use super::{current_target, emit, emit_with_stack, event};

// /sys/kernel/tracing/events/syscalls/sys_enter_*/format: arguments are
// 8-byte fields from offset 16, e.g. for mmap:
//   field:unsigned long addr; offset:16; size:8; signed:0;
//   field:unsigned long len;  offset:24; size:8; signed:0;
//   field:unsigned long prot; offset:32; size:8; signed:0;
//   field:unsigned long flags;offset:40; size:8; signed:0;
const ENTER_ARG0: usize = 16;
// sys_exit_*: field:long ret; offset:16; size:8; signed:1;
const EXIT_RET: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: offsets come from the tracepoint format files above.
    unsafe { ctx.read_at::<u64>(ENTER_ARG0 + 8 * n) }.unwrap_or(0)
}

/// Emits an exit record with the syscall's result, unless it failed.
#[inline(always)]
fn exit(ctx: &TracePointContext, kind: EventKind) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    // SAFETY: offset from the sys_exit_* format file.
    let ret = unsafe { ctx.read_at::<i64>(EXIT_RET) }.unwrap_or(-1);
    if (-4095..0).contains(&ret) {
        return 0;
    }
    emit(Event {
        addr: ret as u64,
        ..event(kind, tgid, tid)
    });
    0
}

/// `mmap(addr, len, prot, flags, fd, off)`.
#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let ev = Event {
        size: arg(&ctx, 1),
        aux: (arg(&ctx, 2) & 0xffff_ffff) | (arg(&ctx, 3) << 32),
        ..event(EventKind::MmapEnter, tgid, tid)
    };
    emit_with_stack(&ctx, ev, None);
    0
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, EventKind::MmapExit)
}

/// `munmap(addr, len)`.
#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let ev = Event {
        addr: arg(&ctx, 0),
        size: arg(&ctx, 1),
        ..event(EventKind::Munmap, tgid, tid)
    };
    emit_with_stack(&ctx, ev, None);
    0
}

/// `madvise(start, len_in, behavior)`.
#[tracepoint]
pub fn madvise_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let ev = Event {
        addr: arg(&ctx, 0),
        size: arg(&ctx, 1),
        aux: arg(&ctx, 2) & 0xffff_ffff,
        ..event(EventKind::Madvise, tgid, tid)
    };
    emit_with_stack(&ctx, ev, None);
    0
}

/// `mremap(addr, old_len, new_len, flags, new_addr)`.
#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let ev = Event {
        addr: arg(&ctx, 0),
        size: arg(&ctx, 1),
        aux2: arg(&ctx, 2),
        ..event(EventKind::MremapEnter, tgid, tid)
    };
    emit_with_stack(&ctx, ev, None);
    0
}

#[tracepoint]
pub fn mremap_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, EventKind::MremapExit)
}

/// `brk(brk)`.
#[tracepoint]
pub fn brk_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let ev = Event {
        addr: arg(&ctx, 0),
        ..event(EventKind::BrkEnter, tgid, tid)
    };
    emit_with_stack(&ctx, ev, None);
    0
}

#[tracepoint]
pub fn brk_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, EventKind::BrkExit)
}
