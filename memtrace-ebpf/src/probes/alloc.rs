//! Uprobes on Go's heap allocation entry points.
//!
//! User space attaches `go_alloc` right after each function's frame-pointer
//! prologue (`PUSHQ BP; MOVQ SP, BP`), which both keeps the direct caller in the
//! frame-pointer walk and skips the re-entry after `morestack` (that jumps back
//! to the stack check, before the attach point).
//!
//! The size is the first argument. The attach cookie is a size floor:
//! `runtime.mallocgc` in Go ≥ 1.27 hands sizes below the size-specialized
//! tables' length to `mallocgc*SC*` functions, which carry their own probe,
//! so those calls are skipped here to count each object once.

use aya_ebpf::EbpfContext as _;
use aya_ebpf::{helpers::generated::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext};
use memtrace_common::{Counter, Event};

use super::{bump, current_target, emit_with_stack, fingerprint, go_abi};

#[uprobe]
pub fn go_alloc(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    bump(Counter::AllocHits);
    let size = go_abi::arg(&ctx, 0);
    let (ip, bp) = go_abi::ip_bp(&ctx);
    // SAFETY: helper without preconditions beyond a valid context.
    let floor = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // Zero-size requests return &zerobase and are not objects.
    if size == 0 || size < floor {
        return 0;
    }
    emit_with_stack(&ctx, Event::alloc(tgid, tid, size), fingerprint(ip, bp));
    0
}
