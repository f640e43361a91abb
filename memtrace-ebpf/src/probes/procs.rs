//! Process lifecycle for the agent: `sched:sched_process_exec` announces every
//! exec on the host (rare, so no filter; user space decides whether the new
//! program is Go), and `sched:sched_process_exit` a target's last thread.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use memtrace_common::{Event, EventKind};

use super::{current_target, emit, tp_offsets};

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
