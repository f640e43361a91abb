//! Page faults: the moments pages become resident. Their cost scales with
//! new resident pages, not with allocations.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use memtrace_common::{Event, EventKind};

use super::{current_target, emit, event, user_stack_id};

// /sys/kernel/tracing/events/exceptions/page_fault_{user,kernel}/format
//   field:unsigned long address;    offset:8;  size:8; signed:0;
//   field:unsigned long ip;         offset:16; size:8; signed:0;
//   field:unsigned long error_code; offset:24; size:8; signed:0;
const ADDRESS: usize = 8;
const PAGE_MASK: u64 = !0xfff;
/// Top of the x86-64 user address space (4-level paging; 5-level is larger
/// but user mappings above it need an explicit opt-in hint).
const USER_TOP: u64 = 0x0000_8000_0000_0000;

#[inline(always)]
fn fault(ctx: &TracePointContext) {
    let Some((tgid, tid)) = current_target() else {
        return;
    };
    // SAFETY: offset from the tracepoint's format file above.
    let addr = unsafe { ctx.read_at::<u64>(ADDRESS) }.unwrap_or(0);
    if addr == 0 || addr >= USER_TOP {
        return;
    }
    let stack_id = user_stack_id(ctx);
    emit(Event {
        addr: addr & PAGE_MASK,
        size: 4096,
        ..event(EventKind::Fault, tgid, tid, stack_id)
    });
}

#[tracepoint]
pub fn fault_user(ctx: TracePointContext) -> u32 {
    fault(&ctx);
    0
}

/// The kernel faulting on a user address on the process's behalf (copying
/// syscall results into untouched pages); the stack is the caller's.
#[tracepoint]
pub fn fault_kernel(ctx: TracePointContext) -> u32 {
    fault(&ctx);
    0
}
