//! Go's register ABI on amd64 (`ABIInternal`): integer arguments and
//! results in RAX, RBX, RCX, RDI, RSI, R8–R11, in that order.

use aya_ebpf::programs::ProbeContext;

/// Integer argument (or result) `n` of a Go function, at a uprobe.
#[inline(always)]
pub fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    // SAFETY: `regs` points at the saved user registers for this hit.
    let r = unsafe { &*ctx.regs };
    match n {
        0 => r.rax,
        1 => r.rbx,
        2 => r.rcx,
        3 => r.rdi,
        4 => r.rsi,
        5 => r.r8,
        6 => r.r9,
        7 => r.r10,
        _ => r.r11,
    }
}

/// The instruction pointer and frame pointer at a uprobe.
#[inline(always)]
pub fn ip_bp(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: as above.
    let r = unsafe { &*ctx.regs };
    (r.rip, r.rbp)
}

/// Whether a `JBE` at the uprobe will jump: the carry or zero flag
/// (set by the `CMP` before it).
#[inline(always)]
pub fn below_or_equal(ctx: &ProbeContext) -> bool {
    const CF: u64 = 1;
    const ZF: u64 = 1 << 6;
    // SAFETY: as above.
    unsafe { (*ctx.regs).eflags & (CF | ZF) != 0 }
}

/// The stack pointer at a uprobe.
#[inline(always)]
pub fn sp(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    unsafe { (*ctx.regs).rsp }
}

/// The current goroutine (`*g`): R14 in Go code (ABIInternal).
#[inline(always)]
pub fn g(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    unsafe { (*ctx.regs).r14 }
}
