//! Uprobes on Go's heap allocation entry points.
//!
//! User space attaches `go_alloc` right after each function's frame-pointer
//! prologue (`PUSHQ BP; MOVQ SP, BP`), which both keeps the direct caller in the
//! frame-pointer walk and skips the re-entry after `morestack` (that jumps back
//! to the stack check, before the attach point).
//!
//! Go's register ABI puts the first argument, the size, in RAX. The attach
//! cookie is a size floor: `runtime.mallocgc` in Go ≥ 1.27 hands sizes below
//! the size-specialized tables' length to `mallocgc*SC*` functions, which carry
//! their own probe, so those calls are skipped here to count each object once.

use aya_ebpf::EbpfContext as _;
use aya_ebpf::{helpers::generated::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext};
use memtrace_common::{Counter, Event, EventKind};

use super::{bump, current_target, emit_with_stack, event, fingerprint};

#[uprobe]
pub fn go_alloc(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    bump(Counter::AllocHits);
    // SAFETY: `regs` points at the saved user registers for this hit.
    let (size, ip, bp) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rip, (*ctx.regs).rbp) };
    // SAFETY: helper without preconditions beyond a valid context.
    let floor = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // Zero-size requests return &zerobase and are not objects.
    if size == 0 || size < floor {
        return 0;
    }
    let ev = Event {
        size,
        ..event(EventKind::Alloc, tgid, tid)
    };
    emit_with_stack(&ctx, ev, fingerprint(ip, bp));
    0
}
