//! Goroutine creation and exit, for the goroutines lens.
//!
//! `go_newproc` sits after `runtime.newproc1`'s prologue: the stack there is
//! the `go` statement's (frame-pointer unwinding crosses `systemstack`), and
//! the first argument is `fn *funcval`, whose first word is the start PC.
//! The new `*g` is only known on return, so `go_newproc_ret` sits on
//! newproc1's RET instruction (found by disassembly; never a uretprobe) and
//! reads the result. `go_exit` sits on `runtime.goexit0`'s `PUSHQ BP` (after
//! the stack check; emulated, so one trap), whose first argument is the
//! `*g`. User space pairs the two newproc1 records per
//! thread.
//!
//! When the binary's DWARF gives `runtime.g`'s layout, one probe does what
//! those two do: `go_spawned`, on `runtime.newproc.func1`'s call to
//! `runqput(pp, newg, true)` (a call, which the kernel emulates: one trap
//! instead of two; the instruction after the call to `newproc1` where there
//! is no such call), reads the new `*g` and its `startpc`. Its stack is remembered by a
//! fingerprint that starts at the `go` statement (the new g's `gopc`),
//! past the `systemstack` switch, so a creation site's stack is walked
//! once, not per goroutine.

use aya_ebpf::EbpfContext as _;
use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::uprobe,
    programs::ProbeContext,
};
use memtrace_common::{Event, EventKind, SpawnCookie};

use super::{
    current_target, current_target_labels, emit, emit_with_stack, fingerprint_from, go_abi,
    labels_of,
};

#[uprobe]
pub fn go_newproc(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    let fnv = go_abi::arg(&ctx, 0);
    // newproc1(fn, callergp, callerpc): the new goroutine inherits the
    // creator's labels (newproc1 runs on the system stack, so R14 is g0).
    let labels = labels_of(go_abi::arg(&ctx, 1), labels_off);
    // SAFETY: bpf_probe_read_user tolerates any address.
    let start_pc = unsafe { bpf_probe_read_user(fnv as *const u64) }.unwrap_or(0);
    // newproc1 runs on the system stack, so the top of its stack is the
    // same for every `go` statement: always walk (no fingerprint).
    emit_with_stack(
        &ctx,
        Event::go_create(tgid, tid, start_pc).with_labels(labels),
        None,
    );
    0
}

/// On `runtime.newproc.func1`'s call to `runqput` (or right after its call
/// to `newproc1`): the new `*g` is in the second argument register (or the
/// result register), its start PC at the attach cookie's offset in it, and the frame-pointer walk from here crosses `systemstack` to the
/// `go` statement. One probe where `go_newproc` and `go_newproc_ret` take
/// two.
#[uprobe]
pub fn go_spawned(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid, labels_off)) = current_target_labels() else {
        return 0;
    };
    // SAFETY: reads the probe's attach cookie.
    let offsets = SpawnCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    // On the call to runqput(pp, newg, next), or after newproc1 returned it.
    // (Both registers are read: a load at a computed offset into the
    // context is refused by the verifier.)
    // SAFETY: `regs` points at the saved user registers for this hit.
    let (result, second) = unsafe {
        let r = &*ctx.regs;
        (
            core::ptr::read_volatile(&r.rax),
            core::ptr::read_volatile(&r.rbx),
        )
    };
    let g = if offsets.at_runqput { second } else { result };
    // SAFETY: bpf_probe_read_user tolerates any address.
    let start_pc =
        unsafe { bpf_probe_read_user(g.wrapping_add(offsets.startpc as u64) as *const u64) }
            .unwrap_or(0);
    // The frame-pointer chain here runs newproc.func1 -> systemstack (a
    // frame of its own since Go 1.21) -> newproc -> the `go` statement ->
    // its callers. The top is the same for every goroutine, so the
    // fingerprint starts at the `go` statement (the new g's gopc): a
    // remembered stack stands for one creation site and its callers.
    let gopc = if offsets.gopc == 0 {
        0
    } else {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user(g.wrapping_add(offsets.gopc as u64) as *const u64) }
            .unwrap_or(0)
    };
    let (ip, bp) = go_abi::ip_bp(&ctx);
    emit_with_stack(
        &ctx,
        // newproc1 gave the new goroutine its creator's labels.
        Event::go_spawned(tgid, tid, g, start_pc).with_labels(labels_of(g, labels_off)),
        fingerprint_from(ip, bp, gopc),
    );
    0
}

/// Reports the `*g` in the first argument/result register with `kind`.
#[inline(always)]
fn report_g(ctx: &ProbeContext, kind: EventKind) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    emit(Event::goroutine(kind, tgid, tid, go_abi::arg(ctx, 0)));
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
