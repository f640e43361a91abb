//! Where a target holds itself for user space: `go_hold` stops the whole
//! process (`bpf_send_signal(SIGSTOP)`) and tells user space why, which
//! reads or sets the runtime's state through `/proc/PID/mem` and sends
//! SIGCONT. The attach cookie is the [`HoldPoint`]:
//! - `Start`, after `runtime.gcenable`'s prologue: the runtime is set up
//!   (its `MemProfileRate` final), no user `init` has run;
//! - `Exit`, at the entry of `runtime.exit`'s assembly body (no prologue,
//!   `NOSPLIT`), whose exit code is the ABI0 argument at 8(SP);
//! - `Signal`, after `runtime.dieFromSignal`'s prologue, whose first
//!   argument is the signal.
//!
//! A target whose config does not ask for holds is never stopped. Each
//! stop is also noted in `HELD` until user space continues the target, so
//! a target stopped and never continued (whatever went wrong) is found.

use aya_ebpf::EbpfContext as _;
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_get_attach_cookie,
        generated::bpf_send_signal,
    },
    macros::uprobe,
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use memtrace_common::{Counter, Event, HoldPoint};

use super::{bump, go_abi, EVENTS, HELD, TARGETS};

const SIGSTOP: u32 = 19;

#[uprobe]
pub fn go_hold(ctx: ProbeContext) -> u32 {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: plain copy of the map value.
    let Some(cfg) = (unsafe { TARGETS.get(tgid) }).copied() else {
        return 0;
    };
    if cfg.hold == 0 {
        return 0;
    }
    // SAFETY: helper without preconditions beyond a valid context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(point) = HoldPoint::from_u64(cookie) else {
        warn!(
            &ctx,
            "hold: pid {} hit a probe with unknown cookie {}", tgid, cookie
        );
        return 0;
    };
    let code = match point {
        HoldPoint::Start => 0,
        HoldPoint::Exit => {
            let at = go_abi::sp(&ctx) + 8;
            // SAFETY: bpf_probe_read_user tolerates any address.
            u64::from(unsafe { bpf_probe_read_user(at as *const u32) }.unwrap_or(0))
        }
        HoldPoint::Signal => go_abi::arg(&ctx, 0) & 0xffff_ffff,
    };
    // The event's place is taken first: a target is stopped only once the
    // event that makes user space resume it is sure to arrive. With the
    // ring buffer full the target is not held at all (its hold is lost,
    // counted with the ring buffer's drops), never held for good.
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        bump(Counter::RingbufDrops);
        bump(Counter::HoldFailures);
        warn!(
            &ctx,
            "hold: pid {} not held: the event ring buffer is full", tgid
        );
        return 0;
    };
    // The signal is delivered when this thread returns to user mode, after
    // the program; it stops every thread of the process.
    // SAFETY: helper without preconditions.
    let stopped = unsafe { bpf_send_signal(SIGSTOP) } == 0;
    if !stopped {
        bump(Counter::HoldFailures);
        warn!(
            &ctx,
            "hold: pid {} not held: SIGSTOP could not be sent", tgid
        );
    }
    let mut ev = Event::hold(tgid, tid, point, code, stopped);
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if stopped {
        // Noted for the watchdog; with the map full the event alone serves.
        let _ = HELD.insert(tgid, ev.ts_ns, 0);
    }
    slot.write(ev);
    slot.submit(BPF_RB_FORCE_WAKEUP as u64);
    0
}
