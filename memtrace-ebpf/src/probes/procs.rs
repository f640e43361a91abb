//! Process lifecycle for the agent: `sched:sched_process_exec` announces every
//! exec on the host (rare, so no filter; user space decides whether the new
//! program is Go), and `sched:sched_process_exit` a target's last thread.
//! Every session: `oom:mark_victim` says the OOM killer chose a target, so
//! user space writes what it holds of it before the process is gone.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use memtrace_common::{Event, EventKind};

use super::{current_target, emit, emit_now, tp_offsets, TARGETS};

#[tracepoint]
pub fn proc_exec(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    emit(Event::new(
        EventKind::ProcExec,
        (id >> 32) as u32,
        id as u32,
    ));
    0
}

/// `field:bool group_dead` (offset from the format file, via
/// [`tp_offsets`]; 0 when this kernel's tracepoint lacks the field).
#[tracepoint]
pub fn proc_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let at = tp_offsets().exit_group_dead as usize;
    // SAFETY: the offset comes from the format file.
    if at != 0 && unsafe { ctx.read_at::<u8>(at) }.unwrap_or(0) == 0 {
        return 0;
    }
    if at == 0 && tgid != tid {
        return 0; // without group_dead, the leader's exit stands for the group
    }
    emit(Event::new(EventKind::ProcExit, tgid, tid));
    0
}

/// The victim is the tracepoint's `pid`, not the current task (the killer
/// runs in whichever task hit the limit). Offsets from the format file.
#[tracepoint]
pub fn oom_victim(ctx: TracePointContext) -> u32 {
    let off = tp_offsets();
    // SAFETY: the offsets come from the format file.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(off.oom_pid as usize) }) else {
        return 0;
    };
    let victim = pid as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { TARGETS.get(victim) }.is_none() {
        return 0;
    }
    let at = off.oom_anon_rss as usize;
    // SAFETY: as above.
    let rss = |i: usize| unsafe { ctx.read_at::<u64>(at + 8 * i) }.unwrap_or(0);
    let killer = bpf_get_current_pid_tgid() as u32;
    emit_now(Event::oom_victim(victim, killer, rss(0), rss(1), rss(2)));
    0
}
