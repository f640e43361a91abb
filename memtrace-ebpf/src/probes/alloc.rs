//! Uprobes on Go's heap allocation entry points.
//!
//! User space attaches `go_alloc` on each function's `PUSHQ BP` (Go ≥ 1.21),
//! after the stack check, so the re-entry after `morestack` (which jumps
//! back to the check) does not count twice. The kernel emulates a push
//! instead of single-stepping it out of line: one trap per hit instead of
//! two, most of a hit's cost. The frame is not set up there, so the direct
//! caller's return address is read from the top of the stack and put in the
//! stack (cookie flag [`AT_PUSH`]). Older frame layouts (`SUBQ` first)
//! (`SUBQ` first, Go 1.19–1.20) get the probe on the stack check's `JBE`,
//! which the kernel emulates too; there the flags say whether this entry
//! goes to `morestack` and starts again, and only the entry that goes on
//! is counted ([`AT_STACK_CHECK`]). The stack is as at the push.
//!
//! The size is the first argument, the type the second (its `PtrBytes`
//! word tells user space how the runtime rounds the size). The attach cookie is a size floor:
//! `runtime.mallocgc` in Go ≥ 1.27 hands sizes below the size-specialized
//! tables' length to `mallocgc*SC*` functions, which carry their own probe,
//! so those calls are skipped here to count each object once.

use aya_ebpf::helpers::bpf_probe_read_user;
use aya_ebpf::EbpfContext as _;
use aya_ebpf::{helpers::generated::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext};
use memtrace_common::{AllocType, Counter, Event, AT_PUSH, AT_STACK_CHECK, POINT_FLAGS};

use super::{
    bump, current_target_labels, emit_with_stack, emit_with_stack_entry, entry_fingerprint,
    fingerprint, go_abi, labels_of,
};

#[uprobe]
pub fn go_alloc(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    bump(Counter::AllocHits);
    let size = go_abi::arg(&ctx, 0);
    let (ip, bp) = go_abi::ip_bp(&ctx);
    // SAFETY: helper without preconditions beyond a valid context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie & AT_STACK_CHECK != 0 && go_abi::below_or_equal(&ctx) {
        return 0; // to morestack: the function starts again
    }
    let floor = cookie & !POINT_FLAGS;
    // Zero-size requests return &zerobase and are not objects.
    if size == 0 || size < floor {
        return 0;
    }
    // The type (second argument): `PtrBytes`, its second word, says
    // whether the object holds pointers.
    let typ = go_abi::arg(&ctx, 1);
    let class = if typ == 0 {
        AllocType::NoScan
    } else {
        // SAFETY: bpf_probe_read_user tolerates any address.
        match unsafe { bpf_probe_read_user((typ + 8) as *const u64) } {
            Ok(0) => AllocType::NoScan,
            Ok(_) => AllocType::Scan,
            Err(_) => AllocType::Unknown,
        }
    };
    let ev =
        Event::alloc(tgid, tid, size, class).with_labels(labels_of(go_abi::g(&ctx), labels_off));
    if cookie & AT_PUSH == 0 {
        emit_with_stack(&ctx, ev, fingerprint(ip, bp));
        return 0;
    }
    // On `PUSHQ BP`: the return address into the direct caller is on top.
    // SAFETY: bpf_probe_read_user tolerates any address.
    match unsafe { bpf_probe_read_user(go_abi::sp(&ctx) as *const u64) } {
        Ok(ra) => emit_with_stack_entry(&ctx, ev, entry_fingerprint(ip, bp, ra), ra),
        Err(_) => emit_with_stack(&ctx, ev, None),
    };
    0
}
