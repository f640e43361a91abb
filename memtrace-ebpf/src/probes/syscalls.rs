//! Tracepoints on the memory syscalls.
//!
//! `mmap`'s address is only known at exit, but the stack is taken at enter
//! (where the user registers are those of the calling code), so enter and exit
//! are paired per thread in `MMAP_INFLIGHT`.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use memtrace_common::{Counter, EventKind};

use super::{bump, current_target, emit, user_stack_id};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingMmap {
    len: u64,
    prot_flags: u64,
    stack_id: i64,
}

#[map]
static MMAP_INFLIGHT: HashMap<u32, PendingMmap> = HashMap::with_max_entries(16 * 1024, 0);

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
    let pending = PendingMmap {
        len: arg(&ctx, 1),
        prot_flags: (arg(&ctx, 2) & 0xffff_ffff) | (arg(&ctx, 3) << 32),
        stack_id: user_stack_id(&ctx) as i64,
    };
    let _ = MMAP_INFLIGHT.insert(&tid, &pending, 0);
    0
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    // SAFETY: plain copy out of the map value.
    let Some(pending) = (unsafe { MMAP_INFLIGHT.get(&tid) }).copied() else {
        bump(Counter::MmapUnpaired);
        return 0;
    };
    let _ = MMAP_INFLIGHT.remove(&tid);
    // SAFETY: offset from the tracepoint's format file.
    let ret = unsafe { ctx.read_at::<i64>(EXIT_RET) }.unwrap_or(-1);
    if (-4095..0).contains(&ret) {
        aya_log_ebpf::debug!(&ctx, "mmap failed in tgid {}: {}", tgid, ret);
        return 0;
    }
    emit(
        EventKind::Mmap,
        tgid,
        tid,
        pending.stack_id as i32,
        ret as u64,
        pending.len,
        pending.prot_flags,
    );
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
    emit(
        EventKind::Munmap,
        tgid,
        tid,
        stack_id,
        arg(&ctx, 0),
        arg(&ctx, 1),
        0,
    );
    0
}
