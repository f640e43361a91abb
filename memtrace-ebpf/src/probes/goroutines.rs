//! Goroutine creation and exit, for the goroutines lens.
//!
//! `go_newproc` sits after `runtime.newproc1`'s prologue: the stack there is
//! the `go` statement's (frame-pointer unwinding crosses `systemstack`), and
//! RAX holds `fn *funcval`, whose first word is the start PC. The new `*g`
//! is only known on return, so `go_newproc_ret` sits on newproc1's RET
//! instruction (found by disassembly; never a uretprobe) and reads RAX.
//! `go_exit` sits after `runtime.goexit0`'s prologue, where RAX is the `*g`.
//! User space pairs the two newproc1 records per thread.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::uprobe, programs::ProbeContext};
use memtrace_common::{Event, EventKind};

use super::{current_target, emit, emit_with_stack, event};

#[uprobe]
pub fn go_newproc(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    // SAFETY: `regs` points at the saved user registers for this hit.
    let fnv = unsafe { (*ctx.regs).rax };
    // SAFETY: bpf_probe_read_user tolerates any address.
    let start_pc = unsafe { bpf_probe_read_user(fnv as *const u64) }.unwrap_or(0);
    let ev = Event {
        aux: start_pc,
        ..event(EventKind::GoCreate, tgid, tid)
    };
    // newproc1 runs on the system stack, so the top of its stack is the
    // same for every `go` statement: always walk (no fingerprint).
    emit_with_stack(&ctx, ev, None);
    0
}

/// Reports the `*g` in RAX with `kind`.
#[inline(always)]
fn report_g(ctx: &ProbeContext, kind: EventKind) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    // SAFETY: `regs` points at the saved user registers for this hit.
    let g = unsafe { (*ctx.regs).rax };
    emit(Event {
        addr: g,
        ..event(kind, tgid, tid)
    });
    0
}

#[uprobe]
pub fn go_newproc_ret(ctx: ProbeContext) -> u32 {
    report_g(&ctx, EventKind::GoCreated)
}

#[uprobe]
pub fn go_exit(ctx: ProbeContext) -> u32 {
    report_g(&ctx, EventKind::GoExit)
}
