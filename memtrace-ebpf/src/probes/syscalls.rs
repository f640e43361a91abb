//! Tracepoints on the memory syscalls. Enters carry the stack; exits carry
//! the result. User space pairs them per thread (a thread is in one syscall
//! at a time, and its records arrive in order), so nothing is kept here.
//!
//! Field offsets come from [`super::tp_offsets`], which user space fills in
//! from the kernel's format files; on the kernels memtrace is tested on:
//!   sys_enter_mmap: field:unsigned long addr; offset:16; size:8; (then len,
//!                   prot, flags, ... at 8-byte steps)
//!   sys_exit_*:     field:long ret; offset:16; size:8; signed:1;
//!
//! An enter's stack is remembered by a fingerprint of the user registers
//! the syscall saved (see [`super::emit_with_stack`]): the Go runtime
//! returns memory with `madvise` from a handful of places, hundreds of
//! times a second on a GC-heavy program, and a walk per call was most of
//! the rss lens's program time there.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use memtrace_common::{Event, EventKind, LabelOffsets};

use super::{
    bump_release_gen, current_target, current_target_labels, emit, emit_with_stack,
    entry_fingerprint, labels_of, tp_offsets, user_regs,
};

/// `mmap`'s MAP_FIXED (include/uapi/asm-generic/mman-common.h).
const MAP_FIXED: u32 = 0x10;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    let at = tp_offsets().syscall_args as usize + 8 * n;
    // SAFETY: the offset comes from the tracepoint's format file.
    unsafe { ctx.read_at::<u64>(at) }.unwrap_or(0)
}

/// Emits a syscall enter with its stack, and the labels of the goroutine
/// in the saved R14 (see [`labels_of`]). The stack is remembered by a
/// fingerprint of the saved user registers: pc and frame pointer, the word
/// at the stack pointer (the direct caller's return address when the
/// syscall wrapper has no frame of its own, as Go's have not), then the
/// frame-pointer chain. It only keys the stack cache; the stack sent is
/// the kernel's walk, as before.
#[inline(always)]
fn emit_enter(ctx: &TracePointContext, ev: Event, labels_off: LabelOffsets) {
    let Some(regs) = user_regs() else {
        emit_with_stack(ctx, ev, None);
        return;
    };
    let ev = ev.with_labels(labels_of(regs.r14, labels_off));
    // SAFETY: bpf_probe_read_user tolerates any address.
    let fp = match unsafe { bpf_probe_read_user(regs.sp as *const u64) } {
        Ok(top) => entry_fingerprint(regs.ip, regs.bp, top),
        Err(_) => None,
    };
    emit_with_stack(ctx, ev, fp);
}

/// Emits an exit record with the syscall's result, unless it failed.
#[inline(always)]
fn exit(ctx: &TracePointContext, kind: EventKind) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    // SAFETY: the offset comes from the sys_exit_* format file.
    let ret = unsafe { ctx.read_at::<i64>(tp_offsets().syscall_ret as usize) }.unwrap_or(-1);
    if (-4095..0).contains(&ret) {
        return 0;
    }
    emit(Event::syscall_exit(kind, tgid, tid, ret as u64));
    0
}

/// `mmap(addr, len, prot, flags, fd, off)`.
#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    let flags = arg(&ctx, 3) as u32;
    let ev = Event::mmap_enter(tgid, tid, arg(&ctx, 1), arg(&ctx, 2) as u32, flags);
    emit_enter(&ctx, ev, labels_off);
    // Only a fixed mapping can replace resident pages (elsewhere the kernel
    // picks an unmapped range): the Go heap's growth maps many others.
    if flags & MAP_FIXED != 0 {
        bump_release_gen();
    }
    0
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, EventKind::MmapExit)
}

/// `munmap(addr, len)`.
#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    let ev = Event::munmap(tgid, tid, arg(&ctx, 0), arg(&ctx, 1));
    emit_enter(&ctx, ev, labels_off);
    bump_release_gen();
    0
}

/// `madvise(start, len_in, behavior)`.
#[tracepoint]
pub fn madvise_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    let ev = Event::madvise(tgid, tid, arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2) as u32);
    emit_enter(&ctx, ev, labels_off);
    bump_release_gen();
    0
}

/// `mremap(addr, old_len, new_len, flags, new_addr)`.
#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    let ev = Event::mremap_enter(tgid, tid, arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    emit_enter(&ctx, ev, labels_off);
    bump_release_gen();
    0
}

#[tracepoint]
pub fn mremap_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, EventKind::MremapExit)
}

/// `brk(brk)`.
#[tracepoint]
pub fn brk_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    let ev = Event::brk_enter(tgid, tid, arg(&ctx, 0));
    emit_enter(&ctx, ev, labels_off);
    bump_release_gen();
    0
}

#[tracepoint]
pub fn brk_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, EventKind::BrkExit)
}
