//! Page faults: the moments pages become resident. Their cost scales with
//! new resident pages, not with allocations. Raw tracepoints skip the
//! formatting work of classic ones.

use aya_ebpf::{
    bindings::pt_regs, helpers::bpf_probe_read_kernel, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use memtrace_common::Event;

use super::{current_target, emit_with_stack, fingerprint};

// arch/x86/include/asm/trace/exceptions.h, class x86_exceptions:
//   TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code)
const PAGE_MASK: u64 = !0xfff;
/// Top of the x86-64 user address space (4-level paging; 5-level is larger
/// but user mappings above it need an explicit opt-in hint).
const USER_TOP: u64 = 0x0000_8000_0000_0000;

#[inline(always)]
fn fault(ctx: &RawTracePointContext, user_mode: bool) {
    let Some((tgid, tid)) = current_target() else {
        return;
    };
    let addr: u64 = ctx.arg(0);
    if addr == 0 || addr >= USER_TOP {
        return;
    }
    // In a user-mode fault `regs` are the user's: fingerprint them. A
    // kernel-mode fault's are the kernel's, so walk the user stack instead.
    let fp = if user_mode {
        let regs: *const pt_regs = ctx.arg(1);
        // SAFETY: `regs` is the kernel's pointer to the faulting registers.
        unsafe { bpf_probe_read_kernel(regs) }
            .ok()
            .and_then(|r| fingerprint(r.rip, r.rbp))
    } else {
        None
    };
    emit_with_stack(ctx, Event::fault(tgid, tid, addr & PAGE_MASK, 4096), fp);
}

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn fault_user(ctx: RawTracePointContext) -> i32 {
    fault(&ctx, true);
    0
}

/// The kernel faulting on a user address on the process's behalf (copying
/// syscall results into untouched pages); the stack is the caller's.
#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn fault_kernel(ctx: RawTracePointContext) -> i32 {
    fault(&ctx, false);
    0
}
