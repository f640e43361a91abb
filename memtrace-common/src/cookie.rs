//! What user space tells a uprobe through its attach cookie.

/// The attach cookie of the `go_spawned` probe: the offsets of `startpc`
/// (low 32 bits) and `gopc` (bits 32–62) in `runtime.g`, and (bit 63)
/// where the new `*g` is: in the second argument register when the probe
/// sits on `newproc.func1`'s call to `runqput(pp, newg, next)`, else in the
/// result register (right after its call to `newproc1`). `gopc` 0 means
/// unknown: the stack fingerprint then starts at the probe's own frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpawnCookie {
    pub startpc: u32,
    pub gopc: u32,
    pub at_runqput: bool,
}

impl SpawnCookie {
    pub const fn encode(self) -> u64 {
        (self.startpc as u64)
            | (((self.gopc & 0x7fff_ffff) as u64) << 32)
            | ((self.at_runqput as u64) << 63)
    }

    pub const fn decode(v: u64) -> Self {
        Self {
            startpc: v as u32,
            gopc: ((v >> 32) as u32) & 0x7fff_ffff,
            at_runqput: v >> 63 != 0,
        }
    }
}

/// Set in a probe's attach cookie (allocator, GC view) when the probe sits on the
/// function's `PUSHQ BP` (the frame is not set up yet: the direct caller's
/// return address is at the stack pointer, not in the frame-pointer
/// chain). The rest of the cookie is the size floor.
pub const AT_PUSH: u64 = 1 << 63;

/// Set (for an allocator, with [`AT_PUSH`]) when a probe sits on the `JBE`
/// of the function's stack check (Go 1.19–1.20, whose frames start with
/// `SUBQ`, not a push; the kernel emulates a conditional jump as it does a
/// push, so the probe traps once). The `CMP` before it has set the flags:
/// when the jump will be taken (CF or ZF), the function calls `morestack`
/// and starts again, so this entry is not counted; the next one is.
pub const AT_STACK_CHECK: u64 = 1 << 62;

/// Every flag of a probe point's cookie; in an allocator's, the rest is the
/// size floor.
pub const POINT_FLAGS: u64 = AT_PUSH | AT_STACK_CHECK;
