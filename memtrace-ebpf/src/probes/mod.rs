//! Maps and helpers shared by every probe family.

pub mod alloc;
pub mod faults;
pub mod syscalls;

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::tracing::StackIdContext,
};
use memtrace_common::{
    Counter, Event, EventKind, TargetConfig, COUNTER_COUNT, MAX_TARGETS, RINGBUF_BYTES,
    RINGBUF_WAKE_BYTES, STACK_MAP_ENTRIES,
};

#[map]
pub static TARGETS: HashMap<u32, TargetConfig> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// The current thread's (tgid, tid) if its process is a target.
#[inline(always)]
pub fn current_target() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { TARGETS.get(&tgid) }.is_some() {
        Some((tgid, id as u32))
    } else {
        None
    }
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Walks the user stack (frame pointers) into `STACKS`; a failure is counted
/// and returned as a negative id so user space can show it.
#[inline(always)]
pub fn user_stack_id<C: StackIdContext>(ctx: &C) -> i32 {
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(e) => {
            bump(Counter::StackErrors);
            if e < 0 {
                e
            } else {
                -1
            }
        }
    }
}

/// An event with only its header filled; callers set the body fields.
#[inline(always)]
pub fn event(kind: EventKind, tgid: u32, tid: u32, stack_id: i32) -> Event {
    Event {
        kind: kind as u32,
        tgid,
        tid,
        stack_id,
        ts_ns: 0,
        addr: 0,
        size: 0,
        aux: 0,
        aux2: 0,
    }
}

/// Sends one event. The reader is only woken once a batch has piled up: a
/// wakeup per event would cost ~6 µs each on the hot path.
#[inline(always)]
pub fn emit(mut ev: Event) {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= RINGBUF_WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    } as u64;
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if EVENTS.output::<Event>(&ev, flags).is_err() {
        bump(Counter::RingbufDrops);
    }
}
